//! `bench dispatch`: how fast an order reaches its taxi, with 1,000 taxis connected and
//! reporting positions. Measured in one run:
//!
//! 1. `mosquitto` (the baseline): Mosquitto with the same certificates and rules, the same
//!    simulated taxis, and a backoffice application publishing orders straight to their
//!    inboxes: publish -> taxi receives;
//! 2. `mqtt`: the platform (our broker as a child process; the bridge with dispatch and its
//!    API in this process; a private PostgreSQL), the same direct publishes, which dispatch
//!    also records;
//! 3. `api`: the same rate of orders through `POST /v1/orders`: API call -> taxi receives,
//!    and the API's answer time;
//! 4. `api-throughput`: the API called back to back on several connections: orders accepted
//!    per second.
//!
//! The taxis ([`simulator::taxi`]) answer every order (`received`, `accepted`), so the platform
//! also does its bookkeeping while it is measured. [`tracker`] matches sends and arrivals,
//! [`senders`] drives the two ways in, [`report`] prints the table.

pub mod report;
pub mod senders;
pub mod tracker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;

use crate::brokers::raise_open_files;
use crate::ingest::bridge::{BridgeSettings, BridgeUnderTest};
use crate::ingest::database::{self, Database};
use crate::ingest::{bounded, progress};
use crate::process::BrokerProcess;
use crate::{baseline, target};
use senders::{Orders, Pace, Sent};
use simulator::pki::{BenchPki, Client};
use simulator::taxi::{self, Behaviour, Counters, SimulatedTaxi, TaxiSpec};
use tracker::{Delivery, Tracker};

/// A part of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DispatchPhase {
    /// Mosquitto, orders published straight to the taxis (the baseline).
    Mosquitto,
    /// The platform, orders published straight to the taxis.
    Mqtt,
    /// The platform, orders through the HTTP API at the same rate.
    Api,
    /// The platform, the HTTP API called back to back.
    ApiThroughput,
}

/// Everything `bench dispatch` is told.
#[derive(Clone, Debug)]
pub struct DispatchArgs {
    /// Connected taxis, one connection each.
    pub taxis: usize,
    /// Positions per second per taxi.
    pub position_rate: f64,
    /// Orders per second in the latency phases (each to a random taxi).
    pub order_rate: f64,
    /// Measured seconds of each latency phase.
    pub seconds: f64,
    /// Seconds of position traffic before the first phase.
    pub warmup: f64,
    /// Seconds of the throughput phase.
    pub throughput_seconds: f64,
    /// API connections of the throughput phase.
    pub concurrency: usize,
    pub broker_bin: PathBuf,
    pub mosquitto_bin: PathBuf,
    pub phases: Vec<DispatchPhase>,
    /// Keep the certificates, broker configurations and logs.
    pub keep: bool,
}

impl DispatchArgs {
    fn runs(&self, phase: DispatchPhase) -> bool {
        self.phases.contains(&phase)
    }

    fn runs_platform(&self) -> bool {
        [
            DispatchPhase::Mqtt,
            DispatchPhase::Api,
            DispatchPhase::ApiThroughput,
        ]
        .iter()
        .any(|phase| self.runs(*phase))
    }
}

/// One phase: what was sent, and what arrived.
#[derive(Clone, Debug, Default)]
pub struct PhaseResult {
    pub sent: Sent,
    pub delivery: Delivery,
}

/// Everything measured; a phase not run is `None`, a failed one holds its error.
#[derive(Debug, Default)]
pub struct DispatchResults {
    pub mosquitto: Option<Result<PhaseResult, String>>,
    pub mqtt: Option<Result<PhaseResult, String>>,
    pub api: Option<Result<PhaseResult, String>>,
    pub throughput: Option<Result<PhaseResult, String>>,
    /// Orders in PostgreSQL at the end, by sender and state.
    pub order_states: Vec<(String, String, i64)>,
    /// The first few orders still unanswered at the end: id, state, acks stored for it.
    pub unanswered: Vec<(String, String, i64)>,
    /// The platform's set-up, if it failed.
    pub platform_error: Option<String>,
}

