//! Tours end to end: a bridge process with a known tariff and a short settle delay, taxis
//! driving a known route with tour events around it, and readers for what the tour
//! processor wrote (`tours`, `invoices`, `dead_letters`, `tour_events` verdicts).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bridge::tours::tariff::{NightSurcharge, Tariff, TrackPoint, ZoneSurcharge, M_PER_DEG};

use crate::bridge_process::BridgeProcess;
use crate::mosquitto::SubProcess;
use crate::platform::{eventually, Db, Platform, Progress, Taxi, ARRIVAL};

/// Settle delay of the test bridges: events are judged about this long after they arrive.
pub const SETTLE_MS: u64 = 600;

/// Where the known route starts, and the zone around it.
pub const ROUTE_START: (f64, f64) = (52.5, 13.4);

/// The tariff of the tests: 4.00 base, 2.00 per km, 0.10 per minute driving, 0.60 per minute
/// waiting (below 5 km/h), no night surcharge, 1.50 for tours starting or ending at the
/// station (a box around [`ROUTE_START`]).
pub fn test_tariff() -> Tariff {
    Tariff {
        currency: "EUR".to_owned(),
        base_cents: 400,
        per_km_cents: 200,
        per_minute_driving_cents: 10,
        per_minute_waiting_cents: 60,
        waiting_below_kmh: 5.0,
        night: NightSurcharge {
            percent: 0.0,
            from_hour: 22,
            until_hour: 6,
            utc_offset_minutes: 60,
        },
        zones: vec![ZoneSurcharge {
            name: "station".to_owned(),
            min_lat: ROUTE_START.0 - 0.001,
            min_lon: ROUTE_START.1 - 0.001,
            max_lat: ROUTE_START.0 + 0.001,
            max_lon: ROUTE_START.1 + 0.001,
            surcharge_cents: 150,
        }],
    }
}

/// The fare of [`known_route`] under [`test_tariff`], worked out by hand: 4.00 base + 5 km x
/// 2.00 + 9 min x 0.10 driving + 4 min x 0.60 waiting + 1.50 station = 18.80.
pub const KNOWN_ROUTE_FARE_CENTS: u64 = 400 + 1_000 + 90 + 240 + 150;

/// A bridge configuration for `platform` judging tours with [`test_tariff`], [`SETTLE_MS`],
/// quick polls and meter tolerances of 1.00 and 10 %; dispatch on (it delivers the invoice
/// to the taxi's inbox).
pub fn tours_config(platform: &Platform, id: &str) -> bridge::Config {
    let mut config = platform.bridge_config(id, platform.embedded_archive(&format!("s3-{id}")));
    config.tours.enabled = true;
    config.tours.settle_delay_ms = SETTLE_MS;
    config.tours.poll_interval_ms = 100;
    config.tours.meter_tolerance_cents = 100;
    config.tours.meter_tolerance_percent = 10.0;
    config.tours.publish_invoices = true;
    config.tours.tariff = test_tariff();
    config.dispatch.enabled = true;
    config.dispatch.sweep_interval_ms = 100;
    config
}

/// A bridge process with `config`, connected and consuming.
pub async fn spawn_consuming(
    platform: &Platform,
    config: &bridge::Config,
) -> Result<BridgeProcess> {
    let mut process = BridgeProcess::spawn(config)?;
    process.wait_ready().await?;
    platform.wait_until_consuming().await?;
    Ok(process)
}

/// A bridge process with [`tours_config`], connected and consuming.
pub async fn start_tours_bridge(platform: &Platform, id: &str) -> Result<BridgeProcess> {
    spawn_consuming(platform, &tours_config(platform, id)).await
}

/// A platform with one bridge process `b1` judging tours ([`start_tours_bridge`]).
pub async fn platform_with_tours() -> Result<(Platform, BridgeProcess)> {
    let platform = Platform::start().await?;
    let bridge = start_tours_bridge(&platform, "b1").await?;
    Ok((platform, bridge))
}

