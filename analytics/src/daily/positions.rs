//! The positions of a fleet day: per zone how many and from how many distinct taxis, and the
//! day's distinct taxis, counted from the `positions` table's Parquet objects.
//!
//! The rest of the day is SQL ([`super::fleet`]); this part is not. The counts need every
//! (zone, taxi) pair of millions of positions, and a generic hash aggregate over the two
//! string columns spends most of a day's time hashing and comparing strings. Here the two
//! columns are read as Parquet stores them, dictionary-encoded: a row is two indexes into its
//! column chunk's dictionaries, translated to ids once per dictionary, and counted with plain
//! integers.
//!
//! The objects are those the session's `positions` table reads for `dt = day`: its store,
//! its `dt=YYYY-MM-DD` directory, `.parquet` at any depth. Their row groups are split between
//! `target_partitions` tasks, whose counts are merged at the end. Exact whatever the order of
//! the rows; fastest when they are sorted by taxi, as the export writes them: a zone's taxis
//! then come once each.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use bytes::Bytes;
use datafusion::datasource::listing::{ListingTable, PartitionedFile};
use datafusion::datasource::physical_plan::parquet::DefaultParquetFileReaderFactory;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::prelude::SessionContext;
use futures_util::future::BoxFuture;
use futures_util::TryStreamExt;
use jiff::civil::Date;
use object_store::{ObjectMeta, ObjectStore};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::ParquetMetaData;
use tokio::task::JoinSet;

const TABLE: &str = "positions";
const ZONE: &str = "zone";
const TAXI: &str = "taxi_id";
/// Rows per decoded batch (a row group of the export is 128 Ki rows).
const BATCH_ROWS: usize = 64 * 1024;
/// Row groups whose column chunks are fetched together.
const PREFETCH_GROUPS: usize = 16;
/// Read with the footer in one request, like DataFusion's default.
const FOOTER_HINT: usize = 512 * 1024;

/// The day's positions.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct PositionCounts {
    /// Every zone with positions, in no particular order.
    pub(crate) zones: Vec<ZoneCount>,
    /// Distinct taxis of the day.
    pub(crate) taxis: i64,
    pub(crate) positions: i64,
}

/// A zone's positions and the distinct taxis that reported them there.
#[derive(Debug, PartialEq)]
pub(crate) struct ZoneCount {
    pub(crate) zone: String,
    pub(crate) taxis: i64,
    pub(crate) positions: i64,
}

/// Counts the positions of `day` in the session's `positions` table.
pub(crate) async fn count(ctx: &SessionContext, day: Date) -> anyhow::Result<PositionCounts> {
    count_in_tasks(ctx, day, ctx.copied_config().target_partitions()).await
}

/// [`count`] with the row groups split between at most `tasks` tasks.
async fn count_in_tasks(
    ctx: &SessionContext,
    day: Date,
    tasks: usize,
) -> anyhow::Result<PositionCounts> {
    let files = day_files(ctx, day).await?;
    let tasks = tasks.max(1);
    let mut running = JoinSet::new();
    for share in split(&files, tasks) {
        running.spawn(tally(share));
    }
    let mut tallies = Vec::new();
    while let Some(done) = running.join_next().await {
        tallies.push(done.context("lake: a positions task failed")??);
    }
    merge(tallies)
}

/// One Parquet object of the day, with its metadata (the two columns to be read as
/// dictionaries).
struct DayFile {
    store: Arc<dyn ObjectStore>,
    object: ObjectMeta,
    /// `s3://<bucket>/<key>`, for messages.
    name: String,
    metadata: ArrowReaderMetadata,
}