/// The API token's name.
const TOKEN_NAME: &str = "bench";
/// Taxis connecting at once.
const CONNECTING: usize = 64;
/// After a phase: how long to wait for the last orders, and for how long without progress.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
const DRAIN_QUIET: Duration = Duration::from_secs(3);

/// Runs the benchmark and prints the report.
pub async fn run(args: DispatchArgs) -> Result<()> {
    validate(&args)?;
    if args.runs_platform() {
        target::check_binary(&args.broker_bin)?;
    }
    if args.runs(DispatchPhase::Mosquitto) {
        baseline::check_binary(&args.mosquitto_bin)?;
    }
    raise_open_files((args.taxis + 2048) as u64)?;

    progress(
        "setup",
        format!(
            "creating a CA, a server certificate, {} taxi certificates, the backoffice's and \
             the bridge's",
            args.taxis
        ),
    );
    let taxis = args.taxis;
    let (pki, backoffice, bridge_files) = tokio::task::spawn_blocking(move || -> Result<_> {
        let pki = BenchPki::create(taxis)?;
        let backoffice = pki.issue("backoffice", "backoffice")?;
        let files = pki.issue_files("bridge", "bridge")?;
        Ok((pki, backoffice, files))
    })
    .await
    .context("certificate task failed")??;
    let tracker = Arc::new(Tracker::default());
    let ids: Arc<Vec<String>> = Arc::new(pki.taxis.iter().map(|t| t.id.clone()).collect());
    let orders = |phase| Orders {
        taxis: ids.clone(),
        phase,
        tracker: tracker.clone(),
    };

    let mut results = DispatchResults::default();
    let phase_limit = Duration::from_secs_f64(args.warmup + args.seconds + 240.0);
    if args.runs(DispatchPhase::Mosquitto) {
        let outcome = bounded(
            phase_limit,
            mosquitto_phase(&args, &pki, &backoffice, orders("mosquitto")),
        )
        .await;
        results.mosquitto = Some(report_outcome("mosquitto", outcome));
    }
    if args.runs_platform() {
        let limit = phase_limit * 3;
        let outcome = bounded(
            limit,
            platform_phases(
                &args,
                &pki,
                &backoffice,
                &bridge_files,
                &orders,
                &mut results,
            ),
        )
        .await;
        if let Err(e) = outcome {
            progress("platform", format!("failed: {e:#}"));
            results.platform_error = Some(format!("{e:#}"));
        }
    }

    print!("{}", report::render(&args, &results));
    if args.keep {
        let dir = pki.keep();
        eprintln!(
            "certificates, broker configurations and logs kept in {}",
            dir.display()
        );
    }
    Ok(())
}

fn validate(args: &DispatchArgs) -> Result<()> {
    if args.taxis == 0 || args.taxis > 10_000 {
        bail!("--taxis must be between 1 and 10000");
    }
    if !(args.position_rate > 0.0 && args.position_rate <= 100.0) {
        bail!("--position-rate must be above 0 and at most 100 per taxi and second");
    }
    if !(args.order_rate > 0.0 && args.order_rate <= 10_000.0) {
        bail!("--order-rate must be above 0 and at most 10000 per second");
    }
    if !(1.0..=600.0).contains(&args.seconds)
        || !(1.0..=600.0).contains(&args.throughput_seconds)
        || !(0.0..=600.0).contains(&args.warmup)
    {
        bail!("--seconds and --throughput-seconds must be 1 to 600, --warmup 0 to 600");
    }
    if args.concurrency == 0 || args.concurrency > 256 {
        bail!("--concurrency must be between 1 and 256");
    }
    if args.phases.is_empty() {
        bail!("--phases must name at least one phase");
    }
    Ok(())
}

