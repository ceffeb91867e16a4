//! Who may publish and subscribe to what, per role (see `topics.md`), with rumqttc clients
//! speaking MQTT 3.1.1 and 5.

use anyhow::Result;
use tests::{
    both_versions, inbox_json, position_json, raw, TestBroker, TestPki, Version,
    DISCONNECT_NOT_AUTHORIZED_V5, SUBACK_FAILURE_V4, SUBACK_NOT_AUTHORIZED_V5,
};

async fn taxi_position_reaches_operator(version: Version) -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .version(version)
        .connect()
        .await?;
    assert_eq!(
        operator
            .subscribe_and_wait(&[("taxi/+/position", 1)])
            .await?,
        [1]
    );
    let mut taxi = broker
        .client(&pki.client("taxi-1", "taxi")?)
        .version(version)
        .connect()
        .await?;

    let payload = position_json(1);
    taxi.publish_acked("taxi/taxi-1/position", false, &payload)
        .await?;

    let message = operator
        .expect_message("taxi/taxi-1/position", &payload)
        .await?;
    assert_eq!(message.qos, 1, "delivered with the subscription's QoS 1");
    assert!(!message.retain);
    Ok(())
}

both_versions!(taxi_position_reaches_operator);

/// Publishing anywhere but its own position/tour/ack/status disconnects a taxi, and the
/// message reaches nobody.
async fn taxi_publishing_elsewhere_is_disconnected(version: Version) -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator.subscribe_and_wait(&[("taxi/#", 1)]).await?;
    let taxi_1 = pki.client("taxi-1", "taxi")?;
    let taxi_2 = pki.client("taxi-2", "taxi")?;

    let forbidden = [
        "taxi/taxi-2/position",
        "taxi/taxi-2/status",
        "taxi/taxi-1/inbox",
        "taxi/taxi-1/position/extra",
        "taxi/TAXI-1/position",
    ];
    for (n, topic) in forbidden.iter().enumerate() {
        let mut taxi = broker.client(&taxi_1).version(version).connect().await?;
        let payload = format!("{{\"forbidden\":{n}}}");
        taxi.publish(topic, 1, false, payload.as_bytes()).await?;
        taxi.expect_disconnected().await?;
        taxi.drain();
        assert!(
            !taxi
                .seen()
                .iter()
                .any(|e| matches!(e, tests::Event::PubAck { .. })),
            "a refused publish to {topic} must not be acknowledged: {:?}",
            taxi.seen()
        );
    }

    // The path is live: a legitimate message published afterwards arrives ...
    let mut other = broker.client(&taxi_2).version(version).connect().await?;
    let marker = position_json(99);
    other
        .publish_acked("taxi/taxi-2/position", false, &marker)
        .await?;
    operator
        .expect_message("taxi/taxi-2/position", &marker)
        .await?;
    // ... and none of the forbidden ones did.
    let leaked: Vec<_> = operator
        .messages()
        .into_iter()
        .filter(|m| m.payload_str().contains("forbidden"))
        .collect();
    assert!(
        leaked.is_empty(),
        "refused publishes were delivered: {leaked:?}"
    );
    Ok(())
}

both_versions!(taxi_publishing_elsewhere_is_disconnected);

/// A taxi may subscribe only to its own inbox; refused filters get a failure code in the
/// SUBACK, the others in the same SUBSCRIBE work, and the connection stays up.
async fn taxi_subscribes_only_to_its_inbox(version: Version, refused: u8) -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut backoffice = broker
        .client(&pki.client("backoffice", "backoffice")?)
        .connect()
        .await?;
    let mut taxi = broker
        .client(&pki.client("taxi-1", "taxi")?)
        .version(version)
        .connect()
        .await?;

    // Only refused filters: all fail, the connection stays.
    assert_eq!(
        taxi.subscribe_and_wait(&[("#", 1), ("taxi/taxi-1/#", 1)])
            .await?,
        [refused, refused]
    );
    // Mixed: the own inbox is granted in the same SUBSCRIBE.
    let codes = taxi
        .subscribe_and_wait(&[
            ("taxi/taxi-2/inbox", 1),
            ("taxi/+/inbox", 1),
            ("#", 1),
            ("taxi/taxi-1/inbox", 1),
            ("$share/g/taxi/taxi-1/inbox", 1),
        ])
        .await?;
    assert_eq!(codes, [refused, refused, refused, 1, refused]);

    let secret = inbox_json("o-for-taxi-2", "not for taxi-1");
    backoffice
        .publish_acked("taxi/taxi-2/inbox", false, &secret)
        .await?;
    let mine = inbox_json("o-for-taxi-1", "hello taxi-1");
    backoffice
        .publish_acked("taxi/taxi-1/inbox", false, &mine)
        .await?;

    let message = taxi.expect_message("taxi/taxi-1/inbox", &mine).await?;
    assert_eq!(message.qos, 1);
    let leaked: Vec<_> = taxi
        .messages()
        .into_iter()
        .filter(|m| m.topic != "taxi/taxi-1/inbox")
        .collect();
    assert!(leaked.is_empty(), "taxi-1 received: {leaked:?}");
    Ok(())
}

