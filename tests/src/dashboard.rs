//! The dashboard in a real browser: headless Chromium driven over the DevTools protocol,
//! and the platform it shows (broker, PostgreSQL, a bridge with its dispatch API, simulated
//! taxis, the OpenID provider with a sign-in page, the reporting service).
//!
//! The DevTools protocol is spoken over a pipe (`--remote-debugging-pipe`: Chromium reads
//! commands on its descriptor 3 and writes answers on 4, each a JSON text ended by a NUL
//! byte) instead of a WebSocket: no port, no discovery request, and no new dependency; a
//! CDP crate such as chromiumoxide would bring hundreds of generated types and a WebSocket
//! stack for the six commands used here (create and attach a page, navigate, evaluate,
//! screenshot, and the console and log events, which are kept for failure reports).
//!
//! Chromium is the Debian package `chromium` (`scripts/setup`), or the program in the
//! `CHROMIUM` variable; it runs `--headless --no-sandbox --disable-gpu` in a throw-away
//! profile and trusts the test's certificates by `--ignore-certificate-errors` (the page is
//! still a secure context, so Web Crypto works as it does for people).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the screenshots of the dashboard test are kept: `target/test-artifacts/dashboard`.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts").join("dashboard")
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A headless Chromium, killed on drop.
pub struct Browser {
    child: Child,
    commands: Mutex<std::io::PipeWriter>,
    pending: Pending,
    next_id: AtomicU64,
    /// Console messages, exceptions and log entries of every page, oldest first.
    console: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with its DevTools pipe; its stderr goes to `log`.
    pub async fn launch(log: &Path) -> Result<Browser> {
        let profile = tempfile::Builder::new()
            .prefix("chromium-profile-")
            .tempdir()?;
        // Ours: we write commands to `to_browser`, read answers from `from_browser`.
        let (browser_reads, to_browser) = std::io::pipe()?;
        let (from_browser, browser_writes) = std::io::pipe()?;
        let (read_fd, write_fd) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        let program = std::env::var_os("CHROMIUM").unwrap_or_else(|| "chromium".into());
        let stderr =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(&program);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                "--ignore-certificate-errors",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
                "--mute-audio",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) on
        // descriptors that are open in the child.
        unsafe {
            command.pre_exec(move || {
                // Copies above 10 first: the pipe ends may themselves be 3 or 4.
                let read_copy = libc::fcntl(read_fd, libc::F_DUPFD, 10);
                let write_copy = libc::fcntl(write_fd, libc::F_DUPFD, 10);
                if read_copy < 0
                    || write_copy < 0
                    || libc::dup2(read_copy, 3) < 0
                    || libc::dup2(write_copy, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| {
            format!(
                "starting {} (Debian package chromium; scripts/setup installs it)",
                program.to_string_lossy()
            )
        })?;
        drop(browser_reads);
        drop(browser_writes);

        let pending: Pending = Arc::default();
        let console: Arc<Mutex<Vec<String>>> = Arc::default();
        let (answers, messages) = (pending.clone(), console.clone());
        std::thread::Builder::new()
            .name("devtools-reader".to_owned())
            .spawn(move || read_answers(from_browser, &answers, &messages))?;
        Ok(Browser {
            child,
            commands: Mutex::new(to_browser),
            pending,
            next_id: AtomicU64::new(1),
            console,
            _profile: profile,
        })
    }

    /// Sends one command (to a page's session, or to the browser) and waits for its result.
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (sender, receiver) = oneshot::channel();
        lock(&self.pending).insert(id, sender);
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        {
            let mut commands = lock(&self.commands);
            commands
                .write_all(&bytes)
                .and_then(|()| commands.flush())
                .with_context(|| format!("sending {method} to Chromium (has it exited?)"))?;
        }
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, receiver)
            .await
            .with_context(|| format!("{method}: no answer from Chromium in {COMMAND_TIMEOUT:?}"))?
            .with_context(|| format!("{method}: Chromium closed its pipe"))?;
        if let Some(error) = answer.get("error") {
            bail!("{method}: {error}");
        }
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    }

    /// A new tab, with its console and log followed.
    pub async fn new_page(self: &Arc<Self>) -> Result<Page> {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        let target_id = target["targetId"]
            .as_str()
            .context("Target.createTarget: no targetId")?;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .context("Target.attachToTarget: no sessionId")?
            .to_owned();
        let page = Page {
            browser: self.clone(),
            session,
        };
        page.call("Runtime.enable", json!({})).await?;
        page.call("Log.enable", json!({})).await?;
        Ok(page)
    }