/// The day's objects of the `positions` table, ordered by key.
async fn day_files(ctx: &SessionContext, day: Date) -> anyhow::Result<Vec<DayFile>> {
    let provider = ctx
        .table_provider(TABLE)
        .await
        .with_context(|| format!("lake: no table {TABLE}"))?;
    let table = provider
        .downcast_ref::<ListingTable>()
        .ok_or_else(|| anyhow!("lake: {TABLE} is not a table of files"))?;
    let partition = format!("dt={}", day.strftime("%Y-%m-%d"));
    let mut files = Vec::new();
    for url in table.table_paths() {
        let store_url = url.object_store();
        let store = ctx
            .runtime_env()
            .object_store(&store_url)
            .with_context(|| format!("lake: no object store for {url}"))?;
        let dir = url.prefix().clone().join(partition.as_str());
        let mut objects: Vec<ObjectMeta> = store
            .list(Some(&dir))
            .try_collect()
            .await
            .with_context(|| {
                format!(
                    "lake: listing {}/{dir}",
                    store_url.as_str().trim_end_matches('/')
                )
            })?;
        objects.retain(|object| object.location.as_ref().ends_with(".parquet"));
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        for object in objects {
            let name = format!(
                "{}/{}",
                store_url.as_str().trim_end_matches('/'),
                object.location
            );
            let metadata = dictionary_metadata(&store, &object)
                .await
                .with_context(|| format!("lake: reading {name}"))?;
            files.push(DayFile {
                store: store.clone(),
                object,
                name,
                metadata,
            });
        }
    }
    Ok(files)
}

/// DataFusion's reader of a Parquet object (the one its tables read with, without the
/// metadata cache).
fn reader(store: &Arc<dyn ObjectStore>, object: &ObjectMeta) -> anyhow::Result<Reader> {
    let inner = DefaultParquetFileReaderFactory::new(store.clone()).create_reader(
        0,
        PartitionedFile::from(object.clone()),
        Some(FOOTER_HINT),
        &ExecutionPlanMetricsSet::new(),
    )?;
    Ok(Reader(inner))
}

/// A boxed reader that can be sent to another thread (the Parquet crate reads from boxed
/// readers without `Send` only).
struct Reader(Box<dyn AsyncFileReader + Send>);

impl AsyncFileReader for Reader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.0.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        self.0.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        self.0.get_metadata(options)
    }
}

/// The object's metadata, with the zone and the taxi read as dictionaries.
async fn dictionary_metadata(
    store: &Arc<dyn ObjectStore>,
    object: &ObjectMeta,
) -> anyhow::Result<ArrowReaderMetadata> {
    let mut reader = reader(store, object)?;
    let stored = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new()).await?;
    let hint = dictionary_schema(stored.schema())?;
    Ok(ArrowReaderMetadata::try_new(
        stored.metadata().clone(),
        ArrowReaderOptions::new().with_schema(hint),
    )?)
}

