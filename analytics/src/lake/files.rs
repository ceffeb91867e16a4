//! The file area: where the reporting service's file API keeps what people upload, and how
//! its directories become SQL tables. The one place that says the layout, so that the
//! writer (reporting) and the readers (`analytics sql`, the daily jobs' sessions) agree.
//!
//! Under `s3://<bucket>/<lake.files_prefix>/`:
//! - `data/<path>`: every accepted file, byte for byte as uploaded.
//! - `rows/<dir>/<rest>.ndjson`: the rows of a JSON upload `<dir>/<rest>` (an object is one
//!   row, an array one row per element, NDJSON one row per line), one compact object a line.
//! - `rejected/files/<path>` and `rejected/reasons/<path>.json`: a JSON upload that does not
//!   parse, kept whole, and why it was refused.
//! - `staging/<id>`: a JSON upload while it is checked (moved to `data/` or `rejected/`).
//!
//! Tables, in the schema `files` of the lake's session (one per top-level directory and
//! format): `<dir>_json` (the rows of its JSON uploads, schema inferred), `<dir>_csv` (its
//! `.csv` files at any depth, with a header line, schema inferred), `<dir>_parquet` (its
//! `.parquet` files). Files at the top level belong to no table. A table whose files cannot
//! be read is left out with a warning instead of failing the whole session.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use futures_util::TryStreamExt;
use object_store::path::{Path as ObjectPath, PathPart};

use super::store::Store;

/// The schema (of catalog `lake`) holding the file area's tables.
pub const SCHEMA: &str = "files";

/// The formats that become tables, with their table-name suffix and file extension.
const FORMATS: [(Format, &str); 3] = [
    (Format::Json, ".ndjson"),
    (Format::Csv, ".csv"),
    (Format::Parquet, ".parquet"),
];

/// A format of the file area's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    Json,
    Csv,
    Parquet,
}

