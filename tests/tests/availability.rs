//! The broker stays available for legitimate clients: idle sockets, oversized packets and
//! silent clients cost their own connection at most.

use std::time::Duration;

use anyhow::{Context, Result};
use tests::{position_json, raw, status_state, Event, TestBroker, TestPki, WAIT};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How soon a legitimate client must get through while idle sockets are open.
const PROMPT: Duration = Duration::from_secs(5);

/// Opens `count` TCP connections to the TLS port that never send a byte.
async fn idle_sockets(broker: &TestBroker, count: usize) -> Result<Vec<TcpStream>> {
    let mut sockets = Vec::with_capacity(count);
    for n in 0..count {
        sockets.push(
            TcpStream::connect(broker.mqtt_addr)
                .await
                .with_context(|| format!("opening idle socket {n}"))?,
        );
    }
    Ok(sockets)
}

/// With `idle` silent sockets open, a taxi connects and publishes, and an operator that
/// also connects afterwards receives it, all within [`PROMPT`].
async fn legitimate_clients_get_through_idle_sockets(
    broker: &TestBroker,
    pki: &TestPki,
    idle: usize,
) -> Result<()> {
    let _idle = idle_sockets(broker, idle).await?;
    let operator_cert = pki.client("operator", "operator")?;
    let taxi_cert = pki.client("taxi-1", "taxi")?;
    let exchange = async {
        let mut operator = broker.client(&operator_cert).connect().await?;
        operator
            .subscribe_and_wait(&[("taxi/+/position", 1)])
            .await?;
        let mut taxi = broker.client(&taxi_cert).connect().await?;
        let payload = position_json(1);
        taxi.publish_acked("taxi/taxi-1/position", false, &payload)
            .await?;
        operator
            .expect_message("taxi/taxi-1/position", &payload)
            .await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(PROMPT, exchange).await {
        Ok(outcome) => outcome
            .with_context(|| format!("with {idle} idle sockets open, a legitimate client failed")),
        Err(_) => anyhow::bail!(
            "with {idle} idle sockets open, clients did not get through within {PROMPT:?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_block_legitimate_clients() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    legitimate_clients_get_through_idle_sockets(&broker, &pki, 200).await
}

/// Idle sockets must not be able to take every handshake slot: hundreds of them still leave
/// room for real clients (only `mqtt.max_connections` bounds them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_sockets_do_not_block_legitimate_clients() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    legitimate_clients_get_through_idle_sockets(&broker, &pki, 600).await
}

/// A socket that never starts the TLS handshake is closed after `handshake_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_socket_is_closed_after_the_handshake_timeout() -> Result<()> {
    let pki = TestPki::new()?;
    let broker =
        TestBroker::start_with(&pki, |config| config.mqtt.handshake_timeout_ms = 300).await?;
    let labels = [("reason", "timeout")];
    let before = broker
        .metric("broker_handshake_failures_total", &labels)
        .await?;
    let mut socket = TcpStream::connect(broker.mqtt_addr).await?;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, socket.read(&mut byte))
        .await
        .context("the broker kept a silent socket open")?;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected the broker to close the socket, read {read:?}"
    );
    broker
        .wait_for_metric(
            "broker_handshake_failures_total",
            &labels,
            before + 1.0,
            WAIT,
        )
        .await?;
    Ok(())
}

/// A client that completes TLS but sends no CONNECT is closed after `connect_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_connect_is_closed_after_the_connect_timeout() -> Result<()> {
    let pki = TestPki::new()?;
    let broker =
        TestBroker::start_with(&pki, |config| config.mqtt.connect_timeout_ms = 300).await?;
    let labels = [("reason", "connect_timeout")];
    let before = broker
        .metric("broker_connect_refusals_total", &labels)
        .await?;
    let mut client = broker.raw(&pki.client("taxi-1", "taxi")?).await?;
    let packets = client.read_until_closed(WAIT).await?;
    assert!(
        packets.is_empty(),
        "nothing is sent before CONNECT: {packets:?}"
    );
    broker
        .wait_for_metric("broker_connect_refusals_total", &labels, before + 1.0, WAIT)
        .await?;
    Ok(())
}

/// A taxi that stops talking is dropped after 1.5 times its keep-alive, and goes offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_taxi_is_dropped_after_its_keep_alive() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator.subscribe_and_wait(&[("taxi/+/status", 1)]).await?;

    let mut taxi = broker.raw(&pki.client("taxi-1", "taxi")?).await?;
    taxi.send(&raw::connect("taxi-1", true, 1)).await?;
    let packets = taxi.read_until_closed(WAIT).await?;
    assert_eq!(
        packets.first().map(|p| (p.kind, p.body.clone())),
        Some((raw::CONNACK, vec![0x00, 0x00])),
        "accepted, then dropped: {packets:?}"
    );
    operator
        .expect("offline status of taxi-1", WAIT, |event| match event {
            Event::Publish(m)
                if m.topic == "taxi/taxi-1/status"
                    && status_state(&m.payload).ok().as_deref() == Some("offline") =>
            {
                Some(())
            }
            _ => None,
        })
        .await?;
    Ok(())
}

