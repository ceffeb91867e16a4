//! The monitoring shipped in `monitoring/`: promtool accepts the scrape configuration, the
//! rules and the web configuration, and the rules' unit tests pass; the Grafana dashboards
//! and provisioning files are well formed; a real Prometheus scrapes the platform over its
//! HTTPS with basic auth, answers with the platform's figures, and refuses whoever lacks the
//! password; every metric the dashboards and alerts use is one the services export, under
//! the job that scrapes them, and every panel's query returns data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tests::analytics_process::{analytics_config, AnalyticsProcess};
use tests::dispatch::{DispatchApi, TOKEN, TOKEN_NAME};
use tests::monitoring::{
    dashboard_queries, files, json, promtool, rules, selectors, yaml, TestPrometheus, USER,
};
use tests::platform::{bounded, eventually, position, Platform, Progress, ARRIVAL, BERLIN};
use tests::reporting::{ReportingProcess, VIEWER};
use tests::tours::{known_route, recent_start_ms, tours_config, wait_for_invoice, TourTaxi};
use tests::{unix_ms, TestPki};

/// The jobs of `monitoring/prometheus.yml` and the services that own their metrics.
const JOBS: &[&str] = &["broker", "bridge", "analytics", "reporting"];

/// The datasource every dashboard uses (provisioned under this uid).
const DATASOURCE_UID: &str = "taxi-prometheus";

/// Upper bound of the tests that start services.
const LIMIT: Duration = Duration::from_secs(180);

#[test]
fn promtool_accepts_the_scrape_configuration() -> Result<()> {
    let output = promtool(&["check", "config", "prometheus.yml"])?;
    let rule_files = files("rules", "yml")?.len();
    assert!(
        output.contains(&format!("SUCCESS: {rule_files} rule files found")),
        "the configuration must load every file of monitoring/rules:\n{output}"
    );
    Ok(())
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() -> Result<()> {
    let rule_files: Vec<String> = files("rules", "yml")?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut args = vec!["check", "rules"];
    args.extend(rule_files.iter().map(String::as_str));
    let output = promtool(&args)?;
    assert_eq!(
        output.matches("SUCCESS").count(),
        rule_files.len(),
        "{output}"
    );

    let test_files: Vec<String> = files("tests", "yml")?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut args = vec!["test", "rules"];
    args.extend(test_files.iter().map(String::as_str));
    let output = promtool(&args)?;
    assert!(output.contains("SUCCESS"), "{output}");
    Ok(())
}

/// Every alert has a unit test that expects it to fire.
#[test]
fn every_alert_is_tested_firing() -> Result<()> {
    let mut tested = BTreeSet::new();
    for path in files("tests", "yml")? {
        let file = yaml(&path)?;
        for case in file["tests"].as_array().into_iter().flatten() {
            for check in case["alert_rule_test"].as_array().into_iter().flatten() {
                let fires = check["exp_alerts"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty());
                if let (true, Some(name)) = (fires, check["alertname"].as_str()) {
                    tested.insert(name.to_owned());
                }
            }
        }
    }
    let alerts: BTreeSet<String> = rules()?
        .into_iter()
        .filter(|r| !r.recording)
        .map(|r| r.name)
        .collect();
    let untested: Vec<&String> = alerts.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "alerts never expected to fire in monitoring/tests: {untested:?}"
    );
    for alert in [
        "ServiceDown",
        "BridgeLagHigh",
        "DeadLetterRateHigh",
        "ArchiveSpoolGrowing",
        "SpeedLayerLate",
        "DispatchApiErrors",
        "ReportingApiErrors",
    ] {
        assert!(alerts.contains(alert), "no alert {alert} in {alerts:?}");
    }
    Ok(())
}

#[test]
fn promtool_accepts_the_web_configuration_once_filled_in() -> Result<()> {
    let pki = TestPki::new()?;
    let hash = testkit::prometheus::bcrypt_hash("a password")?;
    let template = std::fs::read_to_string(tests::monitoring::dir().join("web.yml"))?;
    let filled = testkit::prometheus::web_config(
        &template,
        pki.server_cert_path(),
        pki.server_key_path(),
        &[(USER, &hash)],
    )?;
    let path = pki.dir().join("web.yml");
    std::fs::write(&path, &filled)?;
    let output = promtool(&["check", "web-config", &path.display().to_string()])?;
    assert!(output.contains("SUCCESS"), "{output}");
    // What it holds, read back as YAML.
    let config = yaml(&path)?;
    assert_eq!(config["basic_auth_users"][USER], Value::String(hash));
    assert_eq!(
        config["tls_server_config"]["cert_file"],
        pki.server_cert_path().display().to_string()
    );
    Ok(())
}

