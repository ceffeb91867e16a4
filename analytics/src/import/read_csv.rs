//! Reading a TLC CSV file (plain or gzip) as a stream: the header names the layout, then
//! each row is parsed field by field into one reused record, with no allocation unless the
//! row is rejected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use csv::ByteRecord;

use super::fields::{cents, integer, local_seconds, number, optional_integer};
use super::intake::Intake;
use super::layout::{Columns, Layout, Places};
use super::nyc_time::NewYorkClock;
use super::progress::{Progress, Unit};
use super::source::Source;
use super::trip::{Point, Problem, Reason, Trip};

/// Rows between two progress updates and cancellation checks.
const EVERY: u64 = 64 * 1024;

/// Reads every row of `source` into `intake`. Errors (a wrong header, a read error) name the
/// file; bad rows are not errors.
pub(crate) fn read(
    source: &Source,
    intake: &mut Intake,
    show_progress: bool,
) -> anyhow::Result<Layout> {
    let name = source.path.display();
    let consumed = Arc::new(AtomicU64::new(0));
    let text = super::source::open_text(source, consumed.clone())?;
    // Records end at `\n` only: with the default (`\r`, `\n` or both) the csv crate counts
    // the lines of CRLF files one short. A `\r` left at the end of a row is trimmed below.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .buffer_capacity(1 << 18)
        .from_reader(text);
    let header = reader
        .byte_headers()
        .with_context(|| format!("{name}: cannot read the header"))?
        .clone();
    let names: Vec<String> = header
        .iter()
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .collect();
    let columns = Columns::find(&names).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let progress = Progress::new(
        &short_name(source),
        source.bytes,
        Unit::Bytes,
        show_progress,
    );
    let mut record = ByteRecord::new();
    let mut next_update = EVERY;
    loop {
        let more = reader
            .read_byte_record(&mut record)
            .with_context(|| format!("{name}: cannot read line {}", reader.position().line()))?;
        if !more {
            break;
        }
        if record.len() == 1 && record[0].trim_ascii().is_empty() {
            // An empty line (`\r\n`): not a row.
            continue;
        }
        let line = record.position().map_or(0, |p| p.line()) as i64;
        match parse(&record, &columns, header.len(), line, &mut intake.clock) {
            Ok(trip) => intake.trip(&trip, || raw(&record))?,
            Err(problem) => intake.reject(line, problem, || raw(&record))?,
        }
        if intake.seen() >= next_update {
            next_update += EVERY;
            progress.update(consumed.load(Ordering::Relaxed), intake.seen());
            intake.check_cancelled()?;
        }
    }
    progress.finish();
    Ok(columns.layout)
}

/// The file name for the progress bar.
pub(crate) fn short_name(source: &Source) -> String {
    source
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| source.path.display().to_string())
}

/// One row into a trip, or what is wrong with it.
fn parse(
    record: &ByteRecord,
    c: &Columns,
    header_len: usize,
    line: i64,
    clock: &mut NewYorkClock,
) -> Result<Trip, Problem> {
    if record.len() != header_len {
        let extra_empty = record.len() > header_len
            && record
                .iter()
                .skip(header_len)
                .all(|f| f.trim_ascii().is_empty());
        if !extra_empty {
            return Err(Problem::new(
                Reason::UnknownRowLayout,
                format!(
                    "the row has {} fields, the header {header_len}",
                    record.len()
                ),
            ));
        }
    }
    let field = |i: usize| record.get(i).unwrap_or(b"").trim_ascii();
    let vendor_id = small(field(c.vendor_id), "VendorID", true)?;
    let pickup_text = field(c.pickup_at);
    let pickup = local_seconds(pickup_text)
        .and_then(|s| clock.pickup(s * 1_000_000))
        .ok_or_else(|| bad_time("tpep_pickup_datetime", pickup_text))?;
    let dropoff_text = field(c.dropoff_at);
    let dropoff = local_seconds(dropoff_text)
        .and_then(|s| clock.dropoff(s * 1_000_000, pickup))
        .ok_or_else(|| bad_time("tpep_dropoff_datetime", dropoff_text))?;
    let passenger_count = small(field(c.passenger_count), "passenger_count", true)?;
    let distance_miles = required_number(field(c.trip_distance), "trip_distance")?;
    let (pickup_point, dropoff_point, pickup_location_id, dropoff_location_id) = match c.places {
        Places::Points {
            pickup_lon,
            pickup_lat,
            dropoff_lon,
            dropoff_lat,
        } => (
            Some(Point {
                lon: required_number(field(pickup_lon), "pickup_longitude")?,
                lat: required_number(field(pickup_lat), "pickup_latitude")?,
            }),
            Some(Point {
                lon: required_number(field(dropoff_lon), "dropoff_longitude")?,
                lat: required_number(field(dropoff_lat), "dropoff_latitude")?,
            }),
            None,
            None,
        ),
        Places::Zones { pickup, dropoff } => (
            None,
            None,
            small(field(pickup), "PULocationID", false)?,
            small(field(dropoff), "DOLocationID", false)?,
        ),
    };
    let payment_type = small(field(c.payment_type), "payment_type", true)?;
    Ok(Trip {
        line,
        vendor_id,
        pickup,
        dropoff,
        passenger_count,
        distance_miles,
        pickup_point,
        dropoff_point,
        pickup_location_id,
        dropoff_location_id,
        payment_type,
        fare_cents: money(field(c.fare), "fare_amount")?,
        tip_cents: money(field(c.tip), "tip_amount")?,
        tolls_cents: money(field(c.tolls), "tolls_amount")?,
        total_cents: money(field(c.total), "total_amount")?,
    })
}

