//! DataFusion's Parquet format, with every error naming the object it came from.
//!
//! DataFusion reports a broken footer or page as "Invalid Parquet file. Corrupt footer",
//! without saying which of a table's files it was. This format wraps DataFusion's own: the
//! footer reads done while planning (statistics) and every read while executing go through
//! it, and their errors get the object's `s3://` URL in front.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::catalog::Session;
use datafusion::common::{Result, Statistics};
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::{FileFormat, FileMeta};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{
    FileScanConfig, FileScanConfigBuilder, FileSource, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::ExecutionPlan;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use object_store::{ObjectMeta, ObjectStore};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;

/// Parquet whose errors name the object: `bucket_url` (`s3://<bucket>`) + the key.
#[derive(Debug)]
pub(crate) struct NamedParquet {
    inner: ParquetFormat,
    bucket_url: String,
}

impl NamedParquet {
    pub(crate) fn new(bucket_url: String) -> NamedParquet {
        NamedParquet {
            inner: ParquetFormat::default(),
            bucket_url,
        }
    }

    fn name(&self, object: &ObjectMeta) -> String {
        format!("{}/{}", self.bucket_url, object.location)
    }
}

#[async_trait]
impl FileFormat for NamedParquet {
    fn get_ext(&self) -> String {
        self.inner.get_ext()
    }

    fn get_ext_with_compression(&self, compression: &FileCompressionType) -> Result<String> {
        self.inner.get_ext_with_compression(compression)
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        self.inner.compression_type()
    }

    async fn infer_schema(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        objects: &[ObjectMeta],
    ) -> Result<SchemaRef> {
        self.inner.infer_schema(state, store, objects).await
    }

    async fn infer_stats(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> Result<Statistics> {
        self.inner
            .infer_stats(state, store, table_schema, object)
            .await
            .map_err(|e| e.context(format!("reading {}", self.name(object))))
    }

    async fn infer_ordering(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> Result<Option<LexOrdering>> {
        self.inner
            .infer_ordering(state, store, table_schema, object)
            .await
            .map_err(|e| e.context(format!("reading {}", self.name(object))))
    }

    async fn infer_stats_and_ordering(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> Result<FileMeta> {
        self.inner
            .infer_stats_and_ordering(state, store, table_schema, object)
            .await
            .map_err(|e| e.context(format!("reading {}", self.name(object))))
    }

    /// DataFusion's own plan, with its reader factory wrapped so that read errors name the
    /// object.
    async fn create_physical_plan(
        &self,
        state: &dyn Session,
        conf: FileScanConfig,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.create_physical_plan(state, conf).await?;
        let Some(exec) = plan.downcast_ref::<DataSourceExec>() else {
            return Ok(plan);
        };
        let Some(conf) = exec.data_source().downcast_ref::<FileScanConfig>() else {
            return Ok(plan);
        };
        let Some(source) = conf.file_source().downcast_ref::<ParquetSource>() else {
            return Ok(plan);
        };
        let store = state
            .runtime_env()
            .object_store(conf.object_store_url.clone())?;
        let cache = state.runtime_env().cache_manager.get_file_metadata_cache();
        let factory = NamedReaderFactory {
            inner: Arc::new(CachedParquetFileReaderFactory::new(store, cache)),
            bucket_url: self.bucket_url.clone(),
        };
        let source = source
            .clone()
            .with_parquet_file_reader_factory(Arc::new(factory));
        let conf = FileScanConfigBuilder::from(conf.clone())
            .with_source(Arc::new(source))
            .build();
        Ok(DataSourceExec::from_data_source(conf))
    }

    fn file_source(&self, table_schema: TableSchema) -> Arc<dyn FileSource> {
        self.inner.file_source(table_schema)
    }
}

/// Hands out readers whose errors name their object.
struct NamedReaderFactory {
    inner: Arc<dyn ParquetFileReaderFactory>,
    bucket_url: String,
}

impl fmt::Debug for NamedReaderFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedReaderFactory")
            .field("bucket_url", &self.bucket_url)
            .finish()
    }
}

impl ParquetFileReaderFactory for NamedReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let name = format!("{}/{}", self.bucket_url, file.object_meta.location);
        let inner = self
            .inner
            .create_reader(partition_index, file, metadata_size_hint, metrics)
            .map_err(|e| e.context(format!("reading {name}")))?;
        Ok(Box::new(NamedReader { inner, name }))
    }
}

struct NamedReader {
    inner: Box<dyn AsyncFileReader + Send>,
    name: String,
}

fn named(name: &str, error: ParquetError) -> ParquetError {
    ParquetError::General(format!("{name}: {error}"))
}

impl AsyncFileReader for NamedReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let result = self.inner.get_bytes(range).await;
            result.map_err(|e| named(&self.name, e))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            let result = self.inner.get_byte_ranges(ranges).await;
            result.map_err(|e| named(&self.name, e))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let result = self.inner.get_metadata(options).await;
            result.map_err(|e| named(&self.name, e))
        }
        .boxed()
    }
}
