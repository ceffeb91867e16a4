//! The raw archive: every message the bridge receives, kept byte for byte in S3-compatible
//! object storage so that it can be reprocessed later.
//!
//! [`Archive::append`] writes messages to a local spool and fsyncs before it returns: from then
//! on they survive a crash or power loss, and the pipeline may acknowledge them. Spool segments
//! are rolled by size or age and uploaded in the background, one object per segment, class and
//! hour; while S3 is unreachable they simply wait in the spool, and appends are not slowed down.
//! The archive is at least once: a message the broker redelivers is archived again.
//!
//! - [`spool`]: segment files, framing, crash recovery;
//! - [`object`]: object keys and content (gzip JSON lines), writer and reader;
//! - `uploader`: the background task that uploads closed segments;
//! - [`s3`]: the S3 client and the reading side (listing by class and time, fetching);
//! - [`embedded`]: an S3-compatible server over a local directory.

pub mod embedded;
pub mod object;
pub mod s3;
pub mod spool;
mod uploader;

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

pub use embedded::{start_embedded, EmbeddedS3};
pub use object::{decode_object, encode_object, object_key, Class};
pub use s3::{get_object, list_objects, read_messages};

use crate::config::ArchiveConfig;
use crate::record::RawMessage;
use spool::{Segment, Spool};

/// The raw archive of one bridge: a durable local spool and its background uploader.
///
/// Dropping it stops the background tasks (and the embedded server); whatever was not uploaded
/// stays in the spool and is uploaded by the next [`Archive::open`].
pub struct Archive {
    spool: Arc<tokio::sync::Mutex<Spool>>,
    shared: Arc<Shared>,
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    roll_bytes: u64,
    _tasks: [AbortOnDrop; 2],
    _embedded: Option<EmbeddedS3>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("pending_segments", &self.pending_segments())
            .finish_non_exhaustive()
    }
}

impl Archive {
    /// Opens the spool in `spool_dir` (segments left by an earlier run are queued for upload),
    /// connects to S3 and starts uploading. Nothing here needs S3 to be reachable.
    ///
    /// With `embedded = true` and an empty `endpoint`, the embedded server is started here (and
    /// stopped with the archive); with an `endpoint` set, it is used as is (e.g. an embedded
    /// server the caller started, with its credentials).
    pub async fn open(
        config: &ArchiveConfig,
        spool_dir: PathBuf,
        bridge_id: &str,
    ) -> anyhow::Result<Archive> {
        let (client, endpoint, embedded) = connect(config).await?;

        let dir = spool_dir.clone();
        let id = bridge_id.to_owned();
        let (spool, recovered) = tokio::task::spawn_blocking(move || Spool::open(&dir, &id))
            .await
            .context("opening the archive spool")?
            .with_context(|| format!("opening the archive spool {}", spool_dir.display()))?;
        if !recovered.is_empty() {
            tracing::info!(
                segments = recovered.len(),
                records = recovered.iter().map(|s| s.records).sum::<u64>(),
                "archive segments of an earlier run queued for upload"
            );
        }

        let shared = Arc::new(Shared::new());
        for segment in recovered {
            shared.enqueue(segment);
        }
        shared.publish_gauges(&shared.state());
        let spool = Arc::new(tokio::sync::Mutex::new(spool));
        let uploader = uploader::Uploader::new(
            client.clone(),
            config.bucket.clone(),
            config.prefix.clone(),
            Duration::from_millis(config.min_backoff_ms),
            Duration::from_millis(config.max_backoff_ms),
            shared.clone(),
        );
        let uploader = AbortOnDrop(tokio::spawn(uploader.run()));
        let roller = AbortOnDrop(tokio::spawn(roll_timer(
            Arc::downgrade(&spool),
            shared.clone(),
            Duration::from_millis(config.roll_interval_ms),
        )));
        Ok(Archive {
            spool,
            shared,
            client,
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            endpoint,
            roll_bytes: config.roll_bytes,
            _tasks: [uploader, roller],
            _embedded: embedded,
        })
    }

