//! The tour processor: every `tours.poll_interval_ms`, judges the settled tour events in
//! device-time order per taxi (one transaction per round, under an advisory lock so that one
//! bridge at a time does it), then publishes the invoices not yet published.
//!
//! Settled: a taxi's unjudged events are judged up to the device time of the latest of them
//! that was stored at least `tours.settle_delay_ms` ago. So a start and an end arriving in
//! different batches, or out of order after a redelivery, are judged in device-time order,
//! while a steady stream of events from one taxi does not hold back its older ones.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Transaction};
use tracing::{info, warn};
use wire::TourEventKind;

use super::invoice;
use super::lifecycle::{judge, Rejection, StoredEvent, Tour, TourEnd, TourState, Verdict};
use super::notify::{self, InvoicePublisher};
use crate::config::{Config, ToursConfig};
use crate::store::types::Timestamp;

/// Advisory lock held by the bridge judging tour events ("taxi" "tour").
const TOURS_LOCK: i64 = 0x7461_7869_746f_7572;

/// Events judged per round (a round is one transaction).
const ROUND_LIMIT: i64 = 1_000;

const SETTLED_EVENTS: &str = "
WITH settled AS (
    SELECT taxi_id, max(ts) AS upto
    FROM tour_events
    WHERE judged_at IS NULL AND received_at <= $1
    GROUP BY taxi_id
)
SELECT e.taxi_id, e.seq, e.tour_id, e.kind, e.ts, e.lat, e.lon, e.meter_cents, e.received_at
FROM tour_events e JOIN settled s ON s.taxi_id = e.taxi_id
WHERE e.judged_at IS NULL AND e.ts <= s.upto
ORDER BY e.taxi_id, e.ts, e.seq
LIMIT $2";

const SELECT_TOUR: &str = "
SELECT tour_id, taxi_id, state, started_at, start_lat, start_lon, start_meter_cents,
       ended_at, end_lat, end_lon, meter_cents
FROM tours WHERE tour_id = $1 FOR UPDATE";

const INSERT_TOUR: &str = "
INSERT INTO tours (tour_id, taxi_id, state, started_seq, started_at, start_lat, start_lon,
                   start_meter_cents, updated_at)
VALUES ($1, $2, 'started', $3, $4, $5, $6, $7, $8)";

const END_TOUR: &str = "
UPDATE tours SET state = 'ended', ended_seq = $2, ended_at = $3, end_lat = $4, end_lon = $5,
                 meter_cents = $6, updated_at = $7
WHERE tour_id = $1";

const MARK_JUDGED: &str = "
UPDATE tour_events SET judged_at = $3, outcome = $4, reason_code = $5
WHERE taxi_id = $1 AND seq = $2";

const INSERT_DEAD_LETTER: &str = "
INSERT INTO dead_letters (received_at, topic, taxi_id, reason_code, reason, payload)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (topic, sha256(payload)) DO NOTHING";

/// Starts the processor (and the invoice publisher) if `tours.enabled`.
pub async fn start(config: &Config) -> anyhow::Result<()> {
    if !config.tours.enabled {
        return Ok(());
    }
    let publisher = if config.tours.publish_invoices {
        Some(InvoicePublisher::start(&config.mqtt, &config.id)?)
    } else {
        None
    };
    tokio::spawn(run(config.clone(), publisher));
    Ok(())
}

/// What one round did, counted once it committed.
#[derive(Default)]
struct Round {
    applied: u64,
    repeated: u64,
    rejected: Vec<&'static str>,
    invoices: u64,
    flagged: u64,
    /// Seconds from receipt to judgement, per event.
    delays: Vec<f64>,
}

