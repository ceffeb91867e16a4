//! The crash-durable log: every segment of a log written to a file of its own as messages are
//! appended, synced before their PUBACK, and found again after a crash (PATCHES.md, 21).
//!
//! A segment's file is `<log number>-<segment index>.seg` in the log directory, whole records
//! of [`super::records`]: a header record ([`MAGIC`], the segment's first absolute offset, the
//! log's filter) then one record per message, the same message records as a spilled segment's.
//! Appends are buffered; [`LogFiles::sync`] writes them and syncs every file written since the
//! last sync (and the directory, when files were created), so one sync covers every publish of
//! a router round: the router calls it before it sends the round's acknowledgements.
//!
//! The files of the in-memory segments are the spill files of durable mode: when the router
//! spills a segment it only forgets it in memory, and readers behind read the file back. A
//! segment dropped because no durable reader needs it loses its file too.
//!
//! After a crash, [`recover`] reads the directory back: for each log, its filter and its
//! segments, each file truncated after its last whole record (a write torn by the crash is
//! detected by the record checksums and never read as messages).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::records;
use super::spill::{Spillable, SpilledSegment};

/// The first record of a durable segment file: this magic, the segment's first absolute
/// offset (u64 LE), then the log's filter (UTF-8, the rest of the record).
pub(super) const MAGIC: &[u8; 8] = b"RQLOG\x00\x00\x01";
/// Extension of segment files (the same as spill files: the spill area of durable mode).
const EXTENSION: &str = "seg";

/// The open segment file of a log.
struct Active {
    index: u64,
    file: File,
    path: PathBuf,
    /// Bytes written to the file so far.
    written: u64,
}

/// The files of one log in the durable log directory.
pub struct LogFiles {
    dir: PathBuf,
    /// The log's number in file names (stable across restarts, unlike its filter index).
    number: u64,
    filter: String,
    active: Option<Active>,
    /// Records appended to the active segment and not yet written.
    pending: Vec<u8>,
    /// Files written since the last sync whose segment is no longer active.
    unsynced: Vec<File>,
    /// Whether files were created (or removed) since the last sync.
    dir_changed: bool,
    /// Whether anything was appended since the last sync.
    dirty: bool,
    /// Files of segments that are no longer active: index -> (path, bytes).
    closed: BTreeMap<u64, (PathBuf, u64)>,
}

impl LogFiles {
    pub fn new(dir: &Path, number: u64, filter: &str) -> LogFiles {
        LogFiles {
            dir: dir.to_owned(),
            number,
            filter: filter.to_owned(),
            active: None,
            pending: Vec::new(),
            unsynced: Vec::new(),
            dir_changed: false,
            dirty: false,
            closed: BTreeMap::new(),
        }
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    /// Whether appends wait for a sync.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Appends `message`, the next message of segment `index` (whose first absolute offset
    /// is `segment_offset`). Buffered until [`Self::sync`].
    pub fn append<T: Spillable>(
        &mut self,
        index: u64,
        segment_offset: u64,
        message: &T,
    ) -> io::Result<()> {
        if self
            .active
            .as_ref()
            .is_none_or(|active| active.index != index)
        {
            self.open(index, segment_offset)?;
        }
        records::encode_with(&mut self.pending, |out| message.encode(out))?;
        self.dirty = true;
        Ok(())
    }

    /// Closes the active segment's file (written, synced later) and creates segment `index`'s.
    fn open(&mut self, index: u64, segment_offset: u64) -> io::Result<()> {
        self.close_active()?;
        let path = self
            .dir
            .join(format!("{}-{index}.{EXTENSION}", self.number));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        records::encode_with(&mut self.pending, |out| {
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&segment_offset.to_le_bytes());
            out.extend_from_slice(self.filter.as_bytes());
        })?;
        self.active = Some(Active {
            index,
            file,
            path,
            written: 0,
        });
        self.dir_changed = true;
        Ok(())
    }

    /// Writes the pending records to the active file.
    fn write_pending(&mut self) -> io::Result<()> {
        if let Some(active) = self.active.as_mut() {
            if !self.pending.is_empty() {
                active.file.write_all(&self.pending)?;
                active.written += self.pending.len() as u64;
                self.pending.clear();
            }
        }
        Ok(())
    }

    fn close_active(&mut self) -> io::Result<()> {
        self.write_pending()?;
        if let Some(active) = self.active.take() {
            self.closed
                .insert(active.index, (active.path, active.written));
            self.unsynced.push(active.file);
        }
        Ok(())
    }

