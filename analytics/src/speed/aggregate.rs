//! One window's figures, fleet-wide and per zone, folded from the rows read for it.
//!
//! Nothing here touches the database: [`WindowAggregate`] takes positions, tour events and
//! the order counts one by one and gives the window's rows. The result does not depend on
//! the order the rows come in (speeds are summed in sorted order), so a window computed
//! twice from the same rows is the same to the last bit.

use std::collections::{HashMap, HashSet};

use h3o::CellIndex;
use serde::Serialize;

use super::zone::{Zones, FLEET};

/// One row of the `windows` table (without its window and time of computation).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowRow {
    /// [`FLEET`] or an H3 cell id.
    pub zone: String,
    pub positions: i64,
    pub taxis: i64,
    pub avg_speed_kmh: Option<f64>,
    pub max_speed_kmh: Option<f64>,
    pub tours_started: i64,
    pub tours_ended: i64,
    pub revenue_cents: i64,
    pub orders_sent: i64,
    pub orders_accepted: i64,
    pub late_events: i64,
}

/// Which tour event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TourKind {
    Started,
    Ended,
}

impl TourKind {
    /// The `kind` column of `tour_events`.
    pub fn parse(kind: &str) -> Option<TourKind> {
        match kind {
            "started" => Some(TourKind::Started),
            "ended" => Some(TourKind::Ended),
            _ => None,
        }
    }
}

/// The running figures of one zone (or of the fleet).
#[derive(Default)]
struct Figures {
    positions: i64,
    taxis: HashSet<u32>,
    speeds: Vec<f32>,
    tours_started: i64,
    tours_ended: i64,
    revenue_cents: i64,
}

impl Figures {
    fn add_position(&mut self, taxi: u32, speed_kmh: Option<f32>) {
        self.positions += 1;
        self.taxis.insert(taxi);
        if let Some(speed) = speed_kmh.filter(|s| s.is_finite()) {
            self.speeds.push(speed);
        }
    }

    fn add_tour_event(&mut self, kind: TourKind, meter_cents: Option<i64>) {
        match kind {
            TourKind::Started => self.tours_started += 1,
            TourKind::Ended => {
                self.tours_ended += 1;
                self.revenue_cents += meter_cents.unwrap_or(0);
            }
        }
    }

    fn into_row(mut self, zone: String) -> WindowRow {
        // Sorted, so that the sum (and the average) does not depend on the rows' order.
        self.speeds.sort_unstable_by(f32::total_cmp);
        let count = self.speeds.len();
        let avg_speed_kmh = (count > 0)
            .then(|| self.speeds.iter().map(|&s| f64::from(s)).sum::<f64>() / count as f64);
        let max_speed_kmh = self.speeds.last().map(|&s| f64::from(s));
        WindowRow {
            zone,
            positions: self.positions,
            taxis: self.taxis.len() as i64,
            avg_speed_kmh,
            max_speed_kmh,
            tours_started: self.tours_started,
            tours_ended: self.tours_ended,
            revenue_cents: self.revenue_cents,
            orders_sent: 0,
            orders_accepted: 0,
            late_events: 0,
        }
    }
}

/// The figures of one window while its rows are read.
pub struct WindowAggregate {
    zones: Zones,
    fleet: Figures,
    per_zone: HashMap<CellIndex, Figures>,
    /// Taxi ids numbered, to count distinct taxis cheaply.
    taxi_numbers: HashMap<String, u32>,
    orders_sent: i64,
    orders_accepted: i64,
    /// Rows whose coordinates have no cell (counted in the fleet row only).
    pub without_zone: u64,
}

impl WindowAggregate {
    pub fn new(zones: Zones) -> WindowAggregate {
        WindowAggregate {
            zones,
            fleet: Figures::default(),
            per_zone: HashMap::new(),
            taxi_numbers: HashMap::new(),
            orders_sent: 0,
            orders_accepted: 0,
            without_zone: 0,
        }
    }

    /// One position fix.
    pub fn add_position(&mut self, taxi_id: &str, lat: f64, lon: f64, speed_kmh: Option<f32>) {
        let taxi = match self.taxi_numbers.get(taxi_id) {
            Some(&n) => n,
            None => {
                let n = self.taxi_numbers.len() as u32;
                self.taxi_numbers.insert(taxi_id.to_owned(), n);
                n
            }
        };
        self.fleet.add_position(taxi, speed_kmh);
        match self.zones.cell(lat, lon) {
            Some(cell) => self
                .per_zone
                .entry(cell)
                .or_default()
                .add_position(taxi, speed_kmh),
            None => self.without_zone += 1,
        }
    }

