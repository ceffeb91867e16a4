//! What was imported, in PostgreSQL: `nyc_imports` (one row per file, by its SHA-256,
//! written last, once every day of the file is published) and `nyc_import_rejects` (every
//! rejected row with its reason and text).
//!
//! A file is imported once: a file with a row in `nyc_imports` is skipped. An import that
//! stopped half-way left no row there, so the next one starts over: it clears the file's
//! rejects and rewrites the same lake objects (their names come from the file's hash), and
//! nothing is doubled. Two imports of one file at the same time are serialised by an
//! advisory lock on its hash.

use anyhow::Context;
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::intake::Rejected;

/// First key of the import's advisory locks ("nyc").
const LOCK_SPACE: i32 = 0x006e_7963;

/// A file recorded in `nyc_imports`.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    pub layout: String,
    pub rows: i64,
    pub days: Vec<String>,
    pub imported_at: String,
}

/// A file to record.
pub(crate) struct Record<'a> {
    pub sha256: &'a str,
    pub path: &'a str,
    pub format: &'a str,
    pub layout: &'a str,
    pub bytes: i64,
    pub rows: i64,
    pub rejected: i64,
    /// `YYYY-MM-DD`, sorted.
    pub days: Vec<String>,
}

fn lock_key(sha256: &str) -> i32 {
    u32::from_str_radix(sha256.get(..8).unwrap_or("0"), 16).unwrap_or(0) as i32
}

/// Waits until no other import of this file runs, then holds it off until [`unlock`].
pub(crate) async fn lock(client: &Client, sha256: &str) -> anyhow::Result<()> {
    let key = lock_key(sha256);
    let taken: bool = client
        .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LOCK_SPACE, &key])
        .await
        .context("taking the import's lock")?
        .get(0);
    if !taken {
        tracing::info!(
            sha256,
            "another import of the same file is running; waiting for it"
        );
        client
            .execute("SELECT pg_advisory_lock($1, $2)", &[&LOCK_SPACE, &key])
            .await
            .context("waiting for the import's lock")?;
    }
    Ok(())
}

pub(crate) async fn unlock(client: &Client, sha256: &str) {
    let key = lock_key(sha256);
    if let Err(e) = client
        .execute("SELECT pg_advisory_unlock($1, $2)", &[&LOCK_SPACE, &key])
        .await
    {
        // The lock goes with the connection anyway.
        tracing::debug!(error = %e, "releasing the import's lock");
    }
}

/// The earlier import of this file, if any.
pub(crate) async fn find(client: &Client, sha256: &str) -> anyhow::Result<Option<Recorded>> {
    let row = client
        .query_opt(
            "SELECT layout, rows, days::text[], imported_at::text \
             FROM nyc_imports WHERE sha256 = $1",
            &[&sha256],
        )
        .await
        .context("reading nyc_imports")?;
    Ok(row.map(|row| Recorded {
        layout: row.get(0),
        rows: row.get(1),
        days: row.get(2),
        imported_at: row.get(3),
    }))
}

/// Rejected rows of this file per reason code.
pub(crate) async fn rejects_by_reason(
    client: &Client,
    sha256: &str,
) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = client
        .query(
            "SELECT reason, count(*) FROM nyc_import_rejects WHERE file_sha256 = $1 \
             GROUP BY reason ORDER BY reason",
            &[&sha256],
        )
        .await
        .context("reading nyc_import_rejects")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Removes the rejects an interrupted import of this file left.
pub(crate) async fn clear_rejects(client: &Client, sha256: &str) -> anyhow::Result<u64> {
    client
        .execute(
            "DELETE FROM nyc_import_rejects WHERE file_sha256 = $1",
            &[&sha256],
        )
        .await
        .context("clearing nyc_import_rejects of an interrupted import")
}

/// Stores a chunk of rejected rows (one COPY).
pub(crate) async fn store_rejects(
    client: &Client,
    sha256: &str,
    rejects: &[Rejected],
) -> anyhow::Result<()> {
    let sink = client
        .copy_in(
            "COPY nyc_import_rejects (file_sha256, line, reason, detail, raw) FROM STDIN BINARY",
        )
        .await
        .context("storing rejected rows in nyc_import_rejects")?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT],
    );
    pin_mut!(writer);
    for reject in rejects {
        writer
            .as_mut()
            .write(&[
                &sha256,
                &reject.line,
                &reject.reason.code(),
                &reject.detail,
                &reject.raw,
            ])
            .await
            .context("storing rejected rows in nyc_import_rejects")?;
    }
    writer
        .finish()
        .await
        .context("storing rejected rows in nyc_import_rejects")?;
    Ok(())
}

/// Records a file as imported: from now on it is skipped.
pub(crate) async fn record(client: &Client, file: &Record<'_>) -> anyhow::Result<()> {
    let first = file.days.first().cloned();
    let last = file.days.last().cloned();
    client
        .execute(
            "INSERT INTO nyc_imports \
             (sha256, path, format, layout, bytes, rows, rejected, first_day, last_day, days) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::date, $9::text::date, $10::text[]::date[])",
            &[
                &file.sha256,
                &file.path,
                &file.format,
                &file.layout,
                &file.bytes,
                &file.rows,
                &file.rejected,
                &first,
                &last,
                &file.days,
            ],
        )
        .await
        .context("recording the import in nyc_imports")?;
    Ok(())
}