    /// Writes everything appended and syncs it to disk; returns whether there was anything.
    pub fn sync(&mut self) -> io::Result<bool> {
        if !self.dirty && self.unsynced.is_empty() && !self.dir_changed {
            return Ok(false);
        }
        self.write_pending()?;
        for file in self.unsynced.drain(..) {
            file.sync_data()?;
        }
        if let Some(active) = &self.active {
            active.file.sync_data()?;
        }
        if std::mem::take(&mut self.dir_changed) {
            File::open(&self.dir)?.sync_all()?;
        }
        self.dirty = false;
        Ok(true)
    }

    /// The file of segment `index` once it is no longer active (for spilling it): its path
    /// and size. Written, so that readers can read it back at once.
    pub fn closed_file(&mut self, index: u64) -> io::Result<Option<(PathBuf, u64)>> {
        if self.active.as_ref().is_some_and(|a| a.index == index) {
            // A log of a single segment spills its active one: no more appends go to it.
            self.close_active()?;
        }
        Ok(self.closed.get(&index).cloned())
    }

    /// Forgets segment `index`'s file: it was spilled (the spill area owns it now).
    pub fn forget(&mut self, index: u64) {
        self.closed.remove(&index);
    }

    /// Removes segment `index`'s file: no durable reader needs it.
    pub fn remove(&mut self, index: u64) -> io::Result<()> {
        if self.active.as_ref().is_some_and(|a| a.index == index) {
            self.pending.clear();
            if let Some(active) = self.active.take() {
                remove_if_there(&active.path)?;
            }
        } else if let Some((path, _)) = self.closed.remove(&index) {
            remove_if_there(&path)?;
        }
        self.dir_changed = true;
        Ok(())
    }
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// A log found in the directory after a restart.
pub struct RecoveredLog {
    pub number: u64,
    pub filter: String,
    /// Its segments, oldest first, contiguous.
    pub(super) segments: Vec<SpilledSegment>,
}

impl RecoveredLog {
    /// Messages in its segments.
    pub fn messages(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}

/// What [`recover`] found.
#[derive(Default)]
pub struct Recovered {
    pub logs: Vec<RecoveredLog>,
    /// Bytes cut from the tails of files (writes torn by the crash).
    pub truncated_bytes: u64,
    /// Files that could not be used (unreadable header, a gap in a log's segments): what and
    /// why, for the log. They are removed.
    pub discarded: Vec<String>,
}

/// `<number>-<index>.seg`.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(&format!(".{EXTENSION}"))?;
    let (number, index) = stem.split_once('-')?;
    Some((number.parse().ok()?, index.parse().ok()?))
}

/// Reads the logs of `dir` back after a restart, truncating torn tails.
pub fn recover(dir: &Path) -> io::Result<Recovered> {
    let mut files: BTreeMap<u64, BTreeMap<u64, PathBuf>> = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some((number, index)) = parse_name(&entry.file_name().to_string_lossy()) {
            files.entry(number).or_default().insert(index, entry.path());
        }
    }
    let mut recovered = Recovered::default();
    for (number, paths) in files {
        let mut segments: Vec<(String, SpilledSegment)> = Vec::new();
        for (index, path) in paths {
            if let Some((_, cut)) = records::recover(&path)? {
                recovered.truncated_bytes += cut;
            }
            let (bytes, scan) = records::read(&path)?;
            let header = scan.records.first().map(|range| &bytes[range.clone()]);
            let parsed = header.and_then(|header| {
                let rest = header.strip_prefix(MAGIC.as_slice())?;
                let offset = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
                let filter = std::str::from_utf8(rest.get(8..)?).ok()?;
                Some((offset, filter.to_owned()))
            });
            let Some((absolute_offset, filter)) = parsed else {
                recovered.discarded.push(format!(
                    "{}: no segment header (empty, or not a log file)",
                    path.display()
                ));
                remove_if_there(&path)?;
                continue;
            };
            let segment = SpilledSegment {
                index,
                absolute_offset,
                len: scan.records.len() as u64 - 1,
                bytes: bytes.len() as u64,
                path,
            };
            segments.push((filter, segment));
        }
        // Segments are removed oldest first: a gap (or another filter) means that what comes
        // before it was being removed. The log is the run of segments that ends with the last.
        let mut start = segments.len().saturating_sub(1);
        while start > 0 {
            let (filter, segment) = &segments[start];
            let (previous_filter, previous) = &segments[start - 1];
            let follows = previous.index + 1 == segment.index
                && previous.next_offset() == segment.absolute_offset
                && previous_filter == filter;
            if !follows {
                break;
            }
            start -= 1;
        }
        for (_, segment) in segments.drain(..start) {
            recovered.discarded.push(format!(
                "{}: before a gap in its log (was being removed)",
                segment.path.display()
            ));
            remove_if_there(&segment.path)?;
        }
        let Some(filter) = segments.first().map(|(filter, _)| filter.clone()) else {
            continue;
        };
        recovered.logs.push(RecoveredLog {
            number,
            filter,
            segments: segments.into_iter().map(|(_, segment)| segment).collect(),
        });
    }
    Ok(recovered)
}

