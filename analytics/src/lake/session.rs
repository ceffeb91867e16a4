//! The lake as SQL tables: a DataFusion session over the object store, with every dataset
//! registered as a listing table over `<prefix>/<dataset>/`, its fixed schema and the Hive
//! partition column `dt` (a DATE, like DuckDB, Spark and Trino read it). A dataset with no
//! objects yet is an empty table, not an error. The file area's directories are tables of
//! the schema `files` ([`super::files`]).

use std::sync::Arc;

use anyhow::Context;
use arrow::datatypes::DataType;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::named_parquet::NamedParquet;
use super::schema;
use super::store::Store;

/// A new session with the store registered under `s3://<bucket>` and one table per dataset,
/// and the file area's tables.
pub(crate) async fn session(store: &Store) -> anyhow::Result<SessionContext> {
    let ctx = session_of(store, schema::DATASETS).await?;
    super::files::register(&ctx, store).await?;
    Ok(ctx)
}

/// A new session with only `datasets` as tables (no listing of the file area): for a
/// reader that knows what it reads.
pub(crate) async fn session_of(store: &Store, datasets: &[&str]) -> anyhow::Result<SessionContext> {
    store.ensure_bucket().await?;
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema("lake", "public");
    // A file table reads its directory at any depth (`files/data/<dir>/2026/03/x.csv`);
    // the datasets' `dt=` partitions are read the same either way.
    config
        .options_mut()
        .execution
        .listing_table_ignore_subdirectory = false;
    let ctx = SessionContext::new_with_config(config);
    let bucket_url = ObjectStoreUrl::parse(store.bucket_url())
        .with_context(|| format!("lake: {} is not a valid store URL", store.bucket_url()))?;
    ctx.register_object_store(bucket_url.as_ref(), store.objects.clone());
    for &dataset in datasets {
        let url = format!("{}/{}/", store.bucket_url(), store.dataset_prefix(dataset));
        let table_url = ListingTableUrl::parse(&url)
            .with_context(|| format!("lake: {url} is not a valid table URL"))?;
        let options = ListingOptions::new(Arc::new(NamedParquet::new(store.bucket_url())))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![("dt".to_owned(), DataType::Date32)]);
        let file_schema = schema::of(dataset)
            .with_context(|| format!("lake: dataset {dataset} has no schema"))?;
        let table_config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .with_schema(file_schema);
        let table = ListingTable::try_new(table_config)
            .with_context(|| format!("lake: registering {dataset} at {url}"))?;
        ctx.register_table(dataset, Arc::new(table))
            .with_context(|| format!("lake: registering {dataset}"))?;
    }
    Ok(ctx)
}
