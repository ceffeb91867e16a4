//! Durable while running: no QoS 1 message the broker acknowledged is lost for a durable
//! subscriber (a persistent session with a QoS 1 subscription, or a shared group with such a
//! member) when it falls further behind than the router's in-memory log holds. The log
//! spills to disk (the spill area) and reads it back as the subscriber catches up; when the
//! spill area is full (or off) the publishers are slowed down instead (their PUBACKs wait).
//! What a subscriber that is not durable loses is counted in `/metrics`.
//!
//! The broker runs with a small log (64 KiB x 4 segments per filter), so that a few
//! megabytes published as fast as possible overflow it many times.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tests::bridge_process::BridgeProcess;
use tests::platform::{
    bounded, drive, expected_keys, home, ids, wait_for_positions, Platform, Taxi,
};
use tests::raw::{self, RawClient};
use tests::{Event, Message, MqttClient, TestBroker, TestPki};

/// Taxis publishing at once.
const PUBLISHERS: usize = 20;
/// Messages each taxi publishes (more than rumqttc queues and keeps in flight, 200).
const PER_PUBLISHER: usize = 250;
/// Payload size: 5,000 messages of 1 KiB are about 20 times the log.
const PAYLOAD: usize = 1024;
/// How long everything may take once it is under way.
const DELIVERY: Duration = Duration::from_secs(15);
const FILTER: &str = "taxi/+/position";

/// Bytes of one in-memory segment of the test broker's logs.
const SEGMENT: usize = 64 * 1024;

/// The spill area of a test broker.
#[derive(Clone, Copy, Debug)]
enum Spill {
    /// None: a full log holds its publishers at once.
    Off,
    /// The default budget (gigabytes): never full here.
    Default,
    /// Room for about one segment.
    Tiny,
}

async fn small_log_broker(pki: &TestPki, spill: Spill) -> Result<TestBroker> {
    TestBroker::start_with(pki, |config| {
        // The spill area of memory durability (in disk durability the log directory plays
        // its part: tests/tests/broker_crash.rs).
        config.router.durability = broker::config::Durability::Memory;
        config.router.max_segment_size = SEGMENT;
        config.router.max_segment_count = 4;
        match spill {
            Spill::Off => config.router.spill_max_bytes = 0,
            Spill::Default => {}
            // The smallest budget the configuration accepts; a spilled segment takes a
            // little more than its size, so one fits, not two.
            Spill::Tiny => config.router.spill_max_bytes = 2 * SEGMENT as u64,
        }
    })
    .await
}

/// Spill files in the broker's spill area.
fn spill_files(broker: &TestBroker) -> Result<usize> {
    let entries = std::fs::read_dir(broker.spill_dir())
        .with_context(|| format!("listing {}", broker.spill_dir().display()))?;
    let mut count = 0;
    for entry in entries {
        if entry?.file_name().to_string_lossy().ends_with(".seg") {
            count += 1;
        }
    }
    Ok(count)
}

