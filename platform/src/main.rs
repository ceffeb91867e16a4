//! `platform`: the whole platform on one machine, with embedded defaults.
//!
//! Starts, in one process: a development PKI (`certs/dev`), PostgreSQL (a private cluster
//! under `data/postgres` from the system's binaries, unless `DATABASE_URL` is set), the
//! broker, the bridge with its embedded S3-compatible archive (unless `BRIDGE_ARCHIVE__*`
//! points elsewhere), the analytics layer (its lake in the same object store), the reporting
//! API (HTTPS, a development token), and a simulated fleet; with `--monitoring`, Prometheus
//! scraping all of it (see `monitoring.rs`).
//! Then it prints where to look.

mod monitoring;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing::info;

#[derive(Parser)]
#[command(about = "Runs broker, bridge, a local PostgreSQL, the archive and a simulated fleet")]
struct Cli {
    /// Simulated taxis (0: none).
    #[arg(long, default_value_t = 20)]
    taxis: usize,
    /// Positions per second per simulated taxi.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Broker configuration file (see config/broker.toml).
    #[arg(long)]
    broker_config: Option<PathBuf>,
    /// Bridge configuration file (see config/bridge.toml).
    #[arg(long)]
    bridge_config: Option<PathBuf>,
    /// Analytics configuration file (see config/analytics.toml).
    #[arg(long)]
    analytics_config: Option<PathBuf>,
    /// Reporting configuration file (see config/reporting.toml).
    #[arg(long)]
    reporting_config: Option<PathBuf>,
    /// Where local state lives: PostgreSQL cluster, archive spool, embedded S3 objects.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Port of the local PostgreSQL cluster.
    #[arg(long, default_value_t = 5433)]
    postgres_port: u16,
    /// Also run Prometheus (Debian package `prometheus`) on the shipped monitoring
    /// configuration, over HTTPS with basic auth.
    #[arg(long)]
    monitoring: bool,
    /// Port of Prometheus (with `--monitoring`).
    #[arg(long, default_value_t = 9090)]
    monitoring_port: u16,
    /// Development sign-in on the dashboard: its sign-in page also takes the development
    /// token printed at start. Off unless given; never on a machine others can reach.
    #[arg(long)]
    dev_sign_in: bool,
}

const CERTS: &str = "certs/dev";
/// The dispatch API's bearer token on a development platform (printed at start-up).
const DEV_API_TOKEN: &str = "taxi-dev-token";
/// The reporting API's static token on a development platform (role admin; printed).
const DEV_REPORTING_TOKEN: &str = "reporting-dev-token";