async fn run(config: Config, publisher: Option<InvoicePublisher>) {
    let tours = config.tours.clone();
    let mut ticker = tokio::time::interval(Duration::from_millis(tours.poll_interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<Client> = None;
    loop {
        ticker.tick().await;
        if client.as_ref().is_none_or(Client::is_closed) {
            client = match connect(&config.postgres.url).await {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(
                        error = format!("{e:#}"),
                        "tour processor: cannot connect to PostgreSQL"
                    );
                    continue;
                }
            };
        }
        let Some(db) = client.as_mut() else { continue };
        // Judge until nothing settled is left, then publish.
        loop {
            match judge_round(db, &tours).await {
                Ok(Some(round)) => {
                    let full = round.applied + round.repeated + round.rejected.len() as u64
                        >= ROUND_LIMIT as u64;
                    record(&round);
                    if !full {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(
                        error = format!("{e:#}"),
                        "tour processor: round failed; retrying"
                    );
                    metrics::counter!("bridge_tour_errors_total").increment(1);
                    break;
                }
            }
        }
        if let Some(publisher) = &publisher {
            if let Err(e) = notify::sweep(db, publisher).await {
                warn!(
                    error = format!("{e:#}"),
                    "tour processor: publishing invoices failed"
                );
                metrics::counter!("bridge_tour_errors_total").increment(1);
            }
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let mut config: tokio_postgres::Config = url.parse().context("postgres.url")?;
    config.application_name("bridge-tours");
    config.connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "tour processor: PostgreSQL connection ended");
        }
    });
    Ok(client)
}

fn record(round: &Round) {
    let judged = |outcome: &'static str, n: u64| {
        metrics::counter!("bridge_tour_events_judged_total", "outcome" => outcome).increment(n);
    };
    judged("applied", round.applied);
    judged("repeated", round.repeated);
    judged("rejected", round.rejected.len() as u64);
    for reason in &round.rejected {
        metrics::counter!("bridge_tour_rejections_total", "reason" => *reason).increment(1);
    }
    metrics::counter!("bridge_invoices_issued_total").increment(round.invoices);
    metrics::counter!("bridge_invoices_flagged_total").increment(round.flagged);
    for delay in &round.delays {
        metrics::histogram!("bridge_tour_judge_delay_seconds").record(*delay);
    }
}

/// One round in one transaction; `None` if another bridge holds the lock or nothing was due.
async fn judge_round(client: &mut Client, config: &ToursConfig) -> anyhow::Result<Option<Round>> {
    let now_ms = crate::source::now_ms();
    let settled_before = Timestamp::clamped(now_ms - config.settle_delay_ms as i64);
    let tx = client.transaction().await?;
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&TOURS_LOCK])
        .await?
        .try_get(0)?;
    if !locked {
        return Ok(None);
    }
    let rows = tx
        .query(SETTLED_EVENTS, &[&settled_before, &ROUND_LIMIT])
        .await
        .context("reading settled tour events")?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut round = Round::default();
    for row in &rows {
        let event = stored_event(row)?;
        apply(&tx, config, &event, now_ms, &mut round)
            .await
            .with_context(|| {
                format!(
                    "judging tour event {} of taxi {} (tour {:?})",
                    event.seq, event.taxi_id, event.tour_id
                )
            })?;
        round
            .delays
            .push((now_ms - event.received_ms).max(0) as f64 / 1000.0);
    }
    tx.commit().await.context("committing judged tour events")?;
    Ok(Some(round))
}

fn stored_event(row: &tokio_postgres::Row) -> anyhow::Result<StoredEvent> {
    let kind: String = row.try_get(3)?;
    let kind = match kind.as_str() {
        "started" => TourEventKind::Started,
        "ended" => TourEventKind::Ended,
        other => anyhow::bail!("unknown tour event kind {other:?}"),
    };
    Ok(StoredEvent {
        taxi_id: row.try_get(0)?,
        seq: row.try_get(1)?,
        tour_id: row.try_get(2)?,
        kind,
        ts_ms: row.try_get::<_, Timestamp>(4)?.ms(),
        lat: row.try_get(5)?,
        lon: row.try_get(6)?,
        meter_cents: row.try_get(7)?,
        received_ms: row.try_get::<_, Timestamp>(8)?.ms(),
    })
}

