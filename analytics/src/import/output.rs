//! Writing accepted trips as local Parquet files, one per New York day of pickup, with the
//! lake's `trips_nyc` schema, ready to publish.
//!
//! The reading thread appends each trip to its day's Arrow builders; every 8192 rows of a
//! day become a record batch, handed over a short queue to a writer thread that encodes and
//! compresses them (so reading and encoding use both cores). The writer keeps one
//! `ArrowWriter` per day open; when the row groups being built in all of them together pass
//! [`MEMORY_BUDGET`], the largest is flushed to its file. Memory is therefore bounded by the
//! number of days a file touches, never by its length.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context};
use arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;

use super::fields::civil_from_days;
use super::trip::Trip;
use super::zones::ZoneLookup;
use crate::lake;

/// Rows of one day gathered before they go to the writer as one batch.
const BATCH_ROWS: usize = 8192;
/// Row groups being built, all days together, before the largest is flushed.
const MEMORY_BUDGET: usize = 64 << 20;
/// Batches waiting for the writer.
const QUEUE: usize = 4;

/// A finished local file: the rows of one day.
#[derive(Clone, Debug)]
pub(crate) struct DayFile {
    pub day: jiff::civil::Date,
    pub path: PathBuf,
}

/// The day of a trip as the lake's partition date.
pub(crate) fn date_of(day: i32) -> anyhow::Result<jiff::civil::Date> {
    let (year, month, date) = civil_from_days(i64::from(day));
    jiff::civil::Date::new(
        i16::try_from(year).map_err(|_| anyhow!("year {year} is out of range"))?,
        month as i8,
        date as i8,
    )
    .with_context(|| format!("day {year}-{month}-{date}"))
}

/// Columns whose values are nearly all different (ids, instants, coordinates, distances):
/// a dictionary would never pay, and trying one costs a hash of every value.
const WITHOUT_DICTIONARY: [&str; 8] = [
    "line",
    "pickup_at",
    "dropoff_at",
    "distance_m",
    "pickup_lon",
    "pickup_lat",
    "dropoff_lon",
    "dropoff_lat",
];

/// The lake's writer settings, without dictionaries for [`WITHOUT_DICTIONARY`].
fn writer_properties() -> parquet::file::properties::WriterProperties {
    WITHOUT_DICTIONARY
        .iter()
        .fold(lake::writer_properties_builder(), |builder, column| {
            builder.set_column_dictionary_enabled(
                parquet::schema::types::ColumnPath::from(*column),
                false,
            )
        })
        .build()
}

/// The per-day builders of the reading thread and the queue to the writer thread.
pub(crate) struct Output {
    schema: SchemaRef,
    source_file: Arc<str>,
    resolution: h3o::Resolution,
    zones: Option<Arc<ZoneLookup>>,
    days: Vec<DayRows>,
    index: HashMap<i32, usize>,
    last: Option<(i32, usize)>,
    queue: Option<SyncSender<(i32, RecordBatch)>>,
    writer: Option<JoinHandle<anyhow::Result<Vec<DayFile>>>>,
}

impl Output {
    /// Starts the writer thread, which writes `<dir>/<YYYY-MM-DD>.parquet` files.
    pub(crate) fn start(
        dir: &Path,
        sha256: &str,
        h3_resolution: u8,
        zones: Option<Arc<ZoneLookup>>,
    ) -> anyhow::Result<Output> {
        let resolution = h3o::Resolution::try_from(h3_resolution)
            .map_err(|e| anyhow!("windows.h3_resolution {h3_resolution}: {e}"))?;
        std::fs::create_dir_all(dir).with_context(|| {
            format!("creating the import's scratch directory {}", dir.display())
        })?;
        let schema = lake::schema::trips_nyc();
        let (queue, batches) = sync_channel(QUEUE);
        let writer = {
            let dir = dir.to_owned();
            let schema = schema.clone();
            std::thread::Builder::new()
                .name("nyc-import-writer".to_owned())
                .spawn(move || write_days(&dir, &schema, batches))
                .context("starting the import's writer thread")?
        };
        Ok(Output {
            schema,
            source_file: Arc::from(sha256),
            resolution,
            zones,
            days: Vec::new(),
            index: HashMap::new(),
            last: None,
            queue: Some(queue),
            writer: Some(writer),
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
                        self.days.push(DayRows::new(day));
                        self.index.insert(day, self.days.len() - 1);
                        self.days.len() - 1
                    }
                };
                self.last = Some((day, slot));
                slot
            }
        };
        let rows = &mut self.days[slot];
        rows.append(trip, self.resolution, self.zones.as_deref());
        if rows.len >= BATCH_ROWS {
            let batch = rows.finish(&self.schema, &self.source_file)?;
            self.send(day, batch)?;
        }
        Ok(())
    }

    /// Sends what is left, waits for the writer and returns the day files, by day.
    pub(crate) fn finish(mut self) -> anyhow::Result<Vec<DayFile>> {
        let mut pending = Vec::new();
        for rows in &mut self.days {
            if rows.len > 0 {
                pending.push((rows.day, rows.finish(&self.schema, &self.source_file)?));
            }
        }
        let mut sent = Ok(());
        for (day, batch) in pending {
            sent = self.send(day, batch);
            if sent.is_err() {
                break;
            }
        }
        self.queue = None;
        let written = self.join();
        // The writer's error says more than "the writer stopped".
        let mut files = written?;
        sent?;
        files.sort_by_key(|f| f.day);
        Ok(files)
    }

    fn send(&mut self, day: i32, batch: RecordBatch) -> anyhow::Result<()> {
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| anyhow!("the import's writer is closed"))?;
        if queue.send((day, batch)).is_err() {
            self.queue = None;
            return Err(self
                .join()
                .err()
                .unwrap_or_else(|| anyhow!("the import's writer stopped")));
        }
        Ok(())
    }

    fn join(&mut self) -> anyhow::Result<Vec<DayFile>> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| anyhow!("the import's writer already stopped"))?;
        writer
            .join()
            .map_err(|_| anyhow!("the import's writer thread panicked"))?
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // On an error elsewhere: close the queue so the writer ends, and wait for it.
        self.queue = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: one `ArrowWriter` per day, row groups flushed within the budget.