/// Waits until the spill area is empty again (`broker_spill_bytes` 0, no spill file).
async fn wait_for_empty_spill_area(broker: &TestBroker) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let bytes = broker.metric("broker_spill_bytes", &[]).await?;
        let files = spill_files(broker)?;
        if bytes == 0.0 && files == 0 {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the spill area still holds {bytes} bytes in {files} files"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `<taxi>:<seq>:` padded to [`PAYLOAD`] bytes.
fn payload(taxi: &str, seq: usize) -> Vec<u8> {
    let mut payload = format!("{taxi}:{seq:06}:").into_bytes();
    payload.resize(PAYLOAD, b'x');
    payload
}

fn parse(message: &Message) -> Result<(String, usize)> {
    let text = String::from_utf8_lossy(&message.payload);
    let mut parts = text.splitn(3, ':');
    let (Some(taxi), Some(seq)) = (parts.next(), parts.next()) else {
        bail!("unexpected payload on {}", message.topic);
    };
    Ok((taxi.to_owned(), seq.parse().context("sequence number")?))
}

/// Publishes [`PER_PUBLISHER`] QoS 1 messages as fast as rumqttc sends them, counting the
/// PUBACKs in `acked` as they arrive; ends when all are acknowledged.
async fn publish_all(mut taxi: MqttClient, acked: Arc<AtomicUsize>) -> Result<()> {
    let id = taxi.client_id().to_owned();
    let topic = format!("taxi/{id}/position");
    let mut counted = 0;
    let mut count_acks = |taxi: &mut MqttClient| {
        taxi.drain();
        let seen = taxi.seen();
        let new = seen[counted..]
            .iter()
            .filter(|event| matches!(event, Event::PubAck { .. }))
            .count();
        counted = seen.len();
        acked.fetch_add(new, Ordering::SeqCst);
        new
    };
    for seq in 0..PER_PUBLISHER {
        taxi.publish(&topic, 1, false, &payload(&id, seq)).await?;
        count_acks(&mut taxi);
    }
    let mut mine = taxi
        .seen()
        .iter()
        .filter(|event| matches!(event, Event::PubAck { .. }))
        .count();
    while mine < PER_PUBLISHER {
        taxi.expect("PUBACK", DELIVERY, |event| {
            matches!(event, Event::PubAck { .. }).then_some(())
        })
        .await?;
        mine += 1;
        acked.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// Connects the taxis and starts them publishing; returns their tasks.
async fn start_publishers(
    broker: &TestBroker,
    pki: &TestPki,
    acked: &Arc<AtomicUsize>,
) -> Result<Vec<tokio::task::JoinHandle<Result<()>>>> {
    let mut taxis = Vec::new();
    for n in 0..PUBLISHERS {
        let cert = pki.client(&format!("taxi-{n}"), "taxi")?;
        taxis.push(broker.client(&cert).connect().await?);
    }
    Ok(taxis
        .into_iter()
        .map(|taxi| tokio::spawn(publish_all(taxi, acked.clone())))
        .collect())
}

async fn wait_for_publishers(tasks: Vec<tokio::task::JoinHandle<Result<()>>>) -> Result<()> {
    for task in tasks {
        task.await.context("publisher task")??;
    }
    Ok(())
}

/// Every message of every taxi exactly once, each taxi's in the order published.
fn check_complete(received: &[Message]) -> Result<()> {
    let mut by_taxi: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for message in received {
        let (taxi, seq) = parse(message)?;
        ensure!(
            message.topic == format!("taxi/{taxi}/position"),
            "{taxi}'s message on {}",
            message.topic
        );
        by_taxi.entry(taxi).or_default().push(seq);
    }
    let expected: Vec<usize> = (0..PER_PUBLISHER).collect();
    let incomplete: Vec<String> = by_taxi
        .iter()
        .filter(|(_, seqs)| **seqs != expected)
        .map(|(taxi, seqs)| {
            let first_gap = (0..PER_PUBLISHER).find(|n| seqs.get(*n) != Some(n));
            format!(
                "{taxi}: {} messages, first difference at {first_gap:?}",
                seqs.len()
            )
        })
        .collect();
    ensure!(
        by_taxi.len() == PUBLISHERS && incomplete.is_empty(),
        "{} messages from {} taxis; expected {PER_PUBLISHER} from each of {PUBLISHERS}, in \
         order, once: {incomplete:?}",
        received.len(),
        by_taxi.len()
    );
    Ok(())
}

/// Receives publishes until `total` have arrived (acknowledging them in rounds of `round`,
/// pausing `pause` after each, with manual acks), or fails after [`DELIVERY`].
async fn receive(
    subscriber: &mut MqttClient,
    total: usize,
    manual: Option<(usize, Duration)>,
) -> Result<Vec<Message>> {
    let mut received = Vec::with_capacity(total);
    let mut unacked = Vec::new();
    let deadline = tokio::time::Instant::now() + DELIVERY;
    while received.len() < total {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = subscriber
            .expect("a position", left, |event| match event {
                Event::Publish(message) => Some(message.clone()),
                _ => None,
            })
            .await
            .with_context(|| {
                format!(
                    "{} of {total} messages delivered within {DELIVERY:?}",
                    received.len()
                )
            })?;
        if let Some((round, pause)) = manual {
            unacked.push(message.clone());
            if unacked.len() >= round {
                tokio::time::sleep(pause).await;
                for message in unacked.drain(..) {
                    subscriber.ack(&message).await?;
                }
            }
        }
        received.push(message);
    }
    for message in unacked.drain(..) {
        subscriber.ack(&message).await?;
    }
    // Nothing more comes: no duplicates, nothing from elsewhere.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra: Vec<Message> = subscriber
        .messages()
        .into_iter()
        .skip(received.len())
        .collect();
    ensure!(
        extra.is_empty(),
        "{} messages more than published, first {:?}",
        extra.len(),
        extra.first()
    );
    Ok(received)
}

/// Without a spill area, a persistent subscriber is away while the taxis publish 20 times
/// what the log holds: the taxis wait for their PUBACKs, and when it comes back it gets every
/// message, once, in order. Meanwhile `/metrics` shows its lag and the back-pressure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spill_a_persistent_subscriber_away_holds_the_publishers_and_gets_everything(
) -> Result<()> {
    let pki = TestPki::new()?;
    let broker = small_log_broker(&pki, Spill::Off).await?;
    let bridge_cert = pki.client("bridge", "bridge")?;
    let mut bridge = broker
        .client(&bridge_cert)
        .clean_session(false)
        .connect()
        .await?;
    bridge.subscribe_and_wait(&[(FILTER, 1)]).await?;
    bridge.disconnect().await?;

    let acked = Arc::new(AtomicUsize::new(0));
    let publishers = start_publishers(&broker, &pki, &acked).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked_while_away = acked.load(Ordering::SeqCst);
    let lag = broker
        .metric(
            "broker_durable_lag_messages",
            &[("subscriber", "bridge"), ("filter", FILTER)],
        )
        .await?;
    let held = broker
        .metric("broker_backpressure_events_total", &[])
        .await?;

    let mut bridge = broker.client(&bridge_cert).clean_session(false).start()?;
    let session_present = bridge.expect_connack().await?;
    let total = PUBLISHERS * PER_PUBLISHER;
    let received = receive(&mut bridge, total, None).await?;
    wait_for_publishers(publishers).await?;

    check_complete(&received)?;
    assert!(session_present, "the bridge's session was kept");
    assert!(
        acked_while_away < total,
        "all {total} messages were acknowledged while the only subscriber was away: the log \
         cannot have held them"
    );
    assert!(
        lag > 0.0,
        "the away subscriber's lag is exported (got {lag})"
    );
    assert!(held > 0.0, "back-pressure events are counted (got {held})");
    assert_eq!(
        acked.load(Ordering::SeqCst),
        total,
        "every publish is acknowledged in the end"
    );
    Ok(())
}

/// Without a spill area, a persistent subscriber reads slowly (acknowledging in rounds) while
/// a clean-session QoS 0 subscriber stops reading altogether: the slow one gets everything;
/// the other one's losses are counted in `/metrics` instead of slowing everyone down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_persistent_subscriber_gets_everything_and_a_stalled_clean_one_loses_counted_messages(
) -> Result<()> {
    let pki = TestPki::new()?;
    let broker = small_log_broker(&pki, Spill::Off).await?;

    let mut bridge = broker
        .client(&pki.client("bridge", "bridge")?)
        .clean_session(false)
        .manual_acks()
        .connect()
        .await?;
    bridge.subscribe_and_wait(&[(FILTER, 1)]).await?;

    // Subscribes at QoS 0 with a clean session, then never reads again.
    let tap_cert = pki.client("tap", "bridge")?;
    let mut tap =
        RawClient::connect_with_receive_buffer(broker.mqtt_addr, pki.ca_pem(), &tap_cert, 4096)
            .await?;
    tap.send(&raw::connect("tap", true, 60)).await?;
    let connack = tap.read_packet(Duration::from_secs(10)).await?;
    ensure!(
        connack.as_ref().map(|p| p.kind) == Some(raw::CONNACK),
        "{connack:?}"
    );
    tap.send(&raw::subscribe(1, FILTER, 0)).await?;
    let suback = tap.read_packet(Duration::from_secs(10)).await?;
    ensure!(
        suback.as_ref().map(|p| p.kind) == Some(raw::SUBACK),
        "{suback:?}"
    );

    let acked = Arc::new(AtomicUsize::new(0));
    let publishers = start_publishers(&broker, &pki, &acked).await?;
    let total = PUBLISHERS * PER_PUBLISHER;
    let received = receive(&mut bridge, total, Some((50, Duration::from_millis(5)))).await?;
    wait_for_publishers(publishers).await?;
    check_complete(&received)?;
    assert_eq!(acked.load(Ordering::SeqCst), total);

    let dropped = broker
        .wait_for_metric(
            "broker_messages_dropped_total",
            &[("reason", "clean_session")],
            1.0,
            Duration::from_secs(5),
        )
        .await?;
    let durable_dropped = broker
        .metric("broker_messages_dropped_total", &[("reason", "durable")])
        .await?;
    let held = broker
        .metric("broker_backpressure_events_total", &[])
        .await?;
    assert!(
        held > 0.0,
        "the slow subscriber held the publishers back at times"
    );
    assert_eq!(
        durable_dropped, 0.0,
        "nothing is dropped for a durable subscriber"
    );
    assert!(
        dropped < total as f64,
        "the stalled subscriber lost {dropped} of {total}"
    );
    drop(tap);
    Ok(())
}

/// A shared group whose members have persistent sessions (the bridge's kind) is durable too:
/// both members are away while the taxis publish 20 times what the log holds; the log spills
/// to disk and the taxis do not wait. When the members come back, the group gets every
/// message (a shared group may deliver one twice, never none), and the spill files go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_of_persistent_members_away_gets_every_acknowledged_message() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = small_log_broker(&pki, Spill::Default).await?;
    let cert = pki.client("bridge", "bridge")?;
    let group_filter = format!("$share/ingest/{FILTER}");
    let members = ["bridge.b1-0", "bridge.b1-1"];
    for member in members {
        let mut client = broker
            .client(&cert)
            .client_id(member)
            .clean_session(false)
            .connect()
            .await?;
        client.subscribe_and_wait(&[(&group_filter, 1)]).await?;
        client.disconnect().await?;
    }

    let acked = Arc::new(AtomicUsize::new(0));
    let publishers = start_publishers(&broker, &pki, &acked).await?;
    tokio::time::timeout(DELIVERY, wait_for_publishers(publishers))
        .await
        .context("the taxis were held although the log can spill")??;
    let acked_while_away = acked.load(Ordering::SeqCst);
    let spilled = broker.metric("broker_spill_bytes", &[]).await?;
    let lag = broker
        .wait_for_metric(
            "broker_durable_lag_messages",
            &[("subscriber", "$share/ingest"), ("filter", FILTER)],
            1.0,
            Duration::from_secs(5),
        )
        .await?;

    let mut clients = Vec::new();
    for member in members {
        let mut client = broker
            .client(&cert)
            .client_id(member)
            .clean_session(false)
            .start()?;
        assert!(
            client.expect_connack().await?,
            "{member}'s session was kept"
        );
        clients.push(client);
    }
    let total = PUBLISHERS * PER_PUBLISHER;
    let deadline = tokio::time::Instant::now() + DELIVERY;
    let mut distinct = std::collections::BTreeSet::new();
    while distinct.len() < total {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the group got {} of {total} messages within {DELIVERY:?}",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        distinct.clear();
        for client in &mut clients {
            for message in client.messages() {
                distinct.insert(parse(&message)?);
            }
        }
    }

    let expected: std::collections::BTreeSet<(String, usize)> = (0..PUBLISHERS)
        .flat_map(|n| (0..PER_PUBLISHER).map(move |seq| (format!("taxi-{n}"), seq)))
        .collect();
    assert_eq!(distinct, expected, "every message of every taxi");
    assert_eq!(
        acked_while_away, total,
        "every message was acknowledged while the group was away"
    );
    assert!(
        spilled > 0.0,
        "the log spilled to disk (got {spilled} bytes)"
    );
    assert!(lag > 0.0, "the away group's lag is exported (got {lag})");
    let held = broker
        .metric("broker_backpressure_events_total", &[])
        .await?;
    assert_eq!(held, 0.0, "no publisher was held");
    wait_for_empty_spill_area(&broker).await?;
    Ok(())
}

