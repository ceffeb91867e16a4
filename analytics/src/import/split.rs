//! Cutting a plain CSV file into parts that several threads parse at once.
//!
//! A part starts right after a line break and ends right after one (or at the end of the
//! file), so every row is in exactly one part. This is only right when no quoted field holds
//! a line break: the caller splits only files without any `"` (TLC files have none), and
//! reads the others with one thread. Each part also knows how many lines come before it, so
//! that rows keep the line numbers they have in the file (rejects name them). Counting those
//! lines is one more pass over the file, run in parallel too, from the page cache the hash
//! pass has just filled.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::Context;

/// The header is looked for in this many bytes at most.
const HEADER_LIMIT: u64 = 1 << 20;
/// Bytes read at a time when looking for a line break or counting them.
const BUFFER: usize = 1 << 20;

/// A range of whole lines of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// Offset of its first byte (just after a line break).
    pub start: u64,
    /// Offset just past its last byte.
    pub end: u64,
    /// Line breaks before `start`: the file's line number of its first line, minus one.
    pub lines_before: u64,
}

/// The file cut for parallel reading: its header line and the parts of the rest.
#[derive(Debug)]
pub(crate) struct Plan {
    pub header: Vec<u8>,
    pub parts: Vec<Part>,
}

/// Cuts the `bytes` bytes of `path` into at most `parts` parts of about the same size, after
/// the header line. `None` when there is no line break in the first MiB (the one-thread
/// reader reports what is wrong) or when more parts were asked for and the rows do not make
/// two.
pub(crate) fn plan(path: &Path, bytes: u64, parts: usize) -> anyhow::Result<Option<Plan>> {
    let name = path.display();
    let mut file = File::open(path).with_context(|| format!("{name}: cannot open it"))?;
    let Some(header_end) = next_line_start(&mut file, 0, HEADER_LIMIT.min(bytes))
        .with_context(|| format!("{name}: cannot read it"))?
    else {
        return Ok(None);
    };
    let mut header = vec![0u8; header_end as usize];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut header))
        .with_context(|| format!("{name}: cannot read its header"))?;

    let rows = bytes.saturating_sub(header_end);
    let mut starts = vec![header_end];
    for k in 1..parts.max(1) as u64 {
        let target = header_end + rows * k / parts as u64;
        let after = *starts.last().unwrap_or(&header_end);
        if target <= after {
            continue;
        }
        // The first line that starts at or after `target`.
        match next_line_start(&mut file, target - 1, bytes)
            .with_context(|| format!("{name}: cannot read it"))?
        {
            Some(start) if start > after && start < bytes => starts.push(start),
            _ => {}
        }
    }
    if starts.len() < 2 && parts > 1 {
        return Ok(None);
    }
    let ranges: Vec<(u64, u64)> = starts
        .iter()
        .zip(starts.iter().skip(1).copied().chain([bytes]))
        .map(|(&start, end)| (start, end))
        .collect();
    let counts = std::thread::scope(|scope| {
        let counting: Vec<_> = ranges
            .iter()
            .map(|&(start, end)| scope.spawn(move || count_line_breaks(path, start, end)))
            .collect();
        counting
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("{name}: a line counting thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<u64>>>()
    })?;
    let mut lines_before = 1; // the header's line break
    let mut cut = Vec::with_capacity(ranges.len());
    for (&(start, end), count) in ranges.iter().zip(counts) {
        cut.push(Part {
            start,
            end,
            lines_before,
        });
        lines_before += count;
    }
    Ok(Some(Plan { header, parts: cut }))
}

/// The offset just after the first `\n` at or after `from` and before `limit`.
fn next_line_start(file: &mut File, from: u64, limit: u64) -> std::io::Result<Option<u64>> {
    file.seek(SeekFrom::Start(from))?;
    let mut buffer = vec![0u8; BUFFER.min(64 * 1024)];
    let mut offset = from;
    while offset < limit {
        let want = buffer.len().min((limit - offset) as usize);
        let read = file.read(&mut buffer[..want])?;
        if read == 0 {
            return Ok(None);
        }
        if let Some(at) = memchr::memchr(b'\n', &buffer[..read]) {
            return Ok(Some(offset + at as u64 + 1));
        }
        offset += read as u64;
    }
    Ok(None)
}

/// Line breaks in `[start, end)` of `path`.
fn count_line_breaks(path: &Path, start: u64, end: u64) -> anyhow::Result<u64> {
    let name = path.display();
    let mut file = File::open(path).with_context(|| format!("{name}: cannot open it"))?;
    file.seek(SeekFrom::Start(start))
        .with_context(|| format!("{name}: cannot read it"))?;
    let mut reader = file.take(end - start);
    let mut buffer = vec![0u8; BUFFER];
    let mut count = 0u64;
    loop {
        let read = reader
            .read(&mut buffer)
            .with_context(|| format!("{name}: cannot read it"))?;
        if read == 0 {
            return Ok(count);
        }
        count += memchr::memchr_iter(b'\n', &buffer[..read]).count() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn parts_are_whole_lines_that_cover_the_rows_once() {
        let mut text = String::from("a,b\n");
        for n in 0..1000 {
            text.push_str(&format!("{n},{}\n", "x".repeat(n % 37)));
        }
        text.push_str("last,no-break");
        let (_dir, path) = file(&text);
        let bytes = text.len() as u64;
        for parts in [2, 3, 7] {
            let plan = plan(&path, bytes, parts).unwrap().unwrap();
            assert_eq!(plan.header, b"a,b\n");
            assert_eq!(plan.parts.len(), parts);
            assert_eq!(plan.parts[0].start, 4);
            assert_eq!(plan.parts.last().unwrap().end, bytes);
            for pair in plan.parts.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "parts touch");
            }
            for part in &plan.parts {
                assert_eq!(&text.as_bytes()[part.start as usize - 1], &b'\n');
                let before = text[..part.start as usize].matches('\n').count() as u64;
                assert_eq!(part.lines_before, before, "lines before {part:?}");
            }
        }
    }

    #[test]
    fn small_or_headerless_files_are_not_split() {
        let (_dir, path) = file("a,b\n1,2\n3,4\n");
        assert!(plan(&path, 12, 2)
            .unwrap()
            .is_some_and(|p| p.parts.len() == 2 && p.parts[1].lines_before == 2));
        let (_dir, path) = file("a,b\n1,2\n");
        assert!(plan(&path, 8, 2).unwrap().is_none(), "one row, one part");
        let (_dir, path) = file("a,b");
        assert!(plan(&path, 3, 2).unwrap().is_none(), "no line break");
    }
}