both_versions!(
    taxi_subscribes_only_to_its_inbox,
    SUBACK_FAILURE_V4,
    SUBACK_NOT_AUTHORIZED_V5
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reads_the_fleet_but_cannot_publish() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let operator_cert = pki.client("operator", "operator")?;
    let mut operator = broker.client(&operator_cert).connect().await?;
    assert_eq!(
        operator
            .subscribe_and_wait(&[("taxi/#", 1), ("#", 1)])
            .await?,
        [1, SUBACK_FAILURE_V4]
    );
    let mut taxi = broker
        .client(&pki.client("taxi-1", "taxi")?)
        .connect()
        .await?;
    assert_eq!(
        taxi.subscribe_and_wait(&[("taxi/taxi-1/inbox", 1)]).await?,
        [1]
    );
    let mut backoffice = broker
        .client(&pki.client("backoffice", "backoffice")?)
        .connect()
        .await?;

    // The operator reads everything under taxi/.
    let position = position_json(1);
    taxi.publish_acked("taxi/taxi-1/position", false, &position)
        .await?;
    operator
        .expect_message("taxi/taxi-1/position", &position)
        .await?;

    // Its publish is refused: disconnected, not delivered.
    let order = inbox_json("o-from-operator", "operators may not send orders");
    operator
        .publish("taxi/taxi-1/inbox", 1, false, &order)
        .await?;
    operator.expect_disconnected().await?;

    let marker = inbox_json("o-marker", "from the backoffice");
    backoffice
        .publish_acked("taxi/taxi-1/inbox", false, &marker)
        .await?;
    taxi.expect_message("taxi/taxi-1/inbox", &marker).await?;
    let leaked: Vec<_> = taxi
        .messages()
        .into_iter()
        .filter(|m| m.payload == order)
        .collect();
    assert!(
        leaked.is_empty(),
        "the operator's publish arrived: {leaked:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoffice_message_reaches_only_the_addressed_taxi() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut taxi_a = broker
        .client(&pki.client("taxi-a", "taxi")?)
        .connect()
        .await?;
    let mut taxi_b = broker
        .client(&pki.client("taxi-b", "taxi")?)
        .v5()
        .connect()
        .await?;
    assert_eq!(
        taxi_a
            .subscribe_and_wait(&[("taxi/taxi-a/inbox", 1)])
            .await?,
        [1]
    );
    assert_eq!(
        taxi_b
            .subscribe_and_wait(&[("taxi/taxi-b/inbox", 1)])
            .await?,
        [1]
    );
    let mut backoffice = broker
        .client(&pki.client("backoffice", "backoffice")?)
        .connect()
        .await?;

    let order = inbox_json("o-1", "Pick-up Alexanderplatz 1");
    backoffice
        .publish_acked("taxi/taxi-a/inbox", false, &order)
        .await?;
    let received = taxi_a.expect_message("taxi/taxi-a/inbox", &order).await?;
    assert_eq!(received.qos, 1);

    let marker = inbox_json("o-2", "for taxi-b");
    backoffice
        .publish_acked("taxi/taxi-b/inbox", false, &marker)
        .await?;
    taxi_b.expect_message("taxi/taxi-b/inbox", &marker).await?;
    assert_eq!(
        taxi_b.messages().len(),
        1,
        "taxi-b got more than its own message: {:?}",
        taxi_b.messages()
    );
    assert!(
        taxi_a.messages().iter().all(|m| m.payload == order),
        "taxi-a got another taxi's message: {:?}",
        taxi_a.messages()
    );
    Ok(())
}

/// The backoffice reads acks and status but not positions, and may not publish as a taxi.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoffice_reads_acks_and_status_only() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let backoffice_cert = pki.client("backoffice", "backoffice")?;
    let mut backoffice = broker.client(&backoffice_cert).v5().connect().await?;
    assert_eq!(
        backoffice
            .subscribe_and_wait(&[
                ("taxi/+/ack", 1),
                ("taxi/+/status", 1),
                ("taxi/+/position", 1),
                ("taxi/#", 1),
            ])
            .await?,
        [1, 1, SUBACK_NOT_AUTHORIZED_V5, SUBACK_NOT_AUTHORIZED_V5]
    );
    let mut taxi = broker
        .client(&pki.client("taxi-1", "taxi")?)
        .connect()
        .await?;
    let position = position_json(1);
    taxi.publish_acked("taxi/taxi-1/position", false, &position)
        .await?;
    let ack = br#"{"seq":1,"order_id":"o-1","state":"received","ts_ms":1}"#;
    taxi.publish_acked("taxi/taxi-1/ack", false, ack).await?;
    backoffice.expect_message("taxi/taxi-1/ack", ack).await?;
    assert!(
        backoffice.messages_on("taxi/taxi-1/position").is_empty(),
        "the backoffice received a position"
    );

    let mut impostor = broker
        .client(&pki.client("backoffice-2", "backoffice")?)
        .v5()
        .connect()
        .await?;
    impostor
        .publish("taxi/taxi-1/position", 1, false, &position_json(2))
        .await?;
    impostor.expect_disconnected().await?;
    Ok(())
}