/// A persistent subscriber is away while the taxis publish 20 times what the in-memory log
/// holds: the log spills to disk, so the taxis are not held (every PUBACK arrives while the
/// subscriber is away, and `/metrics` counts no back-pressure). When it comes back it gets
/// every message, once, in order per taxi, read back from disk; once it has read and
/// acknowledged them, the spill files are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_subscriber_away_gets_everything_from_the_spill_area_and_nobody_waits(
) -> Result<()> {
    let pki = TestPki::new()?;
    let broker = small_log_broker(&pki, Spill::Default).await?;
    let bridge_cert = pki.client("bridge", "bridge")?;
    let mut bridge = broker
        .client(&bridge_cert)
        .clean_session(false)
        .connect()
        .await?;
    bridge.subscribe_and_wait(&[(FILTER, 1)]).await?;
    bridge.disconnect().await?;

    let acked = Arc::new(AtomicUsize::new(0));
    let publishers = start_publishers(&broker, &pki, &acked).await?;
    let started = std::time::Instant::now();
    tokio::time::timeout(DELIVERY, wait_for_publishers(publishers))
        .await
        .context("the taxis were held although the log can spill")??;
    let publish_time = started.elapsed();
    let total = PUBLISHERS * PER_PUBLISHER;
    assert_eq!(
        acked.load(Ordering::SeqCst),
        total,
        "every message acknowledged"
    );
    let held = broker
        .metric("broker_backpressure_events_total", &[])
        .await?;
    let spilled = broker.metric("broker_spill_bytes", &[]).await?;
    let segments = broker.metric("broker_spill_segments_total", &[]).await?;
    let files = spill_files(&broker)?;
    eprintln!(
        "{total} messages of {PAYLOAD} B acknowledged in {publish_time:?} with the subscriber \
         away; {spilled} bytes in {files} spill files ({segments} segments spilled)"
    );
    assert_eq!(held, 0.0, "no publisher was held");
    // 5 MB published; the log keeps 256 KiB in memory.
    assert!(
        spilled > (total * PAYLOAD / 2) as f64,
        "most of it is on disk (got {spilled} bytes)"
    );
    assert!(files > 0 && segments >= files as f64);

    let mut bridge = broker.client(&bridge_cert).clean_session(false).start()?;
    assert!(
        bridge.expect_connack().await?,
        "the bridge's session was kept"
    );
    let received = receive(&mut bridge, total, None).await?;
    check_complete(&received)?;
    let read_back = broker
        .metric("broker_spill_read_segments_total", &[])
        .await?;
    assert!(
        read_back >= segments,
        "each spilled segment was read back ({read_back} of {segments})"
    );
    assert_eq!(
        broker
            .metric("broker_messages_dropped_total", &[("reason", "durable")])
            .await?,
        0.0
    );
    wait_for_empty_spill_area(&broker).await?;
    assert!(
        broker
            .metric("broker_spill_deleted_segments_total", &[])
            .await?
            >= segments
    );
    Ok(())
}