/// The backoffice following [`wire::INVOICES_TOPIC`] with `mosquitto_sub` (QoS 1), once the
/// broker has granted the subscription.
pub async fn follow_invoices(platform: &Platform) -> Result<SubProcess> {
    let backoffice_cert = platform.pki.client("backoffice", "backoffice")?;
    let mut backoffice = platform
        .broker
        .mosquitto_sub(&backoffice_cert)
        .topic(wire::INVOICES_TOPIC)
        .qos(1)
        .spawn()?;
    ensure!(
        backoffice.expect_subscribed().await? == [1],
        "backoffice may not follow {}",
        wire::INVOICES_TOPIC
    );
    Ok(backoffice)
}

/// The next invoice the backoffice receives on [`wire::INVOICES_TOPIC`].
pub async fn next_published_invoice(backoffice: &mut SubProcess) -> Result<wire::Invoice> {
    let published = backoffice.expect_message(wire::INVOICES_TOPIC).await?;
    wire::Invoice::from_json(published.as_bytes())
        .with_context(|| format!("{published:?} is not an invoice"))
}

/// A point `km` kilometres north of [`ROUTE_START`], `s` seconds after `start_ms`.
pub fn north(start_ms: i64, s: i64, km: f64) -> TrackPoint {
    TrackPoint {
        ts_ms: start_ms + s * 1000,
        lat: ROUTE_START.0 + km * 1000.0 / M_PER_DEG,
        lon: ROUTE_START.1,
    }
}

/// The known route, starting at `start_ms`: 3 km in 6 minutes, 4 minutes standing (with a
/// metre of GPS jitter), then 2 km in 3 minutes. The first point is the start, the last the
/// end; the taxi reports the ones in between as positions.
pub fn known_route(start_ms: i64) -> Vec<TrackPoint> {
    vec![
        north(start_ms, 0, 0.0),
        north(start_ms, 120, 1.0),
        north(start_ms, 360, 3.0),
        north(start_ms, 480, 3.0),
        north(start_ms, 600, 3.001),
        north(start_ms, 690, 4.0),
        north(start_ms, 780, 5.001),
    ]
}

/// A start time in the recent past (whole seconds): device times stay inside the bridge's
/// validation window.
pub fn recent_start_ms(minutes_ago: i64) -> i64 {
    (crate::unix_ms() - minutes_ago * 60_000) / 1000 * 1000
}

/// A tour event as the taxi sends it (JSON).
pub fn tour_event(
    seq: u64,
    tour_id: &str,
    kind: wire::TourEventKind,
    at: TrackPoint,
    meter_cents: Option<u64>,
) -> Vec<u8> {
    wire::encode_json(&wire::TourEvent {
        seq,
        tour_id: tour_id.to_owned(),
        kind,
        ts_ms: at.ts_ms,
        lat: at.lat,
        lon: at.lon,
        meter_cents,
    })
}

/// A taxi with its own counters for position and tour `seq`.
pub struct TourTaxi {
    pub taxi: Taxi,
    pub position_seq: u64,
    pub tour_seq: u64,
}

impl TourTaxi {
    pub async fn new(platform: &Platform, id: &str) -> Result<TourTaxi> {
        Ok(TourTaxi {
            taxi: platform.taxi(id).await?,
            position_seq: 0,
            tour_seq: 0,
        })
    }

    pub fn id(&self) -> &str {
        &self.taxi.id
    }

    /// Publishes a tour event with the next tour `seq`; returns that `seq`.
    pub async fn tour(
        &mut self,
        tour_id: &str,
        kind: wire::TourEventKind,
        at: TrackPoint,
        meter_cents: Option<u64>,
    ) -> Result<u64> {
        self.tour_seq += 1;
        let payload = tour_event(self.tour_seq, tour_id, kind, at, meter_cents);
        self.taxi.publish("tour", &payload).await?;
        Ok(self.tour_seq)
    }

    /// Publishes a position fix at `at`.
    pub async fn position(&mut self, at: TrackPoint) -> Result<()> {
        self.position_seq += 1;
        let position = crate::platform::position(self.position_seq, at.ts_ms, (at.lat, at.lon));
        self.taxi.publish_position(position).await
    }