fn write_days(
    dir: &Path,
    schema: &SchemaRef,
    batches: Receiver<(i32, RecordBatch)>,
) -> anyhow::Result<Vec<DayFile>> {
    struct Open {
        day: jiff::civil::Date,
        path: PathBuf,
        writer: ArrowWriter<BufWriter<File>>,
    }
    let mut open: HashMap<i32, Open> = HashMap::new();
    for (day, batch) in batches {
        let entry = match open.entry(day) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(slot) => {
                let date = date_of(day)?;
                let path = dir.join(format!("{}.parquet", date.strftime("%Y-%m-%d")));
                let file =
                    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                let writer = ArrowWriter::try_new(
                    BufWriter::with_capacity(1 << 20, file),
                    schema.clone(),
                    Some(writer_properties()),
                )
                .with_context(|| format!("starting {}", path.display()))?;
                slot.insert(Open {
                    day: date,
                    path,
                    writer,
                })
            }
        };
        entry
            .writer
            .write(&batch)
            .with_context(|| format!("writing {}", entry.path.display()))?;
        let building: usize = open.values().map(|o| o.writer.in_progress_size()).sum();
        if building > MEMORY_BUDGET {
            if let Some(largest) = open
                .values_mut()
                .max_by_key(|o| o.writer.in_progress_size())
            {
                largest
                    .writer
                    .flush()
                    .with_context(|| format!("writing {}", largest.path.display()))?;
            }
        }
    }
    let mut files = Vec::with_capacity(open.len());
    for (_, entry) in open {
        entry
            .writer
            .close()
            .with_context(|| format!("finishing {}", entry.path.display()))?;
        files.push(DayFile {
            day: entry.day,
            path: entry.path,
        });
    }
    Ok(files)
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

impl DayRows {
    fn new(day: i32) -> DayRows {
        let timestamps = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
        DayRows {
            day,
            len: 0,
            line: Int64Builder::new(),
            vendor_id: Int32Builder::new(),
            pickup_at: timestamps(),
            dropoff_at: timestamps(),
            passenger_count: Int32Builder::new(),
            distance_m: Float64Builder::new(),
            pickup_lon: Float64Builder::new(),
            pickup_lat: Float64Builder::new(),
            dropoff_lon: Float64Builder::new(),
            dropoff_lat: Float64Builder::new(),
            pickup_location_id: Int32Builder::new(),
            dropoff_location_id: Int32Builder::new(),
            pickup_borough: StringBuilder::new(),
            pickup_zone_name: StringBuilder::new(),
            zone: StringBuilder::new(),
            payment_type: Int32Builder::new(),
            fare_cents: Int64Builder::new(),
            tip_cents: Int64Builder::new(),
            tolls_cents: Int64Builder::new(),
            total_cents: Int64Builder::new(),
        }
    }

    fn append(&mut self, trip: &Trip, resolution: h3o::Resolution, zones: Option<&ZoneLookup>) {
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
        self.zone
            .append_option(zone_of(trip, resolution, &mut text));
        self.payment_type.append_option(trip.payment_type);
        self.fare_cents.append_value(trip.fare_cents);
        self.tip_cents.append_value(trip.tip_cents);
        self.tolls_cents.append_value(trip.tolls_cents);
        self.total_cents.append_value(trip.total_cents);
    }

    /// The pending rows as a batch of the schema; the builders start over.
    fn finish(&mut self, schema: &SchemaRef, source_file: &str) -> anyhow::Result<RecordBatch> {
        let rows = self.len;
        self.len = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                source_file,
                rows,
            ))),
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
fn zone_of<'a>(
    trip: &Trip,
    resolution: h3o::Resolution,
    text: &'a mut [u8; 24],
) -> Option<&'a str> {
    if let Some(point) = trip.pickup_point {
        let cell = h3o::LatLng::new(point.lat, point.lon)
            .ok()?
            .to_cell(resolution);
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
        assert_eq!(
            zone_of(&trip(Some(point), None), resolution, &mut text),
            Some(expected.as_str())
        );
        assert_eq!(expected.len(), 15);
        assert_eq!(
            zone_of(&trip(None, Some(132)), resolution, &mut text),
            Some("tlc:132")
        );
        assert_eq!(zone_of(&trip(None, None), resolution, &mut text), None);
    }

    #[test]
    fn days_become_dates() {
        assert_eq!(date_of(16_450).unwrap(), jiff::civil::date(2015, 1, 15));
    }
}
