//! The local spool: raw messages appended to segment files and fsynced before they are
//! acknowledged, kept until their segment is uploaded.
//!
//! Files in the spool directory, per bridge id:
//!
//! - `<bridge id>-<seq>.seg`: a segment, `seq` zero-padded to 12 digits. It starts with the
//!   8 bytes `TXARSEG1`, then records, each framed as
//!   `u32 LE body length | u32 LE CRC32 (of the length bytes and the body) | body`, with the
//!   body `i64 LE received_ms | u32 LE topic length | topic (UTF-8) | payload`.
//!   A record that is cut short or fails its CRC ends the segment: after a crash the torn tail
//!   is truncated and the intact records before it are kept.
//! - `<bridge id>.next-seq`: the next segment number, written (atomically, by rename) before a
//!   segment is created, so numbers keep increasing across restarts even when every segment has
//!   been uploaded and deleted; archive keys are never reused.
//! - `<bridge id>.lock`: held (advisory lock) while a spool is open, so two processes with the
//!   same bridge id and directory refuse to share it.
//!
//! Only one segment is open for appends. Segments found when the spool is opened were left by
//! an earlier run and are all closed: they are repaired and returned for upload.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;

use crate::record::RawMessage;

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"TXARSEG1";
/// Length and CRC in front of each record body.
const FRAME_HEADER: usize = 8;
/// `received_ms` and topic length at the start of each body.
const BODY_HEADER: usize = 12;
const SEGMENT_SUFFIX: &str = ".seg";

/// A segment file and what it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub bridge_id: String,
    pub seq: u64,
    pub path: PathBuf,
    /// File size, header included.
    pub bytes: u64,
    pub records: u64,
    /// Smallest `received_ms` of its records (`None` when it has none).
    pub min_received_ms: Option<i64>,
}

struct OpenSegment {
    segment: Segment,
    file: File,
    opened_at: Instant,
    /// A write or fsync failed: the segment must not take more records.
    poisoned: bool,
}

