//! The two ways orders reach a taxi, as the benchmark drives them: a backoffice application
//! publishing to `taxi/<id>/inbox` over MQTT with its own certificate, and an application
//! calling the dispatch HTTP API (`POST /v1/orders`, bearer token) on keep-alive connections.
//! Each sender runs on a thread of its own with its own runtime, so that the busy taxis do
//! not delay its clock; every order goes to a random taxi and is noted in the [`Tracker`]
//! just before it is sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{Event, Packet, QoS};

use super::tracker::Tracker;
use simulator::client;
use simulator::measure::{self, Latency, LatencySummary};
use simulator::pki::Client;

/// Orders are valid this long.
const EXPIRES_IN_S: i64 = 60;
/// Errors kept for the report.
const KEPT_ERRORS: usize = 5;
/// API connections of a paced sender.
const PACED_CONNECTIONS: usize = 4;

/// How fast to send.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// This many orders per second in all.
    Rate(f64),
    /// As fast as answers come back, on this many connections at once.
    FlatOut(usize),
}

/// What a sender did.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    /// Orders sent (published, or requested).
    pub sent: u64,
    /// Published orders the broker acknowledged; API requests answered 201 Created.
    pub accepted: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// How long the sending lasted.
    pub elapsed: Duration,
    /// API only: from the request to its answer.
    pub answer: Option<LatencySummary>,
}

impl Sent {
    pub fn accepted_per_s(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn error(&mut self, error: String) {
        self.errors += 1;
        if self.first_errors.len() < KEPT_ERRORS {
            self.first_errors.push(error);
        }
    }

    fn merge(&mut self, other: Sent) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        for error in other.first_errors {
            if self.first_errors.len() < KEPT_ERRORS {
                self.first_errors.push(error);
            }
        }
        self.errors += other.errors;
    }
}

/// What every order needs: where it goes and what it is.
#[derive(Clone)]
pub struct Orders {
    /// The taxis to choose from.
    pub taxis: Arc<Vec<String>>,
    /// Phase name, also the prefix of the order ids.
    pub phase: &'static str,
    pub tracker: Arc<Tracker>,
}

impl Orders {
    fn next(&self, number: u64, rng: &mut impl Rng) -> (String, &str) {
        let taxi = &self.taxis[rng.random_range(0..self.taxis.len())];
        (format!("{}-{number}", self.phase), taxi.as_str())
    }
}

/// Runs `job` on a new thread with a runtime of its own and waits for it.
async fn on_own_thread<T: Send + 'static>(
    name: &str,
    job: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>>>>
        + Send
        + 'static,
) -> Result<T> {
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || -> Result<T> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("sender runtime")?;
            runtime.block_on(job())
        })
        .with_context(|| format!("starting the {name} thread"))?;
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .context("joining the sender thread")?
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?
}

/// Publishes orders directly to the taxis' inboxes as a backoffice application, QoS 1, at
/// `rate` per second for `duration`, then waits (at most ten seconds) for the last PUBACKs.
pub async fn publish_directly(
    backoffice: Client,
    broker: SocketAddr,
    orders: Orders,
    rate: f64,
    duration: Duration,
) -> Result<Sent> {
    on_own_thread("mqtt-sender", move || {
        Box::pin(publish_directly_here(
            backoffice, broker, orders, rate, duration,
        ))
    })
    .await
}

async fn publish_directly_here(
    backoffice: Client,
    broker: SocketAddr,
    orders: Orders,
    rate: f64,
    duration: Duration,
) -> Result<Sent> {
    let host = broker.ip().to_string();
    let (mqtt, mut events) =
        client::new(&backoffice, &host, broker.port(), Duration::from_secs(30));
    client::connect(&mut events, Duration::from_secs(30))
        .await
        .context("connecting the backoffice")?;
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let driver_acked = acked.clone();
    let driver = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    driver_acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(client::describe(e)),
            }
        }
    });

    let mut report = Sent::default();
    let mut rng = StdRng::seed_from_u64(rand::random());
    let period = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut next = started;
    let mut number = 0;
    while next < started + duration {
        tokio::time::sleep_until(next.into()).await;
        next += period;
        number += 1;
        let (order_id, taxi) = orders.next(number, &mut rng);
        let now_ms = measure::unix_ms();
        let payload = wire::encode_json(&wire::InboxMessage {
            order_id: order_id.clone(),
            kind: wire::InboxKind::Order,
            text: "Pick up at Alexanderplatz 1".to_owned(),
            created_ms: now_ms,
            expires_ms: Some(now_ms + EXPIRES_IN_S * 1000),
        });
        orders
            .tracker
            .sent(orders.phase, &order_id, taxi, Instant::now())?;
        let topic = format!("taxi/{taxi}/inbox");
        if let Err(e) = mqtt.publish(topic, QoS::AtLeastOnce, false, payload).await {
            orders.tracker.unsent(&order_id);
            report.error(format!("publish: {e}"));
            break;
        }
        report.sent += 1;
    }
    report.elapsed = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked.load(std::sync::atomic::Ordering::Relaxed) < report.sent
        && Instant::now() < deadline
        && !driver.is_finished()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.accepted = acked.load(std::sync::atomic::Ordering::Relaxed);
    let _ = mqtt.disconnect().await;
    match tokio::time::timeout(Duration::from_secs(2), driver).await {
        Ok(Ok(Err(e))) => report.error(format!("backoffice connection: {e:#}")),
        Ok(_) => {}
        Err(_) => report.error("backoffice connection did not close".to_owned()),
    }
    Ok(report)
}

