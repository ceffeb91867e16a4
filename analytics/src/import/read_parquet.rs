//! Reading a TLC Parquet file in record batches (constant memory: one batch of the columns
//! used, whatever the file's size). The schema names the layout; the columns may have any of
//! the types the TLC has used over the years (int32 or int64 ids, double or integer counts,
//! double amounts, timestamps in any unit, without zone as the TLC writes them or with one),
//! each cast once per batch to one type before the rows are read.

use std::fs::File;

use anyhow::{anyhow, Context};
use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, RecordBatch, TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, TimeUnit, TimestampMicrosecondType};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use super::fields::cents;
use super::intake::Intake;
use super::layout::{Columns, Layout, Places};
use super::nyc_time::{Instant, NewYorkClock};
use super::progress::{Progress, Unit};
use super::source::Source;
use super::trip::{Point, Problem, Trip};

const BATCH_ROWS: usize = 8192;

/// Reads every row of the Parquet file `source` into `intake`. Errors (not Parquet, a
/// corrupt page, columns of a wrong type) name the file; bad rows are not errors.
pub(crate) fn read(
    source: &Source,
    intake: &mut Intake,
    show_progress: bool,
) -> anyhow::Result<Layout> {
    let name = source.path.display();
    let file = File::open(&source.path).with_context(|| format!("{name}: cannot open it"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{name}: not a readable Parquet file"))?;
    let schema = builder.schema().clone();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let columns = Columns::find(&names).map_err(|e| anyhow!("{name}: {e}"))?;
    let used = columns.used();
    for &(index, column) in &used {
        let data_type = schema.field(index).data_type();
        let fits = if is_time(column) {
            matches!(data_type, DataType::Timestamp(_, _))
        } else {
            data_type.is_numeric()
        };
        if !fits {
            let wanted = if is_time(column) {
                "a timestamp"
            } else {
                "a number"
            };
            anyhow::bail!(
                "{name}: column {} is {data_type}, not {wanted}",
                schema.field(index).name()
            );
        }
    }
    let total_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let mask = ProjectionMask::roots(builder.parquet_schema(), used.iter().map(|&(i, _)| i));
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .with_context(|| format!("{name}: cannot read its rows"))?;
    // Projected columns come in file order: the position of file column `i` is its rank.
    let at = |index: usize| used.iter().position(|&(i, _)| i == index).unwrap_or(0);
    let progress = Progress::new(
        &super::read_csv::short_name(source),
        total_rows,
        Unit::Rows,
        show_progress,
    );
    let mut line: i64 = 0;
    for batch in reader {
        let batch = batch.with_context(|| {
            format!("{name}: cannot read the rows after row {line} (a corrupt file?)")
        })?;
        let view = Batch::new(&batch, &columns, &used, &at)
            .with_context(|| format!("{name}: converting its columns"))?;
        for row in 0..batch.num_rows() {
            line += 1;
            let raw = || raw_row(&batch, &used, row);
            match view.trip(row, line, &mut intake.clock) {
                Ok(trip) => intake.trip(&trip, raw)?,
                Err(problem) => intake.reject(line, problem, raw)?,
            }
        }
        progress.update(line as u64, intake.seen());
        intake.check_cancelled()?;
    }
    progress.finish();
    Ok(columns.layout)
}

fn is_time(column: &str) -> bool {
    column.ends_with("_datetime")
}

/// One batch's columns, each cast to the one type it is read as.
struct Batch {
    pickup_at: TimestampMicrosecondArray,
    dropoff_at: TimestampMicrosecondArray,
    /// The times are UTC instants (the column has a zone), not New York wall-clock times.
    zoned: bool,
    vendor_id: Float64Array,
    passenger_count: Float64Array,
    trip_distance: Float64Array,
    payment_type: Float64Array,
    fare: Float64Array,
    tip: Float64Array,
    tolls: Float64Array,
    total: Float64Array,
    places: BatchPlaces,
}

enum BatchPlaces {
    Points([Float64Array; 4]),
    Zones([Float64Array; 2]),
}

impl Batch {
    fn new(
        batch: &RecordBatch,
        c: &Columns,
        used: &[(usize, &'static str)],
        at: &dyn Fn(usize) -> usize,
    ) -> anyhow::Result<Batch> {
        let column = |index: usize| -> (&ArrayRef, &'static str) {
            let position = at(index);
            (batch.column(position), used[position].1)
        };
        let number = |index: usize| -> anyhow::Result<Float64Array> {
            let (array, name) = column(index);
            let cast = cast(array, &DataType::Float64).with_context(|| format!("column {name}"))?;
            Ok(cast.as_primitive::<Float64Type>().clone())
        };
        let time = |index: usize| -> anyhow::Result<(TimestampMicrosecondArray, bool)> {
            let (array, name) = column(index);
            let zone = match array.data_type() {
                DataType::Timestamp(_, zone) => zone.clone(),
                _ => None,
            };
            let cast = cast(
                array,
                &DataType::Timestamp(TimeUnit::Microsecond, zone.clone()),
            )
            .with_context(|| format!("column {name}"))?;
            Ok((
                cast.as_primitive::<TimestampMicrosecondType>().clone(),
                zone.is_some(),
            ))
        };
        let (pickup_at, zoned) = time(c.pickup_at)?;
        let (dropoff_at, _) = time(c.dropoff_at)?;
        let places = match c.places {
            Places::Points {
                pickup_lon,
                pickup_lat,
                dropoff_lon,
                dropoff_lat,
            } => BatchPlaces::Points([
                number(pickup_lon)?,
                number(pickup_lat)?,
                number(dropoff_lon)?,
                number(dropoff_lat)?,
            ]),
            Places::Zones { pickup, dropoff } => {
                BatchPlaces::Zones([number(pickup)?, number(dropoff)?])
            }
        };
        Ok(Batch {
            pickup_at,
            dropoff_at,
            zoned,
            vendor_id: number(c.vendor_id)?,
            passenger_count: number(c.passenger_count)?,
            trip_distance: number(c.trip_distance)?,
            payment_type: number(c.payment_type)?,
            fare: number(c.fare)?,
            tip: number(c.tip)?,
            tolls: number(c.tolls)?,
            total: number(c.total)?,
            places,
        })
    }

    fn trip(&self, row: usize, line: i64, clock: &mut NewYorkClock) -> Result<Trip, Problem> {
        let pickup = self.instant(&self.pickup_at, row, "tpep_pickup_datetime", clock, None)?;
        let dropoff = self.instant(
            &self.dropoff_at,
            row,
            "tpep_dropoff_datetime",
            clock,
            Some(pickup),
        )?;
        let (pickup_point, dropoff_point, pickup_location_id, dropoff_location_id) = match &self
            .places
        {
            BatchPlaces::Points([pickup_lon, pickup_lat, dropoff_lon, dropoff_lat]) => (
                Some(Point {
                    lon: required(pickup_lon, row, "pickup_longitude")?,
                    lat: required(pickup_lat, row, "pickup_latitude")?,
                }),
                Some(Point {
                    lon: required(dropoff_lon, row, "dropoff_longitude")?,
                    lat: required(dropoff_lat, row, "dropoff_latitude")?,
                }),
                None,
                None,
            ),
            BatchPlaces::Zones([pickup, dropoff]) => (
                None,
                None,
                Some(whole(pickup, row, "PULocationID")?.ok_or_else(|| missing("PULocationID"))?),
                Some(whole(dropoff, row, "DOLocationID")?.ok_or_else(|| missing("DOLocationID"))?),
            ),
        };
        Ok(Trip {
            line,
            vendor_id: whole(&self.vendor_id, row, "VendorID")?,
            pickup,
            dropoff,
            passenger_count: whole(&self.passenger_count, row, "passenger_count")?,
            distance_miles: required(&self.trip_distance, row, "trip_distance")?,
            pickup_point,
            dropoff_point,
            pickup_location_id,
            dropoff_location_id,
            payment_type: whole(&self.payment_type, row, "payment_type")?,
            fare_cents: money(&self.fare, row, "fare_amount")?,
            tip_cents: money(&self.tip, row, "tip_amount")?,
            tolls_cents: money(&self.tolls, row, "tolls_amount")?,
            total_cents: money(&self.total, row, "total_amount")?,
        })
    }

    fn instant(
        &self,
        array: &TimestampMicrosecondArray,
        row: usize,
        column: &str,
        clock: &mut NewYorkClock,
        pickup: Option<Instant>,
    ) -> Result<Instant, Problem> {
        if array.is_null(row) {
            return Err(missing(column));
        }
        let micros = array.value(row);
        let instant = if self.zoned {
            clock.at_utc(micros)
        } else {
            match pickup {
                None => clock.pickup(micros),
                Some(pickup) => clock.dropoff(micros, pickup),
            }
        };
        instant.ok_or_else(|| {
            Problem::unparseable(
                column,
                micros.to_string().as_bytes(),
                "a time of the years 0001-9998 (µs)",
            )
        })
    }
}

fn missing(column: &str) -> Problem {
    Problem::unparseable(column, b"", "")
}

fn required(array: &Float64Array, row: usize, column: &str) -> Result<f64, Problem> {
    if array.is_null(row) {
        return Err(missing(column));
    }
    let value = array.value(row);
    if !value.is_finite() {
        return Err(Problem::unparseable(
            column,
            value.to_string().as_bytes(),
            "a number",
        ));
    }
    Ok(value)
}

/// A whole number of 32 bits, or null.
fn whole(array: &Float64Array, row: usize, column: &str) -> Result<Option<i32>, Problem> {
    if array.is_null(row) {
        return Ok(None);
    }
    let value = array.value(row);
    if value.fract() != 0.0 || !(f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&value) {
        return Err(Problem::unparseable(
            column,
            value.to_string().as_bytes(),
            "a whole number of 32 bits",
        ));
    }
    Ok(Some(value as i32))
}

fn money(array: &Float64Array, row: usize, column: &str) -> Result<i64, Problem> {
    let dollars = required(array, row, column)?;
    dollars_to_cents(dollars).ok_or_else(|| {
        Problem::unparseable(
            column,
            dollars.to_string().as_bytes(),
            "an amount in dollars",
        )
    })
}

/// Dollars as a double to cents, rounded half away from zero as the decimal the double was
/// written from (0.285 is 29 cents, though 0.285 × 100 is 28.4999... in binary).
pub(crate) fn dollars_to_cents(dollars: f64) -> Option<i64> {
    if !dollars.is_finite() || dollars.abs() > 1e13 {
        return None;
    }
    let scaled = dollars * 100.0;
    let fraction = (scaled - scaled.trunc()).abs();
    if (fraction - 0.5).abs() > 1e-6 {
        return Some(scaled.round() as i64);
    }
    // Near half a cent: decide on the shortest decimal text of the double.
    let mut text = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    use std::io::Write;
    if write!(cursor, "{dollars}").is_err() {
        return Some(scaled.round() as i64);
    }
    let end = cursor.position() as usize;
    cents(&text[..end]).or(Some(scaled.round() as i64))
}

/// The row's columns as `name=value` pairs.
fn raw_row(batch: &RecordBatch, used: &[(usize, &'static str)], row: usize) -> String {
    let options = FormatOptions::default().with_null("null");
    let mut parts = Vec::with_capacity(used.len());
    for (position, (_, name)) in used.iter().enumerate() {
        let column = batch.column(position);
        let value = ArrayFormatter::try_new(column.as_ref(), &options)
            .map(|f| f.value(row).to_string())
            .unwrap_or_else(|_| "?".to_owned());
        parts.push(format!("{name}={value}"));
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_round_like_their_decimal() {
        assert_eq!(dollars_to_cents(12.5), Some(1250));
        assert_eq!(dollars_to_cents(0.285), Some(29));
        assert_eq!(dollars_to_cents(-0.285), Some(-29));
        assert_eq!(dollars_to_cents(1.005), Some(101));
        assert_eq!(dollars_to_cents(17.05), Some(1705));
        assert_eq!(dollars_to_cents(f64::NAN), None);
    }
}
