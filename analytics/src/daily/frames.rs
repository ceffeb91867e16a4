//! Running a query on the lake's DataFusion session and reading its columns as plain Rust
//! values. Columns are cast to the wanted type first, so that the engine's choice of
//! representation (a string as `Utf8` or `Utf8View`, a count as `Int64` or `UInt64`) does
//! not matter here.

use anyhow::{anyhow, Context};
use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, Float64Type, Int64Type};
use datafusion::prelude::SessionContext;

/// The result of `sql`, all of it.
pub(crate) async fn query(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let frame = ctx
        .sql(sql)
        .await
        .with_context(|| format!("lake: planning {sql}"))?;
    frame
        .collect()
        .await
        .with_context(|| format!("lake: running {sql}"))
}

/// Column `name` of one batch, cast to `to` (a no-op when it already is).
pub(crate) fn column(batch: &RecordBatch, name: &str, to: &DataType) -> anyhow::Result<ArrayRef> {
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| anyhow!("lake: the query has no column {name}"))?;
    arrow::compute::cast(array, to).with_context(|| format!("lake: reading column {name} as {to}"))
}

/// Column `name` of every batch, as `i64`s.
pub(crate) fn int64(batches: &[RecordBatch], name: &str) -> anyhow::Result<Vec<Option<i64>>> {
    let mut out = Vec::new();
    for batch in batches {
        let array = column(batch, name, &DataType::Int64)?;
        out.extend(array.as_primitive::<Int64Type>().iter());
    }
    Ok(out)
}

/// Column `name` of every batch, as `f64`s.
pub(crate) fn float64(batches: &[RecordBatch], name: &str) -> anyhow::Result<Vec<Option<f64>>> {
    let mut out = Vec::new();
    for batch in batches {
        let array = column(batch, name, &DataType::Float64)?;
        out.extend(array.as_primitive::<Float64Type>().iter());
    }
    Ok(out)
}

/// Column `name` of every batch, as strings.
pub(crate) fn utf8(batches: &[RecordBatch], name: &str) -> anyhow::Result<Vec<Option<String>>> {
    let mut out = Vec::new();
    for batch in batches {
        let array = column(batch, name, &DataType::Utf8)?;
        out.extend(
            array
                .as_string::<i32>()
                .iter()
                .map(|s| s.map(str::to_owned)),
        );
    }
    Ok(out)
}

/// Column `name` of every batch, as days since 1970-01-01.
pub(crate) fn date32(batches: &[RecordBatch], name: &str) -> anyhow::Result<Vec<Option<i32>>> {
    let mut out = Vec::new();
    for batch in batches {
        let array = column(batch, name, &DataType::Date32)?;
        out.extend(array.as_primitive::<Date32Type>().iter());
    }
    Ok(out)
}

/// `DATE 'YYYY-MM-DD'`, the SQL literal of a day.
pub(crate) fn date_literal(day: jiff::civil::Date) -> String {
    format!("DATE '{}'", day.strftime("%Y-%m-%d"))
}