async fn load_tour(tx: &Transaction<'_>, tour_id: &str) -> anyhow::Result<Option<Tour>> {
    let Some(row) = tx.query_opt(SELECT_TOUR, &[&tour_id]).await? else {
        return Ok(None);
    };
    let state: String = row.try_get(2)?;
    let state = TourState::parse(&state).with_context(|| format!("tour state {state:?}"))?;
    let end = match row.try_get::<_, Option<Timestamp>>(7)? {
        Some(ended_at) => Some(TourEnd {
            ended_ms: ended_at.ms(),
            lat: row.try_get::<_, Option<f64>>(8)?.unwrap_or_default(),
            lon: row.try_get::<_, Option<f64>>(9)?.unwrap_or_default(),
            meter_cents: row.try_get(10)?,
        }),
        None => None,
    };
    Ok(Some(Tour {
        tour_id: row.try_get(0)?,
        taxi_id: row.try_get(1)?,
        state,
        started_ms: row.try_get::<_, Timestamp>(3)?.ms(),
        start_lat: row.try_get(4)?,
        start_lon: row.try_get(5)?,
        start_meter_cents: row.try_get(6)?,
        end,
    }))
}

/// Executes `sql` ([`INSERT_TOUR`], [`END_TOUR`]) with the parameters `keys`, then the
/// event's seq, device time, position and meter reading, then `now`.
async fn write_event(
    tx: &Transaction<'_>,
    sql: &str,
    keys: &[&(dyn ToSql + Sync)],
    event: &StoredEvent,
    now: &Timestamp,
) -> anyhow::Result<u64> {
    let at = Timestamp::clamped(event.ts_ms);
    let mut params = keys.to_vec();
    params.extend_from_slice(&[
        &event.seq,
        &at,
        &event.lat,
        &event.lon,
        &event.meter_cents,
        now,
    ]);
    Ok(tx.execute(sql, &params).await?)
}

/// Judges one event and writes what follows from it.
async fn apply(
    tx: &Transaction<'_>,
    config: &ToursConfig,
    event: &StoredEvent,
    now_ms: i64,
    round: &mut Round,
) -> anyhow::Result<()> {
    let tour = load_tour(tx, &event.tour_id).await?;
    let verdict = judge(tour.as_ref(), event);
    let now = Timestamp::clamped(now_ms);
    let (outcome, reason_code) = match &verdict {
        Verdict::Start => {
            write_event(
                tx,
                INSERT_TOUR,
                &[&event.tour_id, &event.taxi_id],
                event,
                &now,
            )
            .await?;
            round.applied += 1;
            ("applied", None)
        }
        Verdict::End => {
            let Some(tour) = &tour else {
                anyhow::bail!("an end was judged for a tour that is not stored");
            };
            write_event(tx, END_TOUR, &[&event.tour_id], event, &now).await?;
            let (fare, points) = super::fare::fare(tx, &config.tariff, tour, event).await?;
            let issued = invoice::issue(tx, config, tour, event, &fare, points, now_ms).await?;
            if issued.new {
                round.invoices += 1;
                round.flagged += u64::from(issued.flagged);
                info!(
                    tour_id = event.tour_id,
                    taxi_id = event.taxi_id,
                    fare_cents = fare.total_cents,
                    meter_cents = event.meter_cents,
                    flagged = issued.flagged,
                    "tour ended: invoice issued"
                );
            }
            round.applied += 1;
            ("applied", None)
        }
        Verdict::Repeated => {
            round.repeated += 1;
            ("repeated", None)
        }
        Verdict::Rejected(rejection) => {
            reject(tx, event, rejection).await?;
            round.rejected.push(rejection.code());
            ("rejected", Some(rejection.code()))
        }
    };
    tx.execute(
        MARK_JUDGED,
        &[&event.taxi_id, &event.seq, &now, &outcome, &reason_code],
    )
    .await?;
    Ok(())
}

/// The event goes to `dead_letters`, as JSON, with the reason.
async fn reject(
    tx: &Transaction<'_>,
    event: &StoredEvent,
    rejection: &Rejection,
) -> anyhow::Result<()> {
    let reason = rejection.reason(event);
    warn!(
        taxi_id = event.taxi_id,
        seq = event.seq,
        reason_code = rejection.code(),
        reason,
        "tour event rejected"
    );
    let topic = format!("taxi/{}/tour", event.taxi_id);
    tx.execute(
        INSERT_DEAD_LETTER,
        &[
            &Timestamp::clamped(event.received_ms),
            &topic,
            &event.taxi_id,
            &rejection.code(),
            &reason,
            &event.to_json(),
        ],
    )
    .await?;
    Ok(())
}
