//! `bench reporting`: the reporting API against the programs that do the same work without
//! it, in one run, over HTTPS with a static token, the service as its own process.
//!
//! - `daily`: `GET /v1/daily` over 30-day ranges, cached (one range, answered from the
//!   cache) and uncached (a new range each request), against `pgbench` running the page's
//!   own SQL with as many clients. Targets: cached at least pgbench's rate (a cache hit must
//!   beat the database), uncached at least half of it.
//! - `fleet`: `GET /v1/fleet?limit=1000` with 1,000 taxis (a live report: cached 2 s),
//!   against pgbench with its SQL. Target: at least half of pgbench's rate.
//! - `csv`: one taxi's route of a million positions as CSV (`Accept: text/csv`), rows/s and
//!   the service's memory growth, against `psql \copy` of the same query. Targets: at least
//!   half of psql's rate, memory growth under 64 MiB.
//! - `files`: a 1 GiB file uploaded (`PUT /filesystem/...`) and downloaded with `curl`,
//!   against `aws s3 cp` both ways to the same S3 server. Targets: at least half of the
//!   AWS CLI's throughput each way, memory growth under 64 MiB.

pub mod baselines;
pub mod load;
pub mod setup;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use self::load::Measured;
use self::setup::{Setup, DAYS, FIRST_DAY, ROUTE_FROM, ROUTE_TAXI, TOKEN};

/// A part of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Daily,
    Fleet,
    Csv,
    Files,
}

/// Everything `bench reporting` is told.
#[derive(Clone, Debug)]
pub struct Args {
    pub phases: Vec<Phase>,
    /// Concurrent clients of the request phases (and pgbench clients).
    pub clients: usize,
    /// Measured seconds of each request phase.
    pub seconds: u64,
    pub taxis: u64,
    /// Positions of the exported route.
    pub positions: u64,
    /// Size of the file API's file, MiB.
    pub file_mib: u64,
}

/// Progress on stderr, one line per step.
pub fn say(phase: &str, text: String) {
    eprintln!("[{phase}] {text}");
}

/// The columns of `/v1/daily`, in its order.
const DAILY_COLUMNS: &str = "day, source, trips, revenue_cents, distance_m, active_taxis, \
    positions, avg_fare_cents, flagged_invoices, orders_accepted, orders_rejected, \
    orders_expired, orders_open, cumulative_trips, computed_at";
/// Length of the daily ranges asked for.
const RANGE_DAYS: i64 = 30;

pub async fn run(args: Args) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("bench-reporting-")
        .tempdir()
        .context("creating a scratch directory")?;
    say("setup", "PostgreSQL, S3, reporting".to_owned());
    let setup = setup::start(dir.path(), args.positions, args.taxis).await?;
    let mut report = vec![
        "| measure | reporting API | baseline (same run) | ratio |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    let mut missed = Vec::new();
    for phase in &args.phases {
        let result = match phase {
            Phase::Daily => daily(&setup, &args, dir.path(), &mut report, &mut missed).await,
            Phase::Fleet => fleet(&setup, &args, dir.path(), &mut report, &mut missed).await,
            Phase::Csv => csv(&setup, &args, &mut report, &mut missed).await,
            Phase::Files => files(&setup, &args, dir.path(), &mut report, &mut missed).await,
        };
        if let Err(error) = result {
            missed.push(format!("{phase:?} phase failed: {error:#}"));
        }
    }
    let mut out = std::io::stdout().lock();
    for line in &report {
        writeln!(out, "{line}")?;
    }
    writeln!(out)?;
    if missed.is_empty() {
        writeln!(out, "All targets met.")?;
    } else {
        writeln!(out, "Targets missed:")?;
        for line in &missed {
            writeln!(out, "- {line}")?;
        }
    }
    Ok(())
}

fn row(report: &mut Vec<String>, what: &str, ours: &Measured, theirs: (f64, f64, f64)) {
    report.push(format!(
        "| {what}: req/s, p50, p99 | {:.0}/s, {:.2} ms, {:.2} ms | pgbench {:.0}/s, {:.2} ms, {:.2} ms | {:.2}x |",
        ours.per_second(),
        ours.p50_ms(),
        ours.p99_ms(),
        theirs.0,
        theirs.1,
        theirs.2,
        ours.per_second() / theirs.0
    ));
}

