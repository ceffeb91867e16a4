//! One report's rows, served a page at a time as JSON or whole as streamed CSV.
//!
//! A report is a [`Query`]: a `SELECT` with its filters, and the columns that order its rows
//! uniquely (the key). Pages use the key, not an offset: a page is "the first `limit` rows
//! after the last key of the previous page", so rows inserted meanwhile are never skipped
//! and never repeated (those that sort after the cursor appear on a later page). The
//! cursor carries that last key and a fingerprint of the filters it belongs to; it is
//! opaque to clients (base64url of JSON).
//!
//! CSV (`Accept: text/csv`) is the whole range, ordered by the key, streamed from its own
//! database connection straight into the response: memory stays constant, however many
//! rows, and a client that goes away stops the query.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::ToSql;

use super::error::ApiError;
use super::params::Params;
use super::rows;

/// A parameter of a report's SQL.
pub type SqlParam = Box<dyn ToSql + Sync + Send>;

/// A report's rows: `sql` selects them (with `$1`... bound to `params`), `key` orders them
/// uniquely: (output column, SQL type) pairs.
pub struct Query {
    pub sql: String,
    pub params: Vec<SqlParam>,
    pub key: &'static [(&'static str, &'static str)],
}

/// One page of rows and the cursor of the next one, if there are more.
pub struct Page {
    pub items: Vec<Map<String, Value>>,
    pub next_cursor: Option<String>,
}