/// With a spill area too small for the backlog, a persistent subscriber away holds the taxis
/// once the log and the area are full (back-pressure in `/metrics`); when it comes back it
/// gets every message, once, in order: nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spill_area_slows_the_publishers_and_loses_nothing() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = small_log_broker(&pki, Spill::Tiny).await?;
    let bridge_cert = pki.client("bridge", "bridge")?;
    let mut bridge = broker
        .client(&bridge_cert)
        .clean_session(false)
        .connect()
        .await?;
    bridge.subscribe_and_wait(&[(FILTER, 1)]).await?;
    bridge.disconnect().await?;

    let acked = Arc::new(AtomicUsize::new(0));
    let publishers = start_publishers(&broker, &pki, &acked).await?;
    let held = broker
        .wait_for_metric(
            "broker_backpressure_events_total",
            &[],
            1.0,
            Duration::from_secs(10),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked_while_away = acked.load(Ordering::SeqCst);
    let spilled = broker.metric("broker_spill_bytes", &[]).await?;
    let total = PUBLISHERS * PER_PUBLISHER;
    eprintln!("held with {acked_while_away} of {total} acknowledged, {spilled} bytes spilled");
    assert!(spilled > 0.0, "the log spilled before holding");
    assert!(
        spilled <= (2 * SEGMENT) as f64,
        "within the budget: {spilled} bytes"
    );
    assert!(
        acked_while_away < total,
        "all {total} messages were acknowledged while the only subscriber was away"
    );

    let mut bridge = broker.client(&bridge_cert).clean_session(false).start()?;
    assert!(
        bridge.expect_connack().await?,
        "the bridge's session was kept"
    );
    let received = receive(&mut bridge, total, None).await?;
    wait_for_publishers(publishers).await?;
    check_complete(&received)?;
    assert!(held > 0.0);
    assert_eq!(acked.load(Ordering::SeqCst), total);
    assert_eq!(
        broker
            .metric("broker_messages_dropped_total", &[("reason", "durable")])
            .await?,
        0.0
    );
    wait_for_empty_spill_area(&broker).await?;
    Ok(())
}