/// The messages of a recovered segment file (for tests and tools).
pub fn read_messages<T: Spillable>(path: &Path) -> io::Result<Vec<T>> {
    let (bytes, scan) = records::read(path)?;
    let bytes = Bytes::from(bytes);
    Ok(scan
        .records
        .into_iter()
        .skip(1)
        .filter_map(|range| T::decode(bytes.slice(range)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(n: u8) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(vec![i; 10 + i as usize]))
            .collect()
    }

    #[test]
    fn synced_appends_are_recovered_with_their_filter_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = LogFiles::new(dir.path(), 3, "taxi/+/position");
        for (i, message) in messages(5).iter().enumerate() {
            files.append(0, 0, message).unwrap();
            assert!(files.is_dirty(), "message {i} waits for a sync");
        }
        for message in &messages(3) {
            files.append(1, 5, message).unwrap();
        }
        assert!(files.sync().unwrap());
        assert!(!files.sync().unwrap(), "nothing new");

        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.truncated_bytes, 0);
        let [log] = recovered.logs.as_slice() else {
            panic!("one log")
        };
        assert_eq!((log.number, log.filter.as_str()), (3, "taxi/+/position"));
        let segments: Vec<(u64, u64, u64)> = log
            .segments
            .iter()
            .map(|s| (s.index, s.absolute_offset, s.len))
            .collect();
        assert_eq!(segments, [(0, 0, 5), (1, 5, 3)]);
        let read: Vec<Bytes> = read_messages(&log.segments[0].path).unwrap();
        assert_eq!(read, messages(5));
    }

    #[test]
    fn a_torn_tail_is_cut_and_only_whole_messages_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = LogFiles::new(dir.path(), 0, "f");
        for message in &messages(4) {
            files.append(0, 0, message).unwrap();
        }
        files.sync().unwrap();
        let path = dir.path().join("0-0.seg");
        let whole = fs::read(&path).unwrap();
        // A crash in the middle of the last record, then garbage after a whole file.
        for (cut, garbage) in [
            (whole.len() - 3, &b""[..]),
            (whole.len(), &b"\x07garbage"[..]),
        ] {
            let mut torn = whole[..cut].to_vec();
            torn.extend_from_slice(garbage);
            fs::write(&path, &torn).unwrap();
            let recovered = recover(dir.path()).unwrap();
            assert!(recovered.truncated_bytes > 0);
            let expected = if garbage.is_empty() { 3 } else { 4 };
            assert_eq!(recovered.logs[0].segments[0].len, expected);
            let read: Vec<Bytes> = read_messages(&path).unwrap();
            assert_eq!(read, messages(expected as u8));
        }
    }

    #[test]
    fn segments_before_a_gap_were_being_removed_and_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = LogFiles::new(dir.path(), 1, "f");
        for (index, offset) in [(0, 0), (1, 1), (2, 2)] {
            files
                .append(index, offset, &Bytes::from_static(b"m"))
                .unwrap();
        }
        files.sync().unwrap();
        fs::remove_file(dir.path().join("1-1.seg")).unwrap();
        let recovered = recover(dir.path()).unwrap();
        let segments: Vec<u64> = recovered.logs[0].segments.iter().map(|s| s.index).collect();
        assert_eq!(segments, [2]);
        assert!(!dir.path().join("1-0.seg").exists());
    }

    #[test]
    fn removed_segments_are_gone_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = LogFiles::new(dir.path(), 1, "f");
        files.append(0, 0, &Bytes::from_static(b"a")).unwrap();
        files.append(1, 1, &Bytes::from_static(b"b")).unwrap();
        files.sync().unwrap();
        files.remove(0).unwrap();
        files.sync().unwrap();
        let recovered = recover(dir.path()).unwrap();
        let segments: Vec<u64> = recovered.logs[0].segments.iter().map(|s| s.index).collect();
        assert_eq!(segments, [1]);
    }
}
