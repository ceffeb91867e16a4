//! Where the readers of both formats hand their rows: a trip that passes its checks goes to
//! its day's Parquet file ([`super::output`]), any other row to the rejects, which travel in
//! chunks to PostgreSQL while reading goes on. Counts by reason as it goes. Each reader
//! thread has its own intake; their counts are added up at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::anyhow;

use super::day_writers::DayFile;
use super::nyc_time::NewYorkClock;
use super::output::Output;
use super::trip::{Problem, Reason, Trip};

/// Rejected rows sent to PostgreSQL at once.
const REJECT_CHUNK: usize = 2_000;
/// Longest raw text kept for a rejected row.
const RAW_LIMIT: usize = 8 * 1024;

/// The error of a reader stopped because the import was given up elsewhere: that other
/// error is the one to report.
#[derive(Debug, thiserror::Error)]
#[error("the import was stopped")]
pub(crate) struct Stopped;

/// A row that did not enter the lake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// CSV: the line the row starts on. Parquet: the row's number, from 1.
    pub line: i64,
    pub reason: Reason,
    /// What was wrong, naming the column.
    pub detail: String,
    /// The row as text: the CSV fields joined by commas, or `column=value` pairs.
    pub raw: String,
}

/// Rows read by one reader (or all of them, added up).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counted {
    pub rows: u64,
    pub rejected: [u64; Reason::ALL.len()],
}

impl Counted {
    pub(crate) fn add(&mut self, other: Counted) {
        self.rows += other.rows;
        for (total, count) in self.rejected.iter_mut().zip(other.rejected) {
            *total += count;
        }
    }
}

/// What reading a file produced.
#[derive(Debug)]
pub(crate) struct Intook {
    pub counted: Counted,
    pub files: Vec<DayFile>,
}

pub(crate) struct Intake {
    pub clock: NewYorkClock,
    output: Output,
    rejects: tokio::sync::mpsc::Sender<Vec<Rejected>>,
    pending: Vec<Rejected>,
    cancel: Arc<AtomicBool>,
    pub rows: u64,
    pub rejected: [u64; Reason::ALL.len()],
}

impl Intake {
    pub(crate) fn new(
        output: Output,
        rejects: tokio::sync::mpsc::Sender<Vec<Rejected>>,
        cancel: Arc<AtomicBool>,
    ) -> anyhow::Result<Intake> {
        Ok(Intake {
            clock: NewYorkClock::new()?,
            output,
            rejects,
            pending: Vec::new(),
            cancel,
            rows: 0,
            rejected: [0; Reason::ALL.len()],
        })
    }

    /// Rows read so far, accepted or not.
    pub(crate) fn seen(&self) -> u64 {
        self.rows + self.rejected.iter().sum::<u64>()
    }

    /// Stops early when the import was given up elsewhere (a database error, or another
    /// reader of the same file that failed).
    pub(crate) fn check_cancelled(&self) -> anyhow::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Stopped.into());
        }
        Ok(())
    }

    /// Tells every reader of this import to stop (this one failed).
    pub(crate) fn cancel_all(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// A parsed trip: into the lake if it passes its checks, else rejected.
    pub(crate) fn trip(&mut self, trip: &Trip, raw: impl FnOnce() -> String) -> anyhow::Result<()> {
        match trip.check() {
            Ok(()) => {
                self.rows += 1;
                self.output.push(trip)
            }
            Err(problem) => self.reject(trip.line, problem, raw),
        }
    }

    /// A row that cannot enter the lake.
    pub(crate) fn reject(
        &mut self,
        line: i64,
        problem: Problem,
        raw: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        self.rejected[problem.reason.index()] += 1;
        self.pending.push(Rejected {
            line,
            reason: problem.reason,
            detail: clean(problem.detail),
            raw: clean(raw()),
        });
        if self.pending.len() >= REJECT_CHUNK {
            self.send_rejects()?;
        }
        Ok(())
    }

    fn send_rejects(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.pending);
        self.rejects
            .blocking_send(chunk)
            .map_err(|_| anyhow!("the rejected rows can no longer be stored"))
    }

    /// Sends the last rejects and the last rows.
    pub(crate) fn finish(mut self) -> anyhow::Result<Counted> {
        self.send_rejects()?;
        self.output.finish()?;
        Ok(Counted {
            rows: self.rows,
            rejected: self.rejected,
        })
    }
}

/// PostgreSQL text holds no NUL; a raw row is kept up to [`RAW_LIMIT`] bytes.
fn clean(mut text: String) -> String {
    if text.len() > RAW_LIMIT {
        let mut end = RAW_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("…(truncated)");
    }
    if text.contains('\0') {
        text = text.replace('\0', "\u{fffd}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_storable() {
        assert_eq!(clean("a\0b".to_owned()), "a\u{fffd}b");
        let long = clean("é".repeat(RAW_LIMIT));
        assert!(long.len() < RAW_LIMIT + 20 && long.ends_with("(truncated)"));
    }
}