#[test]
fn dashboards_are_well_formed() -> Result<()> {
    let mut uids = BTreeSet::new();
    for path in files("grafana/dashboards", "json")? {
        let name = path.display().to_string();
        let board = json(&path)?;
        let uid = board["uid"].as_str().unwrap_or_default();
        ensure!(!uid.is_empty(), "{name}: no uid");
        ensure!(uids.insert(uid.to_owned()), "{name}: uid {uid} used twice");
        ensure!(
            board["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: no title"
        );
        ensure!(board["schemaVersion"].is_u64(), "{name}: no schemaVersion");
        let panels = board["panels"].as_array().context("no panels")?;
        ensure!(!panels.is_empty(), "{name}: no panels");
        let mut ids = BTreeSet::new();
        let mut cells: Vec<(String, [u64; 4])> = Vec::new();
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or_default();
            let at = format!("{name}, panel {title:?}");
            ensure!(!title.is_empty(), "{name}: a panel without a title");
            ensure!(
                ids.insert(
                    panel["id"]
                        .as_u64()
                        .with_context(|| format!("{at}: no id"))?
                ),
                "{at}: id used twice"
            );
            ensure!(
                ["timeseries", "stat", "bargauge"].contains(&panel["type"].as_str().unwrap_or("")),
                "{at}: unexpected type {}",
                panel["type"]
            );
            check_datasource(&panel["datasource"]).with_context(|| at.clone())?;
            let grid = &panel["gridPos"];
            let cell = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().unwrap_or(u64::MAX));
            ensure!(
                cell.iter().all(|v| *v != u64::MAX) && cell[2] > 0 && cell[3] > 0,
                "{at}: gridPos {grid}"
            );
            ensure!(cell[0] + cell[2] <= 24, "{at}: wider than the dashboard");
            for (other, o) in &cells {
                let apart = cell[0] + cell[2] <= o[0]
                    || o[0] + o[2] <= cell[0]
                    || cell[1] + cell[3] <= o[1]
                    || o[1] + o[3] <= cell[1];
                ensure!(apart, "{at} overlaps panel {other:?}");
            }
            cells.push((title.to_owned(), cell));
            let targets = panel["targets"].as_array().context("no targets")?;
            ensure!(!targets.is_empty(), "{at}: no targets");
            let mut ref_ids = BTreeSet::new();
            for target in targets {
                ensure!(
                    ref_ids.insert(target["refId"].as_str().unwrap_or_default()),
                    "{at}: refId missing or used twice"
                );
                check_datasource(&target["datasource"]).with_context(|| at.clone())?;
                let expr = target["expr"].as_str().unwrap_or_default();
                ensure!(!expr.trim().is_empty(), "{at}: a target without expr");
                let found = selectors(expr).with_context(|| format!("{at}: {expr}"))?;
                ensure!(!found.is_empty(), "{at}: {expr} selects no series");
                for selector in found.iter().filter(|s| s.metric != "up") {
                    ensure!(
                        selector.job().is_some(),
                        "{at}: {} in {expr} does not select its job (the one-process platform serves every metric on every port)",
                        selector.metric
                    );
                }
            }
        }
    }
    // Throughput, latencies, event counts; every component on them.
    for uid in ["taxi-throughput", "taxi-latencies", "taxi-events"] {
        assert!(uids.contains(uid), "no dashboard {uid}: {uids:?}");
    }
    let exprs: Vec<String> = dashboard_queries()?.into_iter().map(|q| q.expr).collect();
    for prefix in [
        "broker_",
        "bridge_",
        "dispatch_",
        "analytics_",
        "reporting_",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(prefix)),
            "no dashboard query uses {prefix}* metrics"
        );
    }
    Ok(())
}

fn check_datasource(datasource: &Value) -> Result<()> {
    ensure!(
        datasource["type"] == "prometheus" && datasource["uid"] == DATASOURCE_UID,
        "datasource {datasource} is not the provisioned Prometheus ({DATASOURCE_UID})"
    );
    Ok(())
}

