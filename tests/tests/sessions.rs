//! Session life cycle: persistent sessions, takeover by a second connection with the same
//! id, the broker-owned retained `taxi/<id>/status`, and last wills.

use std::time::Duration;

use anyhow::Result;
use tests::{
    both_versions, expiring_order_json, inbox_json, position_json, status_state, unix_ms, Event,
    Message, MqttClient, TestBroker, TestPki, Version, CONNACK_NOT_AUTHORIZED_V4,
    CONNACK_NOT_AUTHORIZED_V5, WAIT,
};

/// Waits for a status message of `taxi` with the given state.
async fn expect_status(client: &mut MqttClient, taxi: &str, state: &str) -> Result<Message> {
    let topic = format!("taxi/{taxi}/status");
    client
        .expect(
            &format!("{state} status of {taxi}"),
            WAIT,
            |event| match event {
                Event::Publish(m)
                    if m.topic == topic
                        && status_state(&m.payload).ok().as_deref() == Some(state) =>
                {
                    Some(m.clone())
                }
                _ => None,
            },
        )
        .await
}

/// A fresh subscriber's view of the retained status of `taxi`.
async fn retained_status(
    broker: &TestBroker,
    pki: &TestPki,
    subscriber_id: &str,
    taxi: &str,
) -> Result<Message> {
    let mut late = broker
        .client(&pki.client(subscriber_id, "operator")?)
        .connect()
        .await?;
    let topic = format!("taxi/{taxi}/status");
    late.subscribe_and_wait(&[(&topic, 1)]).await?;
    let message = late.expect_publish(&topic).await?;
    assert!(
        message.retain,
        "a late subscriber gets the status as a retained message: {message:?}"
    );
    assert_eq!(message.qos, 1, "status is QoS 1 (topics.md): {message:?}");
    Ok(message)
}

/// A broker, and a backoffice client following every taxi's status (to know when the broker
/// has ended a session).
async fn broker_and_backoffice_watching_status() -> Result<(TestPki, TestBroker, MqttClient)> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut backoffice = broker
        .client(&pki.client("backoffice", "backoffice")?)
        .connect()
        .await?;
    backoffice
        .subscribe_and_wait(&[("taxi/+/status", 1)])
        .await?;
    Ok((pki, broker, backoffice))
}

async fn persistent_session_gets_messages_sent_while_offline(version: Version) -> Result<()> {
    let (pki, broker, mut backoffice) = broker_and_backoffice_watching_status().await?;
    let taxi_cert = pki.client("taxi-1", "taxi")?;

    let mut taxi = broker
        .client(&taxi_cert)
        .version(version)
        .clean_session(false)
        .connect()
        .await?;
    assert_eq!(
        taxi.subscribe_and_wait(&[("taxi/taxi-1/inbox", 1)]).await?,
        [1]
    );
    taxi.disconnect().await?;
    // The broker has ended the session once the offline status is out.
    expect_status(&mut backoffice, "taxi-1", "offline").await?;

    let orders: Vec<Vec<u8>> = (1..=3)
        .map(|n| inbox_json(&format!("o-{n}"), &format!("order {n}")))
        .collect();
    for order in &orders {
        backoffice
            .publish_acked("taxi/taxi-1/inbox", false, order)
            .await?;
    }

    let mut taxi = broker
        .client(&taxi_cert)
        .version(version)
        .clean_session(false)
        .start()?;
    let session_present = taxi.expect_connack().await?;
    assert!(session_present, "CONNACK must say the session was kept");
    for order in &orders {
        let message = taxi.expect_message("taxi/taxi-1/inbox", order).await?;
        assert_eq!(message.qos, 1);
    }
    let received: Vec<Vec<u8>> = taxi
        .messages_on("taxi/taxi-1/inbox")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(received, orders, "all three, once each, in order");
    Ok(())
}

both_versions!(persistent_session_gets_messages_sent_while_offline);