/// The baseline: Mosquitto, the taxis, and direct publishes.
async fn mosquitto_phase(
    args: &DispatchArgs,
    pki: &BenchPki,
    backoffice: &Client,
    orders: Orders,
) -> Result<PhaseResult> {
    let say = |text: String| progress("mosquitto", text);
    let mut broker = baseline::start(&args.mosquitto_bin, pki, 1).await?;
    say(format!(
        "Mosquitto on {}; connecting {} taxis",
        broker.addr(),
        args.taxis
    ));
    let outcome = async {
        let fleet = start_fleet(args, pki, broker.addr(), &orders.tracker).await?;
        let result = direct_phase(args, backoffice, broker.addr(), orders, &say).await;
        taxi::stop_all(fleet).await;
        result
    }
    .await;
    finish_broker(broker.check_running(), broker, outcome).await
}

/// Stops a broker and combines its state with the phase's outcome.
async fn finish_broker<T>(
    alive: Result<()>,
    broker: BrokerProcess,
    outcome: Result<T>,
) -> Result<T> {
    broker.stop(Duration::from_secs(5)).await;
    let value = outcome?;
    alive?;
    Ok(value)
}

/// The taxis, connected and listening, with position traffic running for the warm-up.
async fn start_fleet(
    args: &DispatchArgs,
    pki: &BenchPki,
    broker: SocketAddr,
    tracker: &Arc<Tracker>,
) -> Result<Vec<SimulatedTaxi>> {
    let started = Instant::now();
    let taxis = listening_fleet(
        &pki.taxis[..args.taxis],
        broker,
        args.position_rate,
        tracker,
        Duration::from_secs(120),
    )
    .await?;
    progress(
        "fleet",
        format!(
            "{} taxis listening after {:.1} s; {} s of position traffic before measuring",
            taxis.len(),
            started.elapsed().as_secs_f64(),
            args.warmup
        ),
    );
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    Ok(taxis)
}

/// Simulated taxis for `clients`, connected to `broker` within `limit`, each reporting
/// `position_rate` positions per second and listening on its inbox; what they receive is
/// reported to `tracker`.
pub(crate) async fn listening_fleet(
    clients: &[Client],
    broker: SocketAddr,
    position_rate: f64,
    tracker: &Arc<Tracker>,
    limit: Duration,
) -> Result<Vec<SimulatedTaxi>> {
    let (observer, observations) = mpsc::unbounded_channel();
    tracker.follow(observations);
    let specs = clients
        .iter()
        .enumerate()
        .map(|(index, client)| TaxiSpec {
            client: client.clone(),
            host: broker.ip().to_string(),
            port: broker.port(),
            behaviour: Behaviour::steady(position_rate),
            seed: index as u64,
        })
        .collect();
    taxi::spawn_listening(
        specs,
        Arc::new(Counters::default()),
        Some(observer),
        CONNECTING,
        limit,
    )
    .await
}

/// Direct publishes by the backoffice, then the drain.
async fn direct_phase(
    args: &DispatchArgs,
    backoffice: &Client,
    broker: SocketAddr,
    orders: Orders,
    say: &dyn Fn(String),
) -> Result<PhaseResult> {
    say(format!(
        "the backoffice publishes {} orders/s straight to the taxis for {} s",
        args.order_rate, args.seconds
    ));
    let tracker = orders.tracker.clone();
    let phase = orders.phase;
    let sent = senders::publish_directly(
        backoffice.clone(),
        broker,
        orders,
        args.order_rate,
        Duration::from_secs_f64(args.seconds),
    )
    .await?;
    let delivery = drain(&tracker, phase).await;
    say(summary(&sent, &delivery));
    Ok(PhaseResult { sent, delivery })
}

