//! Reading a TLC CSV file (plain or gzip) as a stream: the header names the layout, then
//! each row is parsed field by field into one reused record, with no allocation unless the
//! row is rejected.
//!
//! A large plain file without quotes is cut into one part per core ([`super::split`]), each
//! parsed by its own thread into its own [`Intake`]; rows keep their line numbers in the
//! file. Without a quote a row is a line and a field is what lies between its commas, so
//! such files (a small one as a single part) are cut by [`read_plain_rows`] with `memchr`,
//! not by the csv crate's byte-by-byte state machine. Gzip and quoted files are read by one
//! thread with the csv crate.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use csv::ByteRecord;

use super::fields::{cents, integer, local_seconds, number, optional_integer};
use super::intake::{Counted, Intake, Stopped};
use super::layout::{Columns, Layout, Places};
use super::nyc_time::NewYorkClock;
use super::progress::{Progress, Unit};
use super::source::{Format, Source};
use super::split;
use super::trip::{Point, Problem, Reason, Trip};

/// Rows between two progress updates and cancellation checks.
const EVERY: u64 = 64 * 1024;
/// Smaller plain files are read by one thread.
const PARALLEL_MIN_BYTES: u64 = 8 << 20;
/// Most reader threads for one file.
const MAX_THREADS: usize = 8;

/// Reads every row of `source` into intakes made by `new_intake` (one per reader thread).
/// Errors (a wrong header, a read error) name the file; bad rows are not errors.
pub(crate) fn read(
    source: &Source,
    new_intake: &(dyn Fn() -> anyhow::Result<Intake> + Sync),
    show_progress: bool,
) -> anyhow::Result<(Layout, Counted)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_THREADS);
    if source.format == Format::Csv && !source.quoted {
        let parts = if source.bytes >= PARALLEL_MIN_BYTES {
            threads
        } else {
            1
        };
        if let Some(plan) = split::plan(&source.path, source.bytes, parts)? {
            return read_parts(source, &plan, new_intake, show_progress);
        }
    }
    let mut intake = new_intake()?;
    let layout = read_whole(source, &mut intake, show_progress)?;
    Ok((layout, intake.finish()?))
}

/// The columns of a header record and its number of fields.
struct Shape {
    columns: Columns,
    fields: usize,
}

impl Shape {
    fn of<R: Read>(source: &Source, reader: &mut csv::Reader<R>) -> anyhow::Result<Shape> {
        let name = source.path.display();
        let header = reader
            .byte_headers()
            .with_context(|| format!("{name}: cannot read the header"))?;
        let names: Vec<String> = header
            .iter()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .collect();
        let columns = Columns::find(&names).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        Ok(Shape {
            columns,
            fields: header.len(),
        })
    }
}

/// The CSV reader every part uses. Records end at `\n` only: with the default (`\r`, `\n`
/// or both) the csv crate counts the lines of CRLF files one short. A `\r` left at the end
/// of a row is trimmed by the field parsers.
fn csv_reader<R: Read>(text: R, has_headers: bool) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(has_headers)
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .buffer_capacity(1 << 18)
        .from_reader(text)
}

/// One thread reads the whole file.
fn read_whole(source: &Source, intake: &mut Intake, show_progress: bool) -> anyhow::Result<Layout> {
    let consumed = Arc::new(AtomicU64::new(0));
    let mut reader = csv_reader(super::source::open_text(source, consumed.clone())?, true);
    let shape = Shape::of(source, &mut reader)?;
    let progress = Progress::new(
        &short_name(source),
        source.bytes,
        Unit::Bytes,
        show_progress,
    );
    read_rows(source, &mut reader, &shape, 0, intake, &mut |seen| {
        progress.update(consumed.load(Ordering::Relaxed), seen);
    })?;
    progress.finish();
    Ok(shape.columns.layout)
}

