//! The whole platform around a bridge, for end-to-end tests: a PKI, the broker, a private
//! PostgreSQL cluster, taxis publishing over mutual TLS, and bridges consuming them (in this
//! process with [`bridge::start`], or as `bridge` processes, see [`crate::bridge_process`]).
//!
//! Every message a [`Taxi`] publishes is recorded in the platform's [`Published`] log, so that a
//! test can compare what reached PostgreSQL and the archive with what was sent.
//!
//! A message published before any bridge has subscribed is dropped by the broker (nobody is
//! subscribed to it). [`Platform::wait_until_consuming`] therefore sends probe positions from a
//! taxi of its own ([`PROBE_TAXI`]) until one is stored; probes are not in the log, and tests
//! leave that taxi out of their expectations.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bridge::config::ArchiveConfig;
use tempfile::TempDir;
use testkit::postgres::TestPostgres;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::Row;

use crate::broker::{MqttBroker, TestBroker};
use crate::mqtt::{Event, MqttClient};
use crate::pki::{ClientCert, TestPki};

/// How long a test waits for data to arrive where it must (PostgreSQL, the archive).
pub const ARRIVAL: Duration = Duration::from_secs(30);

/// The taxi whose positions tell that a bridge consumes; see [`Platform::wait_until_consuming`].
pub const PROBE_TAXI: &str = "probe";

/// Where the test taxis are: Berlin.
pub const BERLIN: (f64, f64) = (52.520008, 13.404954);

/// One message a taxi published (and the broker acknowledged).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sent {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Every message published by the taxis of one platform, in publish order per taxi.
#[derive(Clone, Default)]
pub struct Published(Arc<Mutex<Vec<Sent>>>);