#[test]
fn grafana_provisioning_serves_the_dashboards_from_the_prometheus_over_https() -> Result<()> {
    let sources = files("grafana/provisioning/datasources", "yml")?;
    let mut found = false;
    for path in &sources {
        let file = yaml(path)?;
        assert_eq!(file["apiVersion"], 1, "{}", path.display());
        for source in file["datasources"].as_array().into_iter().flatten() {
            if source["uid"] != DATASOURCE_UID {
                continue;
            }
            found = true;
            assert_eq!(source["type"], "prometheus", "{source}");
            assert_eq!(source["basicAuth"], true, "{source}");
            assert_eq!(source["jsonData"]["tlsAuthWithCACert"], true, "{source}");
            for key in ["url", "basicAuthUser"] {
                assert!(
                    source[key].as_str().is_some_and(|v| !v.is_empty()),
                    "{key}: {source}"
                );
            }
            for key in ["basicAuthPassword", "tlsCACert"] {
                assert!(
                    source["secureJsonData"][key]
                        .as_str()
                        .is_some_and(|v| !v.is_empty()),
                    "{key}: {source}"
                );
            }
        }
    }
    assert!(found, "no provisioned datasource with uid {DATASOURCE_UID}");

    let providers = files("grafana/provisioning/dashboards", "yml")?;
    let mut paths = Vec::new();
    for path in &providers {
        let file = yaml(path)?;
        assert_eq!(file["apiVersion"], 1, "{}", path.display());
        for provider in file["providers"].as_array().into_iter().flatten() {
            assert_eq!(provider["type"], "file", "{provider}");
            paths.extend(provider["options"]["path"].as_str().map(str::to_owned));
        }
    }
    assert!(!paths.is_empty(), "no dashboard provider with a path");
    Ok(())
}

/// A real Prometheus scraping a broker and a bridge: with the password it answers with the
/// platform's figures; without it, with a wrong one, or over plain HTTP it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_serves_the_platform_metrics_only_with_the_password() -> Result<()> {
    bounded(LIMIT, async {
        let platform = Platform::start().await?;
        let config = platform.bridge_config("b1", platform.embedded_archive("s3-b1"));
        let bridge = platform.start_bridge(&config).await?;
        platform.wait_until_consuming().await?;
        let prometheus = TestPrometheus::start(
            &platform.pki,
            &targets(&[
                ("broker", platform.broker.http_addr),
                ("bridge", bridge.http_addr),
            ]),
        )
        .await?;

        let mut taxi = platform.taxi("taxi-1").await?;
        for seq in 1..=20 {
            taxi.publish_position(position(seq, unix_ms(), BERLIN))
                .await?;
        }
        taxi.wait_acked().await?;
        let db = platform.db().await?;
        let stored = eventually("the 20 positions stored", ARRIVAL, || async {
            let n = db
                .count(
                    "SELECT count(*) FROM positions WHERE taxi_id = 'taxi-1'",
                    &[],
                )
                .await?;
            Ok(if n == 20 {
                Progress::Done(n)
            } else {
                Progress::Waiting(format!("{n}"))
            })
        })
        .await?;
        assert_eq!(stored, 20);
        // Every position the bridge stored (the probes' too) is counted in what Prometheus
        // scraped from the bridge: its figure and PostgreSQL's rows agree.
        eventually(
            "bridge_positions_committed_total in Prometheus",
            ARRIVAL,
            || async {
                let samples = prometheus
                    .query(r#"bridge_positions_committed_total{job="bridge"}"#)
                    .await?;
                let rows = db.count("SELECT count(*) FROM positions", &[]).await?;
                Ok(match samples.as_slice() {
                    [(_, value)] if *value == rows as f64 && rows >= 20 => Progress::Done(()),
                    _ => Progress::Waiting(format!(
                        "{rows} rows in PostgreSQL, Prometheus: {samples:?}"
                    )),
                })
            },
        )
        .await
        .with_context(|| prometheus.log_tail())?;

        // Both targets are up (each is scraped for the first time within a second).
        let wanted = BTreeMap::from([("bridge".to_owned(), 1.0), ("broker".to_owned(), 1.0)]);
        eventually("both targets up", ARRIVAL, || async {
            let up: BTreeMap<String, f64> = prometheus
                .query("up")
                .await?
                .into_iter()
                .map(|(labels, value)| (labels.get("job").cloned().unwrap_or_default(), value))
                .collect();
            Ok(if up == wanted {
                Progress::Done(())
            } else {
                Progress::Waiting(format!("up: {up:?}"))
            })
        })
        .await?;

        let path = "/api/v1/query?query=up";
        let (status, body) = prometheus
            .get(path, Some((USER, &prometheus.password)))
            .await?;
        assert_eq!(status, 200, "{body}");
        let (status, body) = prometheus.get(path, None).await?;
        assert_eq!(status, 401, "without credentials: {body}");
        assert!(!body.contains("\"success\""), "{body}");
        let (status, body) = prometheus
            .get(path, Some((USER, "not-the-password")))
            .await?;
        assert_eq!(status, 401, "with a wrong password: {body}");
        let (status, body) = prometheus
            .get(path, Some(("admin", &prometheus.password)))
            .await?;
        assert_eq!(status, 401, "as another user: {body}");
        let (status, body) = tests::http::get(prometheus.addr()?, path).await?;
        assert_eq!(status, 400, "over plain HTTP: {body}");
        Ok(())
    })
    .await
}

