//! Crash durability: the broker runs as a process with `router.durability = "disk"` and is
//! killed with SIGKILL while clients publish, then started again on the same configuration,
//! log directory and ports. A PUBACK means the message is on disk, so:
//!
//! - every acknowledged QoS 1 message still reaches the durable subscribers (persistent
//!   sessions with QoS 1 subscriptions, MQTT 3.1.1 and 5, and the bridges' shared group): at
//!   least once, duplicates allowed, none missing;
//! - persistent sessions come back (CONNACK session_present, subscriptions kept without
//!   subscribing again), and so do retained messages;
//! - a torn or garbled tail of a segment file is cut at start (counted in
//!   `broker_log_truncated_bytes_total`) and never delivered.
//!
//! The tests run the `broker` and `bridge` programs next to the test executable: build them
//! first with the same profile (`cargo build -p broker -p bridge`), or run the whole
//! workspace's tests, which builds them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tests::bridge_process::BridgeProcess;
use tests::broker::MqttBroker;
use tests::broker_process::{AckedPublisher, BrokerProcess, Durability};
use tests::pki::ClientCert;
use tests::platform::{
    along, bounded, eventually, fix_time, flow_metrics, home, position, Platform, Progress, ARRIVAL,
};
use tests::{status_state, Event, Message, MqttClient, TestPki, Version, WAIT};

/// The publishing taxi of the subscriber tests and its topic.
const TAXI: &str = "taxi-1";
const TOPIC: &str = "taxi/taxi-1/position";
/// Bytes of a test payload.
const PAYLOAD: usize = 96;
/// How long the durable subscribers may take to get everything after the restart.
const DELIVERY: Duration = Duration::from_secs(30);

/// The payload of message `seq`: the number, then letters that depend on it, so that a
/// message delivered with a byte changed, cut or from another message is told apart.
fn payload(seq: u64) -> Vec<u8> {
    let mut payload = format!("{seq:08}:").into_bytes();
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while payload.len() < PAYLOAD {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        payload.push(b'a' + (x % 26) as u8);
    }
    payload
}

/// The number of a delivered message, which must be exactly as published.
fn seq_of(message: &Message) -> Result<u64> {
    ensure!(
        message.topic == TOPIC,
        "a message on {} ({message:?})",
        message.topic
    );
    let text = String::from_utf8_lossy(&message.payload);
    let seq: u64 = text
        .get(..8)
        .and_then(|digits| digits.parse().ok())
        .with_context(|| format!("a garbled message: {message:?}"))?;
    ensure!(
        message.payload == payload(seq),
        "a garbled message {seq}: {message:?}"
    );
    Ok(seq)
}