impl Query {
    fn order_by(&self) -> String {
        self.key
            .iter()
            .map(|(column, _)| *column)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The page after `cursor` (the first without one), at most `limit` rows.
    pub async fn page(
        mut self,
        client: &deadpool_postgres::Client,
        route: &str,
        params: &Params,
        limit: u32,
    ) -> Result<Page, ApiError> {
        let fingerprint = fingerprint(route, params);
        let mut sql = format!("SELECT * FROM ({}) AS report", self.sql);
        if let Some(cursor) = params.get("cursor") {
            let after = decode_cursor(cursor, &fingerprint, self.key.len())?;
            let first = self.params.len() + 1;
            let columns = self.order_by();
            let values: Vec<String> = self
                .key
                .iter()
                .enumerate()
                .map(|(i, (_, ty))| format!("CAST(${}::text AS {ty})", first + i))
                .collect();
            sql.push_str(&format!(" WHERE ({columns}) > ({})", values.join(", ")));
            self.params
                .extend(after.into_iter().map(|v| Box::new(v) as SqlParam));
        }
        // The limit is a parameter, so that each report has a few statement texts, each
        // prepared once per connection.
        sql.push_str(&format!(
            " ORDER BY {} LIMIT ${}",
            self.order_by(),
            self.params.len() + 1
        ));
        self.params.push(Box::new(i64::from(limit) + 1));
        let bound: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let statement = client.prepare_cached(&sql).await?;
        let found = client.query(&statement, &bound).await?;
        let more = found.len() > limit as usize;
        let mut items = Vec::with_capacity(found.len().min(limit as usize));
        for row in found.iter().take(limit as usize) {
            items.push(rows::object(row)?);
        }
        let next_cursor = match (more, items.last()) {
            (true, Some(last)) => Some(encode_cursor(&fingerprint, self.key, last)?),
            _ => None,
        };
        Ok(Page { items, next_cursor })
    }

    /// Every row, ordered by the key, as CSV (header first), streamed from `client`. The
    /// permit (one of the concurrent exports allowed) is held until the stream ends.
    pub async fn csv(
        self,
        client: tokio_postgres::Client,
        permit: OwnedSemaphorePermit,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>>, ApiError> {
        let sql = format!(
            "SELECT * FROM ({}) AS report ORDER BY {}",
            self.sql,
            self.order_by()
        );
        let statement = client.prepare(&sql).await?;
        let header = rows::csv_header(statement.columns());
        let bound: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client.query_raw(&statement, bound).await?;
        let client = Arc::new(client);
        let lines = rows.map(move |row| {
            // The client lives as long as the stream: the connection stays open.
            let _open = &client;
            let _permit = &permit;
            row.map_err(|e| e.to_string())
                .and_then(|row| rows::csv_line(&row).map_err(|e| format!("{e:#}")))
                .map(Bytes::from)
                .map_err(|e| {
                    tracing::warn!(error = %e, "CSV export stopped");
                    std::io::Error::other(e)
                })
        });
        // Rows are gathered into chunks of about 64 KiB: fewer, larger writes.
        let chunks = lines.ready_chunks(256).map(|lines| {
            let mut chunk = Vec::with_capacity(64 * 1024);
            for line in lines {
                chunk.extend_from_slice(&line?);
            }
            Ok(Bytes::from(chunk))
        });
        Ok(futures_util::stream::once(async move { Ok(Bytes::from(header)) }).chain(chunks))
    }
}

/// The page as the API's JSON body: `{"items": [...], "next": "<url>" | null}`.
pub fn page_body(page: &Page, path: &str, params: &Params) -> Value {
    json!({
        "items": page.items,
        "count": page.items.len(),
        "next": page.next_cursor.as_ref().map(|cursor| format!("{path}?{}", params.with_cursor(cursor))),
    })
}

/// What a cursor is bound to: the report and its filters.
pub(crate) fn fingerprint(route: &str, params: &Params) -> String {
    let digest = Sha256::digest(format!("{route}?{}", params.filters()).as_bytes());
    hex::encode(&digest[..8])
}

pub(crate) fn encode_cursor(
    fingerprint: &str,
    key: &[(&str, &str)],
    last: &Map<String, Value>,
) -> anyhow::Result<String> {
    let mut values = Vec::with_capacity(key.len());
    for (column, _) in key {
        let value = last
            .get(*column)
            .ok_or_else(|| anyhow::anyhow!("the key column {column} is not selected"))?;
        values.push(match value {
            Value::String(s) => s.clone(),
            Value::Null => anyhow::bail!("the key column {column} is NULL"),
            other => other.to_string(),
        });
    }
    let json = json!({"f": fingerprint, "k": values});
    Ok(URL_SAFE_NO_PAD.encode(json.to_string()))
}

pub(crate) fn decode_cursor(
    cursor: &str,
    fingerprint: &str,
    parts: usize,
) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::bad("cursor", "not a cursor this API gave out");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if value.get("f").and_then(Value::as_str) != Some(fingerprint) {
        return Err(ApiError::bad(
            "cursor",
            "the cursor belongs to another report or other filters: keep the filters of the page it came from",
        ));
    }
    let key: Vec<String> = value
        .get("k")
        .and_then(Value::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if key.len() != parts {
        return Err(bad());
    }
    Ok(key)
}

/// How many CSV exports may run at once (each holds a database connection).
pub fn exports(max: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_only_with_its_own_filters() {
        let params = Params::parse(Some("from=a&to=b"), &["from", "to"]).unwrap();
        let f = fingerprint("/v1/x", &params);
        let last = Map::from_iter([
            ("ts".to_owned(), json!("2026-06-10T08:00:00.000001Z")),
            ("seq".to_owned(), json!(7)),
        ]);
        let cursor = encode_cursor(&f, &[("ts", "timestamptz"), ("seq", "bigint")], &last).unwrap();
        assert_eq!(
            decode_cursor(&cursor, &f, 2).unwrap(),
            ["2026-06-10T08:00:00.000001Z", "7"]
        );
        let other = Params::parse(Some("from=a&to=c"), &["from", "to"]).unwrap();
        let e = decode_cursor(&cursor, &fingerprint("/v1/x", &other), 2).unwrap_err();
        assert_eq!(e.parameter.as_deref(), Some("cursor"));
        assert!(decode_cursor("not-a-cursor", &f, 2).is_err());
    }
}
