//! The threads that turn batches of trips into local Parquet files, one file per New York
//! day of pickup, with the lake's `trips_nyc` schema, ready to publish.
//!
//! There is one writer thread per core. Each day belongs to one writer, so a day's rows
//! always end in one file even when several readers parse parts of the same source file at
//! once: readers send `(day, batch)` through a [`DaySink`], and the writer owning that day
//! appends the batch. A day is given to a writer when its first batch comes: the writer of
//! the reader that sent it (reader n sends to writer n, modulo the writers). Readers of a
//! file's parts mostly see days of their own (TLC files are roughly in pickup order), so
//! each writer gets the work of one reader; a fixed choice such as day modulo writers would
//! often give two readers' current days to the same writer while another one waits.
//!
//! A writer keeps one `ArrowWriter` per day open; when the row groups being built in all of
//! them together pass its share of [`MEMORY_BUDGET`], the largest is flushed to its file.
//! A day that got no batch for [`IDLE_BATCHES`] batches of its writer has its row group
//! flushed too: TLC files are roughly in pickup order, so a day a reader has left behind
//! usually gets no more rows, and its row group (pages, and a compression context per
//! column) would otherwise stay in memory until the end. Memory is therefore bounded by the
//! number of days a file touches, never by its length.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;

use super::fields::civil_from_days;
use crate::lake;

/// Row groups being built, all days and writers together, before the largest is flushed.
const MEMORY_BUDGET: usize = 64 << 20;
/// Batches waiting for each writer.
const QUEUE: usize = 4;
/// Batches of a writer after which a day that got none of them has its row group flushed
/// (262 144 rows).
const IDLE_BATCHES: u64 = 32;
/// Write buffer of each open day file.
const FILE_BUFFER: usize = 256 << 10;

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

/// Which writer owns each day, shared by the sinks of one import.
type Owners = Arc<Mutex<HashMap<i32, usize>>>;

/// The writer threads of one import.
pub(crate) struct DayWriters {
    schema: SchemaRef,
    queues: Vec<SyncSender<(i32, RecordBatch)>>,
    threads: Vec<JoinHandle<anyhow::Result<Vec<DayFile>>>>,
    owners: Owners,
    sinks: AtomicUsize,
}

/// Where a reader sends its batches: to the writer that owns the batch's day.
pub(crate) struct DaySink {
    queues: Vec<SyncSender<(i32, RecordBatch)>>,
    owners: Owners,
    /// The writer this reader gives the days it is the first to send.
    own: usize,
    /// The owners this reader has looked up.
    known: HashMap<i32, usize>,
}