/// One thread per part of `plan`, each with its own intake; their counts added up. The
/// first real error is the result (the others were only told to stop).
fn read_parts(
    source: &Source,
    plan: &split::Plan,
    new_intake: &(dyn Fn() -> anyhow::Result<Intake> + Sync),
    show_progress: bool,
) -> anyhow::Result<(Layout, Counted)> {
    let shape = Shape::of(source, &mut csv_reader(&plan.header[..], true))?;
    let consumed = Arc::new(AtomicU64::new(plan.header.len() as u64));
    let seen = AtomicU64::new(0);
    let progress = Progress::new(
        &short_name(source),
        source.bytes,
        Unit::Bytes,
        show_progress,
    );
    let results: Vec<anyhow::Result<Counted>> = std::thread::scope(|scope| {
        let threads: Vec<_> = plan
            .parts
            .iter()
            .map(|&part| {
                let (shape, consumed, seen, progress) = (&shape, &consumed, &seen, &progress);
                scope.spawn(move || -> anyhow::Result<Counted> {
                    let mut intake = new_intake()?;
                    let read = (|| {
                        let text = super::source::open_range(
                            source,
                            part.start,
                            part.end,
                            consumed.clone(),
                        )?;
                        let mut reported = 0;
                        read_plain_rows(
                            source,
                            text,
                            shape,
                            part.lines_before as i64,
                            &mut intake,
                            &mut |mine| {
                                let all = seen.fetch_add(mine - reported, Ordering::Relaxed)
                                    + (mine - reported);
                                reported = mine;
                                progress.update(consumed.load(Ordering::Relaxed), all);
                            },
                        )
                    })();
                    if read.is_err() {
                        intake.cancel_all();
                    }
                    read?;
                    intake.finish()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("an import reader thread panicked")))
            })
            .collect()
    });
    progress.finish();
    let mut total = Counted::default();
    let mut stopped = None;
    for result in results {
        match result {
            Ok(counted) => total.add(counted),
            Err(error) if error.is::<Stopped>() => stopped = Some(error),
            Err(error) => return Err(error),
        }
    }
    if let Some(error) = stopped {
        return Err(error);
    }
    Ok((shape.columns.layout, total))
}

/// Reads the rows of `reader` into `intake`. `lines_before` is added to the reader's own
/// line numbers (the lines of the file before the part it reads). `tick` is called with the
/// rows seen every [`EVERY`] rows.
fn read_rows<R: Read>(
    source: &Source,
    reader: &mut csv::Reader<R>,
    shape: &Shape,
    lines_before: i64,
    intake: &mut Intake,
    tick: &mut dyn FnMut(u64),
) -> anyhow::Result<()> {
    let mut record = ByteRecord::new();
    let mut next_update = EVERY;
    loop {
        let more = reader.read_byte_record(&mut record).with_context(|| {
            format!(
                "{}: cannot read line {}",
                source.path.display(),
                lines_before + reader.position().line() as i64
            )
        })?;
        if !more {
            return Ok(());
        }
        if record.len() == 1 && record[0].trim_ascii().is_empty() {
            // An empty line (`\r\n`): not a row.
            continue;
        }
        let line = lines_before + record.position().map_or(0, |p| p.line()) as i64;
        row(&record, shape, line, intake)?;
        if intake.seen() >= next_update {
            next_update += EVERY;
            tick(intake.seen());
            intake.check_cancelled()?;
        }
    }
}

/// Bytes read at a time by [`read_plain_rows`] (more when a line is longer).
const PLAIN_BUFFER: usize = 1 << 20;

/// Reads the rows of `text`, a part of a plain file without any `"`, into `intake`: each
/// line (up to `\n`) is a row, each comma ends a field, empty lines are skipped (what the
/// csv crate makes of such a file). Rows get their true line numbers: `lines_before` plus
/// their line in `text` (the csv crate gives a row after empty lines the number of the
/// first of them). `tick` is called with the rows seen every [`EVERY`] rows.
fn read_plain_rows<R: Read>(
    source: &Source,
    mut text: R,
    shape: &Shape,
    lines_before: i64,
    intake: &mut Intake,
    tick: &mut dyn FnMut(u64),
) -> anyhow::Result<()> {
    let mut buffer = vec![0u8; PLAIN_BUFFER];
    let mut filled = 0;
    let mut line = lines_before;
    let mut commas: Vec<usize> = Vec::with_capacity(32);
    let mut next_update = EVERY;
    loop {
        if filled == buffer.len() {
            // A line longer than the buffer.
            buffer.resize(buffer.len() * 2, 0);
        }
        let read = match text.read(&mut buffer[filled..]) {
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("{}: cannot read line {}", source.path.display(), line + 1)
                })
            }
        };
        let at_end = read == 0;
        filled += read;
        let mut start = 0;
        while start < filled {
            let end = match memchr::memchr(b'\n', &buffer[start..filled]) {
                Some(at) => start + at,
                None if at_end => filled,
                None => break,
            };
            let row_text = &buffer[start..end];
            start = end + 1;
            line += 1;
            commas.clear();
            commas.extend(memchr::memchr_iter(b',', row_text));
            if commas.is_empty() && row_text.trim_ascii().is_empty() {
                // An empty line (or `\r`): not a row.
                continue;
            }
            let fields = PlainRow {
                text: row_text,
                commas: &commas,
            };
            row(&fields, shape, line, intake)?;
            if intake.seen() >= next_update {
                next_update += EVERY;
                tick(intake.seen());
                intake.check_cancelled()?;
            }
        }
        if at_end {
            return Ok(());
        }
        let start = start.min(filled);
        buffer.copy_within(start..filled, 0);
        filled -= start;
    }
}

