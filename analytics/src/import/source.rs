//! A source file before it is read: what identifies it (the SHA-256 of its bytes, one quick
//! pass), what it is (Parquet, CSV, gzip-compressed CSV: told by its first bytes, not its
//! name), and a reader that counts the bytes it consumed (for the progress bar's ETA).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const PARQUET_MAGIC: &[u8; 4] = b"PAR1";

/// How a file is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    GzipCsv,
    Parquet,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::GzipCsv => "csv.gz",
            Format::Parquet => "parquet",
        }
    }
}

/// A file to import, identified and recognised.
#[derive(Clone, Debug)]
pub struct Source {
    pub path: PathBuf,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the file's bytes: the file's identity in the lake
    /// (`source_file`, the part name) and in `nyc_imports`.
    pub sha256: String,
    pub format: Format,
    /// Whether any byte is a double quote. A CSV with quoted fields is read by one thread:
    /// a quoted field may hold a line break, so it cannot be cut at any line break.
    pub quoted: bool,
}

impl Source {
    /// The part name in the lake: the first 16 hex digits of the SHA-256.
    pub fn part(&self) -> &str {
        &self.sha256[..16]
    }
}

/// Reads `path` once to hash it and looks at its first bytes. Errors name the file.
pub fn inspect(path: &Path) -> anyhow::Result<Source> {
    let name = path.display();
    let mut file = File::open(path).with_context(|| format!("{name}: cannot open it"))?;
    let bytes = file
        .metadata()
        .with_context(|| format!("{name}: cannot read its size"))?
        .len();
    if bytes == 0 {
        bail!("{name}: the file is empty");
    }
    let mut head = [0u8; 4];
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut read_total: u64 = 0;
    let mut quoted = false;
    loop {
        let read = file
            .read(&mut buffer)
            .with_context(|| format!("{name}: cannot read it"))?;
        if read == 0 {
            break;
        }
        if read_total < 4 {
            let start = read_total as usize;
            let take = (4 - start).min(read);
            head[start..start + take].copy_from_slice(&buffer[..take]);
        }
        read_total += read as u64;
        hasher.update(&buffer[..read]);
        quoted = quoted || memchr::memchr(b'"', &buffer[..read]).is_some();
    }
    let sha256 = hex::encode(hasher.finalize());
    let is_parquet_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    let format = if head == *PARQUET_MAGIC {
        Format::Parquet
    } else if head[..2] == GZIP_MAGIC {
        check_gzip_content(path)?;
        Format::GzipCsv
    } else if is_parquet_name {
        bail!("{name}: not a Parquet file (it does not start with PAR1)");
    } else {
        Format::Csv
    };
    Ok(Source {
        path: path.to_owned(),
        bytes: read_total,
        sha256,
        format,
        quoted,
    })
}

/// A gzip file must hold a CSV: Parquet needs to seek, which a gzip stream cannot.
fn check_gzip_content(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("{}: cannot open it", path.display()))?;
    let mut decoder = flate2::read::MultiGzDecoder::new(BufReader::new(file));
    let mut head = [0u8; 4];
    let mut filled = 0;
    while filled < head.len() {
        match decoder.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{}: not a readable gzip file", path.display()))
            }
        }
    }
    if filled == 4 && head == *PARQUET_MAGIC {
        bail!(
            "{}: a gzip-compressed Parquet file cannot be read as a stream; decompress it first",
            path.display()
        );
    }
    Ok(())
}

/// Opens the CSV text of `source` (decompressed if gzip), counting the file's bytes read
/// into `consumed`.
pub(crate) fn open_text(
    source: &Source,
    consumed: Arc<AtomicU64>,
) -> anyhow::Result<Box<dyn Read + Send>> {
    let file = File::open(&source.path)
        .with_context(|| format!("{}: cannot open it", source.path.display()))?;
    let counted = Counting {
        inner: file,
        consumed,
    };
    Ok(match source.format {
        Format::GzipCsv => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            1 << 16,
            counted,
        ))),
        _ => Box::new(counted),
    })
}

/// Opens bytes `[start, end)` of a plain (not compressed) file, counting the bytes read into
/// `consumed`.
pub(crate) fn open_range(
    source: &Source,
    start: u64,
    end: u64,
    consumed: Arc<AtomicU64>,
) -> anyhow::Result<impl Read + Send> {
    let name = source.path.display();
    let mut file = File::open(&source.path).with_context(|| format!("{name}: cannot open it"))?;
    file.seek(SeekFrom::Start(start))
        .with_context(|| format!("{name}: cannot read it"))?;
    Ok(Counting {
        inner: file.take(end.saturating_sub(start)),
        consumed,
    })
}

/// A reader that adds the bytes it returns to a shared counter.
struct Counting<R> {
    inner: R,
    consumed: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.consumed.fetch_add(read as u64, Ordering::Relaxed);
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn formats_are_told_by_their_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a.parquet.txt");
        std::fs::write(&csv, "a,b\n1,2\n").unwrap();
        let source = inspect(&csv).unwrap();
        assert_eq!(source.format, Format::Csv);
        assert_eq!(source.bytes, 8);
        assert_eq!(
            source.sha256,
            hex::encode(Sha256::digest(b"a,b\n1,2\n")),
            "the hash of the bytes"
        );
        assert_eq!(source.part().len(), 16);
        assert!(!source.quoted);
        std::fs::write(&csv, "a,b\n1,\"2\"\n").unwrap();
        assert!(inspect(&csv).unwrap().quoted);

        let gz = dir.path().join("a.csv");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"a,b\n1,2\n").unwrap();
        std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
        let source = inspect(&gz).unwrap();
        assert_eq!(source.format, Format::GzipCsv);
        let mut text = String::new();
        let consumed = Arc::new(AtomicU64::new(0));
        open_text(&source, consumed.clone())
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "a,b\n1,2\n");
        assert_eq!(consumed.load(Ordering::Relaxed), source.bytes);

        let fake = dir.path().join("x.parquet");
        std::fs::write(&fake, "not parquet").unwrap();
        let error = inspect(&fake).unwrap_err().to_string();
        assert!(
            error.contains("x.parquet") && error.contains("PAR1"),
            "{error}"
        );

        let empty = dir.path().join("empty.csv");
        std::fs::write(&empty, "").unwrap();
        assert!(inspect(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty.csv"));
    }
}
