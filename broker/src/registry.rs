//! The live sessions by client id: one session per id, takeover, and closing on revocation.
//!
//! When a client connects with an id that already has a session, the old session is told to
//! stop and the new one waits until the old one has left the router, so that a persistent
//! session is handed over whole and the status topic ends with the newest state.
//!
//! It also holds the last wills waiting for their delay (MQTT 5 will delay interval): a new
//! connection with the same client id cancels its will (or, with a clean start, which ends
//! the old session, has it published at once).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

/// Why a session was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A newer connection with the same client id.
    TakenOver,
    /// Its certificate was revoked.
    Revoked,
}

struct Entry {
    generation: u64,
    serial: Vec<u8>,
    /// Tells the session to stop; taken by the first reason.
    stop: Option<oneshot::Sender<StopReason>>,
    finished: watch::Receiver<bool>,
}

impl Entry {
    fn stop(&mut self, reason: StopReason) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(reason);
        }
    }
}

/// What becomes of a will waiting for its delay when its client comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WillFate {
    /// The client resumed its session: the will is dropped.
    Cancelled,
    /// The client started a clean session, which ends the old one: the will goes out now.
    PublishNow,
}

/// All live sessions.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Entry>>,
    generations: AtomicU64,
    /// Wills waiting for their delay, by client id.
    wills: Mutex<HashMap<String, (u64, oneshot::Sender<WillFate>)>>,
}

/// A session's membership in the registry.
pub struct Registration {
    pub generation: u64,
    /// Taken by `stopped`.
    stop: Option<oneshot::Receiver<StopReason>>,
    finished: watch::Sender<bool>,
}

impl Registration {
    /// Resolves when the session must stop, with the reason. Made once per session (a
    /// second one never resolves); a session polls it at every wake-up, which a one-shot
    /// channel answers without a lock.
    pub fn stopped(&mut self) -> impl Future<Output = StopReason> + use<> {
        let stop = self.stop.take();
        async move {
            match stop {
                Some(stop) => match stop.await {
                    Ok(reason) => reason,
                    // Left the registry without being told to stop: nothing will tell it.
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        }
    }

    /// Marks the session as gone from the router.
    pub fn finish(&self) {
        self.finished.send_replace(true);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.finished.send_replace(true);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Registry {
    /// Registers a new session for `client_id`, stopping any older one and waiting (at most
    /// `wait`) until it has finished.
    /// A will waiting for its delay is cancelled, or published now if `clean_start`.
    pub async fn register(
        &self,
        client_id: &str,
        serial: &[u8],
        wait: Duration,
        clean_start: bool,
    ) -> Registration {
        if let Some((_, will)) = lock(&self.wills).remove(client_id) {
            let fate = if clean_start {
                WillFate::PublishNow
            } else {
                WillFate::Cancelled
            };
            let _ = will.send(fate);
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let (finished_tx, finished_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = oneshot::channel();
        let entry = Entry {
            generation,
            serial: serial.to_vec(),
            stop: Some(stop_tx),
            finished: finished_rx,
        };
        let previous = lock(&self.sessions).insert(client_id.to_owned(), entry);
        if let Some(mut previous) = previous {
            previous.stop(StopReason::TakenOver);
            let mut finished = previous.finished;
            let _ = tokio::time::timeout(wait, finished.wait_for(|done| *done)).await;
        }
        Registration {
            generation,
            stop: Some(stop_rx),
            finished: finished_tx,
        }
    }

    /// Is `generation` still the newest session of `client_id`?
    pub fn is_current(&self, client_id: &str, generation: u64) -> bool {
        lock(&self.sessions)
            .get(client_id)
            .is_some_and(|entry| entry.generation == generation)
    }

    /// Removes the session if it is still the newest one of `client_id`.
    pub fn unregister(&self, client_id: &str, generation: u64) {
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(client_id)
            .is_some_and(|entry| entry.generation == generation)
        {
            sessions.remove(client_id);
        }
    }

    /// Stops every session whose certificate has one of these serial numbers.
    pub fn stop_revoked(&self, serials: &[Vec<u8>]) -> usize {
        let mut sessions = lock(&self.sessions);
        let mut stopped = 0;
        for entry in sessions.values_mut() {
            if serials.contains(&entry.serial) {
                entry.stop(StopReason::Revoked);
                stopped += 1;
            }
        }
        stopped
    }

    /// Holds a will of `client_id` until its delay is over: the receiver learns if the client
    /// comes back first. `token` identifies this will for [`Registry::will_done`].
    pub fn defer_will(&self, client_id: &str, token: u64) -> oneshot::Receiver<WillFate> {
        let (tx, rx) = oneshot::channel();
        lock(&self.wills).insert(client_id.to_owned(), (token, tx));
        rx
    }

    /// Forgets the will `token` of `client_id` as its delay is over; false if a connection of
    /// that client id has taken it first (and told it what becomes of it).
    pub fn will_done(&self, client_id: &str, token: u64) -> bool {
        let mut wills = lock(&self.wills);
        if wills.get(client_id).is_some_and(|(t, _)| *t == token) {
            wills.remove(client_id);
            return true;
        }
        false
    }

    /// A number for a deferred will, unique in this process.
    pub fn next_token(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
