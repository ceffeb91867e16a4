//! Database rows as the API's JSON objects and CSV lines, whatever the report: each column
//! by its PostgreSQL type. Instants are RFC 3339 in UTC with microseconds, days
//! `YYYY-MM-DD`, arrays JSON arrays (CSV: `a;b`), NULL `null` (CSV: empty).

use jiff::civil::Date;
use jiff::Timestamp;
use serde_json::{Map, Value};
use tokio_postgres::types::Type;
use tokio_postgres::Row;

/// One column's value as JSON.
pub fn value(row: &Row, index: usize) -> anyhow::Result<Value> {
    let column = &row.columns()[index];
    let name = column.name();
    let bad = |e: tokio_postgres::Error| anyhow::anyhow!("column {name}: {e}");
    Ok(match *column.type_() {
        Type::BOOL => json(row.try_get::<_, Option<bool>>(index).map_err(bad)?),
        Type::INT2 => json(row.try_get::<_, Option<i16>>(index).map_err(bad)?),
        Type::INT4 => json(row.try_get::<_, Option<i32>>(index).map_err(bad)?),
        Type::INT8 => json(row.try_get::<_, Option<i64>>(index).map_err(bad)?),
        Type::FLOAT4 => json(row.try_get::<_, Option<f32>>(index).map_err(bad)?),
        Type::FLOAT8 => json(row.try_get::<_, Option<f64>>(index).map_err(bad)?),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
            json(row.try_get::<_, Option<String>>(index).map_err(bad)?)
        }
        Type::TIMESTAMPTZ => row
            .try_get::<_, Option<Timestamp>>(index)
            .map_err(bad)?
            .map_or(Value::Null, |t| Value::String(instant(t))),
        Type::DATE => row
            .try_get::<_, Option<Date>>(index)
            .map_err(bad)?
            .map_or(Value::Null, |d| Value::String(d.to_string())),
        Type::TEXT_ARRAY => json(row.try_get::<_, Option<Vec<String>>>(index).map_err(bad)?),
        ref other => anyhow::bail!("column {name}: type {other} is not served"),
    })
}

fn json<T: Into<Value>>(value: Option<T>) -> Value {
    value.map_or(Value::Null, Into::into)
}

/// An instant as the API writes it: UTC, microseconds.
pub fn instant(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A row as a JSON object, columns in order.
pub fn object(row: &Row) -> anyhow::Result<Map<String, Value>> {
    let mut object = Map::new();
    for (index, column) in row.columns().iter().enumerate() {
        object.insert(column.name().to_owned(), value(row, index)?);
    }
    Ok(object)
}

/// The CSV header line of these columns.
pub fn csv_header(columns: &[tokio_postgres::Column]) -> String {
    let names: Vec<String> = columns.iter().map(|c| csv_field(c.name())).collect();
    names.join(",") + "\n"
}

/// A row as a CSV line (RFC 4180 quoting).
pub fn csv_line(row: &Row) -> anyhow::Result<String> {
    let mut fields = Vec::with_capacity(row.len());
    for index in 0..row.len() {
        fields.push(match value(row, index)? {
            Value::Null => String::new(),
            Value::String(s) => csv_field(&s),
            Value::Array(items) => csv_field(
                &items
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(";"),
            ),
            other => other.to_string(),
        });
    }
    Ok(fields.join(",") + "\n")
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("taxi-7"), "taxi-7");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn instants_keep_microseconds() {
        let t: Timestamp = "2026-06-10T08:00:00.123456Z".parse().unwrap();
        assert_eq!(instant(t), "2026-06-10T08:00:00.123456Z");
    }
}