    /// Appends the messages to the spool with one fsync: when this returns `Ok` they survive a
    /// crash or power loss. Never waits for S3. Callers should batch. After an error the
    /// messages may or may not be in the archive; the next call starts a new segment.
    pub async fn append(&self, messages: &[RawMessage]) -> io::Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let messages = messages.to_vec();
        let mut spool = self.spool.clone().lock_owned().await;
        let shared = self.shared.clone();
        let roll_bytes = self.roll_bytes;
        tokio::task::spawn_blocking(move || {
            let result = spool.append(&messages);
            if result.is_ok() {
                metrics::counter!("bridge_archive_records_total").increment(messages.len() as u64);
            }
            if spool.needs_roll(roll_bytes) {
                if let Some(segment) = spool.close() {
                    shared.enqueue(segment);
                }
            }
            shared.sync_open(&spool);
            result
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
    }

    /// Segments in the spool not uploaded yet, the open one included.
    pub fn pending_segments(&self) -> usize {
        let state = self.shared.state();
        state.queue.len() + usize::from(state.open.is_some())
    }

    /// Receive time of the oldest message not uploaded yet; `None` when everything is
    /// uploaded. Messages received before it are safely archived.
    pub fn oldest_pending_received_ms(&self) -> Option<i64> {
        let state = self.shared.state();
        state
            .queue
            .iter()
            .filter_map(|(segment, _)| segment.min_received_ms)
            .chain(state.open.as_ref().and_then(|o| o.min_received_ms))
            .min()
    }

    /// Closes the open segment and waits until it and every segment before it are uploaded.
    /// Waits as long as S3 is unreachable: bound it with a timeout.
    pub async fn flush(&self) -> anyhow::Result<()> {
        roll(&self.spool, &self.shared, None).await;
        let target = self.shared.state().enqueued;
        let mut uploaded = self.shared.uploaded.subscribe();
        uploaded
            .wait_for(|&done| done >= target)
            .await
            .map_err(|_| anyhow!("the archive uploader stopped"))?;
        Ok(())
    }

    /// The S3 client used for uploads (for reading the archive back).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The S3 endpoint, when not AWS's default (e.g. the embedded server's).
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }
}

/// The S3 client, its endpoint, and the embedded server when configured.
async fn connect(
    config: &ArchiveConfig,
) -> anyhow::Result<(aws_sdk_s3::Client, Option<String>, Option<EmbeddedS3>)> {
    // An endpoint already set wins: the caller may have started the embedded server itself.
    if !config.embedded || !config.endpoint.trim().is_empty() {
        let endpoint = Some(config.endpoint.trim().to_owned()).filter(|e| !e.is_empty());
        return Ok((s3::client(config, None).await, endpoint, None));
    }
    let mut with_credentials = config.clone();
    with_credentials.access_key_id = embedded::ACCESS_KEY_ID.to_owned();
    with_credentials.secret_access_key = embedded::SECRET_ACCESS_KEY.to_owned();
    if with_credentials.region.is_empty() {
        with_credentials.region = "us-east-1".to_owned();
    }
    match start_embedded(&config.embedded_dir, config.embedded_listen).await {
        Ok(server) => {
            let endpoint = server.endpoint.clone();
            let client = s3::client(&with_credentials, Some(endpoint.clone())).await;
            Ok((client, Some(endpoint), Some(server)))
        }
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::AddrInUse) =>
        {
            // Another bridge on this machine already serves the embedded store: share it.
            let endpoint = format!("http://{}", config.embedded_listen);
            tracing::warn!(
                %endpoint,
                "embedded S3 address in use; archiving to the server already listening there"
            );
            let client = s3::client(&with_credentials, Some(endpoint.clone())).await;
            Ok((client, Some(endpoint), None))
        }
        Err(e) => Err(e.context("starting the embedded S3 server")),
    }
}

