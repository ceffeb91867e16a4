//! The JSON of one closed window on `analytics/windows` (see `topics.md`).
//!
//! One message per window: the fleet-wide figures and one entry per zone, busiest zone
//! first. A message never exceeds `windows.max_message_bytes`: when the zones do not all fit,
//! the quietest are left out and counted in `zones_omitted` (PostgreSQL and the lake have
//! every zone).

use serde::Serialize;

use super::aggregate::WindowRow;
use super::window::Window;
use super::zone::FLEET;

#[derive(Serialize)]
struct Message<'a> {
    window_start_ms: i64,
    window_end_ms: i64,
    computed_ms: i64,
    fleet: Fleet,
    zones: Vec<Zone<'a>>,
    zones_omitted: usize,
}

#[derive(Serialize)]
struct Fleet {
    positions: i64,
    taxis: i64,
    avg_speed_kmh: Option<f64>,
    max_speed_kmh: Option<f64>,
    tours_started: i64,
    tours_ended: i64,
    revenue_cents: i64,
    orders_sent: i64,
    orders_accepted: i64,
    late_events: i64,
}

#[derive(Serialize)]
struct Zone<'a> {
    zone: &'a str,
    positions: i64,
    taxis: i64,
    avg_speed_kmh: Option<f64>,
    max_speed_kmh: Option<f64>,
    tours_started: i64,
    tours_ended: i64,
    revenue_cents: i64,
}

/// The message of `window` from its rows (the fleet row and the zone rows, any order).
pub fn encode(
    window: Window,
    computed_ms: i64,
    rows: &[WindowRow],
    max_bytes: usize,
) -> serde_json::Result<Vec<u8>> {
    let fleet = rows
        .iter()
        .find(|row| row.zone == FLEET)
        .map(|row| Fleet {
            positions: row.positions,
            taxis: row.taxis,
            avg_speed_kmh: row.avg_speed_kmh,
            max_speed_kmh: row.max_speed_kmh,
            tours_started: row.tours_started,
            tours_ended: row.tours_ended,
            revenue_cents: row.revenue_cents,
            orders_sent: row.orders_sent,
            orders_accepted: row.orders_accepted,
            late_events: row.late_events,
        })
        .unwrap_or(Fleet {
            positions: 0,
            taxis: 0,
            avg_speed_kmh: None,
            max_speed_kmh: None,
            tours_started: 0,
            tours_ended: 0,
            revenue_cents: 0,
            orders_sent: 0,
            orders_accepted: 0,
            late_events: 0,
        });
    let mut zones: Vec<&WindowRow> = rows.iter().filter(|row| row.zone != FLEET).collect();
    zones.sort_by(|a, b| {
        (b.positions, b.tours_started + b.tours_ended)
            .cmp(&(a.positions, a.tours_started + a.tours_ended))
            .then_with(|| a.zone.cmp(&b.zone))
    });
    let total = zones.len();
    let mut message = Message {
        window_start_ms: window.start_ms,
        window_end_ms: window.end_ms,
        computed_ms,
        fleet,
        zones: Vec::new(),
        // The largest count it can be, so that the size below is an upper bound.
        zones_omitted: total,
    };
    // Separators between zones: one comma each.
    let mut size = serde_json::to_vec(&message)?.len();
    for row in zones {
        let zone = Zone {
            zone: &row.zone,
            positions: row.positions,
            taxis: row.taxis,
            avg_speed_kmh: row.avg_speed_kmh,
            max_speed_kmh: row.max_speed_kmh,
            tours_started: row.tours_started,
            tours_ended: row.tours_ended,
            revenue_cents: row.revenue_cents,
        };
        let grows = serde_json::to_vec(&zone)?.len() + 1;
        if size + grows > max_bytes {
            break;
        }
        size += grows;
        message.zones.push(zone);
    }
    message.zones_omitted = total - message.zones.len();
    serde_json::to_vec(&message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(zone: &str, positions: i64) -> WindowRow {
        WindowRow {
            zone: zone.to_owned(),
            positions,
            taxis: 1,
            avg_speed_kmh: Some(30.5),
            max_speed_kmh: None,
            tours_started: 0,
            tours_ended: 0,
            revenue_cents: 0,
            orders_sent: 0,
            orders_accepted: 0,
            late_events: 0,
        }
    }

    const WINDOW: Window = Window {
        start_ms: 1_732_200_000_000,
        end_ms: 1_732_200_010_000,
    };

    #[test]
    fn the_busiest_zones_come_first() {
        let rows = [
            row("fleet", 6),
            row("881f1d4887fffff", 2),
            row("881f1d4897fffff", 4),
        ];
        let json: serde_json::Value =
            serde_json::from_slice(&encode(WINDOW, 1_732_200_012_300, &rows, 65_536).unwrap())
                .unwrap();
        assert_eq!(json["window_start_ms"], 1_732_200_000_000_i64);
        assert_eq!(json["window_end_ms"], 1_732_200_010_000_i64);
        assert_eq!(json["fleet"]["positions"], 6);
        assert_eq!(json["fleet"]["avg_speed_kmh"], 30.5);
        assert!(json["fleet"]["max_speed_kmh"].is_null());
        assert_eq!(json["zones"][0]["zone"], "881f1d4897fffff");
        assert_eq!(json["zones"][1]["zone"], "881f1d4887fffff");
        assert_eq!(json["zones_omitted"], 0);
    }

    #[test]
    fn zones_that_do_not_fit_are_counted_not_sent() {
        let mut rows = vec![row("fleet", 1000)];
        rows.extend((0..1000).map(|i| row(&format!("88{i:013x}"), 1000 - i)));
        let bytes = encode(WINDOW, 0, &rows, 4_096).unwrap();
        assert!(bytes.len() <= 4_096, "{}", bytes.len());
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let sent = json["zones"].as_array().unwrap().len();
        assert!(sent > 10, "{sent}");
        assert_eq!(json["zones_omitted"], 1000 - sent);
        assert_eq!(json["zones"][0]["positions"], 1000);
    }
}