impl Published {
    fn push(&self, topic: &str, payload: &[u8]) {
        self.lock().push(Sent {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sent>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every message so far.
    pub fn all(&self) -> Vec<Sent> {
        self.lock().clone()
    }

    /// How often each (topic, payload) was published.
    pub fn multiset(&self) -> BTreeMap<Sent, usize> {
        multiset(self.all())
    }
}

/// Counts equal items.
pub fn multiset(items: impl IntoIterator<Item = Sent>) -> BTreeMap<Sent, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}

/// Broker, PostgreSQL and certificates shared by the taxis and bridges of one test. The
/// broker is ours ([`TestBroker`]) unless the test runs the platform on another one (see
/// [`crate::mosquitto::MosquittoBroker`]).
pub struct Platform<B = TestBroker> {
    pub pki: TestPki,
    pub broker: B,
    pub postgres: Arc<TestPostgres>,
    /// `CN=bridge, OU=bridge`: what every bridge presents.
    pub bridge_cert: ClientCert,
    /// Data directories, logs and the embedded S3 stores of the bridges.
    pub dir: TempDir,
    pub published: Published,
    probe_seq: Mutex<u64>,
}

impl Platform {
    /// A PKI, a broker with its default rules and a fresh PostgreSQL cluster.
    pub async fn start() -> Result<Platform> {
        crate::init();
        let pki = TestPki::new()?;
        let broker = TestBroker::start(&pki).await?;
        Platform::with_broker(pki, broker).await
    }
}

impl<B: MqttBroker> Platform<B> {
    /// Like [`Platform::start`], around a broker the caller started with this PKI.
    pub async fn with_broker(pki: TestPki, broker: B) -> Result<Platform<B>> {
        crate::init();
        let postgres = tokio::task::spawn_blocking(TestPostgres::start)
            .await
            .context("starting PostgreSQL")?
            .context("starting PostgreSQL")?;
        let bridge_cert = pki.client("bridge", "bridge")?;
        let dir = tempfile::Builder::new()
            .prefix("bridge-e2e-")
            .tempdir()
            .context("creating the test directory")?;
        Ok(Platform {
            pki,
            broker,
            postgres: Arc::new(postgres),
            bridge_cert,
            dir,
            published: Published::default(),
            probe_seq: Mutex::new(0),
        })
    }

    pub fn database_url(&self) -> String {
        self.postgres.url()
    }

    /// A bridge configuration for this platform: its own data directory, 4 connections in the
    /// group `ingest`, short batch delays and back-offs, HTTP on a free port, and `archive`.
    pub fn bridge_config(&self, id: &str, archive: ArchiveConfig) -> bridge::Config {
        let mut config = bridge::Config {
            id: id.to_owned(),
            data_dir: self.dir.path().join(format!("bridge-{id}")),
            archive,
            ..bridge::Config::default()
        };
        config.mqtt.host = "127.0.0.1".to_owned();
        config.mqtt.port = self.broker.mqtt_addr().port();
        config.mqtt.ca = self.pki.ca_path().to_owned();
        config.mqtt.cert = self.bridge_cert.cert_path.clone();
        config.mqtt.key = self.bridge_cert.key_path.clone();
        config.mqtt.client_id = self.bridge_cert.id.clone();
        config.mqtt.connections = 4;
        config.batch.max_delay_ms = 20;
        config.postgres.url = self.database_url();
        config.postgres.min_backoff_ms = 50;
        config.postgres.max_backoff_ms = 500;
        config.retention.days = 3;
        config.retention.days_ahead = 1;
        config.retention.check_interval_ms = 3_600_000;
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }

    /// The bridge's own embedded S3 server over a directory of this platform, on a free port;
    /// segments rolled every 500 ms.
    pub fn embedded_archive(&self, name: &str) -> ArchiveConfig {
        let mut archive = quick_archive();
        archive.embedded = true;
        archive.embedded_dir = self.dir.path().join(name);
        archive.embedded_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        archive
    }

    /// Starts a bridge in this process.
    pub async fn start_bridge(&self, config: &bridge::Config) -> Result<bridge::RunningBridge> {
        bridge::start(config.clone())
            .await
            .with_context(|| format!("starting bridge {}", config.id))
    }

    /// A connected taxi with a fresh `CN=<id>, OU=taxi` certificate.
    pub async fn taxi(&self, id: &str) -> Result<Taxi> {
        let cert = self.pki.client(id, "taxi")?;
        let client = self.broker.client(&cert).connect().await?;
        Ok(Taxi {
            id: id.to_owned(),
            cert,
            client,
            published: self.published.clone(),
            unacked: 0,
            positions: Vec::new(),
        })
    }

    /// Connects to the database.
    pub async fn db(&self) -> Result<Db> {
        Db::connect(&self.database_url()).await
    }

    /// Publishes probe positions (not logged) until one is stored: from then on some bridge
    /// is subscribed and messages are no longer dropped by the broker.
    pub async fn wait_until_consuming(&self) -> Result<()> {
        let mut probe = self.taxi(PROBE_TAXI).await?;
        let deadline = tokio::time::Instant::now() + ARRIVAL;
        loop {
            let seq = {
                let mut next = self
                    .probe_seq
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                *next += 1;
                *next
            };
            let payload = wire::encode_json(&position(seq, crate::unix_ms(), BERLIN));
            let topic = format!("taxi/{PROBE_TAXI}/position");
            probe.client.publish_acked(&topic, false, &payload).await?;
            let probe_deadline = tokio::time::Instant::now() + Duration::from_millis(500);
            while tokio::time::Instant::now() < probe_deadline {
                if let Ok(db) = self.db().await {
                    let stored = db
                        .count(
                            "SELECT count(*) FROM positions WHERE taxi_id = $1",
                            &[&PROBE_TAXI],
                        )
                        .await
                        .unwrap_or(0);
                    if stored > 0 {
                        probe.client.disconnect().await?;
                        return Ok(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no probe position was stored within {ARRIVAL:?}: no bridge consumes");
            }
        }
    }

    /// Stops PostgreSQL like a crash (`pg_ctl stop -m immediate`).
    pub async fn stop_postgres_immediately(&self) -> Result<()> {
        let postgres = self.postgres.clone();
        tokio::task::spawn_blocking(move || postgres.stop_immediately())
            .await
            .context("stopping PostgreSQL")?
    }

    /// Starts PostgreSQL again on the same port with the same data.
    pub async fn start_postgres_again(&self) -> Result<()> {
        let postgres = self.postgres.clone();
        tokio::task::spawn_blocking(move || postgres.start_again())
            .await
            .context("starting PostgreSQL again")?
    }
}

/// Archive settings for tests: 500 ms segments, quick retries, bucket `taxi-raw`, prefix
/// `raw`. Not embedded and without an endpoint: set one (see [`external_archive`]).
pub fn quick_archive() -> ArchiveConfig {
    let mut archive = bridge::Config::default().archive;
    archive.embedded = false;
    archive.endpoint = String::new();
    archive.bucket = "taxi-raw".to_owned();
    archive.prefix = "raw".to_owned();
    archive.roll_interval_ms = 500;
    archive.min_backoff_ms = 50;
    archive.max_backoff_ms = 500;
    archive
}

/// Archive settings for an S3 server at `endpoint` (moto, or an embedded server this test
/// started itself).
pub fn external_archive(
    endpoint: &str,
    access_key_id: &str,
    secret_access_key: &str,
    region: &str,
) -> ArchiveConfig {
    let mut archive = quick_archive();
    archive.endpoint = endpoint.to_owned();
    archive.access_key_id = access_key_id.to_owned();
    archive.secret_access_key = secret_access_key.to_owned();
    archive.region = region.to_owned();
    archive
}

/// The archive settings of a started bridge with the endpoint and credentials it actually
/// uses (those of its embedded server, when it has one).
pub fn resolved_archive(config: &bridge::Config, running: &bridge::RunningBridge) -> ArchiveConfig {
    let mut archive = config.archive.clone();
    if let Some(embedded) = &running.embedded_s3 {
        archive.embedded = false;
        archive.endpoint = embedded.endpoint.clone();
        archive.access_key_id = embedded.access_key_id.clone();
        archive.secret_access_key = embedded.secret_access_key.clone();
    }
    archive
}

/// A position of the test fleet: no speed for odd `seq`, 30 km/h otherwise.
pub fn position(seq: u64, ts_ms: i64, (lat, lon): (f64, f64)) -> wire::Position {
    wire::Position {
        seq,
        ts_ms,
        lat,
        lon,
        speed_kmh: seq.is_multiple_of(2).then_some(30.0),
        heading_deg: seq.is_multiple_of(3).then_some(90.0),
        accuracy_m: Some(4.0),
    }
}

/// A taxi: a rumqttc client over mutual TLS publishing QoS 1 on its own topics.
pub struct Taxi {
    pub id: String,
    pub cert: ClientCert,
    pub client: MqttClient,
    published: Published,
    unacked: usize,
    /// The valid positions published, in order.
    pub positions: Vec<wire::Position>,
}

impl Taxi {
    /// `taxi/<id>/<kind>`.
    pub fn topic(&self, kind: &str) -> String {
        format!("taxi/{}/{kind}", self.id)
    }

    /// Queues a QoS 1 publish on `taxi/<id>/<kind>` and logs it; see [`Taxi::wait_acked`].
    pub async fn publish(&mut self, kind: &str, payload: &[u8]) -> Result<()> {
        let topic = self.topic(kind);
        self.client.publish(&topic, 1, false, payload).await?;
        self.published.push(&topic, payload);
        self.unacked += 1;
        Ok(())
    }

    /// Publishes a valid position (JSON for odd `seq`, postcard for even) and remembers it.
    pub async fn publish_position(&mut self, position: wire::Position) -> Result<()> {
        let payload = if position.seq % 2 == 1 {
            wire::encode_json(&position)
        } else {
            wire::encode_postcard(&position)
        };
        self.publish("position", &payload).await?;
        self.positions.push(position);
        Ok(())
    }

    /// Waits until the broker has acknowledged every publish so far.
    pub async fn wait_acked(&mut self) -> Result<()> {
        while self.unacked > 0 {
            self.client
                .expect(
                    &format!("PUBACK ({} outstanding)", self.unacked),
                    crate::WAIT,
                    |event| matches!(event, Event::PubAck { .. }).then_some(()),
                )
                .await?;
            self.unacked -= 1;
        }
        Ok(())
    }

    /// The (taxi, seq) keys of the positions published.
    pub fn position_keys(&self) -> BTreeSet<(String, i64)> {
        self.positions
            .iter()
            .map(|p| (self.id.clone(), p.seq as i64))
            .collect()
    }
}

/// Where the n-th taxi of a fleet drives: a little apart from the others.
pub fn home(n: usize) -> (f64, f64) {
    (BERLIN.0 + n as f64 * 0.01, BERLIN.1 + n as f64 * 0.01)
}

/// Taxis `<prefix>-1` .. `<prefix>-<taxis>`, each publishing `positions` positions (seq 1..)
/// concurrently, one every `pace` (or as fast as the broker takes them), moving a metre or so
/// between fixes, then waiting for every PUBACK. Returns the taxis when all are done.
pub async fn drive_fleet(
    platform: &Platform,
    prefix: &str,
    taxis: usize,
    positions: u64,
    pace: Option<Duration>,
) -> Result<Vec<Taxi>> {
    let mut fleet = Vec::new();
    for n in 1..=taxis {
        fleet.push(platform.taxi(&format!("{prefix}-{n}")).await?);
    }
    let drives = fleet
        .into_iter()
        .enumerate()
        .map(|(n, taxi)| tokio::spawn(drive(taxi, home(n + 1), 1..=positions, pace)));
    let mut done = Vec::new();
    for drive in drives.collect::<Vec<_>>() {
        done.push(drive.await.context("a taxi task failed")??);
    }
    Ok(done)
}

/// Where a taxi that set off at `start` is at its position `seq`: a metre north per fix.
pub fn along(start: (f64, f64), seq: u64) -> (f64, f64) {
    (start.0 + seq as f64 * 1e-5, start.1)
}

/// Device time between two fixes of a test taxi. A metre or so apart and 100 ms apart, it
/// drives at about 40 km/h, so any two of its fixes imply a speed the bridge accepts however
/// fast, late or out of order they are published and delivered: a fix's time is when its
/// GPS took it, not when the broker let it through. (Stamped at publish time instead, a taxi
/// held back by the broker and then let go covers hundreds of metres per second, and the
/// bridge rightly refuses the jumps as `implied_speed`.)
pub const FIX_INTERVAL_MS: i64 = 100;

/// The device time of fix `seq` of a run of fixes ending with `last` at `now_ms`: one every
/// [`FIX_INTERVAL_MS`], so the whole run lies in the past.
pub fn fix_time(now_ms: i64, last: u64, seq: u64) -> i64 {
    now_ms - last.saturating_sub(seq) as i64 * FIX_INTERVAL_MS
}

/// One taxi publishing the positions `seqs` from `start` (timed by [`fix_time`], the last
/// one now), then waiting for the PUBACKs.
pub async fn drive(
    mut taxi: Taxi,
    start: (f64, f64),
    seqs: std::ops::RangeInclusive<u64>,
    pace: Option<Duration>,
) -> Result<Taxi> {
    let mut ticker = pace.map(|pace| {
        let mut ticker = tokio::time::interval(pace);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    let (now, last) = (crate::unix_ms(), *seqs.end());
    for seq in seqs {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        taxi.publish_position(position(seq, fix_time(now, last, seq), along(start, seq)))
            .await?;
    }
    taxi.wait_acked().await?;
    Ok(taxi)
}

/// The (taxi, seq) keys of every valid position of these taxis.
pub fn expected_keys(taxis: &[Taxi]) -> BTreeSet<(String, i64)> {
    taxis.iter().flat_map(Taxi::position_keys).collect()
}

/// Ids of taxis, as a PostgreSQL `text[]` parameter.
pub fn ids(taxis: &[Taxi]) -> Vec<String> {
    taxis.iter().map(|t| t.id.clone()).collect()
}

/// A row read as a tuple of its columns, in order ([`Db::rows`], [`Db::row_opt`]).
pub trait FromRow: Sized {
    fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error>;
}

macro_rules! tuple_from_row {
    ($($column:ident $index:tt),+) => {
        impl<$($column),+> FromRow for ($($column,)+)
        where
            $($column: for<'a> FromSql<'a>),+
        {
            fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
                Ok(($(row.try_get($index)?,)+))
            }
        }
    };
}

tuple_from_row!(A 0);
tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);
tuple_from_row!(A 0, B 1, C 2, D 3);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

/// A connection to the bridge's database.
pub struct Db {
    client: tokio_postgres::Client,
    _connection: tokio::task::JoinHandle<()>,
}

impl Db {
    pub async fn connect(url: &str) -> Result<Db> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Db {
            client,
            _connection: connection,
        })
    }

    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// The `bigint` of a one-row, one-column query.
    pub async fn count(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<i64> {
        let row = self
            .client
            .query_one(sql, params)
            .await
            .with_context(|| format!("running {sql}"))?;
        Ok(row.try_get(0)?)
    }

    /// Every row of a query, each as a tuple of its columns.
    pub async fn rows<T: FromRow>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<T>> {
        let rows = self
            .client
            .query(sql, params)
            .await
            .with_context(|| format!("running {sql}"))?;
        rows.iter()
            .map(|row| T::from_row(row).with_context(|| format!("reading a row of {sql}")))
            .collect()
    }

    /// The one row of a query, as a tuple of its columns.
    pub async fn row<T: FromRow>(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<T> {
        let row = self
            .client
            .query_one(sql, params)
            .await
            .with_context(|| format!("running {sql}"))?;
        T::from_row(&row).with_context(|| format!("reading the row of {sql}"))
    }

    /// The row of a query that returns at most one, as a tuple of its columns.
    pub async fn row_opt<T: FromRow>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<T>> {
        let row = self
            .client
            .query_opt(sql, params)
            .await
            .with_context(|| format!("running {sql}"))?;
        row.map(|row| T::from_row(&row).with_context(|| format!("reading the row of {sql}")))
            .transpose()
    }

    /// Every stored position key of these taxis, one entry per row (duplicates kept), sorted.
    pub async fn position_rows(&self, taxis: &[String]) -> Result<Vec<(String, i64)>> {
        self.rows(
            "SELECT taxi_id, seq FROM positions WHERE taxi_id = ANY($1) ORDER BY 1, 2",
            &[&taxis],
        )
        .await
        .context("reading the stored positions")
    }

    /// Keys (taxi, seq) stored more than once, over the whole table.
    pub async fn duplicate_position_keys(&self) -> Result<i64> {
        self.count(
            "SELECT count(*) FROM (SELECT taxi_id, seq FROM positions \
             GROUP BY 1, 2 HAVING count(*) > 1) AS d",
            &[],
        )
        .await
    }

    /// Stored positions of these taxis.
    pub async fn count_positions(&self, taxis: &[String]) -> Result<i64> {
        self.count(
            "SELECT count(*) FROM positions WHERE taxi_id = ANY($1)",
            &[&taxis],
        )
        .await
    }
}

/// Waits (at most [`ARRIVAL`]) until the positions of `taxis` number `expected` or more,
/// connecting again whenever the database is unreachable. Returns the last count.
pub async fn wait_for_positions(url: &str, taxis: &[String], expected: usize) -> Result<i64> {
    eventually(
        &format!("{expected} positions of {taxis:?} in PostgreSQL"),
        ARRIVAL,
        || async {
            let db = Db::connect(url).await?;
            let stored = db.count_positions(taxis).await?;
            Ok(if stored >= expected as i64 {
                Progress::Done(stored)
            } else {
                Progress::Waiting(format!("{stored} stored"))
            })
        },
    )
    .await
}

/// The state of a condition being waited for.
pub enum Progress<T> {
    Done(T),
    /// Not yet: what it looks like now.
    Waiting(String),
}

/// Checks `condition` every 100 ms until it is done, at most `timeout`. An error counts as
/// "not yet" (a service may be restarting); the last state or error is reported on timeout.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Progress<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = "not checked yet".to_owned();
    loop {
        // One check may take a while (a connection to a server that is down), not forever.
        let check_deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        match tokio::time::timeout_at(check_deadline, condition()).await {
            Ok(Ok(Progress::Done(value))) => return Ok(value),
            Ok(Ok(Progress::Waiting(state))) => last = state,
            Ok(Err(e)) => last = format!("error: {e:#}"),
            Err(_) => last = format!("{last} (then a check did not finish)"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a whole test body with an upper bound, so that nothing hangs forever.
///
/// The body owns what it started (PostgreSQL, moto, bridge processes), so all of it is
/// stopped when the body ends, either way. If the body failed and the test has its process to
/// itself (nextest), the process then exits at once with the error: a broker whose router has
/// died keeps connection set-ups waiting on blocking threads forever, and the runtime's
/// shutdown would wait for them.
pub async fn bounded<T>(limit: Duration, body: impl Future<Output = Result<T>>) -> Result<T> {
    let result = match tokio::time::timeout(limit, body).await {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("the test did not finish within {limit:?}")),
    };
    if let Err(e) = &result {
        if std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test") {
            eprintln!("Error: {e:?}");
            std::process::exit(101);
        }
    }
    result
}

/// A readable difference between two multisets: what is missing from `actual`, what is extra.
pub fn multiset_diff(
    expected: &BTreeMap<Sent, usize>,
    actual: &BTreeMap<Sent, usize>,
) -> Option<String> {
    let mut lines = Vec::new();
    for (sent, &want) in expected {
        let got = actual.get(sent).copied().unwrap_or(0);
        if got != want {
            lines.push(format!(
                "{} {}: published {want}, archived {got}",
                sent.topic,
                preview(&sent.payload)
            ));
        }
    }
    for (sent, &got) in actual {
        if !expected.contains_key(sent) {
            lines.push(format!(
                "{} {}: never published, archived {got}",
                sent.topic,
                preview(&sent.payload)
            ));
        }
    }
    if lines.is_empty() {
        return None;
    }
    let total = lines.len();
    lines.truncate(20);
    Some(format!(
        "{total} differences (first {}):\n{}",
        lines.len(),
        lines.join("\n")
    ))
}

/// The first bytes of a payload, readable.
pub fn preview(payload: &[u8]) -> String {
    let shown = String::from_utf8_lossy(&payload[..payload.len().min(60)]).into_owned();
    format!("({} bytes) {shown:?}", payload.len())
}

/// The `bridge_*` and `broker_messages_*` samples of a `/metrics` page, one per line: what a
/// failing test shows about where messages stopped.
pub async fn flow_metrics(http_addr: SocketAddr) -> String {
    match crate::http::get(http_addr, "/metrics").await {
        Ok((_, page)) => page
            .lines()
            .filter(|line| {
                !line.starts_with('#')
                    && (line.starts_with("bridge_") || line.starts_with("broker_messages_"))
                    && !line.contains("_bucket")
                    && !line.contains("quantile")
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("/metrics unreadable: {e:#}"),
    }
}