impl Format {
    /// The table-name suffix: `json`, `csv`, `parquet`.
    pub fn suffix(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

/// The file area's keys, relative to the bucket.
#[derive(Clone, Debug)]
pub struct Layout {
    root: String,
}

impl Layout {
    /// The layout under `files_prefix` (without leading or trailing slashes).
    pub fn new(files_prefix: &str) -> Layout {
        Layout {
            root: files_prefix.trim_matches('/').to_owned(),
        }
    }

    fn under<'a>(&self, area: &str, segments: impl IntoIterator<Item = &'a str>) -> ObjectPath {
        let mut path = ObjectPath::from(format!("{}/{area}", self.root));
        for segment in segments {
            // A name as it is (not percent-encoded), so the store's keys are the API's names;
            // one object_store refuses (a control character) is stored encoded.
            path = path.join(PathPart::parse(segment).unwrap_or_else(|_| PathPart::from(segment)));
        }
        path
    }

    /// `data/<segments>`: an accepted file (no segments: the root directory).
    pub fn data<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> ObjectPath {
        self.under("data", segments)
    }

    /// `rows/<dir>/<rest>.ndjson`: the rows of the JSON upload `segments` (at least two: a
    /// file at the top level belongs to no table and has no rows object).
    pub fn rows(&self, segments: &[&str]) -> Option<ObjectPath> {
        let (last, dirs) = segments.split_last()?;
        if dirs.is_empty() {
            return None;
        }
        let name = format!("{last}.ndjson");
        Some(self.under("rows", dirs.iter().copied().chain([name.as_str()])))
    }

    /// `rejected/files/<segments>`: a refused upload, whole.
    pub fn rejected<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> ObjectPath {
        self.under("rejected/files", segments)
    }

    /// `rejected/reasons/<segments>.json`: why it was refused.
    pub fn reason(&self, segments: &[&str]) -> Option<ObjectPath> {
        let (last, dirs) = segments.split_last()?;
        let name = format!("{last}.json");
        Some(self.under(
            "rejected/reasons",
            dirs.iter().copied().chain([name.as_str()]),
        ))
    }

    /// `staging/<id>`: an upload being checked.
    pub fn staging(&self, id: &str) -> ObjectPath {
        self.under("staging", [id])
    }

    /// The table of the files in top-level directory `dir` of `format`.
    pub fn table_name(dir: &str, format: Format) -> String {
        format!("{dir}_{}", format.suffix())
    }
}

/// Registers the schema `files` in `ctx` and one table per top-level directory and format
/// found in the file area.
pub(crate) async fn register(ctx: &SessionContext, store: &Store) -> anyhow::Result<()> {
    let catalog = ctx
        .catalog("lake")
        .context("lake: the session has no catalog `lake`")?;
    catalog
        .register_schema(SCHEMA, Arc::new(MemorySchemaProvider::new()))
        .context("lake: registering the schema files")?;
    let layout = Layout::new(store.config.clean_files_prefix());
    for (dir, format) in tables(store, &layout).await? {
        let (area, extension) = match format {
            Format::Json => ("rows", ".ndjson"),
            Format::Csv => ("data", ".csv"),
            Format::Parquet => ("data", ".parquet"),
        };
        let url = format!("{}/{}/{dir}/", store.bucket_url(), layout.under(area, []));
        let name = Layout::table_name(&dir, format);
        match table(ctx, &url, format, extension).await {
            Ok(table) => {
                ctx.register_table(TableReference::partial(SCHEMA, name.as_str()), table)
                    .with_context(|| format!("lake: registering files.{name}"))?;
            }
            Err(e) => {
                tracing::warn!(table = %format!("files.{name}"), url, error = %format!("{e:#}"), "file table left out: its files cannot be read");
            }
        }
    }
    Ok(())
}

/// The (top-level directory, format) pairs that have at least one file.
async fn tables(store: &Store, layout: &Layout) -> anyhow::Result<BTreeSet<(String, Format)>> {
    let mut found = BTreeSet::new();
    for (area, formats) in [
        ("rows", &[Format::Json][..]),
        ("data", &[Format::Csv, Format::Parquet][..]),
    ] {
        let prefix = layout.under(area, []);
        let mut objects = store.objects.list(Some(&prefix));
        while let Some(object) = objects.try_next().await.with_context(|| {
            format!(
                "lake: listing {} at {}",
                store.url_of(&prefix),
                store.config.endpoint_name()
            )
        })? {
            let Some(rest) = object.location.prefix_match(&prefix) else {
                continue;
            };
            let rest: Vec<_> = rest.collect();
            let [dir, .., file] = rest.as_slice() else {
                continue;
            };
            for &format in formats {
                let extension = FORMATS
                    .iter()
                    .find(|(f, _)| *f == format)
                    .map(|(_, e)| *e)
                    .unwrap_or_default();
                if file.as_ref().ends_with(extension) {
                    found.insert((dir.as_ref().to_owned(), format));
                }
            }
        }
    }
    Ok(found)
}

/// A listing table over `url` of `format`, its schema inferred from the files.
async fn table(
    ctx: &SessionContext,
    url: &str,
    format: Format,
    extension: &str,
) -> anyhow::Result<Arc<ListingTable>> {
    let file_format: Arc<dyn FileFormat> = match format {
        Format::Json => Arc::new(JsonFormat::default()),
        Format::Csv => Arc::new(CsvFormat::default().with_has_header(true)),
        Format::Parquet => Arc::new(ParquetFormat::default()),
    };
    let table_url = ListingTableUrl::parse(url).with_context(|| format!("{url} is not a URL"))?;
    let options = ListingOptions::new(file_format).with_file_extension(extension);
    let config = ListingTableConfig::new(table_url)
        .with_listing_options(options)
        .infer_schema(&ctx.state())
        .await
        .with_context(|| format!("inferring the schema of {url}"))?;
    Ok(Arc::new(ListingTable::try_new(config)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let layout = Layout::new("/files/");
        assert_eq!(layout.data(["a", "b.json"]).as_ref(), "files/data/a/b.json");
        assert_eq!(layout.data([]).as_ref(), "files/data");
        assert_eq!(
            layout.rows(&["events", "2026", "a.json"]).unwrap().as_ref(),
            "files/rows/events/2026/a.json.ndjson"
        );
        assert!(layout.rows(&["top.json"]).is_none());
        assert_eq!(
            layout.rejected(["a", "b.json"]).as_ref(),
            "files/rejected/files/a/b.json"
        );
        assert_eq!(
            layout.reason(&["a", "b.json"]).unwrap().as_ref(),
            "files/rejected/reasons/a/b.json.json"
        );
        assert_eq!(layout.staging("x1").as_ref(), "files/staging/x1");
        assert_eq!(
            layout.data(["süd", "a b.csv"]).as_ref(),
            "files/data/süd/a b.csv"
        );
        assert_eq!(Layout::table_name("events", Format::Csv), "events_csv");
    }
}
