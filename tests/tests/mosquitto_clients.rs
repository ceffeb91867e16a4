//! The same contract seen through independent clients: `mosquitto_sub` and `mosquitto_pub`
//! (Mosquitto 2.0), used exactly as `topics.md` tells device makers and operators to.

use anyhow::Result;
use tests::{status_state, TestBroker, TestPki};

fn position(seq: u64) -> String {
    String::from_utf8_lossy(&tests::position_json(seq)).into_owned()
}

fn inbox(order_id: &str) -> String {
    String::from_utf8_lossy(&tests::inbox_json(order_id, "Please call dispatch")).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxi_position_reaches_operator() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .mosquitto_sub(&pki.client("operator", "operator")?)
        .topic("taxi/+/position")
        .qos(1)
        .spawn()?;
    assert_eq!(operator.expect_subscribed().await?, [1]);

    let payload = position(1);
    broker
        .mosquitto_pub(&pki.client("taxi-042", "taxi")?)
        .topic("taxi/taxi-042/position")
        .message(&payload)
        .run_acked()
        .await?;
    operator
        .expect_message_payload("taxi/taxi-042/position", &payload)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxi_position_reaches_mqtt5_operator() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .mosquitto_sub(&pki.client("operator", "operator")?)
        .v5()
        .topic("taxi/#")
        .qos(1)
        .spawn()?;
    assert_eq!(operator.expect_subscribed().await?, [1]);

    let taxi = pki.client("taxi-042", "taxi")?;
    let first = position(1);
    broker
        .mosquitto_pub(&taxi)
        .topic("taxi/taxi-042/position")
        .message(&first)
        .run_acked()
        .await?;
    operator
        .expect_message_payload("taxi/taxi-042/position", &first)
        .await?;
    let second = position(2);
    broker
        .mosquitto_pub(&taxi)
        .v5()
        .topic("taxi/taxi-042/position")
        .message(&second)
        .run_acked()
        .await?;
    operator
        .expect_message_payload("taxi/taxi-042/position", &second)
        .await
}

/// `mosquitto_pub` may exit 0 even when its publish is refused; what counts is that the
/// subscriber never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publish_is_not_delivered() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .mosquitto_sub(&pki.client("operator", "operator")?)
        .topic("taxi/#")
        .qos(1)
        .spawn()?;
    operator.expect_subscribed().await?;

    let intruder = pki.client("taxi-1", "taxi")?;
    for v5 in [false, true] {
        let publish = broker
            .mosquitto_pub(&intruder)
            .topic("taxi/taxi-2/position")
            .message(r#"{"forbidden":true}"#)
            .qos(1);
        let output = if v5 { publish.v5() } else { publish }.run().await?;
        assert!(
            !output.stdout.contains("received PUBACK"),
            "a refused publish was acknowledged: {output:?}"
        );
    }
    let marker = position(7);
    broker
        .mosquitto_pub(&pki.client("taxi-2", "taxi")?)
        .topic("taxi/taxi-2/position")
        .message(&marker)
        .run_acked()
        .await?;
    operator
        .expect_message_payload("taxi/taxi-2/position", &marker)
        .await?;
    let leaked: Vec<_> = operator
        .messages()
        .into_iter()
        .filter(|(_, payload)| payload.contains("forbidden"))
        .collect();
    assert!(
        leaked.is_empty(),
        "refused publishes were delivered: {leaked:?}"
    );
    Ok(())
}

/// Refused filters get 128 (MQTT 3.1.1) or 135 (MQTT 5) in the SUBACK; the own inbox in the
/// same SUBSCRIBE works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxi_subscription_codes() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let backoffice = pki.client("backoffice", "backoffice")?;
    for (n, (v5, refused)) in [(false, 128), (true, 135)].into_iter().enumerate() {
        let id = format!("taxi-{n}");
        let inbox_topic = format!("taxi/{id}/inbox");
        let sub = broker
            .mosquitto_sub(&pki.client(&id, "taxi")?)
            .topic(&inbox_topic)
            .topic("#")
            .topic("taxi/+/inbox")
            .qos(1);
        let mut taxi = if v5 { sub.v5() } else { sub }.spawn()?;
        assert_eq!(
            taxi.expect_subscribed().await?,
            [1, refused, refused],
            "MQTT 5: {v5}"
        );
        let order = inbox(&format!("o-{n}"));
        broker
            .mosquitto_pub(&backoffice)
            .topic(&inbox_topic)
            .message(&order)
            .run_acked()
            .await?;
        taxi.expect_message_payload(&inbox_topic, &order).await?;
    }
    Ok(())
}

