//! The pipeline: batches deliveries, runs them through the stages, acknowledges after commit.
//!
//! For each batch, in this order: append the raw messages to the archive spool (durable on
//! return), validate them into records, write the records to PostgreSQL in one transaction,
//! and only then acknowledge every message of the batch to the broker, in arrival order.
//! A crash anywhere before the acknowledgement makes the broker deliver the messages again;
//! the store drops what it already has, so each message is stored exactly once.
//!
//! Several batches may be committing at once (one PostgreSQL connection each); batches are
//! acknowledged strictly in order. When PostgreSQL is slow or down, commits are retried with
//! back-off, nothing is acknowledged, and the broker stops sending once every connection has
//! its 100 unacknowledged messages: memory stays bounded and nothing is dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::archive::Archive;
use crate::config::{BatchConfig, PostgresConfig};
use crate::record::{RawMessage, Record};
use crate::source::{now_ms, AckToken, Delivery};
use crate::store::{Store, WriteStats};
use crate::validate::Validator;

/// A batch being committed: its acknowledgements wait for the commit.
struct Commit {
    task: JoinHandle<Store>,
    acks: Vec<AckToken>,
}

/// The stages of the bridge, wired together.
pub struct Pipeline {
    pub batch: BatchConfig,
    pub postgres: PostgresConfig,
    /// Batches committing at once (PostgreSQL connections used).
    pub parallel_commits: usize,
    pub archive: Arc<Archive>,
    pub validator: Validator,
}

impl Pipeline {
    /// Runs until the deliveries channel closes, then finishes the batches in flight.
    pub async fn run(mut self, mut deliveries: mpsc::Receiver<Delivery>) {
        let mut idle: Vec<Store> = Vec::new();
        let mut connections = 0;
        let mut committing: VecDeque<Commit> = VecDeque::new();
        while let Some(batch) = self
            .collect(&mut deliveries, &mut committing, &mut idle)
            .await
        {
            let (messages, acks): (Vec<RawMessage>, Vec<AckToken>) = batch
                .into_iter()
                .map(|delivery| (delivery.message, delivery.ack))
                .unzip();
            self.archive_durably(&messages).await;
            let records: Vec<Record> = messages
                .iter()
                .map(|message| self.validator.validate(message))
                .collect();

            // A free connection: an idle one, a new one, or the oldest commit's when it ends.
            let store = match idle.pop() {
                Some(store) => store,
                None if connections < self.parallel_commits => {
                    connections += 1;
                    connect(&self.postgres).await
                }
                None => match committing.pop_front() {
                    Some(oldest) => match finish(oldest).await {
                        Some(store) => store,
                        None => connect(&self.postgres).await,
                    },
                    None => connect(&self.postgres).await,
                },
            };
            let postgres = self.postgres.clone();
            let task = tokio::spawn(commit(store, records, postgres));
            committing.push_back(Commit { task, acks });
        }
        while let Some(oldest) = committing.pop_front() {
            let _ = finish(oldest).await;
        }
        info!("pipeline stopped");
    }

