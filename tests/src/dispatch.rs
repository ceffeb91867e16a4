//! Dispatch end to end: a bridge with its orders API on a free port, taxis listening on their
//! inbox (rumqttc or `mosquitto_sub`), a small HTTP client for the API, and a broker that
//! can be restarted on the same ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::broker::{MqttBroker, TestBroker};
use crate::mosquitto::SubProcess;
use crate::mqtt::{Message, MqttClient};
use crate::pki::{ClientCert, TestPki};
use crate::platform::{eventually, Platform, Progress, ARRIVAL};

/// The API token of the tests, and the name it is configured under.
pub const TOKEN: &str = "dispatch-test-token";
pub const TOKEN_NAME: &str = "office";

/// A bridge configuration for `platform` with dispatch and its API on (on a free port), one
/// token ([`TOKEN`] as [`TOKEN_NAME`]), quick sweeps, and resends every `resend_ms`.
pub fn dispatch_config<B: MqttBroker>(
    platform: &Platform<B>,
    id: &str,
    resend_ms: u64,
) -> Result<bridge::Config> {
    let mut config = platform.bridge_config(id, platform.embedded_archive(&format!("s3-{id}")));
    let port = testkit::free_port().context("finding a free port for the dispatch API")?;
    config.dispatch.enabled = true;
    config.dispatch.sweep_interval_ms = 100;
    config.dispatch.resend_interval_ms = resend_ms;
    config.dispatch.online_resend_delay_ms = 100;
    config.dispatch.api.enabled = true;
    config.dispatch.api.listen = SocketAddr::from(([127, 0, 0, 1], port));
    config.dispatch.api.tokens = vec![bridge::config::ApiToken {
        name: TOKEN_NAME.to_owned(),
        sha256: bridge::dispatch::auth::token_sha256(TOKEN),
    }];
    Ok(config)
}

/// Waits until the bridge at `http_addr` has dispatch subscribed on the broker (from then on
/// inbox messages and statuses reach it).
pub async fn wait_dispatch_subscribed(http_addr: SocketAddr, at_least: f64) -> Result<()> {
    eventually("dispatch subscribed", ARRIVAL, || async move {
        let (_, page) = crate::http::get(http_addr, "/metrics").await?;
        let subscribed =
            crate::http::sample(&page, "dispatch_mqtt_subscribed_total", &[]).unwrap_or(0.0);
        Ok(if subscribed >= at_least {
            Progress::Done(())
        } else {
            Progress::Waiting(format!("{subscribed} subscriptions"))
        })
    })
    .await
}

/// An HTTP answer: status and body (JSON, or the text as a JSON string).
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: Value,
}