/// The type the zone and the taxi are read as.
fn dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// `schema` with its string columns zone and taxi_id as dictionaries; an error when one is
/// missing.
fn dictionary_schema(schema: &SchemaRef) -> anyhow::Result<SchemaRef> {
    for wanted in [ZONE, TAXI] {
        if schema.field_with_name(wanted).is_err() {
            bail!("no column {wanted}");
        }
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| {
            let as_dictionary = [ZONE, TAXI].contains(&field.name().as_str())
                && matches!(
                    field.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                );
            if as_dictionary {
                field.as_ref().clone().with_data_type(dictionary_type())
            } else {
                field.as_ref().clone()
            }
        })
        .collect();
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

/// Row groups of one object for one task.
struct Share {
    store: Arc<dyn ObjectStore>,
    object: ObjectMeta,
    name: String,
    metadata: ArrowReaderMetadata,
    row_groups: Vec<usize>,
}

/// The row groups of `files`, in order, cut into at most `tasks` runs of about the same
/// number of rows.
fn split(files: &[DayFile], tasks: usize) -> Vec<Vec<Share>> {
    let total: i64 = files
        .iter()
        .flat_map(|file| file.metadata.metadata().row_groups())
        .map(|group| group.num_rows().max(0))
        .sum();
    let per_task = (total / tasks as i64).max(1);
    let mut runs: Vec<Vec<Share>> = vec![Vec::new()];
    let mut in_run = 0;
    for file in files {
        for (index, group) in file.metadata.metadata().row_groups().iter().enumerate() {
            if in_run >= per_task && runs.len() < tasks {
                runs.push(Vec::new());
                in_run = 0;
            }
            in_run += group.num_rows().max(0);
            let Some(run) = runs.last_mut() else {
                continue;
            };
            match run.last_mut() {
                Some(share) if share.name == file.name => share.row_groups.push(index),
                _ => run.push(Share {
                    store: file.store.clone(),
                    object: file.object.clone(),
                    name: file.name.clone(),
                    metadata: file.metadata.clone(),
                    row_groups: vec![index],
                }),
            }
        }
    }
    runs.retain(|run| !run.is_empty());
    runs
}

/// Reads and counts the shares, one after the other, [`PREFETCH_GROUPS`] row groups at a
/// time: their two column chunks are fetched at once (ranged GETs in parallel), then decoded.
async fn tally(shares: Vec<Share>) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    for share in shares {
        let metadata = share.metadata.metadata();
        let parquet_schema = share.metadata.parquet_schema();
        let leaves: Vec<usize> = [ZONE, TAXI]
            .iter()
            .filter_map(|name| {
                parquet_schema
                    .columns()
                    .iter()
                    .position(|column| column.path().string() == *name)
            })
            .collect();
        let mask = ProjectionMask::leaves(parquet_schema, leaves.iter().copied());
        for groups in share.row_groups.chunks(PREFETCH_GROUPS) {
            let mut ranges = Vec::new();
            for &group in groups {
                let group = metadata.row_group(group);
                for &leaf in &leaves {
                    let (start, length) = group.column(leaf).byte_range();
                    ranges.push(start..start + length);
                }
            }
            let mut reader = reader(&share.store, &share.object)?;
            let chunks = reader
                .get_byte_ranges(ranges.clone())
                .await
                .with_context(|| format!("lake: reading {}", share.name))?;
            let reader = Prefetched {
                chunks: ranges.into_iter().zip(chunks).collect(),
                inner: reader,
            };
            let mut batches =
                ParquetRecordBatchStreamBuilder::new_with_metadata(reader, share.metadata.clone())
                    .with_projection(mask.clone())
                    .with_row_groups(groups.to_vec())
                    .with_batch_size(BATCH_ROWS)
                    .build()
                    .with_context(|| format!("lake: reading {}", share.name))?;
            while let Some(batch) = batches
                .try_next()
                .await
                .with_context(|| format!("lake: reading {}", share.name))?
            {
                tally
                    .add(&batch)
                    .with_context(|| format!("lake: counting the positions of {}", share.name))?;
            }
        }
    }
    Ok(tally)
}

/// A reader that answers from the byte ranges fetched already, and asks its own reader for
/// any other.
struct Prefetched {
    chunks: Vec<(Range<u64>, Bytes)>,
    inner: Reader,
}

impl Prefetched {
    fn fetched(&self, range: &Range<u64>) -> Option<Bytes> {
        self.chunks.iter().find_map(|(chunk, bytes)| {
            if chunk.start <= range.start && range.end <= chunk.end {
                let from = usize::try_from(range.start - chunk.start).ok()?;
                let to = usize::try_from(range.end - chunk.start).ok()?;
                Some(bytes.slice(from..to))
            } else {
                None
            }
        })
    }
}

impl AsyncFileReader for Prefetched {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        match self.fetched(&range) {
            Some(bytes) => Box::pin(std::future::ready(Ok(bytes))),
            None => self.inner.get_bytes(range),
        }
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let fetched: Option<Vec<Bytes>> = ranges.iter().map(|range| self.fetched(range)).collect();
        match fetched {
            Some(all) => Box::pin(std::future::ready(Ok(all))),
            None => self.inner.get_byte_ranges(ranges),
        }
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        self.inner.get_metadata(options)
    }
}

/// Names (zones, taxis) and their ids, in the order they came.
#[derive(Default)]
struct Names {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Names {
    fn id(&mut self, name: &str) -> anyhow::Result<u32> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        let id = u32::try_from(self.names.len())
            .ok()
            .filter(|&id| id != NO_TAXI)
            .context("too many distinct names")?;
        self.ids.insert(name.to_owned(), id);
        self.names.push(name.to_owned());
        Ok(id)
    }
}

/// The ids of a dictionary's values, kept while the batches share that dictionary (the
/// batches of one column chunk do).
#[derive(Default)]
struct DictionaryIds {
    values: Option<ArrayRef>,
    ids: Vec<u32>,
}