/// The platform: PostgreSQL, broker, bridge with dispatch and its API, the taxis; then the
/// phases asked for, one after the other on the same platform.
async fn platform_phases(
    args: &DispatchArgs,
    pki: &BenchPki,
    backoffice: &Client,
    (bridge_cert, bridge_key): &(PathBuf, PathBuf),
    orders: &dyn Fn(&'static str) -> Orders,
    results: &mut DispatchResults,
) -> Result<()> {
    let say = |text: String| progress("platform", text);
    say("starting a private PostgreSQL cluster".to_owned());
    let database = Database::start().await?;
    let url = database.create("dispatch").await?;
    let mut broker = target::start(&args.broker_bin, pki, args.taxis + 500, 2).await?;
    let token = format!("{:032x}", rand::random::<u128>());
    let defaults = bridge::Config::default();
    let settings = BridgeSettings {
        broker_port: broker.addr().port(),
        ca: pki.ca_cert.clone(),
        cert: bridge_cert.clone(),
        key: bridge_key.clone(),
        postgres_url: url.clone(),
        connections: defaults.mqtt.connections,
        batch: defaults.batch.max_messages,
        batch_delay_ms: None,
    };
    let token_sha256 = bridge::dispatch::auth::token_sha256(&token);
    let bridge = BridgeUnderTest::start_with(&settings, |config| {
        config.dispatch.enabled = true;
        config.dispatch.api.enabled = true;
        config.dispatch.api.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.dispatch.api.tokens = vec![bridge::config::ApiToken {
            name: TOKEN_NAME.to_owned(),
            sha256: token_sha256,
        }];
    })
    .await?;
    let outcome = async {
        let api = bridge
            .dispatch_api_addr()
            .context("the bridge started without its dispatch API")?;
        say(format!(
            "broker on {}, bridge with {} MQTT connections, dispatch API on http://{api}; \
             connecting {} taxis",
            broker.addr(),
            settings.connections,
            args.taxis
        ));
        let fleet = start_fleet(args, pki, broker.addr(), &orders("ready").tracker).await?;
        let phases = async {
            ready(api, &token, orders("ready")).await?;
            say("path ready: an order through the API reached its taxi".to_owned());
            if args.runs(DispatchPhase::Mqtt) {
                let outcome =
                    direct_phase(args, backoffice, broker.addr(), orders("mqtt"), &|text| {
                        progress("mqtt", text)
                    })
                    .await;
                results.mqtt = Some(report_outcome("mqtt", outcome));
            }
            if args.runs(DispatchPhase::Api) {
                let outcome = api_phase(
                    api,
                    &token,
                    orders("api"),
                    Pace::Rate(args.order_rate),
                    args.seconds,
                )
                .await;
                results.api = Some(report_outcome("api", outcome));
            }
            if args.runs(DispatchPhase::ApiThroughput) {
                let outcome = api_phase(
                    api,
                    &token,
                    orders("api-throughput"),
                    Pace::FlatOut(args.concurrency),
                    args.throughput_seconds,
                )
                .await;
                results.throughput = Some(report_outcome("throughput", outcome));
            }
            results.order_states = order_states(&url).await?;
            results.unanswered = unanswered(&url).await?;
            anyhow::Ok(())
        }
        .await;
        taxi::stop_all(fleet).await;
        phases
    }
    .await;
    bridge.stop().await;
    finish_broker(broker.check_running(), broker, outcome).await?;
    drop(database);
    Ok(())
}

/// One order through the API, waited for until its taxi has it: the whole path works.
async fn ready(api: SocketAddr, token: &str, orders: Orders) -> Result<()> {
    let taxi = orders.taxis.first().context("no taxis")?;
    let order_id = format!("{}-1", orders.phase);
    let body = serde_json::json!({
        "taxi_id": taxi,
        "kind": "message",
        "text": "The benchmark starts",
        "order_id": order_id,
        "expires_in_s": 60,
    });
    orders
        .tracker
        .sent(orders.phase, &order_id, taxi, Instant::now())?;
    let answer = simulator::http::client(0)?
        .post(format!("http://{api}/v1/orders"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .context("POST /v1/orders")?;
    let status = answer.status();
    if status != reqwest::StatusCode::CREATED {
        bail!(
            "the API did not accept an order: {} {}",
            status.as_u16(),
            answer.text().await.unwrap_or_default()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while orders.tracker.delivery(orders.phase).received == 0 {
        if Instant::now() >= deadline {
            bail!("an order accepted by the API did not reach its taxi within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Orders through the API, then the drain.
async fn api_phase(
    api: SocketAddr,
    token: &str,
    orders: Orders,
    pace: Pace,
    seconds: f64,
) -> Result<PhaseResult> {
    let phase = orders.phase;
    let say = |text: String| progress(phase, text);
    say(match pace {
        Pace::Rate(rate) => format!("{rate} orders/s through POST /v1/orders for {seconds} s"),
        Pace::FlatOut(connections) => {
            format!("POST /v1/orders back to back on {connections} connections for {seconds} s")
        }
    });
    let tracker = orders.tracker.clone();
    let sent = senders::call_api(
        api,
        token.to_owned(),
        orders,
        pace,
        Duration::from_secs_f64(seconds),
    )
    .await?;
    let delivery = drain(&tracker, phase).await;
    say(summary(&sent, &delivery));
    Ok(PhaseResult { sent, delivery })
}

/// Waits until every order of the phase has arrived, nothing has arrived for
/// [`DRAIN_QUIET`], or [`DRAIN_LIMIT`] has passed.
async fn drain(tracker: &Tracker, phase: &str) -> Delivery {
    let started = Instant::now();
    let mut last = tracker.delivery(phase);
    let mut last_change = Instant::now();
    loop {
        let now = tracker.delivery(phase);
        if now.missing() == 0
            || last_change.elapsed() >= DRAIN_QUIET
            || started.elapsed() >= DRAIN_LIMIT
        {
            return now;
        }
        if now.received != last.received {
            last_change = Instant::now();
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Orders in PostgreSQL by sender and state, once every order has been answered (the
/// taxis' acks go through the bridge's batches) or after [`DRAIN_LIMIT`].
async fn order_states(url: &str) -> Result<Vec<(String, String, i64)>> {
    let client = database::connect(url).await?;
    let deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM orders WHERE state IN ('queued', 'sent', 'received')",
                &[],
            )
            .await
            .context("counting unanswered orders")?
            .try_get(0)?;
        if open == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = client
        .query(
            "SELECT sender, state || COALESCE(' (' || reason || ')', ''), count(*) FROM orders \
             GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await
        .context("counting orders by state")?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect()
}

/// The first few orders not answered yet, with the number of acks stored for each.
async fn unanswered(url: &str) -> Result<Vec<(String, String, i64)>> {
    let client = database::connect(url).await?;
    let rows = client
        .query(
            "SELECT o.order_id, o.state, (SELECT count(*) FROM acks a WHERE a.order_id = \
             o.order_id) FROM orders o WHERE o.state IN ('queued', 'sent', 'received') \
             ORDER BY o.created_at LIMIT 5",
            &[],
        )
        .await
        .context("listing unanswered orders")?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect()
}

fn summary(sent: &Sent, delivery: &Delivery) -> String {
    format!(
        "{} of {} orders reached their taxi, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
        delivery.received,
        sent.sent,
        delivery.latency.p50_us as f64 / 1000.0,
        delivery.latency.p99_us as f64 / 1000.0,
        delivery.latency.max_us as f64 / 1000.0,
        if sent.errors > 0 {
            format!("; {} errors", sent.errors)
        } else {
            String::new()
        }
    )
}

/// Keeps a phase's outcome for the table (the error as text), reporting a failure at once.
fn report_outcome<T>(phase: &str, result: Result<T>) -> Result<T, String> {
    if let Err(e) = &result {
        progress(phase, format!("failed: {e:#}"));
    }
    result.map_err(|e| format!("{e:#}"))
}