/// An MQTT 5 client whose publish is refused is told why with a well-formed DISCONNECT
/// (reason code 0x87), and nothing else follows it on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publish_gets_a_well_formed_v5_disconnect() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut taxi = broker.raw(&pki.client("taxi-1", "taxi")?).await?;
    taxi.send(&raw::connect_v5("taxi-1", true, 30)).await?;
    let connack = taxi
        .read_packet(tests::WAIT)
        .await?
        .ok_or_else(|| anyhow::anyhow!("closed before CONNACK"))?;
    assert_eq!(connack.kind, raw::CONNACK);
    assert_eq!(
        connack.body.get(1),
        Some(&0x00),
        "CONNACK success: {connack:?}"
    );

    taxi.send(&raw::publish_v5("taxi/taxi-2/position", b"{}", 1, 1))
        .await?;
    let bytes = taxi.read_bytes_until_closed(tests::WAIT).await?;
    // One DISCONNECT: type 0xE0, a one-byte remaining length covering exactly the rest,
    // reason code 0x87, then properties whose own length covers exactly what follows.
    let well_formed = bytes.len() >= 4
        && bytes[0] == 0xE0
        && usize::from(bytes[1]) == bytes.len() - 2
        && bytes[2] == DISCONNECT_NOT_AUTHORIZED_V5
        && usize::from(bytes[3]) == bytes.len() - 4;
    assert!(
        well_formed,
        "expected exactly one DISCONNECT (0x87) before the close, got bytes {bytes:02x?}"
    );
    Ok(())
}

/// The bridge reads taxi telemetry, also as a shared subscription, may spread itself over
/// several connections `<id>.<suffix>`, and sends to inboxes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_reads_telemetry_through_shared_subscriptions() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let bridge_cert = pki.client("bridge", "bridge")?;
    let mut bridge = broker
        .client(&bridge_cert)
        .client_id("bridge.b1")
        .v5()
        .connect()
        .await?;
    assert_eq!(
        bridge
            .subscribe_and_wait(&[
                ("$share/ingest/taxi/+/position", 1),
                ("taxi/+/ack", 1),
                ("$share/ingest/taxi/#", 1),
                ("backoffice/#", 1),
            ])
            .await?,
        [1, 1, SUBACK_NOT_AUTHORIZED_V5, SUBACK_NOT_AUTHORIZED_V5]
    );
    let mut taxi = broker
        .client(&pki.client("taxi-1", "taxi")?)
        .connect()
        .await?;
    taxi.subscribe_and_wait(&[("taxi/taxi-1/inbox", 1)]).await?;
    let position = position_json(1);
    taxi.publish_acked("taxi/taxi-1/position", false, &position)
        .await?;
    bridge
        .expect_message("taxi/taxi-1/position", &position)
        .await?;

    let mut sender = broker
        .client(&bridge_cert)
        .client_id("bridge.b2")
        .connect()
        .await?;
    let order = inbox_json("o-bridge", "from the platform");
    sender
        .publish_acked("taxi/taxi-1/inbox", false, &order)
        .await?;
    taxi.expect_message("taxi/taxi-1/inbox", &order).await?;
    Ok(())
}