impl DictionaryIds {
    fn of(&mut self, values: &ArrayRef, names: &mut Names) -> anyhow::Result<&[u32]> {
        // Holding `values` keeps its allocation from being reused by another array.
        let same = self
            .values
            .as_ref()
            .is_some_and(|known| std::ptr::addr_eq(Arc::as_ptr(known), Arc::as_ptr(values)));
        if !same {
            let strings = values
                .as_string_opt::<i32>()
                .ok_or_else(|| anyhow!("dictionary values of type {}", values.data_type()))?;
            self.ids.clear();
            for i in 0..strings.len() {
                let name = if strings.is_null(i) {
                    ""
                } else {
                    strings.value(i)
                };
                self.ids.push(names.id(name)?);
            }
            self.values = Some(values.clone());
        }
        Ok(&self.ids)
    }
}

/// The ids of `column`'s rows, into `rows`. A null (which the lake's schema does not allow)
/// is the empty name.
fn row_ids(
    column: &ArrayRef,
    dictionary: &mut DictionaryIds,
    names: &mut Names,
    rows: &mut Vec<u32>,
) -> anyhow::Result<()> {
    let cast;
    let column = if column.data_type() == &dictionary_type() {
        column
    } else {
        cast = arrow::compute::cast(column, &dictionary_type())?;
        &cast
    };
    let column = column
        .as_dictionary_opt::<Int32Type>()
        .ok_or_else(|| anyhow!("a column of type {}", column.data_type()))?;
    let keys = column.keys();
    let ids = dictionary.of(column.values(), names)?;
    rows.clear();
    rows.reserve(keys.len());
    let id_of = |key: i32| {
        usize::try_from(key)
            .ok()
            .and_then(|key| ids.get(key).copied())
            .ok_or_else(|| anyhow!("dictionary key {key} out of range"))
    };
    if keys.null_count() == 0 {
        for &key in keys.values() {
            rows.push(id_of(key)?);
        }
    } else {
        let empty = names.id("")?;
        for key in keys.iter() {
            rows.push(match key {
                Some(key) => id_of(key)?,
                None => empty,
            });
        }
    }
    Ok(())
}

/// One task's counts, by its own zone and taxi ids.
#[derive(Default)]
struct Tally {
    zones: Names,
    taxis: Names,
    /// Per zone id.
    positions: Vec<i64>,
    zone_taxis: Vec<TaxiIds>,
    zone_dictionary: DictionaryIds,
    taxi_dictionary: DictionaryIds,
    zone_rows: Vec<u32>,
    taxi_rows: Vec<u32>,
}

impl Tally {
    fn add(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| anyhow!("no column {name}"))
        };
        row_ids(
            column(ZONE)?,
            &mut self.zone_dictionary,
            &mut self.zones,
            &mut self.zone_rows,
        )?;
        row_ids(
            column(TAXI)?,
            &mut self.taxi_dictionary,
            &mut self.taxis,
            &mut self.taxi_rows,
        )?;
        let zones = self.zones.names.len();
        self.positions.resize(zones, 0);
        self.zone_taxis.resize_with(zones, TaxiIds::default);
        for (&zone, &taxi) in self.zone_rows.iter().zip(&self.taxi_rows) {
            let zone = zone as usize;
            self.positions[zone] += 1;
            self.zone_taxis[zone].add(taxi);
        }
        Ok(())
    }
}

/// The taxis seen in a zone: a taxi is added once per run of rows in which it is the zone's
/// last taxi, and the list is sorted and deduplicated whenever it has doubled, so it stays
/// within twice its distinct taxis.
#[derive(Clone)]
struct TaxiIds {
    ids: Vec<u32>,
    /// The last taxi added; [`NO_TAXI`] before the first.
    last: u32,
    distinct: usize,
}

/// No taxi's id ([`Names::id`] stops below it).
const NO_TAXI: u32 = u32::MAX;

impl Default for TaxiIds {
    fn default() -> TaxiIds {
        TaxiIds {
            ids: Vec::new(),
            last: NO_TAXI,
            distinct: 0,
        }
    }
}

impl TaxiIds {
    fn add(&mut self, taxi: u32) {
        if self.last == taxi {
            return;
        }
        self.last = taxi;
        self.ids.push(taxi);
        if self.ids.len() >= 2 * self.distinct + 1024 {
            self.ids.sort_unstable();
            self.ids.dedup();
            self.distinct = self.ids.len();
        }
    }
}