    /// What the pages printed, raised and logged (CSP refusals, failed loads), oldest first.
    pub fn console(&self) -> Vec<String> {
        lock(&self.console).clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads NUL-separated messages from Chromium: answers go to their callers, console and log
/// events to `console`. Ends when Chromium closes the pipe.
fn read_answers(mut pipe: std::io::PipeReader, pending: &Pending, console: &Mutex<Vec<String>>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buffer.extend_from_slice(&chunk[..n]);
        while let Some(end) = buffer.iter().position(|&b| b == 0) {
            let message: Vec<u8> = buffer.drain(..=end).collect();
            let Ok(message) = serde_json::from_slice::<Value>(&message[..end]) else {
                continue;
            };
            if let Some(id) = message.get("id").and_then(Value::as_u64) {
                if let Some(sender) = lock(pending).remove(&id) {
                    let _ = sender.send(message);
                }
            } else if let Some(line) = console_line(&message) {
                lock(console).push(line);
            }
        }
    }
    // Callers still waiting learn that the pipe is closed.
    lock(pending).clear();
}

/// A console message, an exception or a log entry as one line.
fn console_line(event: &Value) -> Option<String> {
    let params = &event["params"];
    match event["method"].as_str()? {
        "Runtime.consoleAPICalled" => {
            let args: Vec<String> = params["args"]
                .as_array()?
                .iter()
                .map(|a| {
                    a.get("value")
                        .map(|v| v.to_string())
                        .or_else(|| a["description"].as_str().map(str::to_owned))
                        .unwrap_or_default()
                })
                .collect();
            Some(format!(
                "console.{}: {}",
                params["type"].as_str()?,
                args.join(" ")
            ))
        }
        "Runtime.exceptionThrown" => Some(format!(
            "exception: {}",
            params["exceptionDetails"]["exception"]["description"]
                .as_str()
                .or_else(|| params["exceptionDetails"]["text"].as_str())
                .unwrap_or("?")
        )),
        "Log.entryAdded" => Some(format!(
            "log.{}: {} {}",
            params["entry"]["level"].as_str()?,
            params["entry"]["text"].as_str()?,
            params["entry"]["url"].as_str().unwrap_or("")
        )),
        _ => None,
    }
}

/// One tab.
pub struct Page {
    browser: Arc<Browser>,
    session: String,
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.browser.call(Some(&self.session), method, params).await
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        let answer = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = answer["errorText"].as_str() {
            bail!("navigating to {url}: {error}");
        }
        Ok(())
    }

    /// The value of a JavaScript expression (promises awaited) in the page.
    pub async fn eval(&self, expression: &str) -> Result<Value> {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "returnByValue": true,
                    "awaitPromise": true,
                }),
            )
            .await?;
        if let Some(details) = answer.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or_else(|| details["text"].as_str())
                .unwrap_or("?");
            bail!("{expression}: {text}");
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Waits until `expression` is truthy (errors count as not yet: the page may be between
    /// two documents); returns its value.
    pub async fn wait_for(&self, what: &str, expression: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.eval(expression).await {
                Ok(value) if truthy(&value) => return Ok(value),
                Ok(value) => last = value.to_string(),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                let href = self.eval("location.href").await.unwrap_or_default();
                bail!(
                    "{what}: not within {timeout:?} (last: {last}; page {href})\nconsole:\n{}",
                    self.browser.console().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element (its `click()`, as a person's click would run the same handlers).
    pub async fn click(&self, selector: &str) -> Result<()> {
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({s}); if (!e) return false; e.click(); return true; }})()",
                s = json!(selector)
            ))
            .await?;
        if found != json!(true) {
            bail!("no element {selector}");
        }
        Ok(())
    }

    /// Types `value` into the input (sets it and fires `input` and `change`).
    pub async fn fill(&self, selector: &str, value: &str) -> Result<()> {
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({s}); if (!e) return false; e.value = {v};
                   e.dispatchEvent(new Event('input', {{ bubbles: true }}));
                   e.dispatchEvent(new Event('change', {{ bubbles: true }})); return true; }})()",
                s = json!(selector),
                v = json!(value)
            ))
            .await?;
        if found != json!(true) {
            bail!("no element {selector}");
        }
        Ok(())
    }

    /// Saves a PNG of the page as `<artifacts>/<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await?;
        let data = shot["data"]
            .as_str()
            .ok_or_else(|| anyhow!("Page.captureScreenshot: no data"))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("the screenshot is not base64")?;
        let dir = artifacts_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The public client of the dashboard at the provider.