fn main() -> ExitCode {
    service::logging::init();
    service::process::run(run(Cli::parse()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.monitoring {
        monitoring::check_installed()?;
    }
    dev_pki(Path::new(CERTS))?;

    // PostgreSQL: DATABASE_URL, or a private cluster kept under the data directory.
    let (database_url, _local_postgres) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let dir = cli.data.join("postgres");
            info!(dir = %dir.display(), port = cli.postgres_port, "starting the local PostgreSQL");
            let dir_for_task = dir.clone();
            let port = cli.postgres_port;
            let cluster = tokio::task::spawn_blocking(move || {
                testkit::postgres::TestPostgres::builder()
                    .kept_in(&dir_for_task, port)
                    .start()
            })
            .await
            .context("starting PostgreSQL")?
            .with_context(|| format!("local PostgreSQL in {}", dir.display()))?;
            (cluster.url(), Some(cluster))
        }
    };

    let mut broker_config = broker::Config::load(cli.broker_config.as_deref())?;
    if cli.broker_config.is_none() {
        // The broker's own data under the platform's data directory.
        broker_config.router.log_dir = cli.data.join("broker").join("log");
        broker_config.router.spill_dir = cli.data.join("broker").join("spill");
    }
    let broker = broker::start(broker_config).await?;

    let mut bridge_defaults = bridge::Config::default();
    bridge_defaults.postgres.url = database_url.clone();
    bridge_defaults.data_dir = cli.data.join("bridge");
    bridge_defaults.archive.embedded_dir = cli.data.join("s3");
    bridge_defaults.mqtt.port = broker.mqtt_addr.port();
    bridge_defaults.dispatch.api.enabled = true;
    bridge_defaults.dispatch.api.tokens = vec![bridge::config::ApiToken {
        name: "dev".to_owned(),
        sha256: bridge::dispatch::auth::token_sha256(DEV_API_TOKEN),
    }];
    let bridge_config =
        bridge::Config::load_with_defaults(bridge_defaults, cli.bridge_config.as_deref())?;
    let archive = bridge_config.archive.clone();
    // The simulated taximeters price tours with the platform's own tariff.
    let tariff = bridge_config.tours.tariff.clone();
    let bridge = bridge::start(bridge_config).await?;

    let analytics_config = analytics_config(&cli, &database_url, &broker, &bridge, &archive)?;
    let lake = analytics_config.lake.clone();
    let analytics_config_for_guide = analytics_config.clone();
    let analytics = analytics::start(analytics_config).await?;

    let reporting_config = reporting_config(
        &cli,
        &database_url,
        &analytics_config_for_guide,
        bridge.dispatch_api,
    )?;
    let reporting_scheme = if reporting_config.http.plain {
        "http"
    } else {
        "https"
    };
    let reporting = reporting::start(reporting_config).await?;

    let monitoring = if cli.monitoring {
        let targets = monitoring::Targets {
            broker: broker.http_addr,
            bridge: bridge.http_addr,
            analytics: analytics.http_addr,
            reporting: Some(reporting.ops_addr),
        };
        let data = cli.data.clone();
        let port = cli.monitoring_port;
        info!(port, "starting Prometheus");
        let started = tokio::task::spawn_blocking(move || {
            monitoring::start(&data, Path::new(CERTS), &targets, port)
        })
        .await
        .context("starting Prometheus")??;
        Some(started)
    } else {
        None
    };

    print_guide(&database_url, &broker, &bridge, &archive);
    print_analytics_guide(&analytics_config_for_guide, &analytics, &lake);
    print_reporting_guide(&reporting, reporting_scheme, cli.dev_sign_in);
    if let Some(monitoring) = &monitoring {
        print!("{}", monitoring::guide(monitoring));
    }

    if cli.taxis > 0 {
        let fleet = simulator::fleet::FleetArgs {
            taxis: cli.taxis,
            host: "localhost".to_owned(),
            port: broker.mqtt_addr.port(),
            certs: PathBuf::from(CERTS),
            behaviour: simulator::taxi::Behaviour {
                rate: cli.rate,
                tariff,
                ..Default::default()
            },
        };
        tokio::spawn(async move {
            if let Err(e) = simulator::fleet::run(fleet).await {
                tracing::error!(error = %format!("{e:#}"), "simulated fleet stopped");
            }
        });
    }
    // Ctrl-C or SIGTERM: the local PostgreSQL and Prometheus are stopped cleanly either way
    // (on drop).
    let stopped = service::process::stopped().await;
    drop(monitoring);
    stopped
}

/// Creates the development CA, server and client certificates if missing.
fn dev_pki(dir: &Path) -> anyhow::Result<()> {
    let pki = broker::pki::DevPki::open_or_create(dir)?;
    for (id, role) in [
        ("bridge", "bridge"),
        ("backoffice", "backoffice"),
        ("operator", "operator"),
        ("analytics", "analytics"),
    ] {
        if !dir.join(format!("{id}.pem")).exists() {
            pki.issue_client(id, role, 365)?;
        }
    }
    if !dir.join("reporting.pem").exists() {
        pki.issue_server("reporting", &["localhost", "127.0.0.1", "::1"])?;
    }
    Ok(())
}

/// The reporting API on this platform: the same database, time zone and lake as analytics,
/// the development certificate, and the development token (role admin).
///
/// Orders sent from the dashboard go to this platform's dispatch API with its development
/// token; `--dev-sign-in` turns the dashboard's development sign-in on.
fn reporting_config(
    cli: &Cli,
    database_url: &str,
    analytics: &analytics::Config,
    dispatch_api: Option<std::net::SocketAddr>,
) -> anyhow::Result<reporting::Config> {
    let mut defaults = reporting::Config::default();
    defaults.postgres.url = database_url.to_owned();
    defaults.time_zone = analytics.time_zone.clone();
    // The file API and the NYC trips read and write the lake the analytics layer uses
    // (the embedded S3 server unless configured otherwise).
    defaults.lake = analytics.lake.clone();
    defaults.auth.tokens = vec![reporting::config::StaticToken {
        name: "dev".to_owned(),
        sha256: reporting::auth::tokens::token_sha256(DEV_REPORTING_TOKEN),
        role: "admin".to_owned(),
    }];
    if let Some(api) = dispatch_api {
        defaults.dispatch.url = Some(format!("http://{api}"));
        defaults.dispatch.token = Some(DEV_API_TOKEN.to_owned());
    }
    defaults.dashboard.dev_sign_in = cli.dev_sign_in;
    Ok(reporting::Config::load_with_defaults(
        defaults,
        cli.reporting_config.as_deref(),
    )?)
}