/// The spool of one bridge id in one directory.
pub struct Spool {
    dir: PathBuf,
    bridge_id: String,
    next_seq: u64,
    open: Option<OpenSegment>,
    _lock: File,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("bridge_id", &self.bridge_id)
            .field("next_seq", &self.next_seq)
            .field("open", &self.open.as_ref().map(|o| &o.segment))
            .finish()
    }
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir` for `bridge_id`, which must be a valid
    /// device id. Returns the spool and the segments left by earlier runs (of any bridge id),
    /// repaired, ordered by bridge id and number; empty ones are deleted.
    pub fn open(dir: &Path, bridge_id: &str) -> io::Result<(Spool, Vec<Segment>)> {
        if !wire::is_valid_device_id(bridge_id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bridge id {bridge_id:?} is not usable in file names and keys"),
            ));
        }
        fs::create_dir_all(dir)?;
        let Some(lock) = try_lock(dir, bridge_id)? else {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the archive spool {} is in use by another bridge with id {bridge_id}",
                    dir.display()
                ),
            ));
        };

        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                if let Some((id, seq)) = parse_segment_name(name) {
                    names.push((name.to_owned(), id, seq));
                }
            }
        }
        names.sort_by(|a, b| (&a.1, a.2).cmp(&(&b.1, b.2)));

        let mut next_seq = read_next_seq(&dir.join(next_seq_name(bridge_id)))?.unwrap_or(1);
        let mut segments = Vec::new();
        // Leftovers of other bridge ids are taken over only while no process has their spool
        // open (they may be appending to one of them); the lock is held while repairing.
        let mut foreign: Option<(String, Option<File>)> = None;
        for (name, id, seq) in names {
            if id == bridge_id {
                next_seq = next_seq.max(seq.saturating_add(1));
            } else {
                if foreign.as_ref().is_none_or(|(locked, _)| *locked != id) {
                    foreign = Some((id.clone(), try_lock(dir, &id)?));
                }
                if foreign.as_ref().is_some_and(|(_, lock)| lock.is_none()) {
                    tracing::debug!(file = %name, "archive segment of another running bridge left alone");
                    continue;
                }
            }
            if let Some(segment) = recover_segment(&dir.join(&name), id, seq)? {
                segments.push(segment);
            }
        }
        drop(foreign);
        let spool = Spool {
            dir: dir.to_owned(),
            bridge_id: bridge_id.to_owned(),
            next_seq,
            open: None,
            _lock: lock,
        };
        Ok((spool, segments))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends the messages to the open segment (creating one if needed) with a single fsync.
    /// When this returns `Ok`, the messages survive a crash. After an error the open segment
    /// takes no more records ([`needs_roll`](Self::needs_roll) is true).
    pub fn append(&mut self, messages: &[RawMessage]) -> io::Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut frames = Vec::new();
        let mut min_received_ms = i64::MAX;
        for message in messages {
            encode_frame(message, &mut frames)?;
            min_received_ms = min_received_ms.min(message.received_ms);
        }
        if self.open.as_ref().is_some_and(|o| o.poisoned) {
            return Err(io::Error::other(
                "the open archive segment failed earlier and must be rolled first",
            ));
        }
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                let created = self.create_segment()?;
                self.open.insert(created)
            }
        };
        let before = open.segment.bytes;
        let written = open
            .file
            .write_all(&frames)
            .and_then(|()| open.file.sync_data());
        if let Err(e) = written {
            // Best effort: cut what may have been written; the segment is closed anyway, and
            // reading it stops at the first damaged record.
            open.poisoned = true;
            let _ = open
                .file
                .set_len(before)
                .and_then(|()| open.file.sync_all());
            return Err(e);
        }
        let segment = &mut open.segment;
        segment.bytes += frames.len() as u64;
        segment.records += messages.len() as u64;
        segment.min_received_ms = Some(match segment.min_received_ms {
            Some(old) => old.min(min_received_ms),
            None => min_received_ms,
        });
        Ok(())
    }

    /// The open segment, if any, and when it was created.
    pub fn current(&self) -> Option<(&Segment, Instant)> {
        self.open.as_ref().map(|o| (&o.segment, o.opened_at))
    }

    /// Whether the open segment must be closed: it reached `roll_bytes`, or failed.
    pub fn needs_roll(&self, roll_bytes: u64) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| o.poisoned || o.segment.bytes >= roll_bytes)
    }

    /// Closes the open segment and returns it for upload (`None` if there is no open segment
    /// or it holds no records; an empty one is deleted). Its records are already durable.
    pub fn close(&mut self) -> Option<Segment> {
        let open = self.open.take()?;
        drop(open.file);
        if open.segment.records == 0 {
            if let Err(e) = fs::remove_file(&open.segment.path) {
                tracing::warn!(path = %open.segment.path.display(), error = %e, "could not delete an empty archive segment");
            }
            return None;
        }
        Some(open.segment)
    }

    fn create_segment(&mut self) -> io::Result<OpenSegment> {
        let seq = self.next_seq;
        write_next_seq(&self.dir, &self.bridge_id, seq + 1)?;
        self.next_seq = seq + 1;
        let path = self.dir.join(segment_name(&self.bridge_id, seq));
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)?;
        let header = file
            .write_all(MAGIC)
            .and_then(|()| file.sync_all())
            .and_then(|()| sync_dir(&self.dir));
        if let Err(e) = header {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(OpenSegment {
            segment: Segment {
                bridge_id: self.bridge_id.clone(),
                seq,
                path,
                bytes: MAGIC.len() as u64,
                records: 0,
                min_received_ms: None,
            },
            file,
            opened_at: Instant::now(),
            poisoned: false,
        })
    }
}

/// Takes the advisory lock of `bridge_id`'s spool in `dir`; `None` if another process (or
/// another spool in this one) holds it.
fn try_lock(dir: &Path, bridge_id: &str) -> io::Result<Option<File>> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{bridge_id}.lock")))?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The intact records of a segment file, in write order (a damaged tail is ignored).
pub fn read_segment(path: &Path) -> io::Result<Vec<RawMessage>> {
    let data = Bytes::from(fs::read(path)?);
    check_header(&data, path)?;
    Ok(scan(&data).1)
}

/// `<bridge id>-<seq>.seg`
pub fn segment_name(bridge_id: &str, seq: u64) -> String {
    format!("{bridge_id}-{seq:012}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<(String, u64)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (id, seq) = stem.rsplit_once('-')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) || !wire::is_valid_device_id(id) {
        return None;
    }
    Some((id.to_owned(), seq.parse().ok()?))
}

fn next_seq_name(bridge_id: &str) -> String {
    format!("{bridge_id}.next-seq")
}

fn read_next_seq(path: &Path) -> io::Result<Option<u64>> {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} does not hold a segment number ({:?}); restore it or set it above the \
                     highest number archived by this bridge",
                    path.display(),
                    text.chars().take(40).collect::<String>()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_next_seq(dir: &Path, bridge_id: &str, next: u64) -> io::Result<()> {
    let path = dir.join(next_seq_name(bridge_id));
    let tmp = dir.join(format!("{}.tmp", next_seq_name(bridge_id)));
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{next}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn encode_frame(message: &RawMessage, out: &mut Vec<u8>) -> io::Result<()> {
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "message too large for an archive record",
        )
    };
    let topic_len = u32::try_from(message.topic.len()).map_err(|_| too_large())?;
    let body_len = BODY_HEADER
        .checked_add(message.topic.len())
        .and_then(|n| n.checked_add(message.payload.len()))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(too_large)?;
    let start = out.len();
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&message.received_ms.to_le_bytes());
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(message.topic.as_bytes());
    out.extend_from_slice(&message.payload);
    let crc = frame_crc(&out[start..start + 4], &out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn frame_crc(len: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len);
    hasher.update(body);
    hasher.finalize()
}

fn check_header(data: &[u8], path: &Path) -> io::Result<()> {
    if data.len() >= MAGIC.len() && &data[..MAGIC.len()] == MAGIC {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not an archive segment", path.display()),
        ))
    }
}

/// Length of the intact prefix of a segment (header included) and its records.
fn scan(data: &Bytes) -> (usize, Vec<RawMessage>) {
    let mut pos = MAGIC.len();
    let mut messages = Vec::new();
    while let Some((message, next)) = parse_frame(data, pos) {
        messages.push(message);
        pos = next;
    }
    (pos, messages)
}

/// The record at `pos` and the position after it, or `None` at the end or at damage.
fn parse_frame(data: &Bytes, pos: usize) -> Option<(RawMessage, usize)> {
    let rest = data.get(pos..)?;
    let len_bytes: [u8; 4] = rest.get(0..4)?.try_into().ok()?;
    let crc: [u8; 4] = rest.get(4..8)?.try_into().ok()?;
    let body_len = u32::from_le_bytes(len_bytes) as usize;
    let body = rest.get(FRAME_HEADER..FRAME_HEADER.checked_add(body_len)?)?;
    if body_len < BODY_HEADER || frame_crc(&len_bytes, body) != u32::from_le_bytes(crc) {
        return None;
    }
    let received_ms = i64::from_le_bytes(body[0..8].try_into().ok()?);
    let topic_len = u32::from_le_bytes(body[8..12].try_into().ok()?) as usize;
    let topic_end = BODY_HEADER.checked_add(topic_len)?;
    let topic = std::str::from_utf8(body.get(BODY_HEADER..topic_end)?).ok()?;
    let body_start = pos + FRAME_HEADER;
    let message = RawMessage {
        topic: topic.to_owned(),
        payload: data.slice(body_start + topic_end..body_start + body_len),
        received_ms,
    };
    Some((message, body_start + body_len))
}

/// Repairs a segment left by an earlier run: truncates a torn tail, deletes it if it holds
/// no records. A file that is not a segment is renamed to `<name>.corrupt` and skipped.
fn recover_segment(path: &Path, bridge_id: String, seq: u64) -> io::Result<Option<Segment>> {
    let data = Bytes::from(fs::read(path)?);
    if data.len() < MAGIC.len() && MAGIC.starts_with(&data) {
        // Crashed while the segment was being created: it never held a record.
        fs::remove_file(path)?;
        return Ok(None);
    }
    if check_header(&data, path).is_err() {
        let aside = path.with_extension("seg.corrupt");
        tracing::error!(path = %path.display(), moved_to = %aside.display(), "archive spool file is not a segment; moved aside");
        fs::rename(path, &aside)?;
        return Ok(None);
    }
    let (valid, messages) = scan(&data);
    if valid < data.len() {
        tracing::warn!(
            path = %path.display(),
            dropped_bytes = data.len() - valid,
            kept_records = messages.len(),
            "archive segment has a torn tail (interrupted write); truncating it"
        );
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(valid as u64)?;
        file.sync_all()?;
    }
    if messages.is_empty() {
        fs::remove_file(path)?;
        return Ok(None);
    }
    Ok(Some(Segment {
        bridge_id,
        seq,
        path: path.to_owned(),
        bytes: valid as u64,
        records: messages.len() as u64,
        min_received_ms: messages.iter().map(|m| m.received_ms).min(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: usize) -> RawMessage {
        RawMessage {
            topic: format!("taxi/t{}/position", i % 3),
            payload: Bytes::from(vec![(i % 256) as u8; i % 50]),
            received_ms: 1_700_000_000_000 + i as i64,
        }
    }

    fn batch(range: std::ops::Range<usize>) -> Vec<RawMessage> {
        range.map(msg).collect()
    }

    fn all_records(segments: &[Segment]) -> Vec<RawMessage> {
        segments
            .iter()
            .flat_map(|s| read_segment(&s.path).unwrap())
            .collect()
    }

    #[test]
    fn append_crash_reopen_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), "b1").unwrap();
        assert!(recovered.is_empty());
        spool.append(&batch(0..10)).unwrap();
        spool.append(&[]).unwrap();
        let first = spool.close().unwrap();
        assert_eq!((first.seq, first.records), (1, 10));
        assert_eq!(first.min_received_ms, Some(1_700_000_000_000));
        spool.append(&batch(10..25)).unwrap();
        spool.append(&batch(25..26)).unwrap();
        let (open, _) = spool.current().unwrap();
        assert_eq!((open.seq, open.records), (2, 16));
        assert_eq!(open.bytes, fs::metadata(&open.path).unwrap().len());
        // Crash: the spool goes away without closing anything.
        drop(spool);

        let (mut spool, recovered) = Spool::open(dir.path(), "b1").unwrap();
        assert_eq!(recovered.len(), 2);
        assert_eq!(recovered[0], first);
        assert_eq!((recovered[1].seq, recovered[1].records), (2, 16));
        assert_eq!(all_records(&recovered), batch(0..26));
        // New segments continue the numbering.
        spool.append(&batch(26..27)).unwrap();
        assert_eq!(spool.current().unwrap().0.seq, 3);
    }

    #[test]
    fn torn_tail_is_truncated_and_intact_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), "b1").unwrap();
        spool.append(&batch(0..5)).unwrap();
        spool.append(&batch(5..7)).unwrap();
        let path = spool.current().unwrap().0.path.clone();
        let intact_len = fs::metadata(&path).unwrap().len();
        drop(spool);

        // Half a record at the end, as a crash in the middle of a write leaves it.
        let mut half = Vec::new();
        encode_frame(&msg(99), &mut half).unwrap();
        half.truncate(half.len() - 3);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&half)
            .unwrap();
        let (spool, recovered) = Spool::open(dir.path(), "b1").unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].records, 7);
        assert_eq!(fs::metadata(&path).unwrap().len(), intact_len);
        assert_eq!(read_segment(&path).unwrap(), batch(0..7));
        drop(spool);

        // Garbage bytes, and a full-length record with a bad CRC.
        let mut bad = Vec::new();
        encode_frame(&msg(100), &mut bad).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 0x55;
        for tail in [vec![0xAB; 3], vec![0xFF; 100], bad] {
            OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(&tail)
                .unwrap();
            let (spool, recovered) = Spool::open(dir.path(), "b1").unwrap();
            assert_eq!(recovered[0].records, 7);
            assert_eq!(fs::metadata(&path).unwrap().len(), intact_len);
            assert_eq!(all_records(&recovered), batch(0..7));
            drop(spool);
        }
    }

    #[test]
    fn sequence_survives_uploaded_and_deleted_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), "b1").unwrap();
        spool.append(&batch(0..1)).unwrap();
        let s1 = spool.close().unwrap();
        spool.append(&batch(1..2)).unwrap();
        let s2 = spool.close().unwrap();
        drop(spool);
        fs::remove_file(&s1.path).unwrap();
        fs::remove_file(&s2.path).unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), "b1").unwrap();
        assert!(recovered.is_empty());
        spool.append(&batch(2..3)).unwrap();
        assert_eq!(spool.current().unwrap().0.seq, 3);
        // Another bridge id in the same directory counts on its own, and its leftovers are
        // recovered too.
        let (other, recovered) = Spool::open(dir.path(), "b-2").unwrap();
        assert!(
            recovered.is_empty(),
            "b1 is running: its segment is left alone"
        );
        drop(spool);
        let (mut other, recovered) = {
            drop(other);
            Spool::open(dir.path(), "b-2").unwrap()
        };
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].bridge_id, "b1");
        other.append(&batch(0..1)).unwrap();
        assert_eq!(other.current().unwrap().0.seq, 1);
        assert_eq!(
            other.current().unwrap().0.path.file_name().unwrap(),
            "b-2-000000000001.seg"
        );
    }

    #[test]
    fn a_spool_is_used_by_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (_spool, _) = Spool::open(dir.path(), "b1").unwrap();
        let err = Spool::open(dir.path(), "b1").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(Spool::open(dir.path(), "b2").is_ok());
        assert!(Spool::open(dir.path(), "bad/id").is_err());
    }

    #[test]
    fn leftovers_without_records_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(segment_name("b1", 4)), &MAGIC[..3]).unwrap();
        fs::write(dir.path().join(segment_name("b1", 5)), MAGIC).unwrap();
        fs::write(dir.path().join(segment_name("b1", 6)), b"something else").unwrap();
        fs::write(dir.path().join("unrelated.txt"), b"x").unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), "b1").unwrap();
        assert!(recovered.is_empty());
        assert!(!dir.path().join(segment_name("b1", 4)).exists());
        assert!(!dir.path().join(segment_name("b1", 5)).exists());
        assert!(dir.path().join("b1-000000000006.seg.corrupt").exists());
        assert!(dir.path().join("unrelated.txt").exists());
        spool.append(&batch(0..1)).unwrap();
        assert_eq!(spool.current().unwrap().0.seq, 7);
        // Closing an open segment without records deletes it.
        assert!(spool.close().is_some());
        assert!(spool.close().is_none());
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name("b-1", 42), "b-1-000000000042.seg");
        assert_eq!(
            parse_segment_name("b-1-000000000042.seg"),
            Some(("b-1".to_owned(), 42))
        );
        assert_eq!(parse_segment_name("b1-12.seg"), Some(("b1".to_owned(), 12)));
        for bad in [
            "b1-.seg",
            "-1.seg",
            "b1-1x.seg",
            "b1-1.seg.corrupt",
            "b1.next-seq",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}
