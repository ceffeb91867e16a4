//! Publishing one local Parquet file as one object, atomically.
//!
//! S3 makes an object visible only once it is whole (a single PUT, or a multipart upload at
//! its CompleteMultipartUpload), and a write to an existing key replaces the object in one
//! step. So each (dataset, day, part) is exactly one key, written by one PUT or one multipart
//! upload: a reader lists either the previous object or the new one, never a part of it and
//! never both. Before anything is sent, the file is checked to be Parquet with the dataset's
//! schema, so a broken writer cannot publish a file that readers would choke on.
//!
//! A failed try aborts its multipart upload (no orphaned parts) and is retried with back-off;
//! the local file is only read, so after the last try it is still there to publish again.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::io::AsyncReadExt;

use super::schema;
use super::store::Store;

/// Publishes `file` as `<dataset>/dt=<day>/<part>.parquet`, retrying with back-off.
pub(crate) async fn publish_file(
    store: &Store,
    dataset: &str,
    day: jiff::civil::Date,
    part: &str,
    file: &Path,
) -> anyhow::Result<()> {
    check_part_name(part)?;
    let rows = check_parquet(dataset, file).await?;
    let key = store.part_key(dataset, day, part);
    let size = tokio::fs::metadata(file)
        .await
        .with_context(|| format!("lake: reading {}", file.display()))?
        .len();
    let url = store.url_of(&key);
    retrying(
        store,
        &format!("publishing {} as {url}", file.display()),
        || async {
            store.ensure_bucket().await?;
            upload(store, &key, file, size).await
        },
    )
    .await
    .map_err(|e| e.context("the local file is kept"))?;
    metrics::counter!("analytics_lake_published_objects_total", "dataset" => dataset.to_owned())
        .increment(1);
    metrics::counter!("analytics_lake_published_bytes_total", "dataset" => dataset.to_owned())
        .increment(size);
    tracing::info!(dataset, day = %day, part, rows, bytes = size, object = %url, "lake object published");
    Ok(())
}

/// Runs `operation` up to `lake.publish_attempts` times, sleeping with back-off between
/// tries. The last error says what was being done and how many tries it took.
pub(crate) async fn retrying<F, Fut, T>(
    store: &Store,
    what: &str,
    mut operation: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let config = &store.config;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match operation().await {
            Ok(value) => return Ok(value),
            Err(e) if attempt < config.publish_attempts => {
                let delay = backoff(attempt - 1, config.min_backoff_ms, config.max_backoff_ms);
                metrics::counter!("analytics_lake_retries_total").increment(1);
                tracing::warn!(
                    error = format!("{e:#}"),
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    "lake: {what} failed; retrying"
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                metrics::counter!("analytics_lake_failures_total").increment(1);
                return Err(e.context(format!("lake: gave up {what} after {attempt} tries")));
            }
        }
    }
}

/// Part names become file names: letters, digits, `-`, `_`, `.`; no leading dot.
pub(crate) fn check_part_name(part: &str) -> anyhow::Result<()> {
    let ok = !part.is_empty()
        && part.len() <= 200
        && !part.starts_with('.')
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !ok {
        bail!(
            "lake: part name {part:?} must be 1-200 of A-Z a-z 0-9 - _ . and not start with a dot"
        );
    }
    Ok(())
}

/// Reads the footer of `file` and checks its columns against the dataset's schema: same
/// names, types and order; a column the dataset requires may not be nullable in the file.
/// Returns the file's row count.
async fn check_parquet(dataset: &str, file: &Path) -> anyhow::Result<i64> {
    let expected = schema::of(dataset).ok_or_else(|| {
        anyhow!(
            "lake: unknown dataset {dataset:?} (known: {})",
            schema::DATASETS.join(", ")
        )
    })?;
    let path = file.to_owned();
    let (actual, rows) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let handle = std::fs::File::open(&path)
            .with_context(|| format!("lake: opening {}", path.display()))?;
        let builder =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(handle)
                .with_context(|| {
                    format!("lake: {} is not a readable Parquet file", path.display())
                })?;
        let rows = builder.metadata().file_metadata().num_rows();
        Ok((builder.schema().clone(), rows))
    })
    .await
    .context("lake: checking a Parquet file")??;
    let names = |s: &arrow::datatypes::Schema| {
        s.fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
    };
    let same = actual.fields().len() == expected.fields().len()
        && actual.fields().iter().zip(expected.fields()).all(|(a, e)| {
            a.name() == e.name()
                && a.data_type() == e.data_type()
                && (e.is_nullable() || !a.is_nullable())
        });
    if !same {
        bail!(
            "lake: {} does not have the columns of {dataset}: it has [{}], {dataset} has [{}]",
            file.display(),
            names(&actual).join(", "),
            names(&expected).join(", ")
        );
    }
    Ok(rows)
}

/// One try: a PUT for a small file, else a multipart upload streamed part by part.
async fn upload(store: &Store, key: &ObjectPath, file: &Path, size: u64) -> anyhow::Result<()> {
    let part_size = store.config.part_size_bytes;
    let target = || format!("{} at {}", store.url_of(key), store.config.endpoint_name());
    let mut reader = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("lake: opening {}", file.display()))?;
    if size <= part_size {
        let mut content = Vec::with_capacity(size as usize);
        reader
            .read_to_end(&mut content)
            .await
            .with_context(|| format!("lake: reading {}", file.display()))?;
        store
            .objects
            .put(key, PutPayload::from(content))
            .await
            .with_context(|| format!("lake: writing {}", target()))?;
        return Ok(());
    }
    let mut upload = store
        .objects
        .put_multipart(key)
        .await
        .with_context(|| format!("lake: starting a multipart upload of {}", target()))?;
    let result: anyhow::Result<()> = async {
        loop {
            let mut chunk = BytesMut::with_capacity(part_size as usize);
            while (chunk.len() as u64) < part_size {
                let read = reader
                    .read_buf(&mut chunk)
                    .await
                    .with_context(|| format!("lake: reading {}", file.display()))?;
                if read == 0 {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            let last = (chunk.len() as u64) < part_size;
            upload
                .put_part(PutPayload::from(chunk.freeze()))
                .await
                .with_context(|| format!("lake: uploading a part of {}", target()))?;
            if last {
                break;
            }
        }
        upload
            .complete()
            .await
            .with_context(|| format!("lake: completing the upload of {}", target()))?;
        Ok(())
    }
    .await;
    if result.is_err() {
        if let Err(abort) = upload.abort().await {
            tracing::warn!(object = %store.url_of(key), error = %abort, "cannot abort a failed multipart upload; the store's lifecycle rules must clean it up");
        }
    }
    result
}

/// Delay before retry `attempt` (0-based): `min * 2^attempt`, at most `max`.
fn backoff(attempt: u32, min_ms: u64, max_ms: u64) -> Duration {
    let factor = 1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX);
    Duration::from_millis(min_ms.saturating_mul(factor).min(max_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_are_plain_file_names() {
        for good in ["part-0", "9f86d081884c7d65", "a_b.c"] {
            check_part_name(good).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "a b", "dt=x"] {
            assert!(check_part_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        assert_eq!(backoff(0, 200, 10_000), Duration::from_millis(200));
        assert_eq!(backoff(3, 200, 10_000), Duration::from_millis(1_600));
        assert_eq!(backoff(40, 200, 10_000), Duration::from_millis(10_000));
    }
}
