//! The spill area: segments of the in-memory logs written to disk while a durable reader
//! still needs them (PATCHES.md, 18).
//!
//! When the next append to a filter's log would drop its oldest in-memory segment and a
//! durable reader has not read it, the router writes that segment to a file of its own in the
//! spill directory (`<log>-<segment index>.seg`, whole records of [`super::records`], a header
//! record then one record per message) and drops it from memory. Readers behind read it back
//! transparently through [`CommitLog::readv_with`], at the same offsets; the last segments read
//! back are kept decoded ([`READ_BACK_CACHE`] per log). Once every durable reader has passed
//! a spilled segment its file is deleted. The files together stay within the area's budget
//! (`max_bytes`); a segment that does not fit is not written, and the router holds the
//! publishers instead, as without a spill area.
//!
//! Spill files mean nothing without the router's memory (cursors, sessions, the rest of the
//! log): they are not synced, and [`SpillArea::open`] removes those a previous process left.
//! The directory is locked while a process uses it, so two brokers cannot share one.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::records;
use super::segment::Segment;
use super::{CommitLog, Storage};
use crate::router::durability::Observer;

/// Spilled segments of one log kept decoded for the readers behind.
pub const READ_BACK_CACHE: usize = 2;

/// Name of the lock file in the spill directory.
const LOCK_FILE: &str = "LOCK";
/// Extension of spill files.
const EXTENSION: &str = "seg";
/// The first record of a spill file: this magic, then the segment's first absolute offset
/// and its number of messages (u64 LE each).
const MAGIC: &[u8; 8] = b"RQSEG\x00\x00\x01";

/// A message type a log can spill: its bytes in a spill record and back.
pub trait Spillable: Sized {
    fn encode(&self, out: &mut Vec<u8>);
    /// `None` if the bytes are not a message of this type.
    fn decode(bytes: Bytes) -> Option<Self>;
}

impl Spillable for Bytes {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn decode(bytes: Bytes) -> Option<Bytes> {
        Some(bytes)
    }
}

/// A directory for spilled segments, locked for this process, and its budget in bytes.
pub struct SpillArea {
    dir: PathBuf,
    max_bytes: u64,
    /// Held open: the lock lasts as long as the area.
    _lock: File,
}