/// Closes the open segment (if `older_than` is set, only if it is at least that old) and
/// queues it for upload.
async fn roll(spool: &tokio::sync::Mutex<Spool>, shared: &Shared, older_than: Option<Duration>) {
    let mut spool = spool.lock().await;
    let due = match (spool.current(), older_than) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some((_, opened_at)), Some(age)) => opened_at.elapsed() >= age,
    };
    if due {
        if let Some(segment) = spool.close() {
            shared.enqueue(segment);
        }
    }
    shared.sync_open(&spool);
}

/// Rolls the open segment `interval` after it was created, also when no appends come.
async fn roll_timer(
    spool: Weak<tokio::sync::Mutex<Spool>>,
    shared: Arc<Shared>,
    interval: Duration,
) {
    loop {
        let opened_at = shared.state().open.as_ref().map(|o| o.opened_at);
        match opened_at {
            None => shared.roll_wake.notified().await,
            Some(opened_at) => {
                let due = opened_at + interval;
                if Instant::now() < due {
                    tokio::select! {
                        () = tokio::time::sleep_until(due.into()) => {}
                        () = shared.roll_wake.notified() => {}
                    }
                    continue;
                }
                let Some(spool) = spool.upgrade() else { return };
                roll(&spool, &shared, Some(interval)).await;
            }
        }
    }
}

/// State shared by the archive handle and its background tasks.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// A segment was queued.
    upload_wake: Notify,
    /// A new segment was opened.
    roll_wake: Notify,
    /// Queue position of the last segment uploaded.
    uploaded: watch::Sender<u64>,
}

struct State {
    open: Option<OpenInfo>,
    /// Closed segments not uploaded yet, with their queue positions (1, 2, ...).
    queue: VecDeque<(Segment, u64)>,
    /// Segments queued so far (the position of the last one).
    enqueued: u64,
}

struct OpenInfo {
    bytes: u64,
    min_received_ms: Option<i64>,
    opened_at: Instant,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            state: Mutex::new(State {
                open: None,
                queue: VecDeque::new(),
                enqueued: 0,
            }),
            upload_wake: Notify::new(),
            roll_wake: Notify::new(),
            uploaded: watch::Sender::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enqueue(&self, segment: Segment) {
        let mut state = self.state();
        state.enqueued += 1;
        let position = state.enqueued;
        state.queue.push_back((segment, position));
        self.publish_gauges(&state);
        drop(state);
        self.upload_wake.notify_one();
    }

    /// The next segment to upload and its queue position.
    fn front(&self) -> Option<(Segment, u64)> {
        self.state().queue.front().cloned()
    }

    /// The segment at `position` is uploaded (or given up).
    fn uploaded(&self, position: u64) {
        let mut state = self.state();
        if state.queue.front().is_some_and(|(_, p)| *p == position) {
            state.queue.pop_front();
        }
        self.publish_gauges(&state);
        drop(state);
        self.uploaded.send_replace(position);
    }

    /// Mirrors the spool's open segment.
    fn sync_open(&self, spool: &Spool) {
        let mut state = self.state();
        let was_open = state.open.is_some();
        state.open = spool.current().map(|(segment, opened_at)| OpenInfo {
            bytes: segment.bytes,
            min_received_ms: segment.min_received_ms,
            opened_at,
        });
        let opened = !was_open && state.open.is_some();
        self.publish_gauges(&state);
        drop(state);
        if opened {
            self.roll_wake.notify_one();
        }
    }

    fn publish_gauges(&self, state: &State) {
        let segments = state.queue.len() + usize::from(state.open.is_some());
        let bytes: u64 = state.queue.iter().map(|(s, _)| s.bytes).sum::<u64>()
            + state.open.as_ref().map_or(0, |o| o.bytes);
        metrics::gauge!("bridge_archive_spool_segments").set(segments as f64);
        metrics::gauge!("bridge_archive_spool_bytes").set(bytes as f64);
    }
}

/// A task aborted when this is dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
