//! Length- and checksum-framed records: the on-disk format of the router's spilled log
//! segments (PATCHES.md, 18), and the format a crash-durable log (appends written and
//! synced before the PUBACK) is meant to reuse.
//!
//! A file is a sequence of records, nothing else:
//!
//! ```text
//! record = length: u32 LE | crc: u32 LE | payload: `length` bytes
//! crc    = CRC-32 (IEEE, crc32fast) of the four length bytes followed by the payload
//! ```
//!
//! A reader accepts records from the start of the file for as long as each one is whole and
//! its checksum matches. The first record that is cut short (a write torn by a crash or a full
//! disk), claims more than [`MAX_RECORD`] bytes, or does not match its checksum ends the
//! valid part of the file: [`scan`] reports where (`valid_len`) and why, and never hands out
//! the bytes after it. [`recover`] truncates a file to its valid part, so that appends go on
//! from a clean tail. Nothing here syncs: a caller that promises durability calls
//! `File::sync_data` after its appends (that is the crash-durable mode's job, not this
//! module's).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// Bytes before each payload: its length and its checksum.
pub const HEADER: usize = 8;

/// Largest payload accepted. A length above it is taken for corruption (a torn or garbled
/// header), not for a record to allocate.
pub const MAX_RECORD: usize = 256 * 1024 * 1024;

/// Why the valid part of a file ends before the file does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Fewer than [`HEADER`] bytes left for a record's header.
    ShortHeader,
    /// The header claims more bytes than the file has left.
    ShortPayload,
    /// The header claims more than [`MAX_RECORD`] bytes.
    TooLong,
    /// The checksum does not match the length and payload.
    Checksum,
}

impl Damage {
    pub fn as_str(self) -> &'static str {
        match self {
            Damage::ShortHeader => "record header cut short",
            Damage::ShortPayload => "record payload cut short",
            Damage::TooLong => "record length out of range",
            Damage::Checksum => "record checksum mismatch",
        }
    }
}

/// What [`scan`] found: where each valid record's payload is, and where the valid part ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Payload ranges of the valid records, in file order.
    pub records: Vec<std::ops::Range<usize>>,
    /// Length of the valid part: the file is whole if this is its length.
    pub valid_len: usize,
    /// Why the valid part ends early, if it does.
    pub damage: Option<Damage>,
}

fn checksum(length: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&length);
    hasher.update(payload);
    hasher.finalize()
}

fn too_long(len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("a record of {len} bytes is above the limit of {MAX_RECORD}"),
    )
}

/// Appends one record holding `payload` to `out` (refused above [`MAX_RECORD`] bytes).
pub fn encode(payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    encode_with(out, |out| out.extend_from_slice(payload))
}

/// Appends a record to `out` whose payload is written by `write` (no copy of the payload);
/// refused, and `out` left as it was, above [`MAX_RECORD`] bytes.
pub fn encode_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    write(out);
    let payload_len = out.len() - start - HEADER;
    if payload_len > MAX_RECORD {
        out.truncate(start);
        return Err(too_long(payload_len));
    }
    // At most MAX_RECORD: fits in 32 bits.
    let length = (payload_len as u32).to_le_bytes();
    let crc = checksum(length, &out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&length);
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The valid records of `bytes`, and where its valid part ends.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut at = 0;
    let damage = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() < HEADER {
            break Some(Damage::ShortHeader);
        }
        let length = [rest[0], rest[1], rest[2], rest[3]];
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let len = u32::from_le_bytes(length) as usize;
        if len > MAX_RECORD {
            break Some(Damage::TooLong);
        }
        if rest.len() - HEADER < len {
            break Some(Damage::ShortPayload);
        }
        let payload = &rest[HEADER..HEADER + len];
        if checksum(length, payload) != crc {
            break Some(Damage::Checksum);
        }
        records.push(at + HEADER..at + HEADER + len);
        at += HEADER + len;
    };
    Scan {
        records,
        valid_len: at,
        damage,
    }
}

/// Reads the whole file at `path` and scans it.
pub fn read(path: &Path) -> io::Result<(Vec<u8>, Scan)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let scan = scan(&bytes);
    Ok((bytes, scan))
}

/// Writes `bytes` (whole records) as the file `path`, replacing any file there.
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(bytes)
}