impl SpillArea {
    /// Creates `dir` if needed, locks it for this process (another process using it is an
    /// error) and removes the spill files a previous process left there.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<SpillArea> {
        let area = SpillArea::lock(dir, max_bytes)?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if is_spill_file(&entry.file_name().to_string_lossy()) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(area)
    }

    /// The log directory of durable mode as the spill area: locked like [`Self::open`], but
    /// the files there are the log itself, for [`super::durable::recover`] to read back.
    pub fn open_durable(dir: &Path, max_bytes: u64) -> io::Result<SpillArea> {
        SpillArea::lock(dir, max_bytes)
    }

    fn lock(dir: &Path, max_bytes: u64) -> io::Result<SpillArea> {
        fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the directory is in use by another process",
                ))
            }
            Err(TryLockError::Error(error)) => return Err(error),
        }
        Ok(SpillArea {
            dir: dir.to_owned(),
            max_bytes,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

/// `<digits>-<digits>.seg`: only files of this shape are ever removed.
fn is_spill_file(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(&format!(".{EXTENSION}")) else {
        return false;
    };
    let Some((log, segment)) = stem.split_once('-') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(log) && digits(segment)
}

/// The router's spill area in use: budget, bytes on disk, the logs with spilled segments.
pub struct Spill {
    area: SpillArea,
    /// Bytes of the spill files on disk.
    used: u64,
    /// Logs (by id) that have spilled segments.
    pub logs: BTreeSet<usize>,
    pub observer: Arc<dyn Observer>,
    /// Reused for encoding segments.
    scratch: Vec<u8>,
}

impl Spill {
    pub fn new(area: SpillArea, observer: Arc<dyn Observer>) -> Spill {
        Spill {
            area,
            used: 0,
            logs: BTreeSet::new(),
            observer,
            scratch: Vec::new(),
        }
    }

    /// Bytes of spill files on disk.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Counts the files of a log recovered after a restart (durable mode).
    pub fn count_recovered(&mut self, log_id: usize, bytes: u64) {
        if bytes > 0 {
            self.used += bytes;
            self.logs.insert(log_id);
        }
    }

    /// Whether `bytes` more fit in the budget.
    pub fn has_room(&self, bytes: u64) -> bool {
        self.used.saturating_add(bytes) <= self.area.max_bytes
    }
}

/// Why a segment was not spilled.
#[derive(Debug)]
pub enum SpillRefused {
    /// The area's budget has no room for its `needed` bytes.
    NoRoom { needed: u64 },
    /// It could not be encoded or written.
    Io(io::Error),
}

/// A segment of a log that is on disk.
pub struct SpilledSegment {
    /// Its index in the log (the first half of a cursor).
    pub(super) index: u64,
    /// Absolute offset of its first message.
    pub(super) absolute_offset: u64,
    /// Number of messages.
    pub(super) len: u64,
    /// Size of its file.
    pub(super) bytes: u64,
    pub(super) path: PathBuf,
}

impl SpilledSegment {
    pub(super) fn next_offset(&self) -> u64 {
        self.absolute_offset + self.len
    }
}

impl<T> CommitLog<T>
where
    T: Storage + Clone + Spillable,
{
    /// Writes the oldest in-memory segment to the spill area (as the file
    /// `<log_id>-<segment index>.seg`) and drops it from memory; its readers read it back from
    /// there. Refused when the budget has no room or the write fails: the log is unchanged.
    pub fn spill_head(
        &mut self,
        spill: &mut Spill,
        log_id: usize,
        filter: &str,
    ) -> Result<u64, SpillRefused> {
        let index = self.head;
        if let Some((at, needed)) = self.spill_refused {
            // The same segment did not fit a moment ago: no new encoding until it may.
            if at == index && !spill.has_room(needed) {
                return Err(SpillRefused::NoRoom { needed });
            }
        }
        let Some(segment) = self.segments.front() else {
            return Err(SpillRefused::Io(io::Error::other("the log has no segment")));
        };
        let absolute_offset = segment.absolute_offset;
        let len = segment.len();

        // Durable mode: the segment is in its file already; it only leaves memory.
        let durable_file = match self.files.as_mut().map(|files| files.closed_file(index)) {
            Some(Ok(file)) => file,
            Some(Err(error)) => return Err(SpillRefused::Io(error)),
            None => None,
        };
        if let Some((path, bytes)) = durable_file {
            if !spill.has_room(bytes) {
                self.spill_refused = Some((index, bytes));
                return Err(SpillRefused::NoRoom { needed: bytes });
            }
            if let Some(files) = self.files.as_mut() {
                files.forget(index);
            }
            self.spill_refused = None;
            self.segments.pop_front();
            self.head += 1;
            self.spilled.push_back(SpilledSegment {
                index,
                absolute_offset,
                len,
                bytes,
                path,
            });
            spill.used += bytes;
            spill.logs.insert(log_id);
            spill.observer.spilled(filter, bytes);
            return Ok(bytes);
        }

        let mut out = std::mem::take(&mut spill.scratch);
        out.clear();
        let encoded = (|| {
            records::encode_with(&mut out, |out| {
                out.extend_from_slice(MAGIC);
                out.extend_from_slice(&absolute_offset.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            })?;
            for message in &segment.data {
                records::encode_with(&mut out, |out| message.encode(out))?;
            }
            Ok::<(), io::Error>(())
        })();
        let result = match encoded {
            Err(error) => Err(SpillRefused::Io(error)),
            Ok(()) => {
                let needed = out.len() as u64;
                if !spill.has_room(needed) {
                    self.spill_refused = Some((index, needed));
                    Err(SpillRefused::NoRoom { needed })
                } else {
                    let path = spill.area.dir.join(format!("{log_id}-{index}.{EXTENSION}"));
                    match records::write_new(&path, &out) {
                        Ok(()) => Ok((needed, path)),
                        Err(error) => {
                            // Whatever part of it was written is of no use.
                            let _ = fs::remove_file(&path);
                            Err(SpillRefused::Io(error))
                        }
                    }
                }
            }
        };
        // Keep the buffer's capacity only up to a few segments' worth.
        if out.capacity() <= 4 * self.max_segment_size + 64 * 1024 {
            spill.scratch = out;
        }
        let (bytes, path) = result?;

        self.spill_refused = None;
        self.segments.pop_front();
        self.head += 1;
        if self.segments.is_empty() {
            // A log of a single segment: a new, empty, active segment follows the spilled one.
            self.segments
                .push_back(Segment::with_offset(absolute_offset + len));
            self.tail += 1;
        }
        self.spilled.push_back(SpilledSegment {
            index,
            absolute_offset,
            len,
            bytes,
            path,
        });
        spill.used += bytes;
        spill.logs.insert(log_id);
        spill.observer.spilled(filter, bytes);
        Ok(bytes)
    }

    /// Deletes the spilled segments that end at or before `offset` (every durable reader has
    /// passed them); returns whether any are left.
    pub fn delete_spilled_before(
        &mut self,
        offset: u64,
        spill: &mut Spill,
        log_id: usize,
        filter: &str,
    ) -> bool {
        while let Some(segment) = self.spilled.front() {
            if segment.next_offset() > offset {
                break;
            }
            let Some(segment) = self.spilled.pop_front() else {
                break;
            };
            self.read_back.retain(|(index, _)| *index != segment.index);
            match fs::remove_file(&segment.path) {
                Ok(()) => {
                    spill.used = spill.used.saturating_sub(segment.bytes);
                    spill.observer.spill_deleted(filter, segment.bytes);
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    spill.used = spill.used.saturating_sub(segment.bytes);
                    spill.observer.spill_deleted(filter, segment.bytes);
                }
                // Still on disk: its bytes stay counted against the budget.
                Err(error) => spill.observer.spill_failed(filter, "delete", &error),
            }
        }
        if self.spilled.is_empty() {
            spill.logs.remove(&log_id);
            false
        } else {
            true
        }
    }
}

impl<T> CommitLog<T>
where
    T: Storage + Clone,
{
    /// Whether segments of this log are on disk.
    pub fn has_spilled(&self) -> bool {
        !self.spilled.is_empty()
    }

    /// Bytes the spilled segment that does not fit the budget needs, if that is why it was
    /// refused last.
    pub fn spill_needed(&self) -> Option<u64> {
        self.spill_refused
            .filter(|(index, _)| *index == self.head)
            .map(|(_, needed)| needed)
    }

    /// Index of the oldest segment, spilled or in memory.
    pub(super) fn first_index(&self) -> u64 {
        self.spilled.front().map_or(self.head, |s| s.index)
    }
}

impl<T> CommitLog<T>
where
    T: Storage + Clone + Spillable,
{
    /// The spilled segment at `position` of `self.spilled`, decoded (from the cache, or read
    /// back now). A file that cannot be read, or whose tail is damaged, gives the messages
    /// before the damage (none if its header is wrong); the failure is reported.
    pub(super) fn read_back(
        &mut self,
        position: usize,
        spill: Option<&Spill>,
        filter: &str,
    ) -> Option<&Segment<T>> {
        let spilled = self.spilled.get(position)?;
        let index = spilled.index;
        if let Some(at) = self.read_back.iter().position(|(i, _)| *i == index) {
            return self.read_back.get(at).map(|(_, segment)| segment);
        }
        let mut segment = Segment::with_offset(spilled.absolute_offset);
        let failed = match records::read(&spilled.path) {
            Err(error) => Some(error),
            Ok((bytes, scan)) => {
                let bytes = Bytes::from(bytes);
                let mut records = scan.records.into_iter();
                let offset = spilled.absolute_offset.to_le_bytes();
                let header_ok = records.next().is_some_and(|range| {
                    let header = &bytes[range];
                    let spill_header = header.len() == MAGIC.len() + 16
                        && &header[..MAGIC.len()] == MAGIC
                        && header[MAGIC.len()..MAGIC.len() + 8] == offset
                        && header[MAGIC.len() + 8..] == spilled.len.to_le_bytes();
                    // A durable mode segment file: its offset, then its filter.
                    let durable_header = header
                        .strip_prefix(super::durable::MAGIC.as_slice())
                        .is_some_and(|rest| rest.get(..8) == Some(offset.as_slice()));
                    spill_header || durable_header
                });
                if header_ok {
                    for range in records {
                        match T::decode(bytes.slice(range)) {
                            Some(message) => segment.push(message),
                            None => break,
                        }
                    }
                }
                if segment.len() < spilled.len {
                    let why = scan
                        .damage
                        .map_or("not a spill file of this segment", |d| d.as_str());
                    Some(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: {} of {} messages read back ({why})",
                            spilled.path.display(),
                            segment.len(),
                            spilled.len
                        ),
                    ))
                } else {
                    None
                }
            }
        };
        if let Some(spill) = spill {
            match &failed {
                Some(error) => spill.observer.spill_failed(filter, "read", error),
                None => spill.observer.read_back(filter, spilled.bytes),
            }
        }
        if self.read_back.len() >= READ_BACK_CACHE {
            self.read_back.pop_front();
        }
        self.read_back.push_back((index, segment));
        self.read_back.back().map(|(_, segment)| segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::durability::NoObserver;
    use crate::segments::Position;
    use std::sync::Mutex;

    /// Spill events, as the broker's metrics see them.
    #[derive(Default)]
    struct Events(Mutex<Vec<String>>);

    impl Observer for Events {
        fn spilled(&self, filter: &str, _bytes: u64) {
            self.0.lock().unwrap().push(format!("spilled {filter}"));
        }
        fn read_back(&self, filter: &str, _bytes: u64) {
            self.0.lock().unwrap().push(format!("read {filter}"));
        }
        fn spill_deleted(&self, filter: &str, _bytes: u64) {
            self.0.lock().unwrap().push(format!("deleted {filter}"));
        }
        fn spill_failed(&self, filter: &str, op: &str, _error: &io::Error) {
            self.0.lock().unwrap().push(format!("failed {op} {filter}"));
        }
    }

    fn message(n: u64) -> Bytes {
        let mut bytes = format!("{n:08}").into_bytes();
        bytes.resize(100, b'.');
        Bytes::from(bytes)
    }

    /// A log of 1 KiB x 2 segments with `count` messages of 100 bytes, every full segment
    /// spilled instead of dropped.
    fn spilling_log(spill: &mut Spill, count: u64) -> CommitLog<Bytes> {
        let mut log = CommitLog::new(1024, 2).unwrap();
        for n in 0..count {
            if log.next_append_drops_head() {
                log.spill_head(spill, 7, "f").expect("spilled");
            }
            log.append(message(n));
        }
        log
    }

    fn read_all(log: &mut CommitLog<Bytes>, spill: &Spill, mut cursor: (u64, u64)) -> Vec<u64> {
        let mut read = Vec::new();
        loop {
            let mut out = Vec::new();
            let position = log
                .readv_with(cursor, 7, &mut out, Some(spill), "f")
                .unwrap();
            for (bytes, offset) in out {
                let n: u64 = std::str::from_utf8(&bytes[..8]).unwrap().parse().unwrap();
                assert_eq!(n, offset.1, "message {n} read at its own offset");
                read.push(n);
            }
            match position {
                Position::Next { end, .. } => cursor = end,
                Position::Done { .. } => return read,
            }
        }
    }

    #[test]
    fn spilled_segments_are_read_back_in_order_and_deleted_once_passed() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let events = Arc::new(Events::default());
        let mut spill = Spill::new(SpillArea::open(dir.path(), 1 << 20)?, events.clone());
        let mut log = spilling_log(&mut spill, 100);

        assert!(log.has_spilled());
        assert_eq!(log.start_offset(), 0, "nothing was dropped");
        let files = fs::read_dir(dir.path())?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| is_spill_file(&e.file_name().to_string_lossy()))
            })
            .count();
        assert_eq!(files, log.spilled.len());
        assert!(spill.used() > 0);

        // From the start, across spilled and in-memory segments, with the same offsets.
        assert_eq!(
            read_all(&mut log, &spill, (0, 0)),
            (0..100).collect::<Vec<_>>()
        );
        // From the middle of a spilled segment.
        let second = &log.spilled[1];
        let from = (second.index, second.absolute_offset + 3);
        assert_eq!(
            read_all(&mut log, &spill, from),
            (from.1..100).collect::<Vec<_>>()
        );
        let reads = |events: &Events| {
            events
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.starts_with("read"))
                .count()
        };
        assert!(reads(&events) >= log.spilled.len());

        // Readers have passed the first two spilled segments: their files go.
        let passed = log.spilled[2].absolute_offset;
        let before = log.spilled.len();
        assert!(log.delete_spilled_before(passed, &mut spill, 7, "f"));
        assert_eq!(log.spilled.len(), before - 2);
        assert!(!log.spilled[0].path.exists() || log.spilled[0].absolute_offset >= passed);
        assert_eq!(log.start_offset(), passed);
        // A reader still further behind jumps to what is left (the router reports the jump).
        let mut out = Vec::new();
        let position = log
            .readv_with((0, 0), 1, &mut out, Some(&spill), "f")
            .unwrap();
        assert!(matches!(position, Position::Next { start: (_, s), .. } if s == passed));

        assert!(!log.delete_spilled_before(u64::MAX, &mut spill, 7, "f"));
        assert_eq!(spill.used(), 0);
        assert!(spill.logs.is_empty());
        let left = fs::read_dir(dir.path())?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| is_spill_file(&e.file_name().to_string_lossy()))
            })
            .count();
        assert_eq!(left, 0, "every spill file is deleted");
        Ok(())
    }

    #[test]
    fn a_full_budget_refuses_and_leaves_the_log_as_it_was() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        // Room for one segment of about 1 KiB, not two.
        let mut spill = Spill::new(SpillArea::open(dir.path(), 1500)?, Arc::new(NoObserver));
        let mut log = CommitLog::new(1024, 2).unwrap();
        let mut refused = None;
        for n in 0..100 {
            if log.next_append_drops_head() {
                match log.spill_head(&mut spill, 1, "f") {
                    Ok(_) => {}
                    Err(SpillRefused::NoRoom { needed }) => {
                        refused = Some(needed);
                        break;
                    }
                    Err(SpillRefused::Io(e)) => return Err(e),
                }
            }
            log.append(message(n));
        }
        let needed = refused.expect("the second segment does not fit");
        assert_eq!(log.spill_needed(), Some(needed));
        assert!(log.next_append_drops_head(), "the log is still full");
        assert_eq!(log.spilled.len(), 1);
        // Once the first is deleted, the second fits.
        log.delete_spilled_before(u64::MAX, &mut spill, 1, "f");
        assert!(spill.has_room(needed));
        log.spill_head(&mut spill, 1, "f")
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        Ok(())
    }

    #[test]
    fn a_damaged_spill_file_gives_its_whole_records_and_is_reported() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let events = Arc::new(Events::default());
        let mut spill = Spill::new(SpillArea::open(dir.path(), 1 << 20)?, events.clone());
        let mut log = spilling_log(&mut spill, 40);
        // Cut the first spilled segment's file in the middle of its fourth message.
        let first = &log.spilled[0];
        let (count, len) = (first.len, fs::metadata(&first.path)?.len());
        let cut = (records::HEADER + MAGIC.len() + 16 + 3 * (records::HEADER + 100) + 50) as u64;
        assert!(cut < len);
        OpenOptions::new()
            .write(true)
            .open(&first.path)?
            .set_len(cut)?;

        let read = read_all(&mut log, &spill, (0, 0));
        let mut expected: Vec<u64> = (0..3).collect();
        expected.extend(count..40);
        assert_eq!(
            read, expected,
            "the whole records, then the next segment; no garbage"
        );
        assert!(events
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|e| e == "failed read f"));
        Ok(())
    }

    #[test]
    fn opening_removes_what_a_previous_run_left_and_locks_the_directory() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("3-17.seg"), b"old")?;
        fs::write(dir.path().join("notes.txt"), b"not ours")?;
        let area = SpillArea::open(dir.path(), 1 << 20)?;
        assert!(
            !dir.path().join("3-17.seg").exists(),
            "a leftover spill file is removed"
        );
        assert!(
            dir.path().join("notes.txt").exists(),
            "other files are left alone"
        );
        let again = SpillArea::open(dir.path(), 1 << 20);
        assert!(again.is_err(), "a second user of the directory is refused");
        drop(area);
        SpillArea::open(dir.path(), 1 << 20)?;
        Ok(())
    }
}
