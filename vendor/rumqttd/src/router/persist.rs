//! Durable mode's router state beside the logs (PATCHES.md, 21): persistent sessions, shared
//! groups' cursors and retained messages, so that they come back after a crash.
//!
//! Two files in the log directory, each whole records of [`crate::segments::records`],
//! replaced atomically (written to `<name>.tmp`, synced, renamed, directory synced):
//! - `state`: one record per persistent session (client id, expiry interval, subscriptions
//!   with their options), per durable reader's position in a log (client id, log filter,
//!   absolute offset of the oldest message it has not acknowledged) and per shared group
//!   (name, position). Written a few times a second while anything changes: a position
//!   saved late means messages sent again after a crash (never lost: the logs keep every
//!   segment a saved position still needs... or, if it is gone, the reader had acknowledged
//!   it).
//! - `retained`: every retained message. Written in the sync before the PUBACK of a publish
//!   that changed it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::Path;

use bytes::Bytes;

use super::connection::SubscriptionOptions;
use super::logs::PublishData;
use crate::segments::records;
use crate::segments::spill::Spillable;

pub const STATE_FILE: &str = "state";
pub const RETAINED_FILE: &str = "retained";

/// A persistent session as saved.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedSession {
    pub client_id: String,
    /// Session expiry interval in seconds (`u32::MAX`: never).
    pub expiry: u32,
    /// Subscriptions by their full filter (`$share/<group>/<filter>` for a shared one).
    pub subscriptions: Vec<(String, SubscriptionOptions)>,
}

/// The router state of the `state` file.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct State {
    pub sessions: Vec<SavedSession>,
    /// (client id, log filter, absolute offset)
    pub positions: Vec<(String, String, u64)>,
    /// (group name `<share>/<filter>`, absolute offset)
    pub groups: Vec<(String, u64)>,
}

const SESSION: u8 = 1;
const POSITION: u8 = 2;
const GROUP: u8 = 3;

impl State {
    fn encode(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for session in &self.sessions {
            records::encode_with(&mut out, |out| {
                out.push(SESSION);
                put(out, session.client_id.as_bytes());
                out.extend_from_slice(&session.expiry.to_le_bytes());
                out.extend_from_slice(&(session.subscriptions.len() as u32).to_le_bytes());
                for (filter, options) in &session.subscriptions {
                    put(out, filter.as_bytes());
                    out.push(options.qos);
                    out.push(
                        u8::from(options.no_local) | u8::from(options.retain_as_published) << 1,
                    );
                    out.extend_from_slice(&options.id.map_or(0, |id| id as u64).to_le_bytes());
                }
            })?;
        }
        for (client_id, filter, offset) in &self.positions {
            records::encode_with(&mut out, |out| {
                out.push(POSITION);
                put(out, client_id.as_bytes());
                put(out, filter.as_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
            })?;
        }
        for (name, offset) in &self.groups {
            records::encode_with(&mut out, |out| {
                out.push(GROUP);
                put(out, name.as_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
            })?;
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Option<State> {
        let scan = records::scan(bytes);
        if scan.damage.is_some() {
            return None;
        }
        let mut state = State::default();
        for range in scan.records {
            let mut r = Reader(&bytes[range]);
            match r.u8()? {
                SESSION => {
                    let client_id = r.string()?;
                    let expiry = u32::from_le_bytes(r.array()?);
                    let count = u32::from_le_bytes(r.array()?);
                    let mut subscriptions = Vec::new();
                    for _ in 0..count {
                        let filter = r.string()?;
                        let qos = r.u8()?;
                        let flags = r.u8()?;
                        let id = u64::from_le_bytes(r.array()?);
                        subscriptions.push((
                            filter,
                            SubscriptionOptions {
                                qos,
                                no_local: flags & 1 != 0,
                                retain_as_published: flags & 2 != 0,
                                id: (id != 0).then_some(id as usize),
                            },
                        ));
                    }
                    state.sessions.push(SavedSession {
                        client_id,
                        expiry,
                        subscriptions,
                    });
                }
                POSITION => {
                    let client_id = r.string()?;
                    let filter = r.string()?;
                    let offset = u64::from_le_bytes(r.array()?);
                    state.positions.push((client_id, filter, offset));
                }
                GROUP => {
                    let name = r.string()?;
                    let offset = u64::from_le_bytes(r.array()?);
                    state.groups.push((name, offset));
                }
                _ => return None,
            }
            if !r.0.is_empty() {
                return None;
            }
        }
        Some(state)
    }
}

/// Saves `state` in `dir`.
pub fn save_state(dir: &Path, state: &State) -> io::Result<()> {
    replace(dir, STATE_FILE, &state.encode()?)
}

/// The state saved in `dir` (empty if there is none).
pub fn load_state(dir: &Path) -> io::Result<State> {
    match fs::read(dir.join(STATE_FILE)) {
        Ok(bytes) => State::decode(&bytes).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: not a state file of this broker",
                    dir.join(STATE_FILE).display()
                ),
            )
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(State::default()),
        Err(error) => Err(error),
    }
}

/// Saves the retained messages in `dir`.
pub fn save_retained(dir: &Path, retained: &HashMap<String, PublishData>) -> io::Result<()> {
    let mut out = Vec::new();
    for (topic, message) in retained {
        records::encode_with(&mut out, |out| {
            put(out, topic.as_bytes());
            message.encode(out);
        })?;
    }
    replace(dir, RETAINED_FILE, &out)
}

/// The retained messages saved in `dir`.
pub fn load_retained(dir: &Path) -> io::Result<HashMap<String, PublishData>> {
    let bytes = match fs::read(dir.join(RETAINED_FILE)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(error) => return Err(error),
    };
    let bytes = Bytes::from(bytes);
    let scan = records::scan(&bytes);
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: not a retained file of this broker",
                dir.join(RETAINED_FILE).display()
            ),
        )
    };
    if scan.damage.is_some() {
        return Err(bad());
    }
    let mut retained = HashMap::new();
    for range in scan.records {
        let record = bytes.slice(range);
        let mut r = Reader(&record);
        let topic = r.string().ok_or_else(bad)?;
        let rest = record.slice(record.len() - r.0.len()..);
        let message = PublishData::decode(rest).ok_or_else(bad)?;
        retained.insert(topic, message);
    }
    Ok(retained)
}