/// How to read the reports.
fn print_reporting_guide(reporting: &reporting::RunningReporting, scheme: &str, dev_sign_in: bool) {
    let api = format!("{scheme}://localhost:{}", reporting.api_addr.port());
    let sign_in = if dev_sign_in {
        format!("development sign-in on: paste the token {DEV_REPORTING_TOKEN} on its sign-in page")
    } else {
        "sign in through [auth.oidc] (--reporting-config), or run with --dev-sign-in".to_owned()
    };
    println!("Dashboard {api}/dashboard/ (the development CA in {CERTS}/ca.pem; {sign_in})");
    println!(
        "Reporting API {api}/v1 (metrics http://{ops}/metrics; development token {DEV_REPORTING_TOKEN}, role admin):
  curl -s --cacert {CERTS}/ca.pem -H 'Authorization: Bearer {DEV_REPORTING_TOKEN}' {api}/v1/fleet
  curl -s --cacert {CERTS}/ca.pem -H 'Authorization: Bearer {DEV_REPORTING_TOKEN}' '{api}/v1/windows?limit=6'
  curl -s --cacert {CERTS}/ca.pem -H 'Authorization: Bearer {DEV_REPORTING_TOKEN}' {api}/v1/taxis/taxi-1/summary
  curl -s --cacert {CERTS}/ca.pem -H 'Authorization: Bearer {DEV_REPORTING_TOKEN}' -H 'Accept: text/csv' {api}/v1/taxis/taxi-1/route
",
        ops = reporting.ops_addr,
    );
}

/// The analytics layer's configuration on this platform: the same database, the broker
/// started here, its lake in the archive's object store (embedded or configured).
fn analytics_config(
    cli: &Cli,
    database_url: &str,
    broker: &broker::RunningBroker,
    bridge: &bridge::RunningBridge,
    archive: &bridge::config::ArchiveConfig,
) -> anyhow::Result<analytics::Config> {
    let mut defaults = analytics::Config::default();
    defaults.postgres.url = database_url.to_owned();
    defaults.data_dir = cli.data.join("analytics");
    defaults.mqtt.port = broker.mqtt_addr.port();
    match &bridge.embedded_s3 {
        Some(s3) => {
            defaults.lake.endpoint = s3.endpoint.clone();
            defaults.lake.access_key_id = s3.access_key_id.clone();
            defaults.lake.secret_access_key = s3.secret_access_key.clone();
        }
        None => {
            defaults.lake.endpoint = archive.endpoint.clone();
            defaults.lake.region = archive.region.clone();
            defaults.lake.access_key_id = archive.access_key_id.clone();
            defaults.lake.secret_access_key = archive.secret_access_key.clone();
        }
    }
    Ok(analytics::Config::load_with_defaults(
        defaults,
        cli.analytics_config.as_deref(),
    )?)
}

