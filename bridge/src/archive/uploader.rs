//! The background uploader: closed spool segments, in order, into archive objects.
//!
//! Each segment is split by class and hour ([`group_by_object`]) and every object is put with
//! PutObject; the segment file is deleted only once all of its objects are stored. Failures are
//! logged and retried forever with exponential back-off and jitter; keys are deterministic, so
//! a retry (or a re-upload after a crash) overwrites the same objects. The bucket is created
//! when it does not exist.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_sdk_s3::Client;
use bytes::Bytes;
use rand::Rng;

use super::object::{encode_object, group_by_object, object_key};
use super::s3::describe;
use super::spool::{read_segment, Segment};
use super::Shared;
use crate::record::RawMessage;

pub(crate) struct Uploader {
    pub client: Client,
    pub bucket: String,
    pub prefix: String,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub shared: Arc<Shared>,
    /// Whether the bucket is known to exist (or cannot be created by us: then we just try).
    bucket_ready: bool,
}

impl Uploader {
    pub fn new(
        client: Client,
        bucket: String,
        prefix: String,
        min_backoff: Duration,
        max_backoff: Duration,
        shared: Arc<Shared>,
    ) -> Uploader {
        Uploader {
            client,
            bucket,
            prefix,
            min_backoff,
            max_backoff,
            shared,
            bucket_ready: false,
        }
    }

    /// Uploads queued segments until the task is aborted.
    pub async fn run(mut self) {
        loop {
            let next = self.shared.front();
            match next {
                Some((segment, position)) => {
                    self.upload_segment(&segment).await;
                    self.shared.uploaded(position);
                }
                None => self.shared.upload_wake.notified().await,
            }
        }
    }

    async fn upload_segment(&mut self, segment: &Segment) {
        let Some(messages) = self.read(segment).await else {
            return;
        };
        for ((class, hour), messages) in group_by_object(messages) {
            let key = object_key(&self.prefix, class, hour, &segment.bridge_id, segment.seq);
            let body = match tokio::task::spawn_blocking(move || encode_object(&messages)).await {
                Ok(body) => Bytes::from(body),
                Err(e) => {
                    // Only a panic gets here; keep the segment for the next start.
                    tracing::error!(%key, error = %e, "encoding an archive object failed");
                    return;
                }
            };
            let mut attempt = 0u32;
            loop {
                match self.put(&key, body.clone()).await {
                    Ok(()) => {
                        metrics::counter!("bridge_archive_objects_uploaded_total").increment(1);
                        tracing::debug!(%key, bytes = body.len(), "archive object uploaded");
                        break;
                    }
                    Err(reason) => {
                        metrics::counter!("bridge_archive_upload_failures_total").increment(1);
                        let delay = backoff(attempt, self.min_backoff, self.max_backoff);
                        tracing::warn!(
                            bucket = %self.bucket,
                            %key,
                            attempt = attempt + 1,
                            retry_in_ms = delay.as_millis() as u64,
                            error = %reason,
                            "archive upload failed; the segment stays in the spool"
                        );
                        tokio::time::sleep(delay).await;
                        attempt = attempt.saturating_add(1);
                    }
                }
            }
        }
        let path = segment.path.clone();
        match tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
            // Left in place, it is uploaded again (to the same keys) at the next start.
            Ok(Err(e)) => {
                tracing::warn!(path = %segment.path.display(), error = %e, "could not delete an uploaded archive segment")
            }
            Err(e) => tracing::warn!(error = %e, "deleting an uploaded archive segment failed"),
        }
    }

    /// The records of a segment; `None` if it is gone or unreadable for good.
    async fn read(&self, segment: &Segment) -> Option<Vec<RawMessage>> {
        let mut attempt = 0u32;
        loop {
            let path = segment.path.clone();
            let result = tokio::task::spawn_blocking(move || read_segment(&path))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
            match result {
                Ok(messages) => return Some(messages),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(path = %segment.path.display(), "archive segment vanished before upload");
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::error!(path = %segment.path.display(), error = %e, "archive segment unreadable; left in the spool");
                    return None;
                }
                Err(e) => {
                    let delay = backoff(attempt, self.min_backoff, self.max_backoff);
                    tracing::warn!(path = %segment.path.display(), error = %e, retry_in_ms = delay.as_millis() as u64, "reading an archive segment failed");
                    tokio::time::sleep(delay).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    async fn put(&mut self, key: &str, body: Bytes) -> Result<(), String> {
        if !self.bucket_ready {
            self.ensure_bucket().await?;
        }
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/gzip")
            .body(ByteStream::from(body))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let no_bucket = e
                    .as_service_error()
                    .and_then(|se| aws_sdk_s3::error::ProvideErrorMetadata::code(se))
                    == Some("NoSuchBucket");
                if no_bucket {
                    self.bucket_ready = false;
                }
                Err(describe(&e))
            }
        }
    }

    /// Creates the bucket unless it exists. Errors other than "unreachable" are not fatal: the
    /// bucket may exist while we lack the right to create buckets.
    async fn ensure_bucket(&mut self) -> Result<(), String> {
        let mut request = self.client.create_bucket().bucket(&self.bucket);
        let region = self.client.config().region().map(|r| r.as_ref().to_owned());
        if let Some(region) = region.filter(|r| r != "us-east-1") {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, "archive bucket created");
                self.bucket_ready = true;
                Ok(())
            }
            Err(e) => match e.as_service_error() {
                Some(se)
                    if se.is_bucket_already_owned_by_you() || se.is_bucket_already_exists() =>
                {
                    self.bucket_ready = true;
                    Ok(())
                }
                Some(_) => {
                    tracing::debug!(bucket = %self.bucket, error = %describe(&e), "cannot create the archive bucket; assuming it exists");
                    self.bucket_ready = true;
                    Ok(())
                }
                None => Err(format!("creating bucket {}: {}", self.bucket, describe(&e))),
            },
        }
    }
}

/// Delay before retry `attempt` (0-based): `min * 2^attempt`, at most `max`, with jitter
/// (between half and all of it).
pub(crate) fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let min_ms = min.as_millis().max(1) as u64;
    let max_ms = (max.as_millis() as u64).max(min_ms);
    let base = min_ms.saturating_mul(1u64 << attempt.min(32)).min(max_ms);
    Duration::from_millis(rand::rng().random_range(base / 2..=base).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(1_000));
        for attempt in 0..100 {
            let d = backoff(attempt, min, max);
            let base = (100u64 << attempt.min(20)).min(1_000);
            assert!(d >= Duration::from_millis(base / 2) && d <= Duration::from_millis(base));
        }
        assert!(backoff(0, Duration::ZERO, Duration::ZERO) >= Duration::from_millis(1));
    }
}