pub const CLIENT_ID: &str = "reporting-dashboard";
/// The person who signs in (role dispatcher: fleet, reports, trips, orders, orders.send).
pub const ACCOUNT: &str = "dora";
pub const PASSWORD: &str = "correct horse battery staple";
/// Simulated taxis driving on the map.
pub const SIMULATED: [&str; 3] = ["cab-1", "cab-2", "cab-3"];
/// The taxi that orders are sent to from the page: a plain MQTT client on its inbox.
pub const INBOX_TAXI: &str = "cab-inbox";
/// A taxi that never connects: the orders of the pagination test are sent to it.
pub const PARKED_TAXI: &str = "cab-parked";
/// Orders in the orders table before the page opens.
pub const SEEDED_ORDERS: usize = 12;

/// Everything the dashboard shows, running.
pub struct Stage {
    pub platform: crate::platform::Platform,
    pub bridge: bridge::RunningBridge,
    pub dispatch: crate::dispatch::DispatchApi,
    pub provider: testkit::oidc::OidcProvider,
    /// `https://localhost:<port>/dashboard/`
    pub url: String,
    /// The reporting API (its static tokens are [`crate::reporting`]'s).
    pub api: crate::reporting::Api,
    pub taxis: Vec<simulator::taxi::SimulatedTaxi>,
}

impl Stage {
    /// Broker, PostgreSQL with every migration, a bridge with its dispatch API, the provider
    /// with a sign-in page, reporting sending orders to that dispatch API, windows and days
    /// of figures, orders to page through, and simulated taxis on the move.
    pub async fn start() -> Result<Stage> {
        use crate::dispatch::{dispatch_config, wait_dispatch_subscribed, DispatchApi};
        use testkit::oidc::{OidcAccount, OidcClient, OidcOptions, OidcProvider};

        let platform = crate::platform::Platform::start().await?;
        let config = dispatch_config(&platform, "d1", 30_000)?;
        let bridge = platform.start_bridge(&config).await?;
        let dispatch = DispatchApi {
            addr: bridge
                .dispatch_api
                .context("the dispatch API is not running")?,
        };
        wait_dispatch_subscribed(bridge.http_addr, 1.0).await?;
        platform.wait_until_consuming().await?;
        let mut analytics = analytics::Config::default();
        analytics.postgres.url = platform.database_url();
        analytics::db::migrate(&analytics.postgres).await?;

        let port = testkit::free_port()?;
        let base = format!("https://localhost:{port}");
        let redirect = format!("{base}/dashboard/");
        let provider = OidcProvider::start(
            OidcOptions::default()
                .interactive_login()
                .client(OidcClient::public(CLIENT_ID, &[&redirect]))
                .account(
                    OidcAccount::new(ACCOUNT, &["dispatcher"])
                        .password(PASSWORD)
                        .claim("name", "Dora Dispatcher"),
                ),
        )
        .await?;

        let mut settings = crate::reporting::config(&platform.database_url(), &platform.pki);
        settings.http.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        settings.auth.oidc = Some(reporting::config::OidcConfig {
            issuer: provider.issuer().to_owned(),
            audience: provider.audience().to_owned(),
            roles_claim: "roles".to_owned(),
            client_id: CLIENT_ID.to_owned(),
            leeway_s: 5,
            jwks_min_refresh_s: 1,
            ca: None,
        });
        settings.dashboard.redirect = Some(redirect);
        settings.dispatch.url = Some(format!("http://{}", dispatch.addr));
        settings.dispatch.token = Some(crate::dispatch::TOKEN.to_owned());
        let api = crate::reporting::start_in_process(settings, &platform.pki).await?;

        seed(&platform, &dispatch).await?;
        let mut taxis = Vec::new();
        for (n, id) in SIMULATED.iter().enumerate() {
            taxis.push(simulated_taxi(&platform, id, n as u64).await?);
        }
        Ok(Stage {
            platform,
            bridge,
            dispatch,
            provider,
            url: format!("{base}/dashboard/"),
            api,
            taxis,
        })
    }
}