/// An order that expires while its taxi is offline is not in the taxi's queue when it comes
/// back, and one already expired when published is never delivered, not even to a taxi that
/// is online; valid orders published after them arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_orders_are_never_delivered() -> Result<()> {
    let (pki, broker, mut backoffice) = broker_and_backoffice_watching_status().await?;
    let taxi_cert = pki.client("taxi-1", "taxi")?;
    let mut taxi = broker
        .client(&taxi_cert)
        .clean_session(false)
        .connect()
        .await?;
    taxi.subscribe_and_wait(&[("taxi/taxi-1/inbox", 1)]).await?;

    // Online: an order expired on arrival goes nowhere; the next one arrives.
    let stale = expiring_order_json("o-stale", unix_ms() - 1);
    let fresh = expiring_order_json("o-fresh", unix_ms() + 3_600_000);
    for order in [&stale, &fresh] {
        backoffice
            .publish_acked("taxi/taxi-1/inbox", false, order)
            .await?;
    }
    taxi.expect_message("taxi/taxi-1/inbox", &fresh).await?;
    let received: Vec<Vec<u8>> = taxi
        .messages_on("taxi/taxi-1/inbox")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(received, [fresh], "the stale order was published first");

    // Offline: an order valid for a little more than a second when published, then waiting
    // in the session past its expiry.
    taxi.disconnect().await?;
    expect_status(&mut backoffice, "taxi-1", "offline").await?;
    let short = expiring_order_json("o-short", unix_ms() + 1_500);
    let later = expiring_order_json("o-later", unix_ms() + 3_600_000);
    for order in [&short, &later] {
        backoffice
            .publish_acked("taxi/taxi-1/inbox", false, order)
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let mut taxi = broker.client(&taxi_cert).clean_session(false).start()?;
    assert!(taxi.expect_connack().await?, "the session was kept");
    taxi.expect_message("taxi/taxi-1/inbox", &later).await?;

    let received: Vec<Vec<u8>> = taxi
        .messages_on("taxi/taxi-1/inbox")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(
        received,
        [later],
        "the expired order, queued before the valid one, must not come first"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_with_the_same_id_takes_over() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator.subscribe_and_wait(&[("taxi/#", 1)]).await?;
    let mut backoffice = broker
        .client(&pki.client("backoffice", "backoffice")?)
        .connect()
        .await?;
    let taxi_cert = pki.client("taxi-1", "taxi")?;

    let mut first = broker.client(&taxi_cert).connect().await?;
    first
        .subscribe_and_wait(&[("taxi/taxi-1/inbox", 1)])
        .await?;
    let mut second = broker.client(&taxi_cert).v5().connect().await?;
    first
        .expect_disconnected()
        .await
        .map_err(|e| e.context("the first connection must be closed by the takeover"))?;

    // The second connection works both ways.
    assert_eq!(
        second
            .subscribe_and_wait(&[("taxi/taxi-1/inbox", 1)])
            .await?,
        [1]
    );
    let order = inbox_json("o-1", "for the new connection");
    backoffice
        .publish_acked("taxi/taxi-1/inbox", false, &order)
        .await?;
    second.expect_message("taxi/taxi-1/inbox", &order).await?;
    let position = position_json(1);
    second
        .publish_acked("taxi/taxi-1/position", false, &position)
        .await?;
    operator
        .expect_message("taxi/taxi-1/position", &position)
        .await?;
    assert!(
        first.messages_on("taxi/taxi-1/inbox").is_empty(),
        "the replaced connection received a message"
    );

    // The fleet view ends with the taxi online.
    let retained = retained_status(&broker, &pki, "operator-late", "taxi-1").await?;
    assert_eq!(status_state(&retained.payload)?, "online");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_retained_online_then_offline() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator.subscribe_and_wait(&[("taxi/+/status", 1)]).await?;

    let before = tests::unix_ms();
    let taxi = broker
        .client(&pki.client("taxi-1", "taxi")?)
        .connect()
        .await?;
    let online = expect_status(&mut operator, "taxi-1", "online").await?;
    assert_eq!(online.qos, 1, "status is QoS 1 (topics.md): {online:?}");
    let at_ms = serde_json::from_slice::<serde_json::Value>(&online.payload)?["at_ms"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no at_ms in {online:?}"))?;
    assert!(
        at_ms >= before - 1000 && at_ms <= tests::unix_ms() + 1000,
        "at_ms {at_ms} is the connect time"
    );
    let retained = retained_status(&broker, &pki, "operator-2", "taxi-1").await?;
    assert_eq!(status_state(&retained.payload)?, "online");

    taxi.disconnect().await?;
    expect_status(&mut operator, "taxi-1", "offline").await?;
    let retained = retained_status(&broker, &pki, "operator-3", "taxi-1").await?;
    assert_eq!(status_state(&retained.payload)?, "offline");
    Ok(())
}

async fn status_goes_offline_when_the_taxi_is_killed(version: Version) -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator.subscribe_and_wait(&[("taxi/+/status", 1)]).await?;

    let mut taxi = broker
        .client(&pki.client("taxi-1", "taxi")?)
        .version(version)
        .connect()
        .await?;
    taxi.subscribe_and_wait(&[("taxi/taxi-1/inbox", 1)]).await?;
    expect_status(&mut operator, "taxi-1", "online").await?;

    taxi.kill().await;
    expect_status(&mut operator, "taxi-1", "offline").await?;
    let retained = retained_status(&broker, &pki, "operator-late", "taxi-1").await?;
    assert_eq!(status_state(&retained.payload)?, "offline");
    Ok(())
}

both_versions!(status_goes_offline_when_the_taxi_is_killed);

async fn last_will_is_delivered_when_the_taxi_dies(version: Version) -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator.subscribe_and_wait(&[("taxi/+/status", 1)]).await?;
    let taxi_cert = pki.client("taxi-1", "taxi")?;

    // A clean DISCONNECT discards the will.
    let unused_will = br#"{"state":"offline","at_ms":2222}"#;
    let taxi = broker
        .client(&taxi_cert)
        .version(version)
        .will("taxi/taxi-1/status", unused_will, 1, true)
        .connect()
        .await?;
    taxi.disconnect().await?;
    // The broker's own offline status is published after the will would have been.
    expect_status(&mut operator, "taxi-1", "offline").await?;
    assert!(
        !operator.messages().iter().any(|m| m.payload == unused_will),
        "the will of a cleanly disconnected taxi was published"
    );

    // Losing the connection publishes it.
    let will = br#"{"state":"offline","at_ms":1111}"#;
    let taxi = broker
        .client(&taxi_cert)
        .version(version)
        .will("taxi/taxi-1/status", will, 1, true)
        .connect()
        .await?;
    expect_status(&mut operator, "taxi-1", "online").await?;
    taxi.kill().await;
    operator.expect_message("taxi/taxi-1/status", will).await?;
    Ok(())
}