    /// Drives `route` as one tour: positions before the start and after the end (which do
    /// not count), the start event, the positions in between, the end event with
    /// `meter_cents`; then waits for every PUBACK.
    pub async fn drive_tour(
        &mut self,
        tour_id: &str,
        route: &[TrackPoint],
        meter_cents: Option<u64>,
    ) -> Result<()> {
        let (first, last) = (
            *route.first().context("empty route")?,
            *route.last().context("empty route")?,
        );
        // Waiting a minute before, 2 km away: not part of the tour.
        let mut before = first;
        before.ts_ms -= 60_000;
        before.lat -= 0.018;
        self.position(before).await?;
        self.tour(tour_id, wire::TourEventKind::Started, first, None)
            .await?;
        for point in &route[1..route.len() - 1] {
            self.position(*point).await?;
        }
        self.tour(tour_id, wire::TourEventKind::Ended, last, meter_cents)
            .await?;
        let mut after = last;
        after.ts_ms += 60_000;
        after.lat += 0.018;
        self.position(after).await?;
        self.taxi.wait_acked().await
    }
}

/// An `invoices` row, as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct InvoiceRow {
    pub taxi_id: String,
    pub fare_cents: i64,
    pub base_cents: i64,
    pub distance_cents: i64,
    pub driving_cents: i64,
    pub waiting_cents: i64,
    pub night_cents: i64,
    pub zone_cents: i64,
    pub zones: Vec<String>,
    pub distance_m: f64,
    pub meter_cents: Option<i64>,
    pub difference_cents: Option<i64>,
    pub flagged: bool,
    pub flag_reason: Option<String>,
    pub order_id: String,
    pub published: bool,
}

/// The invoice of `tour_id`, if there is one.
pub async fn invoice(db: &Db, tour_id: &str) -> Result<Option<InvoiceRow>> {
    let row = db
        .client()
        .query_opt(
            "SELECT taxi_id, fare_cents, base_cents, distance_cents, driving_cents, \
             waiting_cents, night_cents, zone_cents, zones, distance_m, meter_cents, \
             difference_cents, flagged, flag_reason, order_id, published_at IS NOT NULL \
             FROM invoices WHERE tour_id = $1",
            &[&tour_id],
        )
        .await
        .context("reading an invoice")?;
    row.map(|r| {
        Ok(InvoiceRow {
            taxi_id: r.try_get(0)?,
            fare_cents: r.try_get(1)?,
            base_cents: r.try_get(2)?,
            distance_cents: r.try_get(3)?,
            driving_cents: r.try_get(4)?,
            waiting_cents: r.try_get(5)?,
            night_cents: r.try_get(6)?,
            zone_cents: r.try_get(7)?,
            zones: r.try_get(8)?,
            distance_m: r.try_get(9)?,
            meter_cents: r.try_get(10)?,
            difference_cents: r.try_get(11)?,
            flagged: r.try_get(12)?,
            flag_reason: r.try_get(13)?,
            order_id: r.try_get(14)?,
            published: r.try_get(15)?,
        })
    })
    .transpose()
}

/// Waits (at most [`ARRIVAL`]) for the invoice of `tour_id`.
pub async fn wait_for_invoice(platform: &Platform, tour_id: &str) -> Result<InvoiceRow> {
    let db = platform.db().await?;
    eventually(&format!("invoice of tour {tour_id}"), ARRIVAL, || async {
        Ok(match invoice(&db, tour_id).await? {
            Some(row) => Progress::Done(row),
            None => Progress::Waiting(format!(
                "verdicts so far: {:?}",
                verdicts(&db, None).await.unwrap_or_default()
            )),
        })
    })
    .await
}

/// The verdicts on tour events, `(taxi, seq, tour_id, outcome, reason_code)` in order; of one
/// taxi or all. Unjudged events have outcome `None`.
pub type Verdict = (String, i64, String, Option<String>, Option<String>);