/// Sends orders through the dispatch API (`POST /v1/orders`) for `duration`.
pub async fn call_api(
    api: SocketAddr,
    token: String,
    orders: Orders,
    pace: Pace,
    duration: Duration,
) -> Result<Sent> {
    on_own_thread("api-sender", move || {
        Box::pin(call_api_here(api, token, orders, pace, duration))
    })
    .await
}

async fn call_api_here(
    api: SocketAddr,
    token: String,
    orders: Orders,
    pace: Pace,
    duration: Duration,
) -> Result<Sent> {
    let (connections, period) = match pace {
        Pace::Rate(rate) => (
            PACED_CONNECTIONS,
            Some(Duration::from_secs_f64(PACED_CONNECTIONS as f64 / rate)),
        ),
        Pace::FlatOut(connections) => (connections.max(1), None),
    };
    let started = Instant::now();
    let end = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..connections {
        let (orders, token) = (orders.clone(), token.clone());
        // Paced workers take turns, spread over one period.
        let first = started
            + period.map_or(Duration::ZERO, |p| {
                p.mul_f64(worker as f64 / connections as f64)
            });
        workers.spawn(async move {
            api_worker(
                api,
                &token,
                &orders,
                worker as u64,
                connections as u64,
                first,
                period,
                end,
            )
            .await
        });
    }
    let mut report = Sent::default();
    let mut answers = Latency::new()?;
    while let Some(joined) = workers.join_next().await {
        let (sent, latency) = joined.context("API worker failed")??;
        report.merge(sent);
        answers.merge(&latency)?;
    }
    report.elapsed = started.elapsed();
    report.answer = Some(answers.summary());
    Ok(report)
}

/// One keep-alive connection (a client of its own, pooling one connection) sending orders
/// until `end`: every `period`, or back to back. Each answer is timed from just before the
/// request until its body has been read.
#[allow(clippy::too_many_arguments)]
async fn api_worker(
    api: SocketAddr,
    token: &str,
    orders: &Orders,
    worker: u64,
    workers: u64,
    first: Instant,
    period: Option<Duration>,
    end: Instant,
) -> Result<(Sent, Latency)> {
    let client = simulator::http::client(1)?;
    let url = reqwest::Url::parse(&format!("http://{api}/v1/orders")).context("API URL")?;
    let authorization = format!("Bearer {token}");
    let mut report = Sent::default();
    let mut latency = Latency::new()?;
    let mut rng = StdRng::seed_from_u64(rand::random());
    let mut next = first;
    let mut round = 0;
    loop {
        if let Some(period) = period {
            if next >= end {
                break;
            }
            tokio::time::sleep_until(next.into()).await;
            next += period;
        } else if Instant::now() >= end {
            break;
        }
        // Order numbers never collide between workers.
        let number = round * workers + worker + 1;
        round += 1;
        let (order_id, taxi) = orders.next(number, &mut rng);
        let body = serde_json::json!({
            "taxi_id": taxi,
            "kind": "order",
            "text": "Pick up at Alexanderplatz 1",
            "order_id": order_id,
            "expires_in_s": EXPIRES_IN_S,
        })
        .to_string();
        let at = Instant::now();
        orders.tracker.sent(orders.phase, &order_id, taxi, at)?;
        report.sent += 1;
        let answer = async {
            let response = client
                .post(url.clone())
                .header(reqwest::header::AUTHORIZATION, authorization.as_str())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.bytes().await?))
        }
        .await;
        latency.record(at.elapsed());
        match answer {
            Ok((status, _)) if status == reqwest::StatusCode::CREATED => report.accepted += 1,
            Ok((status, body)) => {
                orders.tracker.unsent(&order_id);
                report.error(format!(
                    "{} {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&body)
                ));
            }
            Err(e) => {
                orders.tracker.unsent(&order_id);
                report.error(format!("{e:#}"));
                if report.errors > 100 && report.accepted == 0 {
                    bail!("the API fails every request: {e:#}");
                }
            }
        }
    }
    Ok((report, latency))
}