/// `mosquitto_sub -c -q 1` gets the inbox messages sent while it was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_gets_messages_sent_while_offline() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let backoffice_cert = pki.client("backoffice", "backoffice")?;
    let mut watcher = broker
        .mosquitto_sub(&backoffice_cert)
        .client_id("backoffice")
        .topic("taxi/+/status")
        .qos(1)
        .spawn()?;
    watcher.expect_subscribed().await?;
    let taxi_cert = pki.client("taxi-042", "taxi")?;

    let taxi = broker
        .mosquitto_sub(&taxi_cert)
        .topic("taxi/taxi-042/inbox")
        .qos(1)
        .persistent()
        .spawn();
    let mut taxi = taxi?;
    assert_eq!(taxi.expect_subscribed().await?, [1]);
    taxi.kill().await?;
    // The broker has ended the session once the offline status is out.
    watcher
        .expect_line("offline status of taxi-042", tests::WAIT, |line| {
            line.message().filter(|(topic, payload)| {
                topic == "taxi/taxi-042/status"
                    && status_state(payload.as_bytes()).ok().as_deref() == Some("offline")
            })
        })
        .await?;

    // A second backoffice connection (its own id) sends the orders.
    let sender = pki.client("backoffice-2", "backoffice")?;
    let orders: Vec<String> = (1..=3).map(|n| inbox(&format!("o-98{n}"))).collect();
    for order in &orders {
        broker
            .mosquitto_pub(&sender)
            .topic("taxi/taxi-042/inbox")
            .message(order)
            .run_acked()
            .await?;
    }

    let mut taxi = broker
        .mosquitto_sub(&taxi_cert)
        .topic("taxi/taxi-042/inbox")
        .qos(1)
        .persistent()
        .count(3)
        .spawn()?;
    let status = taxi.wait_exit().await?;
    let received: Vec<String> = taxi
        .messages()
        .into_iter()
        .map(|(_, payload)| payload)
        .collect();
    assert_eq!(
        received,
        orders,
        "all three queued orders, in order; output: {:#?}",
        taxi.output()
    );
    assert!(status.success(), "mosquitto_sub -C 3 exit: {status:?}");
    Ok(())
}

/// A taxi listening with `mosquitto_sub` and its own last will, then killed: the operator sees
/// online, the will, and offline; a late subscriber gets the retained offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriber_goes_offline_with_its_will() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let operator_cert = pki.client("operator", "operator")?;
    let mut operator = broker
        .mosquitto_sub(&operator_cert)
        .v5()
        .topic("taxi/+/status")
        .qos(1)
        .spawn()?;
    operator.expect_subscribed().await?;

    let will = r#"{"state":"offline","at_ms":1732200000000}"#;
    let mut taxi = broker
        .mosquitto_sub(&pki.client("taxi-042", "taxi")?)
        .topic("taxi/taxi-042/inbox")
        .qos(1)
        .will("taxi/taxi-042/status", will, 1, true)
        .spawn()?;
    taxi.expect_subscribed().await?;
    let online = operator.expect_message("taxi/taxi-042/status").await?;
    assert_eq!(status_state(online.as_bytes())?, "online");

    taxi.kill().await?;
    operator
        .expect_message_payload("taxi/taxi-042/status", will)
        .await?;
    let offline = operator.expect_message("taxi/taxi-042/status").await?;
    assert_eq!(status_state(offline.as_bytes())?, "offline");
    assert_ne!(
        offline, will,
        "the broker's own offline status follows the will"
    );

    let mut late = broker
        .mosquitto_sub(&pki.client("operator-2", "operator")?)
        .topic("taxi/+/status")
        .count(1)
        .spawn()?;
    let retained = late.expect_message("taxi/taxi-042/status").await?;
    assert_eq!(retained, offline, "the retained status is the latest one");
    Ok(())
}

/// Refusals as the Mosquitto tools see them: wrong client id, unknown CA, expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;

    let taxi = pki.client("taxi-042", "taxi")?;
    let output = broker
        .mosquitto_pub(&taxi)
        .client_id("taxi-043")
        .topic("taxi/taxi-043/position")
        .message(&position(1))
        .qos(1)
        .run()
        .await?;
    assert!(!output.status.success(), "{output:?}");
    assert!(
        output.stdout.contains("received CONNACK (5)"),
        "CONNACK 'not authorized' expected: {output:?}"
    );

    for cert in [
        pki.foreign_client("taxi-042", "taxi")?,
        pki.expired_client("taxi-042", "taxi")?,
    ] {
        let output = broker
            .mosquitto_pub(&cert)
            .topic("taxi/taxi-042/position")
            .message(&position(2))
            .qos(1)
            .run()
            .await?;
        assert!(!output.status.success(), "{output:?}");
        assert!(!output.stdout.contains("received CONNACK"), "{output:?}");
    }
    Ok(())
}

/// Operators read the taxis' compact postcard payloads as the JSON of topics.md (the default
/// `[acl.operator] payload = "json"`); the bridge gets the bytes as published, and a payload
/// that does not decode reaches operators as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_read_postcard_positions_as_the_documented_json() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .mosquitto_sub(&pki.client("operator", "operator")?)
        .topic("taxi/+/position")
        .qos(1)
        .spawn()?;
    assert_eq!(operator.expect_subscribed().await?, [1]);
    let mut bridge = broker
        .client(&pki.client("bridge", "bridge")?)
        .connect()
        .await?;
    bridge.subscribe_and_wait(&[("taxi/+/position", 1)]).await?;

    // The example of topics.md, sent as postcard.
    let position = wire::Position {
        seq: 1732200000123,
        ts_ms: 1732200000000,
        lat: 52.520008,
        lon: 13.404954,
        speed_kmh: Some(31.5),
        heading_deg: Some(270.0),
        accuracy_m: Some(4.0),
    };
    let postcard = wire::encode_postcard(&position);
    let mut taxi = broker
        .client(&pki.client("taxi-042", "taxi")?)
        .connect()
        .await?;
    taxi.publish_acked("taxi/taxi-042/position", false, &postcard)
        .await?;
    operator
        .expect_message_payload(
            "taxi/taxi-042/position",
            r#"{"seq":1732200000123,"ts_ms":1732200000000,"lat":52.520008,"lon":13.404954,"speed_kmh":31.5,"heading_deg":270.0,"accuracy_m":4.0}"#,
        )
        .await?;
    bridge
        .expect_message("taxi/taxi-042/position", &postcard)
        .await?;

    taxi.publish_acked("taxi/taxi-042/position", false, b"\x01")
        .await?;
    operator
        .expect_message_payload("taxi/taxi-042/position", "\u{1}")
        .await
}
