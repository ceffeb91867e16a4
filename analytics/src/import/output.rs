//! The rows of one reader on their way to the day files: each accepted trip is appended
//! to its day's Arrow builders, and every 8192 rows of a day become a record batch sent to
//! the writer thread owning that day ([`super::day_writers`]), so that parsing and encoding
//! run on different cores.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use arrow::array::{
    Array, ArrayRef, Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringArray,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;

use super::cells::Cells;
use super::day_writers::{DaySink, DayWriters};
use super::trip::Trip;
use super::zones::ZoneLookup;

/// Rows of one day gathered before they go to the writer as one batch.
const BATCH_ROWS: usize = 8192;

/// The per-day builders of one reader and where their batches go.
pub(crate) struct Output {
    schema: SchemaRef,
    /// The `source_file` column of a full batch; shorter ones take a slice of it.
    source_file: StringArray,
    cells: Cells,
    zones: Option<Arc<ZoneLookup>>,
    days: Vec<DayRows>,
    index: HashMap<i32, usize>,
    last: Option<(i32, usize)>,
    sink: DaySink,
}

impl Output {
    /// Builders for the trips of the source file `sha256`, sending to `writers`.
    pub(crate) fn new(
        writers: &DayWriters,
        sha256: &str,
        h3_resolution: u8,
        zones: Option<Arc<ZoneLookup>>,
    ) -> anyhow::Result<Output> {
        let resolution = h3o::Resolution::try_from(h3_resolution)
            .map_err(|e| anyhow!("windows.h3_resolution {h3_resolution}: {e}"))?;
        Ok(Output {
            schema: writers.schema().clone(),
            source_file: StringArray::from_iter_values(std::iter::repeat_n(sha256, BATCH_ROWS)),
            cells: Cells::new(resolution),
            zones,
            days: Vec::new(),
            index: HashMap::new(),
            last: None,
            sink: writers.sink(),
        })
    }

    /// Adds an accepted trip to its day.
    pub(crate) fn push(&mut self, trip: &Trip) -> anyhow::Result<()> {
        let day = trip.pickup.day;
        let slot = match self.last {
            Some((last_day, slot)) if last_day == day => slot,
            _ => {
                let slot = match self.index.get(&day) {
                    Some(&slot) => slot,
                    None => {
                        self.days.push(DayRows::new(day, 0));
                        self.index.insert(day, self.days.len() - 1);
                        self.days.len() - 1
                    }
                };
                self.last = Some((day, slot));
                slot
            }
        };
        let rows = &mut self.days[slot];
        rows.append(trip, &mut self.cells, self.zones.as_deref());
        if rows.len >= BATCH_ROWS {
            let batch = rows.finish(&self.schema, &self.source_file)?;
            self.sink.send(day, batch)?;
        }
        Ok(())
    }

    /// Sends the rows still in the builders; the sink closes when this is dropped.
    pub(crate) fn finish(mut self) -> anyhow::Result<()> {
        for rows in &mut self.days {
            if rows.len > 0 {
                let batch = rows.finish(&self.schema, &self.source_file)?;
                self.sink.send(rows.day, batch)?;
            }
        }
        Ok(())
    }
}

/// The builders of one day's pending rows, in the column order of the schema.
struct DayRows {
    day: i32,
    len: usize,
    line: Int64Builder,
    vendor_id: Int32Builder,
    pickup_at: TimestampMicrosecondBuilder,
    dropoff_at: TimestampMicrosecondBuilder,
    passenger_count: Int32Builder,
    distance_m: Float64Builder,
    pickup_lon: Float64Builder,
    pickup_lat: Float64Builder,
    dropoff_lon: Float64Builder,
    dropoff_lat: Float64Builder,
    pickup_location_id: Int32Builder,
    dropoff_location_id: Int32Builder,
    pickup_borough: StringBuilder,
    pickup_zone_name: StringBuilder,
    zone: StringBuilder,
    payment_type: Int32Builder,
    fare_cents: Int64Builder,
    tip_cents: Int64Builder,
    tolls_cents: Int64Builder,
    total_cents: Int64Builder,
}

const METRES_PER_MILE: f64 = 1_609.344;
/// Bytes of an H3 cell's `zone` text.
const ZONE_BYTES: usize = 15;

impl DayRows {
    /// Builders with room for `rows` rows (none for a new day: it gets its room with its
    /// first row, see [`DayRows::append`]).
    fn new(day: i32, rows: usize) -> DayRows {
        let ints = || Int32Builder::with_capacity(rows);
        let longs = || Int64Builder::with_capacity(rows);
        let floats = || Float64Builder::with_capacity(rows);
        let timestamps = || TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
        DayRows {
            day,
            len: 0,
            line: longs(),
            vendor_id: ints(),
            pickup_at: timestamps(),
            dropoff_at: timestamps(),
            passenger_count: ints(),
            distance_m: floats(),
            pickup_lon: floats(),
            pickup_lat: floats(),
            dropoff_lon: floats(),
            dropoff_lat: floats(),
            pickup_location_id: ints(),
            dropoff_location_id: ints(),
            pickup_borough: StringBuilder::with_capacity(rows, 0),
            pickup_zone_name: StringBuilder::with_capacity(rows, 0),
            zone: StringBuilder::with_capacity(rows, rows * ZONE_BYTES),
            payment_type: ints(),
            fare_cents: longs(),
            tip_cents: longs(),
            tolls_cents: longs(),
            total_cents: longs(),
        }
    }