pub async fn verdicts(db: &Db, taxi: Option<&str>) -> Result<Vec<Verdict>> {
    db.rows(
        "SELECT taxi_id, seq, tour_id, outcome, reason_code FROM tour_events \
         WHERE $1::text IS NULL OR taxi_id = $1 ORDER BY taxi_id, seq",
        &[&taxi],
    )
    .await
    .context("reading tour event verdicts")
}

/// Waits until `expected` tour events of `taxi` are stored and every one is judged; returns
/// the verdicts.
pub async fn wait_until_judged(
    platform: &Platform,
    taxi: &str,
    expected: usize,
) -> Result<Vec<Verdict>> {
    let db = platform.db().await?;
    eventually(
        &format!("{expected} tour events of {taxi} judged"),
        ARRIVAL,
        || async {
            let all = verdicts(&db, Some(taxi)).await?;
            let judged = all.iter().filter(|v| v.3.is_some()).count();
            Ok(if all.len() >= expected && judged == all.len() {
                Progress::Done(all)
            } else {
                Progress::Waiting(format!("{all:?}"))
            })
        },
    )
    .await
}

/// Waits until `expected` tour events of `taxi` are judged ([`wait_until_judged`]) and
/// checks that every one was applied; returns the verdicts.
pub async fn wait_until_all_applied(
    platform: &Platform,
    taxi: &str,
    expected: usize,
) -> Result<Vec<Verdict>> {
    let judged = wait_until_judged(platform, taxi, expected).await?;
    ensure!(
        judged.iter().all(|v| v.3.as_deref() == Some("applied")),
        "{judged:?}"
    );
    Ok(judged)
}

/// The tour dead letters of `taxi`: `(reason_code, reason, payload as text)` in order.
pub async fn tour_dead_letters(db: &Db, taxi: &str) -> Result<Vec<(String, String, String)>> {
    let rows: Vec<(String, String, Vec<u8>)> = db
        .rows(
            "SELECT reason_code, reason, payload FROM dead_letters \
             WHERE taxi_id = $1 AND topic = $2 ORDER BY id",
            &[&taxi, &format!("taxi/{taxi}/tour")],
        )
        .await
        .context("reading dead letters")?;
    Ok(rows
        .into_iter()
        .map(|(code, reason, payload)| {
            (code, reason, String::from_utf8_lossy(&payload).into_owned())
        })
        .collect())
}

/// Checks that `taxi` has no tour dead letters.
pub async fn ensure_no_tour_dead_letters(db: &Db, taxi: &str) -> Result<()> {
    let letters = tour_dead_letters(db, taxi).await?;
    ensure!(
        letters.is_empty(),
        "tour dead letters of {taxi}: {letters:?}"
    );
    Ok(())
}

/// A tour's `(taxi_id, state)`.
pub async fn tour_state(db: &Db, tour_id: &str) -> Result<Option<(String, String)>> {
    db.row_opt(
        "SELECT taxi_id, state FROM tours WHERE tour_id = $1",
        &[&tour_id],
    )
    .await
}

/// Waits for the inbox message `order_id` on `taxi`'s connection (already received or
/// arriving within `timeout`).
pub async fn wait_for_inbox(
    taxi: &mut Taxi,
    order_id: &str,
    timeout: Duration,
) -> Result<wire::InboxMessage> {
    let topic = taxi.topic("inbox");
    let decode = |payload: &[u8]| -> Option<wire::InboxMessage> {
        wire::decode::<wire::InboxMessage>(payload)
            .ok()
            .filter(|m| m.order_id == order_id)
    };
    if let Some(found) = taxi
        .client
        .messages_on(&topic)
        .iter()
        .find_map(|m| decode(&m.payload))
    {
        return Ok(found);
    }
    taxi.client
        .expect(
            &format!("inbox message {order_id}"),
            timeout,
            |event| match event {
                crate::Event::Publish(m) if m.topic == topic => decode(&m.payload),
                _ => None,
            },
        )
        .await
}