/// The same when the taxi vanished while messages for it were on their way (a taxi in a
/// tunnel): a full socket buffer must not keep the broker from noticing the silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_taxi_with_pending_messages_is_dropped_after_its_keep_alive() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator.subscribe_and_wait(&[("taxi/+/status", 1)]).await?;

    let mut taxi = broker.raw(&pki.client("taxi-1", "taxi")?).await?;
    taxi.send(&raw::connect("taxi-1", true, 1)).await?;
    taxi.send(&raw::subscribe(1, "taxi/taxi-1/inbox", 0))
        .await?;
    for expected in [raw::CONNACK, raw::SUBACK] {
        let packet = taxi.read_packet(WAIT).await?;
        assert_eq!(packet.map(|p| p.kind), Some(expected));
    }
    // The taxi now neither reads nor pings, while far more than the socket buffers hold is
    // sent to it.
    let mut backoffice = broker
        .client(&pki.client("backoffice", "backoffice")?)
        .connect()
        .await?;
    let mut order = br#"{"order_id":"o-1","kind":"message","created_ms":1,"text":""#.to_vec();
    order.resize(60 * 1024, b'x');
    order.extend_from_slice(br#""}"#);
    let count = 400;
    for _ in 0..count {
        backoffice
            .publish("taxi/taxi-1/inbox", 1, false, &order)
            .await?;
    }
    for n in 0..count {
        backoffice
            .expect_puback()
            .await
            .with_context(|| format!("PUBACK {n} of {count}"))?;
    }

    operator
        .expect("offline status of taxi-1", WAIT, |event| match event {
            Event::Publish(m)
                if m.topic == "taxi/taxi-1/status"
                    && status_state(&m.payload).ok().as_deref() == Some("offline") =>
            {
                Some(())
            }
            _ => None,
        })
        .await
        .context("a taxi silent for far longer than 1.5 x its keep-alive of 1 s is still online")?;
    drop(taxi);
    Ok(())
}

/// A packet over `mqtt.max_packet_size` closes that connection only: it is not delivered,
/// and the broker keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packet_closes_only_that_connection() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start_with(&pki, |config| config.mqtt.max_packet_size = 1024).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator
        .subscribe_and_wait(&[("taxi/+/position", 1)])
        .await?;
    let taxi_cert = pki.client("taxi-1", "taxi")?;

    // MQTT 3.1.1: the client does not know the limit and sends the whole packet.
    let mut taxi = broker.client(&taxi_cert).connect().await?;
    let mut huge = br#"{"seq":1,"ts_ms":1,"lat":1.0,"lon":1.0,"pad":""#.to_vec();
    huge.resize(2000, b'x');
    huge.extend_from_slice(br#""}"#);
    taxi.publish("taxi/taxi-1/position", 1, false, &huge)
        .await?;
    taxi.expect_disconnected().await?;
    taxi.drain();
    assert!(
        !taxi
            .seen()
            .iter()
            .any(|e| matches!(e, Event::PubAck { .. })),
        "an oversized publish must not be acknowledged: {:?}",
        taxi.seen()
    );

    // A header announcing 100 MB is refused at once, without waiting for the body.
    let mut greedy = broker.raw(&pki.client("taxi-2", "taxi")?).await?;
    greedy.send(&raw::connect("taxi-2", true, 30)).await?;
    let connack = greedy.read_packet(WAIT).await?;
    assert_eq!(connack.map(|p| p.kind), Some(raw::CONNACK));
    greedy.send(&raw::publish_header(100_000_000)).await?;
    greedy
        .read_until_closed(WAIT)
        .await
        .context("a 100 MB announcement must close the connection")?;

    // Everyone else is still served, the same taxi included.
    let mut taxi = broker.client(&taxi_cert).connect().await?;
    let marker = position_json(2);
    taxi.publish_acked("taxi/taxi-1/position", false, &marker)
        .await?;
    operator
        .expect_message("taxi/taxi-1/position", &marker)
        .await?;
    assert!(
        operator.messages().iter().all(|m| m.payload != huge),
        "the oversized publish was delivered"
    );
    assert_eq!(broker.health().await?["status"], "ok");
    Ok(())
}