impl DayWriters {
    /// Starts `count` writer threads (at least one) writing `<dir>/<YYYY-MM-DD>.parquet`.
    pub(crate) fn start(dir: &Path, count: usize) -> anyhow::Result<DayWriters> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("creating the import's scratch directory {}", dir.display())
        })?;
        let schema = lake::schema::trips_nyc();
        let count = count.max(1);
        let mut queues = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for n in 0..count {
            let (queue, batches) = sync_channel(QUEUE);
            let dir = dir.to_owned();
            let schema = schema.clone();
            let budget = MEMORY_BUDGET / count;
            let thread = std::thread::Builder::new()
                .name(format!("nyc-import-writer-{n}"))
                .spawn(move || write_days(&dir, &schema, batches, budget))
                .context("starting the import's writer threads")?;
            queues.push(queue);
            threads.push(thread);
        }
        Ok(DayWriters {
            schema,
            queues,
            threads,
            owners: Arc::default(),
            sinks: AtomicUsize::new(0),
        })
    }

    /// The schema the batches must have.
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// A sink for one reader (the n-th sink gives new days to writer n, modulo the
    /// writers). The writers end once every sink is dropped and [`DayWriters::finish`] is
    /// called.
    pub(crate) fn sink(&self) -> DaySink {
        let n = self.sinks.fetch_add(1, Ordering::Relaxed);
        DaySink {
            queues: self.queues.clone(),
            owners: self.owners.clone(),
            own: n % self.queues.len().max(1),
            known: HashMap::new(),
        }
    }

    /// Waits for every writer (all sinks must be dropped first) and returns the day files,
    /// by day. The first writer error, if any, is the result.
    pub(crate) fn finish(mut self) -> anyhow::Result<Vec<DayFile>> {
        self.queues.clear();
        let mut files = Vec::new();
        let mut first_error = None;
        for thread in self.threads.drain(..) {
            match thread.join() {
                Ok(Ok(written)) => files.extend(written),
                Ok(Err(error)) => {
                    first_error.get_or_insert(error);
                }
                Err(_) => {
                    first_error.get_or_insert(anyhow!("an import writer thread panicked"));
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        files.sort_by_key(|f| f.day);
        Ok(files)
    }
}

impl Drop for DayWriters {
    fn drop(&mut self) {
        // On an error elsewhere: close the queues so the writers end, and wait for them.
        self.queues.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl DaySink {
    /// Hands `batch` of `day` to its writer; an error means that writer stopped (its own
    /// error comes from [`DayWriters::finish`]).
    pub(crate) fn send(&mut self, day: i32, batch: RecordBatch) -> anyhow::Result<()> {
        let index = match self.known.get(&day) {
            Some(&index) => index,
            None => {
                let index = *self
                    .owners
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(day)
                    .or_insert(self.own);
                self.known.insert(day, index);
                index
            }
        };
        self.queues[index]
            .send((day, batch))
            .map_err(|_| anyhow!("the import's writer stopped"))
    }
}

/// zstd level of the day files: 1 (zstd's fast strategy) instead of the lake's usual 3.
/// Compressing was the largest part of a writer's time, and the import's peak memory is
/// lower too (every open column chunk of every open day has its own compression context).
const ZSTD_LEVEL: i32 = 1;

/// The lake's writer settings, without dictionaries for [`WITHOUT_DICTIONARY`], compressed
/// at [`ZSTD_LEVEL`].
fn writer_properties() -> parquet::file::properties::WriterProperties {
    let level = parquet::basic::ZstdLevel::try_new(ZSTD_LEVEL).unwrap_or_default();
    WITHOUT_DICTIONARY
        .iter()
        .fold(lake::writer_properties_builder(), |builder, column| {
            builder.set_column_dictionary_enabled(
                parquet::schema::types::ColumnPath::from(*column),
                false,
            )
        })
        .set_compression(parquet::basic::Compression::ZSTD(level))
        .build()
}

/// One writer thread: one `ArrowWriter` per day, row groups flushed within `budget`.
fn write_days(
    dir: &Path,
    schema: &SchemaRef,
    batches: Receiver<(i32, RecordBatch)>,
    budget: usize,
) -> anyhow::Result<Vec<DayFile>> {
    struct Open {
        day: jiff::civil::Date,
        path: PathBuf,
        writer: ArrowWriter<BufWriter<File>>,
        /// The number of the last batch written.
        last: u64,
    }
    let mut open: HashMap<i32, Open> = HashMap::new();
    for (number, (day, batch)) in (1u64..).zip(batches) {
        let entry = match open.entry(day) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(slot) => {
                let date = date_of(day)?;
                let path = dir.join(format!("{}.parquet", date.strftime("%Y-%m-%d")));
                let file =
                    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                let writer = ArrowWriter::try_new(
                    BufWriter::with_capacity(FILE_BUFFER, file),
                    schema.clone(),
                    Some(writer_properties()),
                )
                .with_context(|| format!("starting {}", path.display()))?;
                slot.insert(Open {
                    day: date,
                    path,
                    writer,
                    last: number,
                })
            }
        };
        entry
            .writer
            .write(&batch)
            .with_context(|| format!("writing {}", entry.path.display()))?;
        entry.last = number;
        for idle in open.values_mut() {
            if number - idle.last >= IDLE_BATCHES && idle.writer.in_progress_rows() > 0 {
                idle.writer
                    .flush()
                    .with_context(|| format!("writing {}", idle.path.display()))?;
            }
        }
        let building: usize = open.values().map(|o| o.writer.in_progress_size()).sum();
        if building > budget {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_dates() {
        assert_eq!(date_of(16_450).unwrap(), jiff::civil::date(2015, 1, 15));
    }

    /// A batch of `rows` rows of the schema, every value zero (or "0").
    fn zeros(schema: &SchemaRef, rows: usize) -> RecordBatch {
        let zeros = arrow::array::Int64Array::from(vec![0; rows]);
        let columns = schema
            .fields()
            .iter()
            .map(|f| arrow::compute::cast(&zeros, f.data_type()).unwrap())
            .collect();
        RecordBatch::try_new(schema.clone(), columns).unwrap()
    }

    fn row_groups(file: &DayFile) -> Vec<i64> {
        let reader =
            parquet::file::reader::SerializedFileReader::new(File::open(&file.path).unwrap())
                .unwrap();
        use parquet::file::reader::FileReader;
        reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect()
    }

    #[test]
    fn a_day_left_idle_has_its_row_group_written() {
        let dir = tempfile::tempdir().unwrap();
        let writers = DayWriters::start(dir.path(), 1).unwrap();
        let schema = writers.schema().clone();
        let mut sink = writers.sink();
        let (early, busy) = (16_450, 16_451);
        sink.send(early, zeros(&schema, 10)).unwrap();
        for _ in 0..IDLE_BATCHES {
            sink.send(busy, zeros(&schema, 5)).unwrap();
        }
        // A late row of the early day: a second row group, the first one having been
        // written while the other day went on.
        sink.send(early, zeros(&schema, 3)).unwrap();
        drop(sink);
        let files = writers.finish().unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(row_groups(&files[0]), vec![10, 3]);
        assert_eq!(row_groups(&files[1]), vec![5 * IDLE_BATCHES as i64]);
    }
}