    /// Waits for the next batch: the first message, then more until the batch is full or
    /// `max_delay_ms` has passed. Meanwhile, finished commits are acknowledged.
    async fn collect(
        &mut self,
        deliveries: &mut mpsc::Receiver<Delivery>,
        committing: &mut VecDeque<Commit>,
        idle: &mut Vec<Store>,
    ) -> Option<Vec<Delivery>> {
        let mut batch = Vec::with_capacity(self.batch.max_messages);
        loop {
            tokio::select! {
                received = deliveries.recv_many(&mut batch, self.batch.max_messages) => {
                    if received == 0 {
                        return None;
                    }
                    break;
                }
                Some(done) = next_done(committing) => idle.push(done),
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.batch.max_delay_ms);
        while batch.len() < self.batch.max_messages {
            let room = self.batch.max_messages - batch.len();
            tokio::select! {
                received = deliveries.recv_many(&mut batch, room) => {
                    if received == 0 {
                        break;
                    }
                }
                Some(done) = next_done(committing) => idle.push(done),
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        metrics::histogram!("bridge_batch_messages").record(batch.len() as f64);
        Some(batch)
    }

    /// Appends to the archive spool, retrying until the local disk takes it.
    async fn archive_durably(&self, messages: &[RawMessage]) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.archive.append(messages).await {
                Ok(()) => return,
                Err(e) => {
                    error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot append to the archive spool");
                    metrics::counter!("bridge_archive_spool_errors_total").increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// The oldest commit's store once it is done and acknowledged; pending forever if there is
/// none, so it can sit in a `select!`. Cancel-safe: nothing happens until the commit is done,
/// and from then on nothing awaits.
async fn next_done(committing: &mut VecDeque<Commit>) -> Option<Store> {
    match committing.front_mut() {
        Some(oldest) => {
            let result = (&mut oldest.task).await;
            let acks = committing.pop_front().map(|c| c.acks).unwrap_or_default();
            acknowledge(acks);
            match result {
                Ok(store) => Some(store),
                Err(e) => {
                    error!(error = %e, "commit task failed");
                    None
                }
            }
        }
        None => std::future::pending().await,
    }
}

/// Waits for a commit, acknowledges its batch and returns its connection.
async fn finish(commit: Commit) -> Option<Store> {
    let store = commit.task.await;
    acknowledge(commit.acks);
    match store {
        Ok(store) => Some(store),
        Err(e) => {
            error!(error = %e, "commit task failed");
            None
        }
    }
}

fn acknowledge(acks: Vec<AckToken>) {
    let count = acks.len() as u64;
    for ack in acks {
        ack.ack();
    }
    metrics::counter!("bridge_messages_acknowledged_total").increment(count);
}

/// Connects to PostgreSQL, retrying with back-off until it answers.
pub async fn connect(config: &PostgresConfig) -> Store {
    let mut backoff = Duration::from_millis(config.min_backoff_ms);
    loop {
        match Store::connect(&config.url).await {
            Ok(store) => return store,
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot connect to PostgreSQL");
                metrics::counter!("bridge_postgres_errors_total").increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(config.max_backoff_ms));
            }
        }
    }
}

/// Writes one batch in one transaction, retrying (reconnecting if needed) until it commits.
async fn commit(mut store: Store, records: Vec<Record>, config: PostgresConfig) -> Store {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(config.min_backoff_ms);
    loop {
        match store.write(&records).await {
            Ok(stats) => {
                record_metrics(&stats, &records, started);
                return store;
            }
            Err(e) => {
                metrics::counter!("bridge_postgres_errors_total").increment(1);
                if e.is_retryable() {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "commit failed; retrying");
                } else {
                    error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "commit refused; retrying (the batch is kept, not acknowledged)");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(config.max_backoff_ms));
                if store.is_closed() {
                    store = connect(&config).await;
                }
            }
        }
    }
}

fn record_metrics(stats: &WriteStats, records: &[Record], started: Instant) {
    metrics::histogram!("bridge_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("bridge_positions_committed_total").increment(stats.positions_inserted);
    metrics::counter!("bridge_duplicates_total").increment(stats.positions_duplicate);
    metrics::counter!("bridge_dead_letters_total").increment(stats.dead_letters);
    let now = now_ms();
    if let Some(oldest) = records.iter().map(received_ms).min() {
        metrics::histogram!("bridge_receive_to_commit_seconds")
            .record((now - oldest).max(0) as f64 / 1000.0);
    }
}

fn received_ms(record: &Record) -> i64 {
    match record {
        Record::Position { received_ms, .. }
        | Record::Tour { received_ms, .. }
        | Record::Ack { received_ms, .. }
        | Record::Status { received_ms, .. } => *received_ms,
        Record::DeadLetter(dead) => dead.received_ms,
    }
}
