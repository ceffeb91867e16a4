//! The lake: the serving layer's open files. Curated datasets as Parquet in S3-compatible
//! storage (the archive's object store: the embedded server by default, any S3 when
//! configured), laid out Hive-style as `<prefix>/<dataset>/dt=YYYY-MM-DD/<part>.parquet`, so
//! that engines no one here wrote (DuckDB, Spark, Trino) read them as they are.
//!
//! Each (dataset, day, part) is exactly one object, written whole by one PUT or one multipart
//! upload ([`publish`]): S3 shows an object only once it is complete and replaces an object
//! in one step, so a reader never sees half a day or a day twice, with no table format to
//! install. Writers build Parquet files locally (with [`writer_properties`] and the schemas in
//! [`schema`]), then hand them to [`Lake::publish_file`]. [`export`] publishes the platform's
//! own tables (positions, tours, orders, windows) one local day at a time; [`Lake::session`]
//! is the SQL view over all datasets. [`files`] is the reporting service's file area in the
//! same bucket, whose directories are tables too. lake.md describes the layout for readers.

mod config;
pub mod export;
pub mod files;
mod named_parquet;
mod publish;
pub mod schema;
mod session;
mod store;

use std::path::Path;

use anyhow::Context;
use futures_util::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

pub use config::LakeConfig;
pub use export::{export_day, DatasetExport, ExportStats};

/// The lake in its object store.
pub struct Lake {
    store: store::Store,
}

impl Lake {
    /// Builds the lake's S3 client. Nothing is sent yet: the bucket is created (if missing)
    /// on the first publish or session, so an unreachable store does not stop a start.
    pub async fn open(config: &LakeConfig) -> anyhow::Result<Lake> {
        Ok(Lake {
            store: store::Store::new(config)?,
        })
    }

    /// The configuration the lake was opened with.
    pub fn config(&self) -> &LakeConfig {
        &self.store.config
    }

    /// The object store client (S3), for those that read and write objects of their own in
    /// the lake's bucket (the file area).
    pub fn objects(&self) -> std::sync::Arc<dyn object_store::ObjectStore> {
        self.store.objects.clone()
    }

    /// Creates the bucket if it is missing (once per process).
    pub async fn ensure_bucket(&self) -> anyhow::Result<()> {
        self.store.ensure_bucket().await
    }

    /// The file area's keys ([`files::Layout`]) under `lake.files_prefix`.
    pub fn files(&self) -> files::Layout {
        files::Layout::new(self.store.config.clean_files_prefix())
    }

    /// `s3://<bucket>/<key>`, for messages.
    pub fn url_of(&self, key: &object_store::path::Path) -> String {
        self.store.url_of(key)
    }

    /// `s3://<bucket>/<prefix>/<dataset>/`: where a dataset's partitions live.
    pub fn table_url(&self, dataset: &str) -> String {
        format!(
            "{}/{}/",
            self.store.bucket_url(),
            self.store.dataset_prefix(dataset)
        )
    }

    /// `s3://<bucket>/<prefix>/<dataset>/dt=<day>/<part>.parquet`: one published object.
    pub fn object_url(&self, dataset: &str, day: jiff::civil::Date, part: &str) -> String {
        self.store.url_of(&self.store.part_key(dataset, day, part))
    }

    /// Publishes the local Parquet `file` as `<dataset>/dt=<day>/<part>.parquet`, atomically:
    /// readers see the previous object or this one, never a part of it. An existing object of
    /// the same part is replaced. The file must have the dataset's schema
    /// ([`schema::of`]); it is checked before anything is sent. Retries with back-off
    /// (`lake.publish_attempts`); the local file is left where it is either way (the caller
    /// removes it once published).
    pub async fn publish_file(
        &self,
        dataset: &str,
        day: jiff::civil::Date,
        part: &str,
        file: &Path,
    ) -> anyhow::Result<()> {
        publish::publish_file(&self.store, dataset, day, part, file).await
    }

    /// The parts published for `dataset` on `day` (names without `.parquet`), sorted.
    pub async fn parts(
        &self,
        dataset: &str,
        day: jiff::civil::Date,
    ) -> anyhow::Result<Vec<String>> {
        let prefix = self.store.day_prefix(dataset, day);
        let what = format!("listing {}/", self.store.url_of(&prefix));
        publish::retrying(&self.store, &what, || async {
            self.store.ensure_bucket().await?;
            let objects: Vec<_> = self
                .store
                .objects
                .list(Some(&prefix))
                .try_collect()
                .await
                .with_context(|| {
                    format!("lake: {what} at {}", self.store.config.endpoint_name())
                })?;
            let mut parts: Vec<String> = objects
                .iter()
                .filter_map(|o| {
                    let rest = o.location.prefix_match(&prefix)?.collect::<Vec<_>>();
                    match rest.as_slice() {
                        [name] => name.as_ref().strip_suffix(".parquet").map(str::to_owned),
                        _ => None,
                    }
                })
                .collect();
            parts.sort();
            Ok(parts)
        })
        .await
    }

    /// Removes every part of `dataset` on `day` except those named in `keep`: after a day
    /// was rewritten with fewer parts, no stale part stays behind.
    pub async fn retain_parts(
        &self,
        dataset: &str,
        day: jiff::civil::Date,
        keep: &[&str],
    ) -> anyhow::Result<()> {
        for part in self.parts(dataset, day).await? {
            if keep.contains(&part.as_str()) {
                continue;
            }
            let key = self.store.part_key(dataset, day, &part);
            let what = format!("removing {}", self.store.url_of(&key));
            publish::retrying(&self.store, &what, || async {
                self.store.objects.delete(&key).await.with_context(|| {
                    format!("lake: {what} at {}", self.store.config.endpoint_name())
                })
            })
            .await?;
            tracing::info!(dataset, day = %day, part, "lake object removed");
        }
        Ok(())
    }

    /// Removes every part of `dataset` on `day` (a day that has no rows any more).
    pub async fn remove_day(&self, dataset: &str, day: jiff::civil::Date) -> anyhow::Result<()> {
        self.retain_parts(dataset, day, &[]).await
    }

    /// A DataFusion session with every dataset of [`schema::DATASETS`] registered as a table
    /// (its columns plus the partition column `dt`, a DATE). Creates the bucket if missing.
    pub async fn session(&self) -> anyhow::Result<datafusion::prelude::SessionContext> {
        session::session(&self.store).await
    }

    /// A DataFusion session with only `datasets` registered (like [`Lake::session`], without
    /// the file area's tables, which take a listing to find).
    pub async fn session_of(
        &self,
        datasets: &[&str],
    ) -> anyhow::Result<datafusion::prelude::SessionContext> {
        session::session_of(&self.store, datasets).await
    }
}

/// Parquet writer settings every dataset uses: zstd, row groups of 128 Ki rows with column
/// and page statistics, so that a filter on the sort columns (day, taxi) skips row groups.
pub fn writer_properties() -> WriterProperties {
    writer_properties_builder().build()
}

/// [`writer_properties`] still open for per-column settings.
pub fn writer_properties_builder() -> parquet::file::properties::WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(128 * 1024))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by("taxi-platform analytics".to_owned())
}
