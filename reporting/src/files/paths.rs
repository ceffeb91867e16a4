//! The path of `/filesystem/<path>`, checked before anything touches the store.
//!
//! The path is read from the raw request target (not a decoded form a router made), one
//! segment at a time: each is percent-decoded, must be UTF-8, and must not be `.` or `..`
//! (written plainly or as `%2e`), hold a backslash or an encoded `/`, a control character or
//! one of the characters object keys avoid (`\ { } ^ % ` [ ] " < > ~ # | * ?`), or be empty.
//! A segment is at most [`MAX_SEGMENT`] bytes and the whole path [`MAX_PATH`]. What passes is
//! used as the object key as it is: the names in the store are the names in the API.

use std::fmt;

/// Longest name of one file or directory, in bytes (as most file systems).
pub const MAX_SEGMENT: usize = 255;
/// Longest path, in bytes, after decoding.
pub const MAX_PATH: usize = 1024;

/// Characters refused in names (besides control characters).
const REFUSED: &[char] = &[
    '\\', '{', '}', '^', '%', '`', '[', ']', '"', '<', '>', '~', '#', '|', '*', '?',
];

/// A checked path: its segments, and whether it names a directory (ends with `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePath {
    pub segments: Vec<String>,
    pub directory: bool,
}

impl FilePath {
    /// The segments as `&str`.
    pub fn parts(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }

    /// The top-level directory, if the path is below one.
    pub fn top_dir(&self) -> Option<&str> {
        if self.segments.len() > 1 || (self.directory && !self.segments.is_empty()) {
            self.segments.first().map(String::as_str)
        } else {
            None
        }
    }

    /// The file name's extension, lowercased (`json` of `a/b.JSON`).
    pub fn extension(&self) -> Option<String> {
        let name = self.segments.last()?;
        let (stem, extension) = name.rsplit_once('.')?;
        (!stem.is_empty()).then(|| extension.to_ascii_lowercase())
    }
}

impl fmt::Display for FilePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.segments.join("/"))?;
        if self.directory && !self.segments.is_empty() {
            write!(f, "/")?;
        }
        Ok(())
    }
}

/// Why a path is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a file path is required after /filesystem/")]
    Missing,
    #[error("empty name in the path (two slashes in a row)")]
    EmptySegment,
    #[error("path traversal refused: {0:?} is not a name")]
    Traversal(String),
    #[error("the path holds a backslash; use / between names")]
    Backslash,
    #[error("the path holds an encoded '/' (%2F) inside a name")]
    EncodedSlash,
    #[error("a name is not valid UTF-8 once percent-decoded")]
    InvalidUtf8,
    #[error("bad percent-encoding in the path (% must be followed by two hex digits)")]
    BadEscape,
    #[error("a name holds a control character")]
    Control,
    #[error("a name holds {0:?}, which file names here may not hold")]
    Refused(char),
    #[error("a name is {0} bytes long; at most {MAX_SEGMENT} are allowed")]
    SegmentTooLong(usize),
    #[error("the path is {0} bytes long; at most {MAX_PATH} are allowed")]
    PathTooLong(usize),
}

/// Checks `raw`: the request path after `/filesystem/`, still percent-encoded. An empty
/// `raw` is the root directory when `allow_root`.
pub fn parse(raw: &str, allow_root: bool) -> Result<FilePath, PathError> {
    if raw.is_empty() {
        return if allow_root {
            Ok(FilePath {
                segments: Vec::new(),
                directory: true,
            })
        } else {
            Err(PathError::Missing)
        };
    }
    let directory = raw.ends_with('/');
    let body = raw.strip_suffix('/').unwrap_or(raw);
    let mut segments = Vec::new();
    let mut total = 0;
    for encoded in body.split('/') {
        let bytes = decode(encoded)?;
        if bytes.contains(&b'\\') {
            return Err(PathError::Backslash);
        }
        if bytes.contains(&b'/') {
            return Err(PathError::EncodedSlash);
        }
        let name = String::from_utf8(bytes).map_err(|_| PathError::InvalidUtf8)?;
        if name.is_empty() {
            return Err(PathError::EmptySegment);
        }
        if name == "." || name == ".." {
            return Err(PathError::Traversal(name));
        }
        if name.chars().any(char::is_control) {
            return Err(PathError::Control);
        }
        if let Some(c) = name.chars().find(|c| REFUSED.contains(c)) {
            return Err(PathError::Refused(c));
        }
        if name.len() > MAX_SEGMENT {
            return Err(PathError::SegmentTooLong(name.len()));
        }
        total += name.len() + 1;
        segments.push(name);
    }
    if total - 1 > MAX_PATH {
        return Err(PathError::PathTooLong(total - 1));
    }
    Ok(FilePath {
        segments,
        directory,
    })
}

/// Percent-decodes one segment.
fn decode(encoded: &str) -> Result<Vec<u8>, PathError> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(PathError::BadEscape)?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_pass_decoded() {
        let path = parse("reports/2026/Q1%20s%C3%BCd.json", false).unwrap();
        assert_eq!(path.segments, ["reports", "2026", "Q1 süd.json"]);
        assert!(!path.directory);
        assert_eq!(path.extension().as_deref(), Some("json"));
        assert_eq!(path.top_dir(), Some("reports"));
        let dir = parse("reports/", true).unwrap();
        assert!(dir.directory);
        assert_eq!(dir.top_dir(), Some("reports"));
        assert_eq!(parse("", true).unwrap().segments, Vec::<String>::new());
        assert_eq!(parse("top.csv", false).unwrap().top_dir(), None);
    }

    #[test]
    fn every_trick_is_refused() {
        use PathError::*;
        let cases: &[(&str, PathError)] = &[
            ("", Missing),
            ("a//b", EmptySegment),
            ("../etc/passwd", Traversal("..".into())),
            ("a/%2e%2e/b", Traversal("..".into())),
            ("a/%2E%2e", Traversal("..".into())),
            ("a/./b", Traversal(".".into())),
            ("a\\..\\b", Backslash),
            ("a%5c..%5cb", Backslash),
            ("a%2f..%2fb", EncodedSlash),
            ("a/%ff%fe.txt", InvalidUtf8),
            ("a/%zz", BadEscape),
            ("a/%00", Control),
            ("a/x%3F", Refused('?')),
        ];
        for (raw, expected) in cases {
            assert_eq!(parse(raw, false).as_ref(), Err(expected), "{raw}");
        }
        let long = "x".repeat(MAX_SEGMENT + 1);
        assert_eq!(parse(&long, false), Err(SegmentTooLong(MAX_SEGMENT + 1)));
        assert!(parse(&"x".repeat(MAX_SEGMENT), false).is_ok());
        let deep = vec!["y".repeat(200); 6].join("/");
        assert_eq!(parse(&deep, false), Err(PathTooLong(1205)));
    }
}
