//! `analytics sql`: SQL over the lake (DataFusion, [`crate::lake::Lake::session`]): every
//! dataset, and the reporting file API's uploads as tables of the schema `files`
//! ([`crate::lake::files`]). Results
//! are written as they arrive, batch by batch: CSV (with one header line) or plain text tables
//! (one table per block of rows, so a long result does not have to fit in memory first).
//! An SQL error is shown as DataFusion words it, without a backtrace.

use std::io::Write;

use anyhow::{anyhow, Context};
use arrow::record_batch::RecordBatch;
use futures_util::TryStreamExt;

use crate::lake::Lake;
use crate::Config;

/// How results are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned text tables, with the row count at the end.
    Table,
    /// RFC 4180 CSV with a header line; timestamps in RFC 3339.
    Csv,
}

/// Rows gathered into one text table before it is printed.
const TABLE_BLOCK_ROWS: usize = 10_000;

/// Runs `query` over the lake and writes its result to `out`.
pub async fn run(
    config: &Config,
    query: &str,
    format: Format,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let lake = Lake::open(&config.lake).await?;
    let ctx = lake.session().await?;
    let frame = ctx.sql(query).await.map_err(|e| anyhow!("{e}"))?;
    let mut stream = frame.execute_stream().await.map_err(|e| anyhow!("{e}"))?;
    match format {
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            while let Some(batch) = stream.try_next().await.map_err(|e| anyhow!("{e}"))? {
                writer.write(&batch).context("writing CSV")?;
            }
        }
        Format::Table => {
            let mut block: Vec<RecordBatch> = Vec::new();
            let mut block_rows = 0;
            let mut total = 0;
            let schema = stream.schema();
            while let Some(batch) = stream.try_next().await.map_err(|e| anyhow!("{e}"))? {
                block_rows += batch.num_rows();
                total += batch.num_rows();
                block.push(batch);
                if block_rows >= TABLE_BLOCK_ROWS {
                    print_table(out, &block)?;
                    block.clear();
                    block_rows = 0;
                }
            }
            if !block.is_empty() || total == 0 {
                if block.is_empty() {
                    block.push(RecordBatch::new_empty(schema));
                }
                print_table(out, &block)?;
            }
            writeln!(out, "({total} row{})", if total == 1 { "" } else { "s" })
                .context("writing the result")?;
        }
    }
    out.flush().context("writing the result")?;
    Ok(())
}

fn print_table(out: &mut (dyn Write + Send), batches: &[RecordBatch]) -> anyhow::Result<()> {
    let table = arrow::util::pretty::pretty_format_batches(batches).context("formatting rows")?;
    writeln!(out, "{table}").context("writing the result")
}