impl Answer {
    /// The `error` message of a refusal.
    pub fn error(&self) -> String {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

/// The dispatch API of one bridge.
#[derive(Clone, Copy, Debug)]
pub struct DispatchApi {
    pub addr: SocketAddr,
}

impl DispatchApi {
    /// One request with exactly these headers (besides Host, Connection and
    /// Content-Length) and body.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer> {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to the dispatch API at {}", self.addr))?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        let mut raw = Vec::new();
        tokio::time::timeout(crate::WAIT, async {
            stream.write_all(&bytes).await?;
            stream.read_to_end(&mut raw).await
        })
        .await
        .context("the dispatch API did not answer")?
        .context("talking to the dispatch API")?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("not an HTTP answer: {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
        Ok(Answer {
            status,
            headers: head.to_ascii_lowercase(),
            body,
        })
    }

    /// A request with the test token (and a JSON body, if given).
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer> {
        let authorization = format!("Bearer {TOKEN}");
        let mut headers = vec![("Authorization", authorization.as_str())];
        let body = match body {
            Some(body) => {
                headers.push(("Content-Type", "application/json"));
                body.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        self.raw(method, path, &headers, &body).await
    }

    /// `POST /v1/orders`, which must answer 201; returns the order.
    pub async fn send(&self, order: Value) -> Result<Value> {
        let answer = self.call("POST", "/v1/orders", Some(&order)).await?;
        ensure!(
            answer.status == 201,
            "POST /v1/orders {order} answered {}: {}",
            answer.status,
            answer.body
        );
        Ok(answer.body)
    }

    /// An order to `taxi` with this text (and id), returns its id.
    pub async fn send_to(&self, taxi: &str, order_id: &str, text: &str) -> Result<String> {
        let order = self
            .send(json!({ "taxi_id": taxi, "kind": "order", "text": text, "order_id": order_id }))
            .await?;
        Ok(order["order_id"].as_str().unwrap_or_default().to_owned())
    }

    /// `GET /v1/orders/{id}`, which must answer 200.
    pub async fn order(&self, order_id: &str) -> Result<Value> {
        let answer = self
            .call("GET", &format!("/v1/orders/{order_id}"), None)
            .await?;
        ensure!(
            answer.status == 200,
            "GET /v1/orders/{order_id} answered {}: {}",
            answer.status,
            answer.body
        );
        Ok(answer.body)
    }

    /// Waits until the order is in `state`; returns it.
    pub async fn wait_for_state(&self, order_id: &str, state: &str) -> Result<Value> {
        eventually(
            &format!("order {order_id} {state}"),
            ARRIVAL,
            || async move {
                let order = self.order(order_id).await?;
                Ok(if order["state"] == state {
                    Progress::Done(order)
                } else {
                    Progress::Waiting(format!("{order}"))
                })
            },
        )
        .await
    }

    /// The states of the order's history, oldest first.
    pub async fn history(&self, order_id: &str) -> Result<Vec<String>> {
        let order = self.order(order_id).await?;
        Ok(order["history"]
            .as_array()
            .context("no history")?
            .iter()
            .map(|event| event["state"].as_str().unwrap_or_default().to_owned())
            .collect())
    }
}

/// A taxi listening on its inbox with rumqttc: connected with a persistent session
/// (`clean_session = false`) or not, subscribed QoS 1.
pub async fn inbox_taxi<B: MqttBroker>(
    platform: &Platform<B>,
    cert: &ClientCert,
    persistent: bool,
) -> Result<MqttClient> {
    let mut client = platform
        .broker
        .client(cert)
        .clean_session(!persistent)
        .connect()
        .await?;
    let topic = format!("taxi/{}/inbox", cert.id);
    let codes = client.subscribe_and_wait(&[(&topic, 1)]).await?;
    ensure!(codes == [1], "subscription to {topic} refused: {codes:?}");
    Ok(client)
}

/// The inbox message of a PUBLISH.
pub fn inbox_message(message: &Message) -> Result<wire::InboxMessage> {
    wire::decode(&message.payload).with_context(|| format!("{message:?} is not an inbox message"))
}

/// Waits for the next inbox message of `taxi` (rumqttc); returns it.
pub async fn next_inbox(taxi: &mut MqttClient, taxi_id: &str) -> Result<wire::InboxMessage> {
    let message = taxi
        .expect_publish(&format!("taxi/{taxi_id}/inbox"))
        .await?;
    inbox_message(&message)
}

/// The taxi answers an inbox message on `taxi/<id>/ack` and waits for the PUBACK.
pub async fn answer(
    taxi: &mut MqttClient,
    taxi_id: &str,
    seq: u64,
    order_id: &str,
    state: &str,
    reason: Option<&str>,
) -> Result<()> {
    let ack = json!({
        "seq": seq,
        "order_id": order_id,
        "state": state,
        "ts_ms": crate::unix_ms(),
        "reason": reason,
    });
    taxi.publish_acked(
        &format!("taxi/{taxi_id}/ack"),
        false,
        ack.to_string().as_bytes(),
    )
    .await
}

/// Waits until the ack `(taxi, seq)` is stored (the pipeline has processed it).
pub async fn wait_for_ack_stored<B: MqttBroker>(
    platform: &Platform<B>,
    taxi_id: &str,
    seq: i64,
) -> Result<()> {
    let url = platform.database_url();
    eventually(&format!("ack {taxi_id}/{seq} stored"), ARRIVAL, || {
        let url = url.clone();
        async move {
            let db = crate::platform::Db::connect(&url).await?;
            let stored = db
                .count(
                    "SELECT count(*) FROM acks WHERE taxi_id = $1 AND seq = $2",
                    &[&taxi_id, &seq],
                )
                .await?;
            Ok(if stored == 1 {
                Progress::Done(())
            } else {
                Progress::Waiting("not stored".to_owned())
            })
        }
    })
    .await
}

/// The taxi answers `order_id` with `state` ([`answer`]); waits until the order is in that
/// state and returns it.
pub async fn answer_and_wait(
    api: &DispatchApi,
    taxi: &mut MqttClient,
    taxi_id: &str,
    seq: u64,
    order_id: &str,
    state: &str,
    reason: Option<&str>,
) -> Result<Value> {
    answer(taxi, taxi_id, seq, order_id, state, reason).await?;
    api.wait_for_state(order_id, state).await
}

/// The taxi answers `order_id` with `state` ([`answer`]); waits until the ack is stored,
/// whatever it did to the order.
pub async fn answer_and_wait_stored(
    platform: &Platform,
    taxi: &mut MqttClient,
    taxi_id: &str,
    seq: u64,
    order_id: &str,
    state: &str,
) -> Result<()> {
    answer(taxi, taxi_id, seq, order_id, state, None).await?;
    wait_for_ack_stored(platform, taxi_id, seq as i64).await
}

/// Sends the marker order `marker` to `taxi_id` and checks that it is the next inbox message
/// of `taxi`: nothing else was on its way (`what` says what that would have been).
pub async fn expect_marker_next(
    api: &DispatchApi,
    taxi: &mut MqttClient,
    taxi_id: &str,
    marker: &str,
    what: &str,
) -> Result<()> {
    api.send_to(taxi_id, marker, "marker").await?;
    let next = next_inbox(taxi, taxi_id).await?;
    ensure!(next.order_id == marker, "{what}: {next:?}");
    Ok(())
}

/// Sends the marker order `marker` to `taxi_id` and reads `taxi`'s inbox up to it: before it,
/// only copies of `copy` (resends) may come.
pub async fn expect_only_copies_before_marker(
    api: &DispatchApi,
    taxi: &mut MqttClient,
    taxi_id: &str,
    marker: &str,
    copy: &str,
) -> Result<()> {
    api.send_to(taxi_id, marker, "marker").await?;
    let next = next_new_inbox(taxi, taxi_id, &[copy]).await?;
    ensure!(next.order_id == marker, "{taxi_id} received {next:?}");
    Ok(())
}

/// The next inbox message of `taxi` that is not a copy of one in `seen`: the platform may
/// send an order again (same id) until its taxi's answer is stored, so copies may come first.
pub async fn next_new_inbox(
    taxi: &mut MqttClient,
    taxi_id: &str,
    seen: &[&str],
) -> Result<wire::InboxMessage> {
    loop {
        let next = next_inbox(taxi, taxi_id).await?;
        if !seen.contains(&next.order_id.as_str()) {
            return Ok(next);
        }
    }
}

/// A taxi listening on its inbox with `mosquitto_sub` (QoS 1); not yet known to be
/// subscribed.
pub fn mosquitto_inbox_taxi(platform: &Platform, cert: &ClientCert) -> Result<SubProcess> {
    platform
        .broker
        .mosquitto_sub(cert)
        .topic(&format!("taxi/{}/inbox", cert.id))
        .qos(1)
        .spawn()
}

/// Waits for the next inbox message of a `mosquitto_sub` taxi; returns it.
pub async fn next_mosquitto_inbox(
    taxi: &mut SubProcess,
    taxi_id: &str,
) -> Result<wire::InboxMessage> {
    let payload = taxi
        .expect_message(&format!("taxi/{taxi_id}/inbox"))
        .await?;
    wire::decode(payload.as_bytes()).with_context(|| format!("{payload:?} is not an inbox message"))
}

/// A broker in a runtime of its own, on fixed ports, so that it can be stopped like a crash
/// (everything it held in memory is gone) and started again on the same ports.
pub struct RestartableBroker {
    mqtt: SocketAddr,
    http: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl RestartableBroker {
    /// Starts it on two free ports; returns it and the broker's handle for clients.
    pub fn start(pki: &TestPki) -> Result<(RestartableBroker, TestBroker)> {
        let mut broker = RestartableBroker {
            mqtt: SocketAddr::from(([127, 0, 0, 1], testkit::free_port()?)),
            http: SocketAddr::from(([127, 0, 0, 1], testkit::free_port()?)),
            runtime: None,
        };
        let running = broker.run(pki)?;
        Ok((broker, running))
    }

    fn run(&mut self, pki: &TestPki) -> Result<TestBroker> {
        let (mqtt, http) = (self.mqtt, self.http);
        let deadline = std::time::Instant::now() + crate::WAIT;
        loop {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("restartable-broker")
                .enable_all()
                .build()
                .context("building the broker's runtime")?;
            let started = std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        runtime.block_on(TestBroker::start_with(pki, |config| {
                            config.mqtt.listen = mqtt;
                            config.http.listen = http;
                        }))
                    })
                    .join()
            });
            match started {
                Ok(Ok(broker)) => {
                    self.runtime = Some(runtime);
                    return Ok(broker);
                }
                // The old listener may take a moment to release the port.
                Ok(Err(e)) if std::time::Instant::now() < deadline => {
                    runtime.shutdown_background();
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(Err(e)) => {
                    runtime.shutdown_background();
                    return Err(e.context("starting the broker again on the same ports"));
                }
                Err(_) => bail!("the broker's start panicked"),
            }
        }
    }

    /// Stops it at once: connections drop, sessions, queues and retained messages are gone.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Stops it and starts a fresh one on the same ports.
    pub fn restart(&mut self, pki: &TestPki) -> Result<TestBroker> {
        self.stop();
        tokio::task::block_in_place(|| self.run(pki))
    }
}

impl Drop for RestartableBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A binary of this workspace next to the test executable (`target/<profile>/<name>`).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not in target/<profile>/deps")?;
    let binary = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    ensure!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p {name}` (same profile as the tests), \
         or run the whole workspace's tests, which builds it",
        binary.display()
    );
    Ok(binary)
}

/// Runs `taxictl` against `api` with `args`; returns (success, stdout, stderr).
pub async fn taxictl(
    api: &DispatchApi,
    token: &str,
    args: &[&str],
) -> Result<(bool, String, String)> {
    let output = tokio::process::Command::new(workspace_binary("taxictl")?)
        .args(args)
        .env("TAXICTL_URL", format!("http://{}", api.addr))
        .env("TAXICTL_TOKEN", token)
        .kill_on_drop(true)
        .output()
        .await
        .context("running taxictl")?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Order ids a taxi started by [`answering_taxi`] has received so far.
pub type ReceivedIds = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// Lets `taxi` (listening on its inbox) answer every inbox message in the background with
/// one ack per state of `states`, in that order, published QoS 1 without waiting for each
/// PUBACK; seq numbers count from `first_seq`. Returns the ids received so far and the task
/// (abort it, or drop the runtime, to stop).
pub fn answering_taxi(
    mut taxi: MqttClient,
    taxi_id: &str,
    states: &'static [&'static str],
    first_seq: u64,
) -> (ReceivedIds, tokio::task::JoinHandle<Result<()>>) {
    let received = ReceivedIds::default();
    let ids = received.clone();
    let taxi_id = taxi_id.to_owned();
    let task = tokio::spawn(async move {
        let inbox = format!("taxi/{taxi_id}/inbox");
        let ack_topic = format!("taxi/{taxi_id}/ack");
        let mut seq = first_seq;
        loop {
            let message = taxi
                .expect_publish_within(&inbox, Duration::from_secs(3600))
                .await?;
            let order = inbox_message(&message)?;
            ids.lock()
                .expect("received ids")
                .insert(order.order_id.clone());
            for state in states {
                let ack = json!({
                    "seq": seq, "order_id": order.order_id, "state": state,
                    "ts_ms": crate::unix_ms(),
                });
                seq += 1;
                taxi.publish(&ack_topic, 1, false, ack.to_string().as_bytes())
                    .await?;
            }
        }
    });
    (received, task)
}

/// How many orders are in each state, by state.
pub async fn orders_per_state(
    platform: &Platform,
) -> Result<std::collections::BTreeMap<String, i64>> {
    let db = platform.db().await?;
    let rows = db
        .client()
        .query("SELECT state, count(*) FROM orders GROUP BY state", &[])
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Waits until `count` orders are in `state`; returns the count per state.
pub async fn wait_for_orders_in(
    platform: &Platform,
    state: &str,
    count: i64,
    within: Duration,
) -> Result<std::collections::BTreeMap<String, i64>> {
    eventually(&format!("{count} orders {state}"), within, || async move {
        let states = orders_per_state(platform).await?;
        Ok(if states.get(state) == Some(&count) {
            Progress::Done(states)
        } else {
            Progress::Waiting(format!("{states:?}"))
        })
    })
    .await
}