/// Writes `bytes` as `dir/name` atomically and durably.
fn replace(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    records::write_new(&tmp, bytes)?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, len: usize) -> Option<&[u8]> {
        if self.0.len() < len {
            return None;
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn string(&mut self) -> Option<String> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Publish, QoS};

    #[test]
    fn state_and_retained_messages_come_back_as_saved() {
        let dir = tempfile::tempdir().unwrap();
        let options = SubscriptionOptions {
            qos: 1,
            no_local: true,
            retain_as_published: false,
            id: Some(7),
        };
        let state = State {
            sessions: vec![SavedSession {
                client_id: "bridge.b1-0".into(),
                expiry: u32::MAX,
                subscriptions: vec![("$share/ingest/taxi/+/position".into(), options)],
            }],
            positions: vec![("ops".into(), "taxi/#".into(), 42)],
            groups: vec![("ingest/taxi/+/position".into(), 1234)],
        };
        save_state(dir.path(), &state).unwrap();
        assert_eq!(load_state(dir.path()).unwrap(), state);

        let mut retained = HashMap::new();
        let mut publish = Publish::new("taxi/t1/status", "free", true);
        publish.qos = QoS::AtLeastOnce;
        retained.insert(
            "taxi/t1/status".to_owned(),
            PublishData::from((publish, None)),
        );
        save_retained(dir.path(), &retained).unwrap();
        let back = load_retained(dir.path()).unwrap();
        assert_eq!(back["taxi/t1/status"].publish.payload, "free");
        assert!(back["taxi/t1/status"].publish.retain);
    }

    #[test]
    fn nothing_saved_is_an_empty_state_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_state(dir.path()).unwrap(), State::default());
        assert!(load_retained(dir.path()).unwrap().is_empty());
        fs::write(dir.path().join(STATE_FILE), b"garbage").unwrap();
        let error = load_state(dir.path()).unwrap_err();
        assert!(error.to_string().contains("state"), "{error}");
    }
}
