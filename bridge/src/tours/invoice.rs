//! The invoice of an ended tour: the fare against the meter reading, the `invoices` row, and
//! the `orders` row that brings its summary to the taxi's inbox.

use tokio_postgres::Transaction;

use super::lifecycle::{StoredEvent, Tour};
use super::tariff::Fare;
use crate::config::ToursConfig;
use crate::store::types::Timestamp;

/// How the fare compares with the meter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterCheck {
    /// `meter - fare`, when there is a meter reading.
    pub difference_cents: Option<i64>,
    pub flagged: bool,
    pub flag_reason: Option<String>,
}

/// Compares the fare with the meter reading: flagged when there is no reading, or when they
/// differ by more than `meter_tolerance_cents` and by more than `meter_tolerance_percent` of
/// the fare.
pub fn check_meter(
    config: &ToursConfig,
    fare_cents: u64,
    meter_cents: Option<i64>,
    currency: &str,
) -> MeterCheck {
    let Some(meter) = meter_cents else {
        return MeterCheck {
            difference_cents: None,
            flagged: true,
            flag_reason: Some("no meter reading".to_owned()),
        };
    };
    let fare = i64::try_from(fare_cents).unwrap_or(i64::MAX);
    let difference = meter.saturating_sub(fare);
    let magnitude = difference.unsigned_abs();
    let relative_limit = fare_cents as f64 * config.meter_tolerance_percent / 100.0;
    let flagged = magnitude > config.meter_tolerance_cents && magnitude as f64 > relative_limit;
    let flag_reason = flagged.then(|| {
        format!(
            "meter {} {currency} {} the fare of {} {currency}",
            money(magnitude),
            if difference > 0 { "above" } else { "below" },
            money(fare_cents)
        )
    });
    MeterCheck {
        difference_cents: Some(difference),
        flagged,
        flag_reason,
    }
}

/// `1234` -> `"12.34"`.
pub fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// The id of the inbox message carrying a tour's invoice: `invoice-<tour_id>`, or, when the
/// tour id has characters an order id may not have or is too long, a readable part of it and
/// a hash of all of it.
pub fn order_id(tour_id: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
    let plain = format!("invoice-{tour_id}");
    if plain.len() <= wire::MAX_REF_ID_LEN && tour_id.chars().all(allowed) {
        return plain;
    }
    let readable: String = tour_id
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .take(80)
        .collect();
    format!("invoice-{readable}-{:016x}", fnv1a(tour_id.as_bytes()))
}

/// FNV-1a, 64 bit: stable across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The summary the driver sees.
pub fn driver_text(tour_id: &str, fare: &Fare, check: &MeterCheck, currency: &str) -> String {
    let mut text = format!(
        "Invoice for tour {tour_id}: {} {currency} ({:.1} km, {} min driving, {} min waiting)",
        money(fare.total_cents),
        fare.distance_m / 1000.0,
        (fare.driving_s / 60.0).round(),
        (fare.waiting_s / 60.0).round(),
    );
    if check.flagged {
        if let Some(reason) = &check.flag_reason {
            text.push_str(&format!(". Please check: {reason}"));
        }
    }
    text
}

const INSERT_INVOICE: &str = "
INSERT INTO invoices (
    tour_id, taxi_id, started_at, ended_at, track_points, distance_m, driving_s, waiting_s,
    base_cents, distance_cents, driving_cents, waiting_cents, night_cents, zone_cents, zones,
    fare_cents, currency, meter_cents, difference_cents, flagged, flag_reason, order_id,
    issued_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        $20, $21, $22, $23)
ON CONFLICT (tour_id) DO NOTHING";

/// An order that dispatch delivers (see `bridge/migrations/V2__orders.sql`).
const INSERT_ORDER: &str = "
INSERT INTO orders (order_id, taxi_id, kind, text, sender, created_at, expires_at, state,
                    updated_at)
VALUES ($1, $2, 'invoice', $3, 'platform', $4, NULL, 'queued', $4)
ON CONFLICT (order_id) DO NOTHING";

/// What [`issue`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// False if the tour already had an invoice.
    pub new: bool,
    pub flagged: bool,
}

/// Writes the invoice of `tour`, ended by `end`, with its `fare` over `track_points` fixes,
/// and queues its summary for the taxi. Once per tour.
pub async fn issue(
    tx: &Transaction<'_>,
    config: &ToursConfig,
    tour: &Tour,
    end: &StoredEvent,
    fare: &Fare,
    track_points: usize,
    now_ms: i64,
) -> Result<Issued, tokio_postgres::Error> {
    let currency = &config.tariff.currency;
    let check = check_meter(config, fare.total_cents, end.meter_cents, currency);
    let order_id = order_id(&tour.tour_id);
    let cents = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let now = Timestamp::clamped(now_ms);
    let inserted = tx
        .execute(
            INSERT_INVOICE,
            &[
                &tour.tour_id,
                &tour.taxi_id,
                &Timestamp::clamped(tour.started_ms),
                &Timestamp::clamped(end.ts_ms),
                &i32::try_from(track_points).unwrap_or(i32::MAX),
                &fare.distance_m,
                &fare.driving_s,
                &fare.waiting_s,
                &cents(fare.base_cents),
                &cents(fare.distance_cents),
                &cents(fare.driving_cents),
                &cents(fare.waiting_cents),
                &cents(fare.night_cents),
                &cents(fare.zone_cents),
                &fare.zones,
                &cents(fare.total_cents),
                currency,
                &end.meter_cents,
                &check.difference_cents,
                &check.flagged,
                &check.flag_reason,
                &order_id,
                &now,
            ],
        )
        .await?;
    if inserted == 0 {
        return Ok(Issued {
            new: false,
            flagged: check.flagged,
        });
    }
    let text = driver_text(&tour.tour_id, fare, &check, currency);
    tx.execute(INSERT_ORDER, &[&order_id, &tour.taxi_id, &text, &now])
        .await?;
    Ok(Issued {
        new: true,
        flagged: check.flagged,
    })
}