/// One row into `intake`: a trip, or a reject with its reason.
fn row(record: &impl Fields, shape: &Shape, line: i64, intake: &mut Intake) -> anyhow::Result<()> {
    match parse(
        record,
        &shape.columns,
        shape.fields,
        line,
        &mut intake.clock,
    ) {
        Ok(trip) => intake.trip(&trip, || raw(record)),
        Err(problem) => intake.reject(line, problem, || raw(record)),
    }
}

/// The fields of one row, as the csv crate or [`read_plain_rows`] cut them.
trait Fields {
    /// How many fields the row has.
    fn count(&self) -> usize;
    /// Field `i`, empty past the last one.
    fn field(&self, i: usize) -> &[u8];
}

impl Fields for ByteRecord {
    fn count(&self) -> usize {
        self.len()
    }

    fn field(&self, i: usize) -> &[u8] {
        self.get(i).unwrap_or(b"")
    }
}

/// A line of a file without quotes and the offsets of its commas.
struct PlainRow<'a> {
    text: &'a [u8],
    commas: &'a [usize],
}

impl Fields for PlainRow<'_> {
    fn count(&self) -> usize {
        self.commas.len() + 1
    }

    fn field(&self, i: usize) -> &[u8] {
        let start = match i.checked_sub(1) {
            None => 0,
            Some(before) => match self.commas.get(before) {
                Some(&comma) => comma + 1,
                None => return b"",
            },
        };
        let end = self.commas.get(i).copied().unwrap_or(self.text.len());
        &self.text[start..end]
    }
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
    record: &impl Fields,
    c: &Columns,
    header_len: usize,
    line: i64,
    clock: &mut NewYorkClock,
) -> Result<Trip, Problem> {
    if record.count() != header_len {
        let extra_empty = record.count() > header_len
            && (header_len..record.count()).all(|i| record.field(i).trim_ascii().is_empty());
        if !extra_empty {
            return Err(Problem::new(
                Reason::UnknownRowLayout,
                format!(
                    "the row has {} fields, the header {header_len}",
                    record.count()
                ),
            ));
        }
    }
    let field = |i: usize| record.field(i).trim_ascii();
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
fn raw(record: &impl Fields) -> String {
    let mut line = String::new();
    let last = record.count().saturating_sub(1);
    for i in 0..record.count() {
        let field = record.field(i);
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

    /// Rows, rejects (line, reason) and each day's lines, read by one thread or in `parts`.
    type Read = (u64, Vec<(i64, Reason)>, Vec<(String, Vec<i64>)>);

    fn import(source: &Source, parts: Option<usize>) -> Read {
        use super::super::day_writers::DayWriters;
        use super::super::output::Output;
        use arrow::array::Int64Array;
        use std::sync::atomic::AtomicBool;

        let out = tempfile::tempdir().unwrap();
        let writers = DayWriters::start(out.path(), 2).unwrap();
        let (rejects, mut incoming) = tokio::sync::mpsc::channel(64);
        let cancel = Arc::new(AtomicBool::new(false));
        let counted = {
            let new_intake = || -> anyhow::Result<Intake> {
                let output = Output::new(&writers, &source.sha256, 8, None)?;
                Intake::new(output, rejects.clone(), cancel.clone())
            };
            match parts {
                None => {
                    let mut intake = new_intake().unwrap();
                    read_whole(source, &mut intake, false).unwrap();
                    intake.finish().unwrap()
                }
                Some(parts) => {
                    let plan = split::plan(&source.path, source.bytes, parts)
                        .unwrap()
                        .unwrap();
                    assert_eq!(plan.parts.len(), parts);
                    read_parts(source, &plan, &new_intake, false).unwrap().1
                }
            }
        };
        drop(rejects);
        let files = writers.finish().unwrap();
        let mut rejected = Vec::new();
        while let Ok(chunk) = incoming.try_recv() {
            rejected.extend(chunk.into_iter().map(|r| (r.line, r.reason)));
        }
        rejected.sort();
        let days = files
            .iter()
            .map(|file| {
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                        std::fs::File::open(&file.path).unwrap(),
                    )
                    .unwrap()
                    .build()
                    .unwrap();
                let mut lines: Vec<i64> = reader
                    .flat_map(|batch| {
                        let batch = batch.unwrap();
                        let column = batch.column_by_name("line").unwrap();
                        let lines = column.as_any().downcast_ref::<Int64Array>().unwrap();
                        lines.values().to_vec()
                    })
                    .collect();
                lines.sort();
                (file.day.to_string(), lines)
            })
            .collect();
        (counted.rows, rejected, days)
    }

    #[test]
    fn a_file_read_in_parts_gives_what_one_reader_gives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yellow.csv");
        let mut text = format!("{COORDINATES_HEADER}\r\n");
        let mut line = 1;
        let mut expected_rejects = Vec::new();
        for n in 0..5_000 {
            let row = GOOD.replace("2015-01-15", &format!("2015-01-{:02}", 1 + n % 28));
            line += 1;
            let row = if n % 97 == 0 {
                expected_rejects.push((line, Reason::Unparseable));
                row.replace("17.05", "x")
            } else {
                row
            };
            text.push_str(&row);
            text.push_str("\r\n");
            if n % 1_000 == 500 {
                text.push_str("\r\n");
                line += 1;
            }
        }
        std::fs::write(&path, &text).unwrap();
        let source = super::super::source::inspect(&path).unwrap();

        let one = import(&source, None);
        assert_eq!(one.0, 5_000 - expected_rejects.len() as u64);
        assert_eq!(
            one.1, expected_rejects,
            "rejects keep their lines in the file"
        );
        assert_eq!(one.2.len(), 28, "one file per day");
        for parts in [2, 3] {
            assert_eq!(import(&source, Some(parts)), one, "{parts} parts");
        }
    }

    #[test]
    fn plain_rows_keep_their_true_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yellow.csv");
        // Line 1 the header, 2 a row, 3 and 4 empty, 5 a bad row, 6 `\r`, 7 a row without
        // a line break at the end.
        let bad = GOOD.replace("17.05", "x");
        let text = format!("{COORDINATES_HEADER}\n{GOOD}\n\n\n{bad}\n\r\n{GOOD}");
        std::fs::write(&path, &text).unwrap();
        let source = super::super::source::inspect(&path).unwrap();
        for parts in [1, 2] {
            let (rows, rejects, days) = import(&source, Some(parts));
            assert_eq!(rows, 2, "{parts} parts");
            assert_eq!(rejects, vec![(5, Reason::Unparseable)], "{parts} parts");
            assert_eq!(days.len(), 1);
            assert_eq!(days[0].1, vec![2, 7], "{parts} parts");
        }
    }

    #[test]
    fn plain_fields_are_cut_at_commas() {
        let text = b"a,,bc,";
        let commas: Vec<usize> = memchr::memchr_iter(b',', text).collect();
        let row = PlainRow {
            text,
            commas: &commas,
        };
        assert_eq!(row.count(), 4);
        let fields: Vec<&[u8]> = (0..5).map(|i| row.field(i)).collect();
        assert_eq!(fields, [&b"a"[..], b"", b"bc", b"", b""]);
        assert_eq!(raw(&row), "a,,bc,");
    }

    #[test]
    fn raw_rows_are_csv() {
        let record = ByteRecord::from(vec!["a", "b,c", "d\"e"]);
        assert_eq!(raw(&record), "a,\"b,c\",\"d\"\"e\"");
    }
}