/// A simulated taxi driving (two positions a second), never offline, never hailed.
async fn simulated_taxi(
    platform: &crate::platform::Platform,
    id: &str,
    seed: u64,
) -> Result<simulator::taxi::SimulatedTaxi> {
    let cert = platform.pki.client(id, "taxi")?;
    let client = simulator::pki::Client::from_pem(
        id,
        platform.pki.ca_pem().as_bytes(),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
    )?;
    let spec = simulator::taxi::TaxiSpec {
        client,
        host: platform.broker.mqtt_addr.ip().to_string(),
        port: platform.broker.mqtt_addr.port(),
        behaviour: simulator::taxi::Behaviour {
            rate: 2.0,
            hail_every: None,
            offline_every: None,
            ..simulator::taxi::Behaviour::default()
        },
        seed,
    };
    let counters = Arc::new(simulator::taxi::Counters::default());
    let mut taxi = simulator::taxi::SimulatedTaxi::spawn(spec, counters, None);
    taxi.wait_listening(crate::WAIT).await?;
    Ok(taxi)
}

/// The speed layer's windows of the last 30 minutes (fleet-wide, and four H3 cells of
/// Berlin in the newest one), the last ten days' results, and [`SEEDED_ORDERS`] orders.
async fn seed(
    platform: &crate::platform::Platform,
    dispatch: &crate::dispatch::DispatchApi,
) -> Result<()> {
    let db = platform.db().await?;
    let zones = analytics::speed::zone::Zones::new(8)?;
    let (lat, lon) = crate::platform::BERLIN;
    let cells: Vec<String> = [(0.0, 0.0), (0.01, 0.0), (0.0, 0.015), (-0.01, -0.01)]
        .iter()
        .filter_map(|(dlat, dlon)| zones.zone(lat + dlat, lon + dlon))
        .collect();
    db.client()
        .execute(
            "INSERT INTO windows (window_start, window_end, zone, positions, taxis,
                                  avg_speed_kmh, max_speed_kmh, tours_started, tours_ended,
                                  revenue_cents, orders_sent, orders_accepted, computed_at)
             SELECT s, s + interval '10 seconds', 'fleet', 40 + (n % 7) * 3, 3 + n % 2,
                    25 + n % 11, 50, 0, 0, 0, 0, 0, s + interval '15 seconds'
               FROM generate_series(1, 170) AS n,
                    LATERAL (SELECT date_bin('10 seconds', now(), 'epoch')
                                    - n * interval '10 seconds' AS s) AS w",
            &[],
        )
        .await
        .context("seeding windows")?;
    db.client()
        .execute(
            "INSERT INTO windows (window_start, window_end, zone, positions, taxis,
                                  avg_speed_kmh, max_speed_kmh, tours_started, tours_ended,
                                  revenue_cents, orders_sent, orders_accepted, computed_at)
             SELECT s, s + interval '10 seconds', cell, 5 + ord * 4, 1, 30, 45, 0, 0, 0, 0, 0, now()
               FROM unnest($1::text[]) WITH ORDINALITY AS c(cell, ord),
                    LATERAL (SELECT date_bin('10 seconds', now(), 'epoch')
                                    - interval '10 seconds' AS s) AS w",
            &[&cells],
        )
        .await
        .context("seeding zone windows")?;
    db.client()
        .execute(
            "INSERT INTO daily_fleet (day, source, trips, revenue_cents, distance_m, active_taxis,
                                      positions, cumulative_trips)
             SELECT current_date - n, 'fleet', 20 + n * 3, (20 + n * 3) * 1450, 1.0e5, 3,
                    50000, sum(20 + n * 3) OVER (ORDER BY current_date - n)
               FROM generate_series(1, 10) AS n",
            &[],
        )
        .await
        .context("seeding daily results")?;
    for n in 0..SEEDED_ORDERS {
        dispatch
            .send(json!({
                "taxi_id": PARKED_TAXI, "kind": "message",
                "text": format!("Seeded message {n}"), "order_id": format!("seeded-{n:02}"),
                "expires_in_s": 3600,
            }))
            .await?;
    }
    Ok(())
}

/// A tile server for the map's optional base map: every request gets the same 1×1 PNG, and
/// is counted.
pub struct TileServer {
    /// `http://127.0.0.1:<port>/{z}/{x}/{y}.png`
    pub url: String,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TileServer {
    pub async fn start() -> Result<TileServer> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
        let png = base64::engine::general_purpose::STANDARD.decode(PNG)?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}/{{z}}/{{x}}/{{y}}.png", listener.local_addr()?);
        let requests = Arc::new(AtomicU64::new(0));
        let counted = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (png, counted) = (png.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&chunk[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::Relaxed);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        png.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&png).await;
                });
            }
        });
        Ok(TileServer {
            url,
            requests,
            task,
        })
    }

    /// Tiles asked for so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for TileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