/// Every bridge is stopped (SIGKILL) while taxis publish several times what the router's
/// in-memory log holds; the bridges start again: PostgreSQL holds every acknowledged position
/// exactly once. With the default spill area the taxis are not slowed down; with one too
/// small they are (back-pressure), and still nothing is lost.
async fn positions_published_while_every_bridge_is_stopped_are_stored_once(
    spill: Spill,
) -> Result<()> {
    const TAXIS: usize = 5;
    const POSITIONS: u64 = 2000;
    bounded(Duration::from_secs(150), async {
        let pki = TestPki::new()?;
        let broker = small_log_broker(&pki, spill).await?;
        let platform = Platform::with_broker(pki, broker).await?;
        let archive = platform.embedded_archive("s3");
        let mut first = BridgeProcess::spawn(&platform.bridge_config("b1", archive.clone()))?;
        let mut second = BridgeProcess::spawn(&platform.bridge_config("b2", archive))?;
        first.wait_ready().await?;
        second.wait_ready().await?;
        platform.wait_until_consuming().await?;
        first.kill().await?;
        second.kill().await?;

        let mut drives = Vec::new();
        for n in 1..=TAXIS {
            let taxi: Taxi = platform.taxi(&format!("taxi-{n}")).await?;
            drives.push(tokio::spawn(drive(taxi, home(n), 1..=POSITIONS, None)));
        }
        // About 130 bytes a position on disk: 1.3 MB, five times the in-memory log.
        let broker = &platform.broker;
        match spill {
            Spill::Tiny | Spill::Off => {
                broker
                    .wait_for_metric(
                        "broker_backpressure_events_total",
                        &[],
                        1.0,
                        Duration::from_secs(30),
                    )
                    .await?;
            }
            _ => {
                for drive in &drives {
                    while !drive.is_finished() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        let spilled = broker.metric("broker_spill_bytes", &[]).await?;
        let finished = drives.iter().filter(|d| d.is_finished()).count();
        eprintln!("bridges stopped: {spilled} bytes spilled, {finished} of {TAXIS} taxis done");
        if !matches!(spill, Spill::Off) {
            assert!(spilled > 0.0, "the log spilled to disk");
        }

        first.start()?;
        second.start()?;
        first.wait_ready().await?;
        second.wait_ready().await?;
        let mut taxis = Vec::new();
        for drive in drives {
            taxis.push(drive.await.context("a taxi task failed")??);
        }

        let expected: Vec<(String, i64)> = expected_keys(&taxis).into_iter().collect();
        let ids = ids(&taxis);
        let arrived = wait_for_positions(&platform.database_url(), &ids, expected.len()).await;
        let db = platform.db().await?;
        let stored = db.position_rows(&ids).await?;
        let duplicates = db.duplicate_position_keys().await?;
        if stored != expected {
            let stored: std::collections::BTreeSet<&(String, i64)> = stored.iter().collect();
            let missing: Vec<&(String, i64)> = expected
                .iter()
                .filter(|key| !stored.contains(key))
                .collect();
            let metrics = broker.metrics().await?;
            let broker_lines: Vec<&str> = metrics
                .lines()
                .filter(|line| {
                    line.starts_with("broker_spill")
                        || line.starts_with("broker_messages_dropped")
                        || line.starts_with("broker_backpressure")
                })
                .collect();
            let letters: Vec<(String, i64)> = db
                .rows(
                    "SELECT reason_code, count(*) FROM dead_letters GROUP BY reason_code",
                    &[],
                )
                .await?;
            bail!(
                "{} rows stored for {} positions published, {duplicates} keys twice, dead letters \
                 {letters:?}, missing {missing:?} ({arrived:?}); {broker_lines:?}",
                stored.len(),
                expected.len()
            );
        }
        assert_eq!(duplicates, 0, "(taxi, seq) keys stored more than once");
        assert_eq!(
            db.count("SELECT count(*) FROM dead_letters", &[]).await?,
            0,
            "every position was valid"
        );
        let held = broker
            .metric("broker_backpressure_events_total", &[])
            .await?;
        match spill {
            Spill::Tiny | Spill::Off => assert!(held > 0.0, "the taxis were slowed down"),
            _ => assert_eq!(held, 0.0, "the taxis did not wait for the bridges"),
        }
        assert_eq!(
            broker
                .metric("broker_messages_dropped_total", &[("reason", "durable")])
                .await?,
            0.0
        );
        wait_for_empty_spill_area(broker).await?;
        first.ensure_running()?;
        second.ensure_running()?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bridge_stopped_spilled_positions_are_stored_once() -> Result<()> {
    positions_published_while_every_bridge_is_stopped_are_stored_once(Spill::Default).await
}

/// The same with a spill area too small for the backlog: the taxis are held back (no PUBACK,
/// their sockets not read) until the bridges catch up, and still every position is stored
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bridge_stopped_with_a_full_spill_area_slows_the_taxis_and_stores_every_position_once(
) -> Result<()> {
    positions_published_while_every_bridge_is_stopped_are_stored_once(Spill::Tiny).await
}

/// The same with spilling off: the in-memory log alone, and the taxis held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bridge_stopped_without_spill_slows_the_taxis_and_stores_every_position_once(
) -> Result<()> {
    positions_published_while_every_bridge_is_stopped_are_stored_once(Spill::Off).await
}