both_versions!(last_will_is_delivered_when_the_taxi_dies);

/// A will is a publish like any other: one the taxi may not make is refused at CONNECT.
async fn last_will_elsewhere_is_refused_at_connect(version: Version, code: u8) -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator.subscribe_and_wait(&[("taxi/#", 1)]).await?;
    let taxi_cert = pki.client("taxi-1", "taxi")?;

    for topic in [
        "taxi/taxi-2/status",
        "taxi/taxi-2/inbox",
        "taxi/taxi-1/inbox",
    ] {
        let mut taxi = broker
            .client(&taxi_cert)
            .version(version)
            .will(topic, br#"{"state":"offline","at_ms":3333}"#, 1, true)
            .start()?;
        assert_eq!(
            taxi.expect_refused().await?,
            Some(code),
            "a will on {topic} must be refused"
        );
    }

    // Marker: a legitimate connection's status arrives, none of the refused ones did.
    broker
        .client(&pki.client("taxi-3", "taxi")?)
        .connect()
        .await?;
    expect_status(&mut operator, "taxi-3", "online").await?;
    let leaked: Vec<_> = operator
        .messages()
        .into_iter()
        .filter(|m| m.topic.starts_with("taxi/taxi-1/") || m.topic.starts_with("taxi/taxi-2/"))
        .collect();
    assert!(
        leaked.is_empty(),
        "refused connections left traces: {leaked:?}"
    );
    Ok(())
}

both_versions!(
    last_will_elsewhere_is_refused_at_connect,
    CONNACK_NOT_AUTHORIZED_V4,
    CONNACK_NOT_AUTHORIZED_V5
);