/// Truncates the file at `path` to its valid part, and says what was cut (`None`: the file
/// was whole). For a log that appends records and must reopen them after a crash.
pub fn recover(path: &Path) -> io::Result<Option<(Damage, u64)>> {
    let (bytes, scan) = read(path)?;
    let Some(damage) = scan.damage else {
        return Ok(None);
    };
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(scan.valid_len as u64)?;
    Ok(Some((damage, (bytes.len() - scan.valid_len) as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_records() -> (Vec<u8>, Vec<Vec<u8>>) {
        let payloads = vec![b"first".to_vec(), vec![7u8; 300], b"third record".to_vec()];
        let mut bytes = Vec::new();
        for payload in &payloads {
            encode(payload, &mut bytes).expect("small record");
        }
        (bytes, payloads)
    }

    fn payloads_of(bytes: &[u8], scan: &Scan) -> Vec<Vec<u8>> {
        scan.records
            .iter()
            .map(|r| bytes[r.clone()].to_vec())
            .collect()
    }

    #[test]
    fn whole_records_are_read_back() {
        let (bytes, payloads) = three_records();
        let scan = scan(&bytes);
        assert_eq!(scan.damage, None);
        assert_eq!(scan.valid_len, bytes.len());
        assert_eq!(payloads_of(&bytes, &scan), payloads);

        let mut with = Vec::new();
        encode_with(&mut with, |out| out.extend_from_slice(b"first")).expect("small record");
        assert_eq!(with, bytes[..HEADER + 5].to_vec(), "both encoders agree");
        assert_eq!(super::scan(&[]).damage, None, "an empty file is whole");
    }

    #[test]
    fn a_tail_cut_anywhere_is_detected_and_only_whole_records_are_kept() {
        let (bytes, payloads) = three_records();
        let ends: Vec<usize> = {
            let scan = scan(&bytes);
            scan.records.iter().map(|r| r.end).collect()
        };
        for cut in 0..bytes.len() {
            let torn = &bytes[..cut];
            let scan = scan(torn);
            let whole = ends.iter().filter(|end| **end <= cut).count();
            assert_eq!(scan.records.len(), whole, "cut at {cut}");
            assert_eq!(payloads_of(torn, &scan), payloads[..whole].to_vec());
            let at_boundary = cut == 0 || ends.contains(&cut);
            if at_boundary {
                assert_eq!(scan.damage, None, "cut at a record boundary ({cut})");
            } else {
                assert!(
                    matches!(
                        scan.damage,
                        Some(Damage::ShortHeader | Damage::ShortPayload)
                    ),
                    "cut at {cut}: {:?}",
                    scan.damage
                );
                assert_eq!(
                    scan.valid_len,
                    ends.iter()
                        .copied()
                        .filter(|e| *e <= cut)
                        .max()
                        .unwrap_or(0)
                );
            }
        }
    }

    #[test]
    fn any_flipped_byte_is_detected_and_nothing_after_it_is_read() {
        let (bytes, payloads) = three_records();
        let ends: Vec<usize> = scan(&bytes).records.iter().map(|r| r.end).collect();
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut garbled = bytes.clone();
                garbled[at] ^= flip;
                let scan = scan(&garbled);
                // The record holding the flipped byte is the first one refused.
                let hit = ends
                    .iter()
                    .position(|end| at < *end)
                    .unwrap_or(payloads.len());
                assert!(scan.damage.is_some(), "byte {at} ^ {flip:#x} undetected");
                assert_eq!(
                    payloads_of(&garbled, &scan),
                    payloads[..hit].to_vec(),
                    "byte {at} ^ {flip:#x}: only the records before it"
                );
            }
        }
    }

    #[test]
    fn a_garbled_length_is_not_allocated() {
        let mut bytes = Vec::new();
        encode(b"ok", &mut bytes).expect("small record");
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        let scan = scan(&bytes);
        assert_eq!(scan.damage, Some(Damage::TooLong));
        assert_eq!(scan.records.len(), 1);
    }

    #[test]
    fn recover_truncates_a_torn_file_to_its_whole_records() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        let (mut bytes, payloads) = three_records();
        let whole = bytes.len();
        // A fourth record torn mid-payload, as a crash during its write leaves it.
        let mut fourth = Vec::new();
        encode(&[9u8; 100], &mut fourth)?;
        bytes.extend_from_slice(&fourth[..40]);
        write_new(&path, &bytes)?;

        assert_eq!(recover(&path)?, Some((Damage::ShortPayload, 40)));
        assert_eq!(std::fs::metadata(&path)?.len(), whole as u64);
        let (read_back, scan) = read(&path)?;
        assert_eq!(scan.damage, None);
        assert_eq!(payloads_of(&read_back, &scan), payloads);
        assert_eq!(recover(&path)?, None, "a whole file is left as it is");

        // A flipped byte in the last record: that record goes, the others stay.
        let mut garbled = read_back.clone();
        let last = garbled.len() - 1;
        garbled[last] ^= 0x55;
        write_new(&path, &garbled)?;
        assert_eq!(
            recover(&path)?.map(|(damage, _)| damage),
            Some(Damage::Checksum)
        );
        let (read_back, scan) = read(&path)?;
        assert_eq!(payloads_of(&read_back, &scan), payloads[..2].to_vec());
        Ok(())
    }
}