/// How often each message number arrived.
fn count(messages: &[Message]) -> Result<BTreeMap<u64, usize>> {
    let mut counts = BTreeMap::new();
    for message in messages {
        *counts.entry(seq_of(message)?).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Numbers as ranges, `3-7, 9`, the first `limit` of them: readable failure messages.
fn ranges(numbers: &BTreeSet<u64>, limit: usize) -> String {
    let mut parts = Vec::new();
    let mut iter = numbers.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    let total = parts.len();
    parts.truncate(limit);
    let more = if total > limit {
        format!(" and {} more ranges", total - limit)
    } else {
        String::new()
    };
    format!("{}{more}", parts.join(", "))
}

/// A durable subscriber: a persistent session (clean_session = false, or MQTT 5 with a
/// session that never expires) of the bridge identity with a QoS 1 subscription.
struct Durable {
    client_id: &'static str,
    version: Version,
    cert: ClientCert,
    /// What it received on its previous connections.
    received: Vec<Message>,
}

impl Durable {
    /// Connects and subscribes to `filter` with QoS 1.
    async fn subscribe(
        broker: &impl MqttBroker,
        cert: &ClientCert,
        client_id: &'static str,
        version: Version,
        filter: &str,
    ) -> Result<(Durable, MqttClient)> {
        let mut client = broker
            .client(cert)
            .client_id(client_id)
            .version(version)
            .clean_session(false)
            .connect()
            .await?;
        let codes = client.subscribe_and_wait(&[(filter, 1)]).await?;
        ensure!(codes == [1], "{client_id}: {filter} granted {codes:?}");
        let durable = Durable {
            client_id,
            version,
            cert: cert.clone(),
            received: Vec::new(),
        };
        Ok((durable, client))
    }

    /// Keeps what a connection received (it has ended or is ended now).
    async fn keep(&mut self, mut client: MqttClient) {
        let _ = client
            .expect_disconnected_within(Duration::from_secs(5))
            .await;
        self.received.extend(client.messages());
    }

    /// Connects again with its session, without subscribing; returns the client and
    /// CONNACK's session_present.
    async fn reconnect(&self, broker: &impl MqttBroker) -> Result<(MqttClient, bool)> {
        let mut client = broker
            .client(&self.cert)
            .client_id(self.client_id)
            .version(self.version)
            .clean_session(false)
            .start()?;
        let session_present = client
            .expect_connack()
            .await
            .with_context(|| format!("{} connecting again", self.client_id))?;
        Ok((client, session_present))
    }

    /// Waits (at most [`DELIVERY`]) until this and the previous connections together have
    /// received every message of `expected`; returns how often each arrived.
    async fn receive_all(
        &self,
        client: &mut MqttClient,
        expected: &BTreeSet<u64>,
    ) -> Result<BTreeMap<u64, usize>> {
        let deadline = tokio::time::Instant::now() + DELIVERY;
        loop {
            let mut all = self.received.clone();
            all.extend(client.messages());
            let counts = count(&all)?;
            let missing: BTreeSet<u64> = expected
                .iter()
                .filter(|seq| !counts.contains_key(seq))
                .copied()
                .collect();
            if missing.is_empty() {
                return Ok(counts);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: {} of {} acknowledged messages never arrived within {DELIVERY:?} after \
                     the restart (received {} before the kill, {} after): {}",
                    self.client_id,
                    missing.len(),
                    expected.len(),
                    self.received.len(),
                    all.len() - self.received.len(),
                    ranges(&missing, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a failing test shows of the broker: its log metrics, warnings, the files of its log
/// directory and what it logged since its latest start.
async fn broker_report(broker: &BrokerProcess) -> String {
    let warnings = broker.warnings();
    let shown = warnings.len().min(40);
    let since_start = broker.log_since_start();
    let lines: Vec<&str> = since_start.lines().collect();
    format!(
        "broker metrics:\n{}\nbroker warnings ({} of {}):\n{}\nlog directory: {:?}\nbroker log \
         since its latest start (last 40 lines):\n{}",
        broker.log_metrics().await,
        shown,
        warnings.len(),
        warnings[warnings.len() - shown..].join("\n"),
        broker.log_dir_listing(),
        lines[lines.len().saturating_sub(40)..].join("\n")
    )
}

/// Messages the taxi streams in the kill test (it is killed long before the end).
const STREAM: u64 = 200_000;
/// The broker is killed once this many are acknowledged.
const KILL_AFTER: usize = 3_000;

/// A taxi streams QoS 1 messages to two durable subscribers (MQTT 3.1.1 and 5) and the
/// broker is killed mid-stream; after the restart both subscribers come back with their
/// sessions (session_present, no new SUBSCRIBE) and get every message that had a PUBACK,
/// exactly as published, and then what is published after the restart. A taxi's retained
/// status from before the kill is there for a new subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_sessions_and_retained_status_survive_a_kill() -> Result<()> {
    bounded(Duration::from_secs(150), async {
        let pki = TestPki::new()?;
        let mut broker = BrokerProcess::start(&pki, Durability::Disk).await?;
        let bridge = pki.client("bridge", "bridge")?;
        let mut durables = Vec::new();
        let mut first = Vec::new();
        for (client_id, version) in [
            ("bridge.crash-v311", Version::V311),
            ("bridge.crash-v5", Version::V5),
        ] {
            let (durable, client) =
                Durable::subscribe(&broker, &bridge, client_id, version, TOPIC).await?;
            durables.push(durable);
            first.push(client);
        }

        // A retained status: the taxi's own, then the broker's `offline` when it leaves.
        let status_topic = "taxi/taxi-s/status";
        let backoffice = pki.client("backoffice", "backoffice")?;
        let mut watcher = broker.client(&backoffice).connect().await?;
        watcher.subscribe_and_wait(&[(status_topic, 1)]).await?;
        let mut status_taxi = broker
            .client(&pki.client("taxi-s", "taxi")?)
            .connect()
            .await?;
        let own_status = br#"{"state":"online","at_ms":1700000000000}"#;
        status_taxi
            .publish_acked(status_topic, true, own_status)
            .await?;
        status_taxi.disconnect().await?;
        watcher
            .expect("the broker's offline status", WAIT, |event| match event {
                Event::Publish(message)
                    if message.topic == status_topic
                        && status_state(&message.payload).ok().as_deref() == Some("offline") =>
                {
                    Some(())
                }
                _ => None,
            })
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let retained = watcher
            .messages_on(status_topic)
            .last()
            .map(|message| message.payload.clone())
            .context("no status seen")?;
        watcher.disconnect().await?;

        // The stream, and the kill in its middle.
        let taxi = pki.client(TAXI, "taxi")?;
        let publisher = Arc::new(AckedPublisher::connect(&broker, &taxi).await?);
        let stream = tokio::spawn({
            let publisher = publisher.clone();
            async move {
                for seq in 0..STREAM {
                    if publisher
                        .publish(TOPIC, false, &payload(seq), seq)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        eventually(
            "messages acknowledged before the kill",
            DELIVERY,
            || async {
                let acked = publisher.acked_count();
                Ok(if acked >= KILL_AFTER {
                    Progress::Done(())
                } else {
                    Progress::Waiting(format!("{acked} acknowledged"))
                })
            },
        )
        .await?;
        let before_kill = broker_report(&broker).await;
        broker.kill().await?;
        tokio::time::timeout(WAIT, stream)
            .await
            .context("the publisher did not stop after the kill")??;
        let acked = publisher.acked();
        let sent = publisher.sent();
        ensure!(
            (acked.len() as u64) < STREAM,
            "every message was acknowledged before the kill: not a kill mid-stream"
        );
        for (durable, client) in durables.iter_mut().zip(first) {
            durable.keep(client).await;
        }
        eprintln!(
            "killed with {} of {} sent messages acknowledged; received before the kill: {:?}",
            acked.len(),
            sent.len(),
            durables
                .iter()
                .map(|d| (d.client_id, d.received.len()))
                .collect::<Vec<_>>()
        );

        broker.start_again().await?;
        let recovered = broker
            .metric("broker_log_recovered_messages_total", &[])
            .await?;
        let mut second = Vec::new();
        for durable in &durables {
            let (client, session_present) = durable.reconnect(&broker).await?;
            ensure!(
                session_present,
                "{}: the session did not survive the kill (session_present false)",
                durable.client_id
            );
            second.push(client);
        }
        for (durable, client) in durables.iter().zip(second.iter_mut()) {
            let counts = match durable.receive_all(client, &acked).await {
                Ok(counts) => counts,
                Err(e) => bail!(
                    "{e:#}\nrecovered messages {recovered}\nbefore the kill: {before_kill}\n\
                     after the restart: {}",
                    broker_report(&broker).await
                ),
            };
            let unknown: BTreeSet<u64> = counts
                .keys()
                .filter(|seq| !sent.contains(seq))
                .copied()
                .collect();
            ensure!(
                unknown.is_empty(),
                "{}: messages never sent arrived: {}",
                durable.client_id,
                ranges(&unknown, 20)
            );
            let twice = counts.values().filter(|n| **n > 1).count();
            let unacked = counts.keys().filter(|seq| !acked.contains(seq)).count();
            eprintln!(
                "{}: {} distinct messages ({twice} more than once, {unacked} sent without a \
                 PUBACK)",
                durable.client_id,
                counts.len()
            );
        }
        ensure!(
            recovered > 0.0,
            "broker_log_recovered_messages_total is {recovered} after a restart on a log of \
             {} acknowledged messages",
            acked.len()
        );

        // The subscriptions are still there: what is published now arrives too.
        let fresh: BTreeSet<u64> = (STREAM..STREAM + 20).collect();
        let publisher = AckedPublisher::connect(&broker, &taxi).await?;
        for seq in &fresh {
            publisher
                .publish(TOPIC, false, &payload(*seq), *seq)
                .await?;
        }
        publisher.wait_all_acked(WAIT).await?;
        for (durable, client) in durables.iter().zip(second.iter_mut()) {
            durable
                .receive_all(client, &fresh)
                .await
                .context("a message published after the restart")?;
        }

        // The retained status, for a new subscriber.
        let mut office = broker.client(&backoffice).connect().await?;
        office.subscribe_and_wait(&[(status_topic, 1)]).await?;
        let status = office
            .expect_publish(status_topic)
            .await
            .context("the retained status after the restart")?;
        ensure!(
            status.retain && status.payload == retained,
            "retained status after the restart: {status:?}; before the kill: {:?}",
            String::from_utf8_lossy(&retained)
        );
        broker.ensure_running()?;
        Ok(())
    })
    .await
}

/// A durable subscriber subscribes and goes away; a taxi (connected already) publishes a few
/// messages, all acknowledged, and the broker is killed right after the last PUBACK: the
/// subscription was acknowledged (SUBACK) before those messages, so they were acknowledged
/// for it and must reach it after the restart, however soon the kill came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_just_before_the_kill_keeps_what_was_acknowledged_for_it() -> Result<()>
{
    const MESSAGES: u64 = 10;
    bounded(Duration::from_secs(90), async {
        let pki = TestPki::new()?;
        let mut broker = BrokerProcess::start(&pki, Durability::Disk).await?;
        let publisher = AckedPublisher::connect(&broker, &pki.client(TAXI, "taxi")?).await?;
        let bridge = pki.client("bridge", "bridge")?;
        let (durable, client) =
            Durable::subscribe(&broker, &bridge, "bridge.quick", Version::V311, TOPIC).await?;
        client.disconnect().await?;
        for seq in 0..MESSAGES {
            publisher.publish(TOPIC, false, &payload(seq), seq).await?;
        }
        publisher.wait_all_acked(WAIT).await?;
        broker.kill().await?;
        let listing = broker.log_dir_listing();

        broker.start_again().await?;
        let (mut client, session_present) = durable.reconnect(&broker).await?;
        if !session_present {
            bail!(
                "the subscriber's session did not survive (session_present false)\nlog \
                 directory at the kill: {listing:?}\n{}",
                broker_report(&broker).await
            );
        }
        let acked: BTreeSet<u64> = (0..MESSAGES).collect();
        if let Err(e) = durable.receive_all(&mut client, &acked).await {
            bail!(
                "{e:#}\nlog directory at the kill: {listing:?}\n{}",
                broker_report(&broker).await
            );
        }
        broker.ensure_running()?;
        Ok(())
    })
    .await
}

/// Taxis of the bridge test, and positions each publishes.
const FLEET: usize = 5;
const POSITIONS: u64 = 2_000;

/// One taxi of the bridge test: its positions, encoded once (a device sends a fix again as
/// it was), JSON for odd numbers and postcard for even ones.
struct Device {
    id: String,
    cert: ClientCert,
    payloads: BTreeMap<u64, Vec<u8>>,
}

impl Device {
    fn topic(&self) -> String {
        format!("taxi/{}/position", self.id)
    }

    /// Publishes the positions `seqs` on a new connection; returns it (the publishing goes on
    /// in a task until done or the connection ends).
    async fn publish(
        &self,
        broker: &impl MqttBroker,
        seqs: Vec<u64>,
    ) -> Result<(Arc<AckedPublisher>, tokio::task::JoinHandle<()>)> {
        let publisher = Arc::new(AckedPublisher::connect(broker, &self.cert).await?);
        let payloads: Vec<(u64, Vec<u8>)> = seqs
            .into_iter()
            .map(|seq| (seq, self.payloads[&seq].clone()))
            .collect();
        let topic = self.topic();
        let task = tokio::spawn({
            let publisher = publisher.clone();
            async move {
                for (seq, payload) in payloads {
                    if publisher
                        .publish(&topic, false, &payload, seq)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        Ok((publisher, task))
    }
}

/// The real bridges (two processes, a shared group of persistent sessions) store positions
/// in PostgreSQL while the broker is killed in the middle of the taxis' stream. The taxis
/// connect again after the restart and publish what had no PUBACK, as a device does: every
/// position is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridges_store_every_position_once_across_a_broker_kill() -> Result<()> {
    bounded(Duration::from_secs(240), async {
        let pki = TestPki::new()?;
        let broker = BrokerProcess::start(&pki, Durability::Disk).await?;
        let mut platform = Platform::with_broker(pki, broker).await?;
        let archive = platform.embedded_archive("s3");
        let mut first = BridgeProcess::spawn(&platform.bridge_config("b1", archive.clone()))?;
        let mut second = BridgeProcess::spawn(&platform.bridge_config("b2", archive))?;
        first.wait_ready().await?;
        second.wait_ready().await?;
        platform.wait_until_consuming().await?;

        let now = tests::unix_ms();
        let mut fleet = Vec::new();
        for n in 1..=FLEET {
            let id = format!("taxi-{n}");
            let payloads = (1..=POSITIONS)
                .map(|seq| {
                    let fix = position(seq, fix_time(now, POSITIONS, seq), along(home(n), seq));
                    let bytes = if seq % 2 == 1 {
                        wire::encode_json(&fix)
                    } else {
                        wire::encode_postcard(&fix)
                    };
                    (seq, bytes)
                })
                .collect();
            fleet.push(Device {
                cert: platform.pki.client(&id, "taxi")?,
                id,
                payloads,
            });
        }
        let total = FLEET as u64 * POSITIONS;

        let mut streams = Vec::new();
        for device in &fleet {
            streams.push(
                device
                    .publish(&platform.broker, (1..=POSITIONS).collect())
                    .await?,
            );
        }
        eventually(
            "positions acknowledged before the kill",
            ARRIVAL,
            || async {
                let acked: usize = streams.iter().map(|(p, _)| p.acked_count()).sum();
                Ok(if acked as u64 >= total * 3 / 10 {
                    Progress::Done(())
                } else {
                    Progress::Waiting(format!("{acked} acknowledged"))
                })
            },
        )
        .await?;
        platform.broker.kill().await?;
        let mut acked = Vec::new();
        for (publisher, task) in streams {
            tokio::time::timeout(WAIT, task)
                .await
                .context("a taxi did not stop after the kill")??;
            acked.push(publisher.acked());
        }
        let acked_total: usize = acked.iter().map(BTreeSet::len).sum();
        eprintln!("killed with {acked_total} of {total} positions acknowledged");
        ensure!(
            (acked_total as u64) < total,
            "every position was acknowledged before the kill: not a kill mid-stream"
        );

        platform.broker.start_again().await?;
        for (device, acked) in fleet.iter().zip(&acked) {
            let again: Vec<u64> = (1..=POSITIONS).filter(|s| !acked.contains(s)).collect();
            let (publisher, task) = device.publish(&platform.broker, again).await?;
            tokio::time::timeout(ARRIVAL, task)
                .await
                .context("publishing again")??;
            publisher
                .wait_all_acked(ARRIVAL)
                .await
                .with_context(|| format!("{} publishing again", device.id))?;
        }

        let ids: Vec<String> = fleet.iter().map(|d| d.id.clone()).collect();
        let expected: Vec<(String, i64)> = fleet
            .iter()
            .flat_map(|d| (1..=POSITIONS).map(move |seq| (d.id.clone(), seq as i64)))
            .collect();
        let arrived = eventually(
            &format!("{total} positions in PostgreSQL"),
            ARRIVAL,
            || async {
                let db = platform.db().await?;
                let stored = db.count_positions(&ids).await?;
                Ok(if stored >= total as i64 {
                    Progress::Done(stored)
                } else {
                    Progress::Waiting(format!("{stored} stored"))
                })
            },
        )
        .await;
        let db = platform.db().await?;
        let stored = db.position_rows(&ids).await?;
        let duplicates = db.duplicate_position_keys().await?;
        if stored != expected {
            let stored_keys: BTreeSet<&(String, i64)> = stored.iter().collect();
            let mut missing: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
            for (taxi, seq) in &expected {
                if !stored_keys.contains(&(taxi.clone(), *seq)) {
                    missing.entry(taxi).or_default().insert(*seq as u64);
                }
            }
            let missing_acked: Vec<String> = fleet
                .iter()
                .zip(&acked)
                .filter_map(|(device, acked)| {
                    let lost: BTreeSet<u64> = missing
                        .get(device.id.as_str())?
                        .intersection(acked)
                        .copied()
                        .collect();
                    (!lost.is_empty()).then(|| format!("{}: {}", device.id, ranges(&lost, 20)))
                })
                .collect();
            let missing: Vec<String> = missing
                .iter()
                .map(|(taxi, seqs)| format!("{taxi}: {}", ranges(seqs, 20)))
                .collect();
            let letters: Vec<(String, i64)> = db
                .rows(
                    "SELECT reason_code, count(*) FROM dead_letters GROUP BY reason_code",
                    &[],
                )
                .await?;
            bail!(
                "{} rows stored for {} positions, {duplicates} keys twice, dead letters \
                 {letters:?} ({arrived:?})\nmissing: {missing:?}\nmissing although \
                 acknowledged before the kill: {missing_acked:?}\nbridge b1:\n{}\nbridge b2:\n\
                 {}\n{}",
                stored.len(),
                expected.len(),
                flow_metrics(first.http_addr).await,
                flow_metrics(second.http_addr).await,
                broker_report(&platform.broker).await
            );
        }
        ensure!(
            duplicates == 0,
            "{duplicates} (taxi, seq) keys stored twice"
        );
        ensure!(
            db.count("SELECT count(*) FROM dead_letters", &[]).await? == 0,
            "every position was valid"
        );
        first.ensure_running()?;
        second.ensure_running()?;
        platform.broker.ensure_running()?;
        Ok(())
    })
    .await
}

/// How the tail of the newest segment file is damaged while the broker is down.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Bytes that are no record appended, as a crash in the middle of a write can leave.
    Garbage,
    /// The last bytes cut off, as a write that reached the disk only in part.
    Cut,
}

/// Messages acknowledged before the damage.
const BEFORE_DAMAGE: u64 = 500;
/// Garbage bytes appended.
const GARBAGE: usize = 3_000;
/// Bytes cut off.
const CUT: u64 = 7;

/// A durable subscriber is away while a taxi publishes and every message is acknowledged;
/// the broker is killed and the newest segment file damaged at its end; the broker starts,
/// counts the bytes it cut, and the subscriber gets every message exactly as published.
///
/// For the cut, one last message is published alone after the others were acknowledged, so
/// that its record is the file's last one: cutting into it stands for a crash in the middle
/// of its write. It may then be delivered (intact) or not at all; every earlier one must be.
async fn torn_tail(damage: Damage) -> Result<()> {
    bounded(Duration::from_secs(120), async {
        let pki = TestPki::new()?;
        let mut broker = BrokerProcess::start(&pki, Durability::Disk).await?;
        let bridge = pki.client("bridge", "bridge")?;
        let (mut durable, client) =
            Durable::subscribe(&broker, &bridge, "bridge.torn", Version::V311, TOPIC).await?;
        client.disconnect().await?;

        let publisher = AckedPublisher::connect(&broker, &pki.client(TAXI, "taxi")?).await?;
        for seq in 0..BEFORE_DAMAGE {
            publisher.publish(TOPIC, false, &payload(seq), seq).await?;
        }
        publisher.wait_all_acked(DELIVERY).await?;
        let mut published = BEFORE_DAMAGE;
        if matches!(damage, Damage::Cut) {
            publisher
                .publish(TOPIC, false, &payload(BEFORE_DAMAGE), BEFORE_DAMAGE)
                .await?;
            publisher.wait_all_acked(WAIT).await?;
            published += 1;
        }
        ensure!(publisher.acked() == (0..published).collect::<BTreeSet<u64>>());
        broker.kill().await?;
        drop(publisher);

        let segment = broker.newest_segment()?;
        let length = std::fs::metadata(&segment)?.len();
        let listing = broker.log_dir_listing();
        match damage {
            Damage::Garbage => {
                let mut garbage = Vec::with_capacity(GARBAGE);
                let mut x: u64 = 0x2545_F491_4F6C_DD1D;
                while garbage.len() < GARBAGE {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    garbage.extend_from_slice(&x.to_le_bytes());
                }
                garbage.truncate(GARBAGE);
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&segment)
                    .with_context(|| format!("opening {}", segment.display()))?;
                file.write_all(&garbage)?;
                file.sync_all()?;
            }
            Damage::Cut => {
                ensure!(length > CUT, "{} holds {length} bytes", segment.display());
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&segment)
                    .with_context(|| format!("opening {}", segment.display()))?;
                file.set_len(length - CUT)?;
                file.sync_all()?;
            }
        }
        eprintln!(
            "{damage:?} at the end of {} ({length} B before); log directory: {listing:?}",
            segment.display()
        );

        broker
            .start_again()
            .await
            .context("the broker did not start on a damaged log")?;
        let truncated = broker
            .metric("broker_log_truncated_bytes_total", &[])
            .await?;
        let recovered = broker
            .metric("broker_log_recovered_messages_total", &[])
            .await?;
        eprintln!("{truncated} bytes truncated, {recovered} messages recovered");
        if truncated <= 0.0 {
            bail!(
                "broker_log_truncated_bytes_total is {truncated} after a start on a segment \
                 with a damaged tail\n{}",
                broker_report(&broker).await
            );
        }

        let (mut client, session_present) = durable.reconnect(&broker).await?;
        ensure!(
            session_present,
            "the subscriber's session did not survive (session_present false)"
        );
        let must: BTreeSet<u64> = (0..BEFORE_DAMAGE).collect();
        if let Err(e) = durable.receive_all(&mut client, &must).await {
            bail!("{e:#}\n{}", broker_report(&broker).await);
        }
        // Whatever else comes must be a message as published, too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        durable.received.extend(client.messages());
        let counts = count(&durable.received)?;
        let unknown: Vec<u64> = counts
            .keys()
            .filter(|seq| **seq >= published)
            .copied()
            .collect();
        ensure!(unknown.is_empty(), "messages never published: {unknown:?}");
        eprintln!(
            "{} messages delivered ({} distinct)",
            durable.received.len(),
            counts.len()
        );
        broker.ensure_running()?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_last_record_is_cut_and_every_acknowledged_message_delivered(
) -> Result<()> {
    torn_tail(Damage::Garbage).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_cut_short_is_cut_and_every_earlier_message_delivered() -> Result<()> {
    torn_tail(Damage::Cut).await
}