    /// One tour event (each tour and kind once: the reader removes copies).
    pub fn add_tour_event(&mut self, kind: TourKind, lat: f64, lon: f64, meter_cents: Option<i64>) {
        self.fleet.add_tour_event(kind, meter_cents);
        match self.zones.cell(lat, lon) {
            Some(cell) => self
                .per_zone
                .entry(cell)
                .or_default()
                .add_tour_event(kind, meter_cents),
            None => self.without_zone += 1,
        }
    }

    /// The window's orders sent and accepted (fleet-wide only).
    pub fn set_orders(&mut self, sent: i64, accepted: i64) {
        self.orders_sent = sent;
        self.orders_accepted = accepted;
    }

    /// The fleet row first (always there, even for an empty window), then one row per zone
    /// with at least one position or tour event, by zone id.
    pub fn into_rows(self) -> Vec<WindowRow> {
        let mut fleet = self.fleet.into_row(FLEET.to_owned());
        fleet.orders_sent = self.orders_sent;
        fleet.orders_accepted = self.orders_accepted;
        let mut zones: Vec<WindowRow> = self
            .per_zone
            .into_iter()
            .map(|(cell, figures)| figures.into_row(cell.to_string()))
            .collect();
        zones.sort_by(|a, b| a.zone.cmp(&b.zone));
        let mut rows = Vec::with_capacity(zones.len() + 1);
        rows.push(fleet);
        rows.extend(zones);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALEX: (f64, f64) = (52.5185, 13.4121); // 881f1d4897fffff
    const GATE: (f64, f64) = (52.5164, 13.3768); // 881f1d4887fffff

    fn aggregate() -> WindowAggregate {
        WindowAggregate::new(Zones::new(8).unwrap())
    }

    #[test]
    fn an_empty_window_has_only_its_fleet_row() {
        let rows = aggregate().into_rows();
        assert_eq!(
            rows,
            vec![WindowRow {
                zone: "fleet".to_owned(),
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
            }]
        );
    }

    #[test]
    fn figures_per_zone_and_for_the_fleet() {
        let mut window = aggregate();
        window.add_position("a", ALEX.0, ALEX.1, Some(20.0));
        window.add_position("a", ALEX.0 + 0.0005, ALEX.1, Some(40.0));
        window.add_position("b", ALEX.0, ALEX.1 + 0.0005, None);
        window.add_position("c", GATE.0, GATE.1, Some(50.0));
        window.add_position("a", GATE.0, GATE.1, Some(70.0));
        window.add_tour_event(TourKind::Started, ALEX.0, ALEX.1, Some(390));
        window.add_tour_event(TourKind::Ended, GATE.0, GATE.1, Some(2_340));
        window.add_tour_event(TourKind::Ended, GATE.0, GATE.1, None);
        window.set_orders(3, 1);
        let rows = window.into_rows();
        assert_eq!(rows.len(), 3);
        let (fleet, gate, alex) = (&rows[0], &rows[1], &rows[2]);
        assert_eq!(fleet.zone, "fleet");
        assert_eq!((fleet.positions, fleet.taxis), (5, 3));
        assert_eq!(fleet.avg_speed_kmh, Some(45.0));
        assert_eq!(fleet.max_speed_kmh, Some(70.0));
        assert_eq!((fleet.tours_started, fleet.tours_ended), (1, 2));
        assert_eq!(fleet.revenue_cents, 2_340);
        assert_eq!((fleet.orders_sent, fleet.orders_accepted), (3, 1));

        assert_eq!(alex.zone, "881f1d4897fffff");
        assert_eq!((alex.positions, alex.taxis), (3, 2));
        assert_eq!(alex.avg_speed_kmh, Some(30.0));
        assert_eq!(alex.max_speed_kmh, Some(40.0));
        assert_eq!(
            (alex.tours_started, alex.tours_ended, alex.revenue_cents),
            (1, 0, 0)
        );
        assert_eq!((alex.orders_sent, alex.orders_accepted), (0, 0));

        assert_eq!(gate.zone, "881f1d4887fffff");
        assert_eq!((gate.positions, gate.taxis), (2, 2));
        assert_eq!(gate.avg_speed_kmh, Some(60.0));
        assert_eq!(
            (gate.tours_started, gate.tours_ended, gate.revenue_cents),
            (0, 2, 2_340)
        );
    }

    #[test]
    fn the_order_of_the_rows_does_not_change_the_average() {
        let speeds: Vec<f32> = (0..1000).map(|i| (i as f32) * 0.37 + 0.001).collect();
        let mut forward = aggregate();
        let mut backward = aggregate();
        for &s in &speeds {
            forward.add_position("a", ALEX.0, ALEX.1, Some(s));
        }
        for &s in speeds.iter().rev() {
            backward.add_position("a", ALEX.0, ALEX.1, Some(s));
        }
        let (f, b) = (forward.into_rows(), backward.into_rows());
        assert_eq!(
            f[0].avg_speed_kmh.map(f64::to_bits),
            b[0].avg_speed_kmh.map(f64::to_bits)
        );
    }
}