    fn append(&mut self, trip: &Trip, cells: &mut Cells, zones: Option<&ZoneLookup>) {
        if self.len == 0 {
            // The first row of a batch: room for the whole batch at once, rather than the
            // builders growing (and copying) from nothing again after each batch. A day
            // without pending rows keeps no room.
            *self = DayRows::new(self.day, BATCH_ROWS);
        }
        self.len += 1;
        self.line.append_value(trip.line);
        self.vendor_id.append_option(trip.vendor_id);
        self.pickup_at.append_value(trip.pickup.utc_micros);
        self.dropoff_at.append_value(trip.dropoff.utc_micros);
        self.passenger_count.append_option(trip.passenger_count);
        self.distance_m
            .append_value(trip.distance_miles * METRES_PER_MILE);
        self.pickup_lon
            .append_option(trip.pickup_point.map(|p| p.lon));
        self.pickup_lat
            .append_option(trip.pickup_point.map(|p| p.lat));
        self.dropoff_lon
            .append_option(trip.dropoff_point.map(|p| p.lon));
        self.dropoff_lat
            .append_option(trip.dropoff_point.map(|p| p.lat));
        self.pickup_location_id
            .append_option(trip.pickup_location_id);
        self.dropoff_location_id
            .append_option(trip.dropoff_location_id);
        let names = trip
            .pickup_location_id
            .and_then(|id| zones.and_then(|z| z.get(id)));
        self.pickup_borough.append_option(names.map(|n| n.0));
        self.pickup_zone_name.append_option(names.map(|n| n.1));
        let mut text = [0u8; 24];
        self.zone.append_option(zone_of(trip, cells, &mut text));
        self.payment_type.append_option(trip.payment_type);
        self.fare_cents.append_value(trip.fare_cents);
        self.tip_cents.append_value(trip.tip_cents);
        self.tolls_cents.append_value(trip.tolls_cents);
        self.total_cents.append_value(trip.total_cents);
    }

    /// The pending rows as a batch of the schema; the builders start over.
    fn finish(
        &mut self,
        schema: &SchemaRef,
        source_file: &StringArray,
    ) -> anyhow::Result<RecordBatch> {
        let rows = self.len;
        self.len = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(source_file.slice(0, rows.min(source_file.len()))),
            Arc::new(self.line.finish()),
            Arc::new(self.vendor_id.finish()),
            Arc::new(self.pickup_at.finish()),
            Arc::new(self.dropoff_at.finish()),
            Arc::new(self.passenger_count.finish()),
            Arc::new(self.distance_m.finish()),
            Arc::new(self.pickup_lon.finish()),
            Arc::new(self.pickup_lat.finish()),
            Arc::new(self.dropoff_lon.finish()),
            Arc::new(self.dropoff_lat.finish()),
            Arc::new(self.pickup_location_id.finish()),
            Arc::new(self.dropoff_location_id.finish()),
            Arc::new(self.pickup_borough.finish()),
            Arc::new(self.pickup_zone_name.finish()),
            Arc::new(self.zone.finish()),
            Arc::new(self.payment_type.finish()),
            Arc::new(self.fare_cents.finish()),
            Arc::new(self.tip_cents.finish()),
            Arc::new(self.tolls_cents.finish()),
            Arc::new(self.total_cents.finish()),
        ];
        RecordBatch::try_new(schema.clone(), columns)
            .context("building a batch of trips_nyc (the schema and the builders disagree)")
    }
}

/// The `zone` of a trip, written into `text`: the H3 cell of its pickup point as 15
/// lowercase hex digits, or `tlc:<LocationID>`; `None` without either.
fn zone_of<'a>(trip: &Trip, cells: &mut Cells, text: &'a mut [u8; 24]) -> Option<&'a str> {
    if let Some(point) = trip.pickup_point {
        let cell = cells.cell(point.lat, point.lon)?;
        let bits = u64::from(cell);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, out) in text[..15].iter_mut().enumerate() {
            *out = HEX[((bits >> (4 * (14 - i))) & 0xf) as usize];
        }
        return std::str::from_utf8(&text[..15]).ok();
    }
    let id = trip.pickup_location_id?;
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    write!(cursor, "tlc:{id}").ok()?;
    let end = cursor.position() as usize;
    std::str::from_utf8(&text[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::nyc_time::Instant;
    use crate::import::trip::Point;

    fn trip(point: Option<Point>, location: Option<i32>) -> Trip {
        let at = |utc_micros| Instant { utc_micros, day: 0 };
        Trip {
            line: 2,
            vendor_id: None,
            pickup: at(0),
            dropoff: at(0),
            passenger_count: None,
            distance_miles: 0.0,
            pickup_point: point,
            dropoff_point: None,
            pickup_location_id: location,
            dropoff_location_id: None,
            payment_type: None,
            fare_cents: 0,
            tip_cents: 0,
            tolls_cents: 0,
            total_cents: 0,
        }
    }

    #[test]
    fn zones_are_h3_cells_or_tlc_ids() {
        let resolution = h3o::Resolution::Eight;
        let point = Point {
            lon: -73.985,
            lat: 40.758,
        };
        let expected = h3o::LatLng::new(point.lat, point.lon)
            .unwrap()
            .to_cell(resolution)
            .to_string();
        let mut text = [0u8; 24];
        let mut cells = Cells::new(resolution);
        assert_eq!(
            zone_of(&trip(Some(point), None), &mut cells, &mut text),
            Some(expected.as_str())
        );
        assert_eq!(expected.len(), 15);
        assert_eq!(
            zone_of(&trip(None, Some(132)), &mut cells, &mut text),
            Some("tlc:132")
        );
        assert_eq!(zone_of(&trip(None, None), &mut cells, &mut text), None);
    }
}
