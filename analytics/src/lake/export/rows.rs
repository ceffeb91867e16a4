//! From PostgreSQL's binary COPY rows to Arrow record batches: one builder per column, typed
//! by the dataset's schema, and the H3 zone of a row's coordinates.

use std::error::Error;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use tokio_postgres::binary_copy::BinaryCopyOutRow;
use tokio_postgres::types::{FromSql, Type};

use super::datasets::{Export, Source};

/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01 (UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A `timestamptz` as microseconds since 1970-01-01 UTC, read without a date-time crate.
struct Micros(i64);

impl<'a> FromSql<'a> for Micros {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Micros, Box<dyn Error + Sync + Send>> {
        let bytes: [u8; 8] = raw.try_into().map_err(|_| "a timestamptz is 8 bytes")?;
        let micros = i64::from_be_bytes(bytes);
        if micros == i64::MAX || micros == i64::MIN {
            return Err("an infinite timestamp has no place in the lake".into());
        }
        Ok(Micros(micros + PG_EPOCH_MICROS))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
}

/// The PostgreSQL type a column is cast to in the query, by its Arrow type.
pub(super) fn pg_type(data_type: &DataType) -> anyhow::Result<(Type, &'static str)> {
    Ok(match data_type {
        DataType::Utf8 => (Type::TEXT, "text"),
        DataType::Int64 => (Type::INT8, "bigint"),
        DataType::Int32 => (Type::INT4, "integer"),
        DataType::Float64 => (Type::FLOAT8, "double precision"),
        DataType::Float32 => (Type::FLOAT4, "real"),
        DataType::Boolean => (Type::BOOL, "boolean"),
        DataType::Timestamp(_, _) => (Type::TIMESTAMPTZ, "timestamptz"),
        other => bail!("no PostgreSQL type for {other}"),
    })
}

enum Column {
    Utf8(StringBuilder),
    I64(Int64Builder),
    I32(Int32Builder),
    F64(Float64Builder),
    F32(Float32Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMicrosecondBuilder),
}

/// How one output column is filled from a row: query column `index`, or the zone of two.
enum Fill {
    Query(usize),
    Zone { lat: usize, lon: usize },
}

/// Collects rows of one dataset into record batches.
pub(super) struct Batcher {
    dataset: &'static str,
    schema: SchemaRef,
    resolution: h3o::Resolution,
    fills: Vec<Fill>,
    columns: Vec<Column>,
    rows: usize,
}

impl Batcher {
    pub(super) fn new(
        export: &Export,
        schema: SchemaRef,
        resolution: h3o::Resolution,
    ) -> anyhow::Result<Batcher> {
        let query_index = |name: &str| {
            export
                .columns
                .iter()
                .filter(|(_, source)| matches!(source, Source::Sql(_)))
                .position(|(n, _)| *n == name)
                .ok_or_else(|| anyhow!("{}: no query column {name}", export.dataset))
        };
        let mut fills = Vec::new();
        let mut columns = Vec::new();
        for (field, (name, source)) in schema.fields().iter().zip(export.columns) {
            fills.push(match source {
                Source::Sql(_) => Fill::Query(query_index(name)?),
                Source::Zone { lat, lon } => Fill::Zone {
                    lat: query_index(lat)?,
                    lon: query_index(lon)?,
                },
            });
            columns.push(match field.data_type() {
                DataType::Utf8 => Column::Utf8(StringBuilder::new()),
                DataType::Int64 => Column::I64(Int64Builder::new()),
                DataType::Int32 => Column::I32(Int32Builder::new()),
                DataType::Float64 => Column::F64(Float64Builder::new()),
                DataType::Float32 => Column::F32(Float32Builder::new()),
                DataType::Boolean => Column::Bool(BooleanBuilder::new()),
                DataType::Timestamp(_, _) => {
                    Column::Ts(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
                }
                other => bail!(
                    "{}: column {name} has unsupported type {other}",
                    export.dataset
                ),
            });
        }
        Ok(Batcher {
            dataset: export.dataset,
            schema,
            resolution,
            fills,
            columns,
            rows: 0,
        })
    }

    /// Rows collected since the last batch.
    pub(super) fn len(&self) -> usize {
        self.rows
    }

    /// Appends one row; `row_number` (1-based) names it in errors.
    pub(super) fn push(&mut self, row: &BinaryCopyOutRow, row_number: u64) -> anyhow::Result<()> {
        for (i, (fill, column)) in self.fills.iter().zip(&mut self.columns).enumerate() {
            let name = || self.schema.field(i).name().clone();
            let context = || format!("{} row {row_number}, column {}", self.dataset, name());
            match (fill, column) {
                (Fill::Zone { lat, lon }, Column::Utf8(builder)) => {
                    let lat: Option<f64> = row.try_get(*lat).with_context(context)?;
                    let lon: Option<f64> = row.try_get(*lon).with_context(context)?;
                    match (lat, lon) {
                        (Some(lat), Some(lon)) => {
                            let cell = h3o::LatLng::new(lat, lon)
                                .map_err(|e| anyhow!("{}: ({lat}, {lon}): {e}", context()))?
                                .to_cell(self.resolution);
                            builder.append_value(cell.to_string());
                        }
                        _ => builder.append_null(),
                    }
                }
                (Fill::Zone { .. }, _) => bail!("{}: a zone is text", context()),
                (Fill::Query(index), column) => {
                    let index = *index;
                    match column {
                        Column::Utf8(b) => b.append_option(
                            row.try_get::<Option<&str>>(index).with_context(context)?,
                        ),
                        Column::I64(b) => b.append_option(
                            row.try_get::<Option<i64>>(index).with_context(context)?,
                        ),
                        Column::I32(b) => b.append_option(
                            row.try_get::<Option<i32>>(index).with_context(context)?,
                        ),
                        Column::F64(b) => b.append_option(
                            row.try_get::<Option<f64>>(index).with_context(context)?,
                        ),
                        Column::F32(b) => b.append_option(
                            row.try_get::<Option<f32>>(index).with_context(context)?,
                        ),
                        Column::Bool(b) => b.append_option(
                            row.try_get::<Option<bool>>(index).with_context(context)?,
                        ),
                        Column::Ts(b) => b.append_option(
                            row.try_get::<Option<Micros>>(index)
                                .with_context(context)?
                                .map(|m| m.0),
                        ),
                    }
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// The rows collected so far as one batch (the builders start over).
    pub(super) fn finish(&mut self) -> anyhow::Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|column| -> ArrayRef {
                match column {
                    Column::Utf8(b) => Arc::new(b.finish()),
                    Column::I64(b) => Arc::new(b.finish()),
                    Column::I32(b) => Arc::new(b.finish()),
                    Column::F64(b) => Arc::new(b.finish()),
                    Column::F32(b) => Arc::new(b.finish()),
                    Column::Bool(b) => Arc::new(b.finish()),
                    Column::Ts(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
            .with_context(|| format!("{}: building a batch of rows", self.dataset))
    }
}