fn print_guide(
    database_url: &str,
    broker: &broker::RunningBroker,
    bridge: &bridge::RunningBridge,
    archive: &bridge::config::ArchiveConfig,
) {
    let endpoint = bridge
        .embedded_s3
        .as_ref()
        .map(|s3| s3.endpoint.clone())
        .unwrap_or_else(|| archive.endpoint.clone());
    let credentials = bridge
        .embedded_s3
        .as_ref()
        .map(|s3| {
            format!(
                "AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} ",
                s3.access_key_id, s3.secret_access_key
            )
        })
        .unwrap_or_default();
    println!(
        "\nThe platform is running.
  broker   mqtts://localhost:{mqtt}  (metrics http://{broker_http}/metrics)
  bridge   metrics http://{bridge_http}/metrics
  database {database_url}
  archive  {endpoint} bucket {bucket}

Watch the fleet:
  mosquitto_sub -h localhost -p {mqtt} --cafile {CERTS}/ca.pem --cert {CERTS}/operator.pem \\
    --key {CERTS}/operator.key -i operator -V mqttv5 -t 'taxi/+/position' -v
Look at the stored positions:
  psql {database_url} -c 'SELECT taxi_id, ts, lat, lon FROM latest_positions ORDER BY taxi_id'
  psql {database_url} -c 'SELECT count(*) FROM positions'
List the raw archive (objects appear as segments roll, every minute by default):
  {credentials}aws --endpoint-url {endpoint} s3 ls s3://{bucket}/ --recursive
Follow tours and their invoices:
  mosquitto_sub -h localhost -p {mqtt} --cafile {CERTS}/ca.pem --cert {CERTS}/backoffice.pem \
    --key {CERTS}/backoffice.key -i backoffice -q 1 -t backoffice/invoices
  psql {database_url} -c 'SELECT tour_id, taxi_id, fare_cents, meter_cents, flagged FROM invoices ORDER BY issued_at DESC LIMIT 10'

{dispatch}Ctrl-C stops everything.\n",
        mqtt = broker.mqtt_addr.port(),
        broker_http = broker.http_addr,
        bridge_http = bridge.http_addr,
        bucket = archive.bucket,
        dispatch = dispatch_guide(database_url, bridge.dispatch_api),
    );
}

/// How to send orders, when the dispatch API runs.
fn dispatch_guide(database_url: &str, api: Option<std::net::SocketAddr>) -> String {
    let Some(api) = api else {
        return String::new();
    };
    format!(
        "Send a taxi an order through the dispatch API (development token {DEV_API_TOKEN}):
  export TAXICTL_URL=http://{api} TAXICTL_TOKEN={DEV_API_TOKEN}
  cargo run -q -p taxictl -- order send --taxi taxi-1 --text 'Pick up at Alexanderplatz' --expires-in 600
  cargo run -q -p taxictl -- order show <order id>
  cargo run -q -p taxictl -- order list --taxi taxi-1
  curl -s -H 'Authorization: Bearer {DEV_API_TOKEN}' -H 'Content-Type: application/json' \\
    -d '{{\"taxi_id\":\"taxi-1\",\"kind\":\"message\",\"text\":\"Please call dispatch\"}}' http://{api}/v1/orders
Follow every order and its state:
  psql {database_url} -c 'SELECT order_id, taxi_id, sender, state, updated_at FROM orders ORDER BY updated_at DESC LIMIT 20'

"
    )
}

/// Where the live windows, the daily aggregates and the lake are.
fn print_analytics_guide(
    config: &analytics::Config,
    analytics: &analytics::RunningAnalytics,
    lake: &analytics::lake::LakeConfig,
) {
    let mqtt = config.mqtt.port;
    let topic = &config.mqtt.topic;
    let database_url = &config.postgres.url;
    println!(
        "Analytics (metrics http://{http}/metrics):
  live 10-second windows, fleet-wide and per H3 zone:
  mosquitto_sub -h localhost -p {mqtt} --cafile {CERTS}/ca.pem --cert {CERTS}/operator.pem \\
    --key {CERTS}/operator.key -i operator -V mqttv5 -t '{topic}'
  psql {database_url} -c \"SELECT window_start, positions, taxis, round(avg_speed_kmh) FROM windows WHERE zone = 'fleet' ORDER BY window_start DESC LIMIT 6\"
  daily aggregates (computed at start and every midnight, {tz}) and the Parquet lake ({endpoint}, s3://{bucket}/{prefix}/):
  cargo run -q --release -p analytics -- sql 'SELECT dt, count(*) AS positions FROM positions GROUP BY dt ORDER BY dt'
  cargo run -q --release -p analytics -- chart --out charts
  cargo run -q --release -p analytics -- import yellow_tripdata_2015-01.csv.gz   # NYC TLC history
",
        http = analytics.http_addr,
        tz = config.time_zone,
        endpoint = lake.endpoint,
        bucket = lake.bucket,
        prefix = lake.prefix,
    );
}