/// The columns [`from_row`] reads, for `SELECT ... FROM invoices`.
pub const COLUMNS: &str = "tour_id, taxi_id, started_at, ended_at, distance_m, driving_s, \
    waiting_s, base_cents, distance_cents, driving_cents, waiting_cents, night_cents, \
    zone_cents, zones, fare_cents, currency, meter_cents, difference_cents, flagged, \
    flag_reason, order_id, issued_at";

/// An `invoices` row (selected with [`COLUMNS`]) as published.
pub fn from_row(row: &tokio_postgres::Row) -> Result<wire::Invoice, tokio_postgres::Error> {
    let ms = |i: usize| -> Result<i64, tokio_postgres::Error> {
        Ok(row.try_get::<_, Timestamp>(i)?.ms())
    };
    let rounded = |i: usize| -> Result<u64, tokio_postgres::Error> {
        let value: f64 = row.try_get(i)?;
        Ok(if value.is_finite() && value > 0.0 {
            value.round() as u64
        } else {
            0
        })
    };
    let cents = |i: usize| -> Result<u64, tokio_postgres::Error> {
        Ok(u64::try_from(row.try_get::<_, i64>(i)?).unwrap_or(0))
    };
    Ok(wire::Invoice {
        tour_id: row.try_get(0)?,
        taxi_id: row.try_get(1)?,
        started_ms: ms(2)?,
        ended_ms: ms(3)?,
        distance_m: rounded(4)?,
        driving_s: rounded(5)?,
        waiting_s: rounded(6)?,
        base_cents: cents(7)?,
        distance_cents: cents(8)?,
        driving_cents: cents(9)?,
        waiting_cents: cents(10)?,
        night_cents: cents(11)?,
        zone_cents: cents(12)?,
        zones: row.try_get(13)?,
        fare_cents: cents(14)?,
        currency: row.try_get(15)?,
        meter_cents: row
            .try_get::<_, Option<i64>>(16)?
            .and_then(|m| u64::try_from(m).ok()),
        difference_cents: row.try_get(17)?,
        flagged: row.try_get(18)?,
        flag_reason: row.try_get(19)?,
        order_id: row.try_get(20)?,
        issued_ms: ms(21)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ToursConfig {
        let mut config = crate::Config::default().tours;
        config.meter_tolerance_cents = 100;
        config.meter_tolerance_percent = 10.0;
        config
    }

    #[test]
    fn meter_differences_beyond_both_tolerances_are_flagged() {
        let check = |fare: u64, meter: Option<i64>| check_meter(&config(), fare, meter, "EUR");
        // Within 1.00: fine, however small the fare.
        assert!(!check(500, Some(600)).flagged);
        // 10 % of 30.00 is 3.00: 2.50 off is fine, 3.50 is not.
        assert!(!check(3_000, Some(3_250)).flagged);
        let off = check(3_000, Some(2_650));
        assert_eq!(off.difference_cents, Some(-350));
        assert!(off.flagged);
        assert_eq!(
            off.flag_reason.as_deref(),
            Some("meter 3.50 EUR below the fare of 30.00 EUR")
        );
        let missing = check(3_000, None);
        assert!(missing.flagged && missing.difference_cents.is_none());
    }

    #[test]
    fn order_ids_follow_the_order_id_rule() {
        assert_eq!(order_id("t-2024.11:7_a"), "invoice-t-2024.11:7_a");
        let odd = order_id("Tour #7 / Müller");
        assert!(odd.starts_with("invoice-Tour__7___M_ller-"), "{odd}");
        assert_ne!(odd, order_id("Tour #7 / Mxller"));
        let long = order_id(&"x".repeat(128));
        assert!(long.len() <= 128, "{}", long.len());
        assert_eq!(long, order_id(&"x".repeat(128)));
    }

    #[test]
    fn driver_text_shows_the_fare_and_the_flag() {
        let fare = Fare {
            distance_m: 5_000.0,
            driving_s: 540.0,
            waiting_s: 240.0,
            total_cents: 1_730,
            ..Fare::default()
        };
        let check = check_meter(&config(), 1_730, Some(2_500), "EUR");
        assert_eq!(
            driver_text("t-1", &fare, &check, "EUR"),
            "Invoice for tour t-1: 17.30 EUR (5.0 km, 9 min driving, 4 min waiting). \
             Please check: meter 7.70 EUR above the fare of 17.30 EUR"
        );
    }
}