/// The services doing what the dashboards show (positions, a refused message, a tour with
/// its invoice, an order through the API and a request without a token, a handshake from
/// another CA, a taxi publishing as another, a late position for the speed layer, a report
/// and a request for one without a token), scraped by Prometheus from their own processes: every metric the dashboards and alerts use is in
/// what Prometheus stored for the job they select, every panel's query returns data, and
/// every rule evaluates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_use_metrics_the_services_export() -> Result<()> {
    bounded(LIMIT, async {
        let platform = Platform::start().await?;
        let mut bridge_config = tours_config(&platform, "b1");
        let api_port = testkit::free_port()?;
        bridge_config.dispatch.api.enabled = true;
        bridge_config.dispatch.api.listen = SocketAddr::from(([127, 0, 0, 1], api_port));
        bridge_config.dispatch.api.tokens = vec![bridge::config::ApiToken {
            name: TOKEN_NAME.to_owned(),
            sha256: bridge::dispatch::auth::token_sha256(TOKEN),
        }];
        let bridge = tests::tours::spawn_consuming(&platform, &bridge_config).await?;
        let mut analytics_settings = analytics_config(&platform, "a1")?;
        analytics_settings.windows.length_ms = 1_000;
        analytics_settings.windows.allowed_lateness_ms = 200;
        analytics_settings.windows.commit_grace_ms = 300;
        analytics_settings.windows.recount_after_ms = 1_000;
        analytics_settings.windows.late_scan_interval_ms = 100;
        let mut analytics = AnalyticsProcess::spawn(&analytics_settings)?;
        analytics.wait_ready().await?;
        let reporting_settings = tests::reporting::config(&platform.database_url(), &platform.pki);
        let reporting = ReportingProcess::spawn(reporting_settings, &platform.pki).await?;
        let prometheus = TestPrometheus::start(
            &platform.pki,
            &targets(&[
                ("broker", platform.broker.http_addr),
                ("bridge", bridge.http_addr),
                ("analytics", analytics.http_addr),
                ("reporting", reporting.api.ops),
            ]),
        )
        .await?;

        // A tour with its positions, then a message the bridge refuses.
        let mut taxi = TourTaxi::new(&platform, "taxi-1").await?;
        let route = known_route(recent_start_ms(30));
        taxi.drive_tour("tour-1", &route, Some(tests::tours::KNOWN_ROUTE_FARE_CENTS))
            .await?;
        taxi.taxi.publish("position", b"not a position").await?;
        taxi.taxi.wait_acked().await?;
        wait_for_invoice(&platform, "tour-1").await?;

        // An order through the API, and a request without a token.
        let api = DispatchApi {
            addr: SocketAddr::from(([127, 0, 0, 1], api_port)),
        };
        api.send_to("taxi-1", "order-1", "Pick up at the station")
            .await?;
        let refused = api.raw("GET", "/v1/orders/order-1", &[], b"").await?;
        assert_eq!(refused.status, 401);

        // A certificate of another CA, and a taxi publishing as another one.
        let foreign = platform.pki.foreign_client("taxi-9", "taxi")?;
        let mut stranger = platform.broker.client(&foreign).start()?;
        assert_eq!(stranger.expect_refused().await?, None);
        let impostor_cert = platform.pki.client("taxi-2", "taxi")?;
        let impostor = platform.broker.client(&impostor_cert).connect().await?;
        // The broker disconnects it instead of answering.
        let _ = impostor
            .publish("taxi/taxi-1/position", 1, false, &tests::position_json(99))
            .await;
        platform
            .broker
            .wait_for_metric(
                "broker_refusals_total",
                &[("kind", "publish"), ("role", "taxi")],
                1.0,
                tests::WAIT,
            )
            .await?;

        // A report, and a request for one without a token.
        let fleet = reporting.api.get("/v1/fleet", Some(VIEWER)).await?;
        assert_eq!(fleet.status, 200, "{}", fleet.body);
        let refused = reporting.api.get("/v1/fleet", None).await?;
        assert_eq!(refused.status, 401, "{}", refused.body);

        // A position that reaches the speed layer after its window was closed.
        analytics
            .wait_for_metric("analytics_windows_closed_total", 4.0, ARRIVAL)
            .await?;
        let mut late = platform.taxi("taxi-late").await?;
        late.publish_position(position(1, unix_ms() - 3_000, BERLIN))
            .await?;
        late.wait_acked().await?;
        analytics
            .wait_for_metric("analytics_late_events_total", 1.0, ARRIVAL)
            .await?;

        // What the dashboards and the rules select, by job.
        let recorded: BTreeSet<String> = rules()?
            .into_iter()
            .filter(|r| r.recording)
            .map(|r| r.name)
            .collect();
        let mut wanted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        let mut uses = |metric: &str, job: Option<&str>, used_by: String| -> Result<()> {
            if metric == "up" || recorded.contains(metric) {
                return Ok(());
            }
            ensure!(
                !metric.contains(':'),
                "{used_by}: {metric} is no recording rule of monitoring/rules"
            );
            let job = job.with_context(|| format!("{used_by}: {metric} selects no job"))?;
            ensure!(
                JOBS.contains(&job),
                "{used_by}: no job {job} in prometheus.yml"
            );
            wanted
                .entry((job.to_owned(), metric.to_owned()))
                .or_default()
                .insert(used_by);
            Ok(())
        };
        for query in dashboard_queries()? {
            for selector in selectors(&query.expr)? {
                uses(
                    &selector.metric,
                    selector.job(),
                    format!("{} / {}", query.dashboard, query.panel),
                )?;
            }
        }
        for rule in rules()? {
            for selector in selectors(&rule.expr)? {
                uses(
                    &selector.metric,
                    selector.job(),
                    format!("rule {}", rule.name),
                )?;
            }
        }
        ensure!(
            wanted.len() > 30,
            "suspiciously few metrics used: {wanted:?}"
        );

        eventually(
            "every metric used stored by Prometheus",
            ARRIVAL,
            || async {
                let mut stored = BTreeMap::new();
                for job in JOBS {
                    stored.insert((*job).to_owned(), prometheus.metric_names(job).await?);
                }
                let missing: Vec<String> = wanted
                    .iter()
                    .filter(|((job, metric), _)| {
                        !stored.get(job).is_some_and(|s| s.contains(metric))
                    })
                    .map(|((job, metric), used_by)| {
                        format!("{metric} from job {job} (used by {used_by:?})")
                    })
                    .collect();
                Ok(if missing.is_empty() {
                    Progress::Done(())
                } else {
                    Progress::Waiting(format!("missing:\n  {}", missing.join("\n  ")))
                })
            },
        )
        .await?;

        // Every panel shows data.
        eventually("every panel's query returns data", ARRIVAL, || async {
            let mut empty = Vec::new();
            for query in dashboard_queries()? {
                let expr = query
                    .expr
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "10m");
                if prometheus.query(&expr).await?.is_empty() {
                    empty.push(format!("{} / {}: {expr}", query.dashboard, query.panel));
                }
            }
            Ok(if empty.is_empty() {
                Progress::Done(())
            } else {
                Progress::Waiting(format!("no data for:\n  {}", empty.join("\n  ")))
            })
        })
        .await?;

        // Every rule evaluates without error.
        let groups = prometheus.api("/api/v1/rules").await?;
        let mut evaluated = 0;
        for group in groups["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                assert_eq!(rule["health"], "ok", "{rule}");
                evaluated += 1;
            }
        }
        assert_eq!(evaluated, rules()?.len(), "{groups}");
        drop(reporting);
        drop(analytics);
        Ok(())
    })
    .await
}

/// `monitoring/prometheus.yml`'s jobs: these with an address, the others left out.
fn targets(given: &[(&'static str, SocketAddr)]) -> Vec<(&'static str, Option<SocketAddr>)> {
    JOBS.iter()
        .map(|job| {
            (
                *job,
                given
                    .iter()
                    .find(|(name, _)| name == job)
                    .map(|(_, addr)| *addr),
            )
        })
        .collect()
}