/// The tasks' counts as one, by name.
fn merge(tallies: Vec<Tally>) -> anyhow::Result<PositionCounts> {
    let mut taxis = Names::default();
    // Per zone name: positions and the taxis' merged ids.
    let mut zones: HashMap<String, (i64, Vec<u32>)> = HashMap::new();
    for tally in tallies {
        let taxi_ids = tally
            .taxis
            .names
            .iter()
            .map(|name| taxis.id(name))
            .collect::<anyhow::Result<Vec<u32>>>()?;
        let counted = tally.positions.into_iter().zip(tally.zone_taxis);
        for (zone, (positions, zone_taxis)) in tally.zones.names.into_iter().zip(counted) {
            // A dictionary may name a zone no row has.
            if positions == 0 {
                continue;
            }
            let merged = zones.entry(zone).or_default();
            merged.0 += positions;
            for taxi in zone_taxis.ids {
                let id = taxi_ids
                    .get(taxi as usize)
                    .ok_or_else(|| anyhow!("lake: taxi id {taxi} out of range"))?;
                merged.1.push(*id);
            }
        }
    }
    let mut seen = vec![false; taxis.names.len()];
    let mut counts = PositionCounts::default();
    for (zone, (positions, mut ids)) in zones {
        ids.sort_unstable();
        ids.dedup();
        for &id in &ids {
            if let Some(seen) = seen.get_mut(id as usize) {
                *seen = true;
            }
        }
        counts.positions += positions;
        counts.zones.push(ZoneCount {
            zone,
            taxis: ids.len() as i64,
            positions,
        });
    }
    counts.taxis = seen.iter().filter(|&&seen| seen).count() as i64;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;
    use std::path::Path;

    use arrow::array::{Int64Array, StringArray};
    use parquet::arrow::ArrowWriter;

    use super::*;
    use crate::daily::frames;
    use crate::lake::{schema, Lake};

    type Rows = Vec<(String, String)>;

    /// Per zone (taxis, positions), and the day's (taxis, positions).
    type Counts = (BTreeMap<String, (i64, i64)>, (i64, i64));

    fn day(text: &str) -> Date {
        text.parse().unwrap()
    }

    /// A positions file of (taxi, zone) rows, the other columns zero.
    fn write(path: &Path, rows: &Rows, properties: parquet::file::properties::WriterProperties) {
        let schema = schema::positions();
        let zeros = Int64Array::from(vec![0; rows.len()]);
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|field| -> ArrayRef {
                match field.name().as_str() {
                    "taxi_id" => Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|(taxi, _)| taxi.as_str()),
                    )),
                    "zone" => Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|(_, zone)| zone.as_str()),
                    )),
                    _ => arrow::compute::cast(&zeros, field.data_type()).unwrap(),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema, Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    fn counted(counts: PositionCounts) -> Counts {
        let zones = counts
            .zones
            .into_iter()
            .map(|zone| (zone.zone, (zone.taxis, zone.positions)))
            .collect();
        (zones, (counts.taxis, counts.positions))
    }

    /// Counted by hand from the rows.
    fn expected(rows: &[&Rows]) -> Counts {
        let mut zones: BTreeMap<String, (BTreeSet<String>, i64)> = BTreeMap::new();
        let mut taxis = BTreeSet::new();
        let mut positions = 0;
        for (taxi, zone) in rows.iter().flat_map(|rows| rows.iter()) {
            let entry = zones.entry(zone.clone()).or_default();
            entry.0.insert(taxi.clone());
            entry.1 += 1;
            taxis.insert(taxi.clone());
            positions += 1;
        }
        let zones = zones
            .into_iter()
            .map(|(zone, (taxis, n))| (zone, (taxis.len() as i64, n)))
            .collect();
        (zones, (taxis.len() as i64, positions))
    }

    /// What DataFusion's SQL says over the same table.
    async fn by_sql(ctx: &SessionContext, dt: &str) -> Counts {
        let batches = frames::query(
            ctx,
            &format!(
                "SELECT zone, count(DISTINCT taxi_id) AS taxis, count(*) AS n FROM positions \
                 WHERE dt = DATE '{dt}' GROUP BY zone"
            ),
        )
        .await
        .unwrap();
        let zones = frames::utf8(&batches, "zone").unwrap();
        let taxis = frames::int64(&batches, "taxis").unwrap();
        let n = frames::int64(&batches, "n").unwrap();
        let zones = zones
            .into_iter()
            .zip(taxis.into_iter().zip(n))
            .map(|(zone, (taxis, n))| (zone.unwrap(), (taxis.unwrap(), n.unwrap())))
            .collect();
        let batches = frames::query(
            ctx,
            &format!(
                "SELECT count(DISTINCT taxi_id) AS taxis, count(*) AS n FROM positions \
                 WHERE dt = DATE '{dt}'"
            ),
        )
        .await
        .unwrap();
        let taxis = frames::int64(&batches, "taxis").unwrap()[0].unwrap();
        let n = frames::int64(&batches, "n").unwrap()[0].unwrap();
        (zones, (taxis, n))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_are_those_of_sql_over_sorted_unsorted_plain_and_fallback_files() {
        let dir = tempfile::tempdir().unwrap();
        let s3 = bridge::archive::embedded::start_embedded(
            &dir.path().join("s3"),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
        .unwrap();
        let mut config = crate::Config::default();
        config.lake.endpoint = s3.endpoint.clone();
        config.lake.access_key_id = s3.access_key_id.clone();
        config.lake.secret_access_key = s3.secret_access_key.clone();
        let lake = Lake::open(&config.lake).await.unwrap();
        let the_day = day("2026-06-10");

        // Sorted by taxi as the export writes, in row groups of 64: 20 taxis, 9 zones.
        let sorted: Rows = (0..1_000)
            .map(|i| {
                let taxi = i / 50;
                (
                    format!("t{taxi:02}"),
                    format!("z{}", (i * 7 + taxi * 3) % 9),
                )
            })
            .collect();
        // Unsorted, without dictionaries: taxis and zones shared with the first file and new
        // ones, a zone's taxis coming back again and again (past the lists' compaction).
        let unsorted: Rows = (0..5_000)
            .map(|i| {
                (
                    format!("t{:02}", (i * 11) % 25),
                    format!("z{}", (i * 5) % 11),
                )
            })
            .collect();
        // Dictionary pages too small for the zones: the column chunks fall back to plain
        // pages part way.
        let fallback: Rows = (0..2_000)
            .map(|i| {
                (
                    format!("t{:02}", (i * 7) % 30),
                    format!("zone-with-a-long-name-{}", i % 40),
                )
            })
            .collect();
        let base = crate::lake::writer_properties_builder;
        let files = [
            (
                "part-0",
                &sorted,
                base().set_max_row_group_row_count(Some(64)).build(),
            ),
            (
                "part-1",
                &unsorted,
                base()
                    .set_dictionary_enabled(false)
                    .set_max_row_group_row_count(Some(700))
                    .build(),
            ),
            (
                "part-2",
                &fallback,
                base()
                    .set_dictionary_page_size_limit(200)
                    .set_data_page_row_count_limit(100)
                    .set_write_batch_size(50)
                    .build(),
            ),
        ];
        for (part, rows, properties) in files {
            let path = dir.path().join(format!("{part}.parquet"));
            write(&path, rows, properties);
            lake.publish_file("positions", the_day, part, &path)
                .await
                .unwrap();
        }
        // The next day: not counted.
        let next: Rows = (0..100)
            .map(|i| ("t99".to_owned(), format!("z{}", i % 3)))
            .collect();
        let path = dir.path().join("next.parquet");
        write(&path, &next, crate::lake::writer_properties());
        lake.publish_file("positions", day("2026-06-11"), "part-0", &path)
            .await
            .unwrap();

        let ctx = lake.session_of(schema::DATASETS).await.unwrap();
        let want = expected(&[&sorted, &unsorted, &fallback]);
        assert_eq!(want.1, (30, 8_000));
        assert_eq!(by_sql(&ctx, "2026-06-10").await, want);
        assert_eq!(counted(count(&ctx, the_day).await.unwrap()), want);
        for tasks in [1, 2, 3, 8, 100] {
            let counts = count_in_tasks(&ctx, the_day, tasks).await.unwrap();
            assert_eq!(counted(counts), want, "{tasks} tasks");
        }
        assert_eq!(
            counted(count(&ctx, day("2026-06-11")).await.unwrap()),
            expected(&[&next])
        );
        // A day without objects: nothing, not an error.
        assert_eq!(
            count(&ctx, day("2026-06-12")).await.unwrap(),
            PositionCounts::default()
        );
    }
}
