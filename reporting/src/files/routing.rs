//! Where an upload goes, by what it is: JSON is checked and becomes rows, CSV and Parquet
//! are tables as they are, anything else is kept as it is.
//!
//! JSON is recognised by its content type (`application/json`, `application/*+json`,
//! `text/json`; NDJSON: `application/x-ndjson`, `application/ndjson`, `application/jsonl`,
//! `application/x-jsonlines`) or its extension (`.json`; NDJSON: `.ndjson`, `.jsonl`). An
//! NDJSON extension wins over a JSON content type. CSV and Parquet are recognised by their
//! extension (`.csv`, `.parquet`): the tables read their directory's files by extension.

use super::json::Shape;
use super::paths::FilePath;

/// What an upload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Json(Shape),
    Csv,
    Parquet,
    /// Kept as it is.
    Other,
}

impl Route {
    /// As the API's answers name it.
    pub fn name(self) -> &'static str {
        match self {
            Route::Json(Shape::Document) => "json",
            Route::Json(Shape::Lines) => "ndjson",
            Route::Csv => "csv",
            Route::Parquet => "parquet",
            Route::Other => "file",
        }
    }

    /// The table format of this route, if it makes a table.
    pub fn format(self) -> Option<analytics::lake::files::Format> {
        use analytics::lake::files::Format;
        match self {
            Route::Json(_) => Some(Format::Json),
            Route::Csv => Some(Format::Csv),
            Route::Parquet => Some(Format::Parquet),
            Route::Other => None,
        }
    }
}

/// The route of an upload to `path` sent with `content_type`.
pub fn route(path: &FilePath, content_type: Option<&str>) -> Route {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let extension = path.extension().unwrap_or_default();
    match extension.as_str() {
        "ndjson" | "jsonl" => return Route::Json(Shape::Lines),
        "json" => {
            return if is_lines(&media) {
                Route::Json(Shape::Lines)
            } else {
                Route::Json(Shape::Document)
            }
        }
        _ => {}
    }
    if is_lines(&media) {
        return Route::Json(Shape::Lines);
    }
    if media == "application/json"
        || media == "text/json"
        || (media.starts_with("application/") && media.ends_with("+json"))
    {
        return Route::Json(Shape::Document);
    }
    match extension.as_str() {
        "csv" => Route::Csv,
        "parquet" => Route::Parquet,
        _ => Route::Other,
    }
}

fn is_lines(media: &str) -> bool {
    matches!(
        media,
        "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/jsonlines"
    )
}

/// The content type a file is served with, by its extension.
pub fn content_type(path: &FilePath) -> &'static str {
    match path.extension().as_deref() {
        Some("json") => "application/json",
        Some("ndjson" | "jsonl") => "application/x-ndjson",
        Some("csv") => "text/csv; charset=utf-8",
        Some("parquet") => "application/vnd.apache.parquet",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::paths::parse;

    #[test]
    fn content_type_and_extension_decide() {
        let at = |p: &str, c: Option<&str>| route(&parse(p, false).unwrap(), c);
        assert_eq!(at("a/x.json", None), Route::Json(Shape::Document));
        assert_eq!(
            at("a/x.ndjson", Some("application/json")),
            Route::Json(Shape::Lines)
        );
        assert_eq!(
            at("a/x", Some("application/json; charset=utf-8")),
            Route::Json(Shape::Document)
        );
        assert_eq!(
            at("a/x", Some("application/geo+json")),
            Route::Json(Shape::Document)
        );
        assert_eq!(
            at("a/x.log", Some("application/x-ndjson")),
            Route::Json(Shape::Lines)
        );
        assert_eq!(at("a/x.CSV", Some("text/plain")), Route::Csv);
        assert_eq!(at("a/x.parquet", None), Route::Parquet);
        assert_eq!(
            at("a/x.bin", Some("application/octet-stream")),
            Route::Other
        );
        assert_eq!(at("a/.json", None), Route::Other);
    }
}