/// A whole number that fits an i32; empty is `None` when `optional`.
fn small(text: &[u8], column: &str, optional: bool) -> Result<Option<i32>, Problem> {
    let value = if optional {
        optional_integer(text).map_err(|()| Problem::unparseable(column, text, "a whole number"))?
    } else {
        Some(integer(text).ok_or_else(|| Problem::unparseable(column, text, "a whole number"))?)
    };
    value
        .map(|v| {
            i32::try_from(v)
                .map_err(|_| Problem::unparseable(column, text, "a whole number of 32 bits"))
        })
        .transpose()
}

fn required_number(text: &[u8], column: &str) -> Result<f64, Problem> {
    number(text).ok_or_else(|| Problem::unparseable(column, text, "a number"))
}

fn money(text: &[u8], column: &str) -> Result<i64, Problem> {
    cents(text).ok_or_else(|| Problem::unparseable(column, text, "an amount in dollars"))
}

fn bad_time(column: &str, text: &[u8]) -> Problem {
    Problem::unparseable(
        column,
        text,
        "a time (YYYY-MM-DD HH:MM:SS, years 0001-9998)",
    )
}

/// The row's fields as one CSV line (quoted where needed), without its line break.
fn raw(record: &ByteRecord) -> String {
    let mut line = String::new();
    let last = record.len().saturating_sub(1);
    for (i, field) in record.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let field = if i == last {
            field.strip_suffix(b"\r").unwrap_or(field)
        } else {
            field
        };
        let text = String::from_utf8_lossy(field);
        if text.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&text.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::layout::COORDINATES_HEADER;

    fn columns() -> Columns {
        Columns::find(&COORDINATES_HEADER.split(',').collect::<Vec<_>>()).unwrap()
    }

    fn parse_line(line: &str) -> Result<Trip, Problem> {
        let record = ByteRecord::from(line.split(',').collect::<Vec<_>>());
        let mut clock = NewYorkClock::new().unwrap();
        parse(&record, &columns(), 19, 2, &mut clock)
    }

    const GOOD: &str = "2,2015-01-15 19:05:39,2015-01-15 19:23:42,1,1.59,-73.993896484375,40.750110626220703,1,N,-73.974784851074219,40.750617980957031,1,12,1,0.5,3.25,0,0.3,17.05";

    #[test]
    fn a_tlc_row_becomes_a_trip() {
        let trip = parse_line(GOOD).unwrap();
        assert_eq!(trip.vendor_id, Some(2));
        assert_eq!(
            trip.dropoff.utc_micros - trip.pickup.utc_micros,
            1_083_000_000
        );
        assert_eq!(trip.passenger_count, Some(1));
        assert_eq!(trip.distance_miles, 1.59);
        assert_eq!(
            trip.pickup_point.unwrap().lat,
            "40.750110626220703".parse::<f64>().unwrap()
        );
        assert_eq!(trip.payment_type, Some(1));
        assert_eq!(
            (
                trip.fare_cents,
                trip.tip_cents,
                trip.tolls_cents,
                trip.total_cents
            ),
            (1200, 325, 0, 1705)
        );
    }

    #[test]
    fn a_bad_field_names_its_column() {
        let problem = parse_line(&GOOD.replace("17.05", "x")).unwrap_err();
        assert_eq!(problem.reason, Reason::Unparseable);
        assert_eq!(
            problem.detail,
            "total_amount: \"x\" is not an amount in dollars"
        );
        let problem = parse_line(&GOOD.replace("2015-01-15 19:05:39", "")).unwrap_err();
        assert_eq!(problem.detail, "tpep_pickup_datetime: missing");
        let problem = parse_line(&GOOD.replace(",17.05", "")).unwrap_err();
        assert_eq!(problem.reason, Reason::UnknownRowLayout);
        assert!(
            parse_line(&format!("{GOOD},,")).is_ok(),
            "trailing empty fields are fine"
        );
        assert_eq!(
            parse_line(&format!("{GOOD},1")).unwrap_err().reason,
            Reason::UnknownRowLayout
        );
    }

    #[test]
    fn raw_rows_are_csv() {
        let record = ByteRecord::from(vec!["a", "b,c", "d\"e"]);
        assert_eq!(raw(&record), "a,\"b,c\",\"d\"\"e\"");
    }
}