/// pgbench's rate and latency quantiles (ms).
fn pgbench(
    setup: &Setup,
    args: &Args,
    dir: &std::path::Path,
    script: &str,
) -> Result<(f64, f64, f64)> {
    let scratch = dir.join("pgbench");
    std::fs::create_dir_all(&scratch)?;
    let (tps, latency) =
        baselines::pgbench(&setup.url, script, args.clients, args.seconds, &scratch)?;
    Ok((
        tps,
        latency.value_at_quantile(0.5) as f64 / 1e3,
        latency.value_at_quantile(0.99) as f64 / 1e3,
    ))
}

/// The request load of a phase: `args.clients` clients for `args.seconds`, with the token.
async fn requests(
    setup: &Setup,
    args: &Args,
    path: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> Result<Measured> {
    let api = &setup.reporting;
    load::run(
        &api.client,
        &api.base,
        TOKEN,
        args.clients,
        Duration::from_secs(args.seconds),
        path,
    )
    .await
}

async fn daily(
    setup: &Setup,
    args: &Args,
    dir: &std::path::Path,
    report: &mut Vec<String>,
    missed: &mut Vec<String>,
) -> Result<()> {
    let first: jiff::civil::Date = FIRST_DAY.parse()?;
    let last = first.checked_add(jiff::Span::new().days(RANGE_DAYS - 1))?;
    let cached_path = format!("/v1/daily?from={first}&to={last}");
    let api = &setup.reporting;
    // Fills the cache, and checks it answers from it.
    for _ in 0..2 {
        api.client
            .get(format!("{}{cached_path}", api.base))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .error_for_status()?;
    }
    say("daily", format!("cached {cached_path}, {} s", args.seconds));
    let path = cached_path.clone();
    let cached = requests(setup, args, Arc::new(move |_| path.clone())).await?;
    if cached.hits < cached.requests {
        bail!(
            "only {} of {} cached requests were cache hits",
            cached.hits,
            cached.requests
        );
    }
    // Uncached: each request a key not asked for before, the same rows as pgbench's: a
    // 30-day range from a varying day, and a page limit (above the 60 rows) that varies once
    // every start day has been asked for.
    say("daily", format!("uncached, {} s", args.seconds));
    let uncached = requests(
        setup,
        args,
        Arc::new(move |n| {
            let span = (DAYS - RANGE_DAYS) as u64;
            let start = first
                .checked_add(jiff::Span::new().days(1 + (n % span) as i64))
                .unwrap_or(first);
            let end = start
                .checked_add(jiff::Span::new().days(RANGE_DAYS - 1))
                .unwrap_or(start);
            let limit = 2 * RANGE_DAYS as u64 + 1 + n / span;
            format!("/v1/daily?from={start}&to={end}&limit={limit}")
        }),
    )
    .await?;
    if uncached.hits * 20 > uncached.requests {
        bail!(
            "{} of {} uncached requests were cache hits: the ranges repeated",
            uncached.hits,
            uncached.requests
        );
    }
    say("daily", format!("pgbench, {} s", args.seconds));
    let script = format!(
        "\\set start random(1, {})\n\
         SELECT * FROM (SELECT {DAILY_COLUMNS} FROM daily_fleet \
         WHERE day >= DATE '{FIRST_DAY}' + :start::integer AND day <= DATE '{FIRST_DAY}' + :start::integer + {}) \
         AS report ORDER BY day, source LIMIT 101;\n",
        DAYS - RANGE_DAYS,
        RANGE_DAYS - 1
    );
    let theirs = pgbench(setup, args, dir, &script)?;
    row(report, "daily 30 days, cached", &cached, theirs);
    row(report, "daily 30 days, uncached", &uncached, theirs);
    if cached.per_second() < theirs.0 {
        missed.push(format!(
            "daily cached: {:.0} req/s is below pgbench's {:.0}/s on the same SQL",
            cached.per_second(),
            theirs.0
        ));
    }
    if uncached.per_second() < theirs.0 / 2.0 {
        missed.push(format!(
            "daily uncached: {:.0} req/s is below half of pgbench's {:.0}/s",
            uncached.per_second(),
            theirs.0
        ));
    }
    Ok(())
}

async fn fleet(
    setup: &Setup,
    args: &Args,
    dir: &std::path::Path,
    report: &mut Vec<String>,
    missed: &mut Vec<String>,
) -> Result<()> {
    let api = &setup.reporting;
    let answer: serde_json::Value = api
        .client
        .get(format!("{}/v1/fleet?limit=1000", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let taxis = answer["items"].as_array().map_or(0, Vec::len) as u64;
    if taxis != args.taxis.min(1000) {
        bail!(
            "/v1/fleet listed {taxis} taxis, not {}",
            args.taxis.min(1000)
        );
    }
    say("fleet", format!("{taxis} taxis, {} s", args.seconds));
    let ours = requests(setup, args, Arc::new(|_| "/v1/fleet?limit=1000".to_owned())).await?;
    say("fleet", format!("pgbench, {} s", args.seconds));
    let script = "SELECT * FROM (SELECT l.taxi_id, l.ts, l.lat, l.lon, l.speed_kmh, \
        l.heading_deg, l.received_at, coalesce(s.state, 'unknown') AS status, s.at AS status_at, \
        t.tour_id AS open_tour_id, t.started_at AS open_tour_started_at \
        FROM latest_positions l LEFT JOIN taxi_status s ON s.taxi_id = l.taxi_id \
        LEFT JOIN LATERAL (SELECT tour_id, started_at FROM tours \
        WHERE taxi_id = l.taxi_id AND state = 'started' ORDER BY started_at DESC LIMIT 1) t ON true) \
        AS report ORDER BY taxi_id LIMIT 1001;\n";
    let theirs = pgbench(setup, args, dir, script)?;
    row(
        report,
        &format!("fleet, {taxis} taxis (live, cached 2 s)"),
        &ours,
        theirs,
    );
    if ours.per_second() < theirs.0 / 2.0 {
        missed.push(format!(
            "fleet: {:.0} req/s is below half of pgbench's {:.0}/s",
            ours.per_second(),
            theirs.0
        ));
    }
    Ok(())
}

async fn csv(
    setup: &Setup,
    args: &Args,
    report: &mut Vec<String>,
    missed: &mut Vec<String>,
) -> Result<()> {
    let from: jiff::Timestamp = ROUTE_FROM.parse()?;
    let to = from.checked_add(jiff::SignedDuration::from_secs(
        (args.positions / 10 + 10) as i64,
    ))?;
    let path = format!("/v1/taxis/{ROUTE_TAXI}/route?from={from}&to={to}");
    let api = &setup.reporting;
    api.reset_peak()?;
    let (rss_before, _) = api.memory_kib()?;
    say("csv", format!("{} positions as CSV", args.positions));
    let started = Instant::now();
    let mut answer = api
        .client
        .get(format!("{}{path}", api.base))
        .bearer_auth(TOKEN)
        .header("accept", "text/csv")
        .send()
        .await?
        .error_for_status()?;
    let (mut lines, mut bytes) = (0u64, 0u64);
    while let Some(chunk) = answer.chunk().await? {
        lines += line_breaks(&chunk);
        bytes += chunk.len() as u64;
    }
    let ours_s = started.elapsed().as_secs_f64();
    let (_, peak) = api.memory_kib()?;
    let rows = lines.saturating_sub(1);
    if rows != args.positions {
        bail!("the CSV had {rows} rows, not {}", args.positions);
    }
    say("csv", "psql \\copy of the same query".to_owned());
    let query = format!(
        "SELECT * FROM (SELECT ts, seq, lat, lon, speed_kmh, heading_deg, accuracy_m, received_at \
         FROM positions WHERE taxi_id = '{ROUTE_TAXI}' AND ts >= '{from}' AND ts < '{to}') \
         AS report ORDER BY ts, seq"
    );
    let url = setup.url.clone();
    let theirs = tokio::task::spawn_blocking(move || baselines::psql_copy(&url, &query))
        .await
        .context("psql task")??;
    let ours_rate = rows as f64 / ours_s;
    let theirs_rate = rows as f64 / theirs.elapsed.as_secs_f64();
    let growth_mib = peak.saturating_sub(rss_before) as f64 / 1024.0;
    report.push(format!(
        "| CSV export, {rows} positions ({:.0} MB): rows/s | {ours_rate:.0} | psql \\copy {theirs_rate:.0} | {:.2}x |",
        bytes as f64 / 1e6,
        ours_rate / theirs_rate
    ));
    report.push(format!(
        "| CSV export: memory | service grew {growth_mib:.1} MiB (peak {:.0} MiB) | psql peak {:.0} MiB | |",
        peak as f64 / 1024.0,
        theirs.peak_rss_kib as f64 / 1024.0
    ));
    if ours_rate < theirs_rate / 2.0 {
        missed.push(format!(
            "CSV export: {ours_rate:.0} rows/s is below half of psql's {theirs_rate:.0}"
        ));
    }
    if growth_mib > 64.0 {
        missed.push(format!(
            "CSV export: the service grew {growth_mib:.1} MiB (bound: 64)"
        ));
    }
    Ok(())
}

fn line_breaks(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

async fn files(
    setup: &Setup,
    args: &Args,
    dir: &std::path::Path,
    report: &mut Vec<String>,
    missed: &mut Vec<String>,
) -> Result<()> {
    let file = dir.join("big.bin");
    let size = args.file_mib << 20;
    say("files", format!("writing a {} MiB file", args.file_mib));
    let path = file.clone();
    tokio::task::spawn_blocking(move || write_random(&path, size))
        .await
        .context("writing the file")??;
    let api = &setup.reporting;
    let url = format!("{}/filesystem/bench/big.bin", api.base);
    let mib = size as f64 / (1 << 20) as f64;

    api.reset_peak()?;
    let (rss_before, _) = api.memory_kib()?;
    say("files", "curl upload".to_owned());
    let (up, ca, token) = (url.clone(), setup.ca.clone(), TOKEN.to_owned());
    let upload_file = file.clone();
    let (up_time, _) =
        tokio::task::spawn_blocking(move || baselines::curl(&up, &token, &ca, Some(&upload_file)))
            .await
            .context("curl task")??;
    say("files", "curl download".to_owned());
    let (down, ca, token) = (url.clone(), setup.ca.clone(), TOKEN.to_owned());
    let (down_time, _) =
        tokio::task::spawn_blocking(move || baselines::curl(&down, &token, &ca, None))
            .await
            .context("curl task")??;
    let (_, peak) = api.memory_kib()?;
    let growth_mib = peak.saturating_sub(rss_before) as f64 / 1024.0;
    let head = api
        .client
        .head(&url)
        .bearer_auth(TOKEN)
        .send()
        .await?
        .error_for_status()?;
    let stored = head
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if stored != Some(size) {
        bail!("the file API keeps {stored:?} bytes, not {size}");
    }

    say("files", "aws s3 cp, both ways".to_owned());
    let aws_target = "s3://taxi-lake/bench/big-aws.bin".to_owned();
    let (endpoint, access, secret) = (
        setup.s3.endpoint.clone(),
        setup.s3.access_key_id.clone(),
        setup.s3.secret_access_key.clone(),
    );
    let local = file.display().to_string();
    let (aws_up, aws_down) = tokio::task::spawn_blocking(move || -> Result<_> {
        let aws = baselines::Aws {
            endpoint: &endpoint,
            access_key_id: &access,
            secret_access_key: &secret,
        };
        let up = aws.cp(&local, &aws_target)?;
        let down = aws.cp(&aws_target, "-")?;
        Ok((up, down))
    })
    .await
    .context("aws task")??;
    let _ = std::fs::remove_file(&file);
    for (what, ours, theirs) in [
        ("upload", up_time, aws_up.elapsed),
        ("download", down_time, aws_down.elapsed),
    ] {
        let ours_rate = mib / ours.as_secs_f64();
        let theirs_rate = mib / theirs.as_secs_f64();
        report.push(format!(
            "| file API {what}, {mib:.0} MiB: MiB/s | curl {ours_rate:.0} | aws s3 cp {theirs_rate:.0} | {:.2}x |",
            ours_rate / theirs_rate
        ));
        if ours_rate < theirs_rate / 2.0 {
            missed.push(format!(
                "file API {what}: {ours_rate:.0} MiB/s is below half of aws s3 cp's {theirs_rate:.0}"
            ));
        }
    }
    report.push(format!(
        "| file API: memory | service grew {growth_mib:.1} MiB (peak {:.0} MiB) | aws peak {:.0} MiB | |",
        peak as f64 / 1024.0,
        aws_up.peak_rss_kib.max(aws_down.peak_rss_kib) as f64 / 1024.0
    ));
    if growth_mib > 64.0 {
        missed.push(format!(
            "file API: the service grew {growth_mib:.1} MiB (bound: 64)"
        ));
    }
    Ok(())
}

/// `size` pseudo-random bytes (incompressible, like most files people upload).
fn write_random(path: &std::path::Path, size: u64) -> Result<()> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        rng.fill_bytes(&mut block);
        let take = left.min(block.len() as u64) as usize;
        out.write_all(&block[..take])?;
        left -= take as u64;
    }
    out.flush()?;
    Ok(())
}
