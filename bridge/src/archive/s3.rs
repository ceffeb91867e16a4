//! The S3 client of the archive, and reading the archive back for replay.
//!
//! The client works with AWS and with S3-compatible stores: path-style addressing whenever an
//! endpoint is set, checksums only where the API requires them, static credentials from the
//! configuration or else the AWS default chain.

use std::time::Duration;

use anyhow::{anyhow, Context};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;

use super::object::{class_prefix, decode_object, parse_partition, partition, Class};
use crate::config::ArchiveConfig;
use crate::record::RawMessage;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
const MS_PER_HOUR: i64 = 3_600_000;

/// An S3 client for the archive. `endpoint_override` (e.g. the embedded server) wins over
/// `config.endpoint`; with neither, AWS's endpoint for the region is used.
pub async fn client(config: &ArchiveConfig, endpoint_override: Option<String>) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        // A few quick retries for reads; the uploader retries on its own, forever.
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(100))
                .with_max_backoff(Duration::from_secs(2)),
        );
    if !config.region.is_empty() {
        loader = loader.region(Region::new(config.region.clone()));
    }
    if !config.access_key_id.is_empty() {
        loader = loader.credentials_provider(Credentials::new(
            config.access_key_id.clone(),
            config.secret_access_key.clone(),
            None,
            None,
            "archive-config",
        ));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    let endpoint = endpoint_override.or_else(|| {
        let configured = config.endpoint.trim();
        (!configured.is_empty()).then(|| configured.to_owned())
    });
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint).force_path_style(true);
    }
    Client::from_conf(builder.build())
}

/// Keys of the archive objects of `classes` whose hour partition overlaps
/// `[from_ms, to_ms)`, by class (in the given order) then key. Keys under the prefix that do
/// not have the archive's shape are skipped.
pub async fn list_objects(
    client: &Client,
    bucket: &str,
    prefix: &str,
    classes: &[Class],
    from_ms: i64,
    to_ms: i64,
) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    if from_ms >= to_ms {
        return Ok(keys);
    }
    for &class in classes {
        let base = class_prefix(prefix, class);
        // Keys sort by date: start at the first day of the range, stop after the last one.
        let first_day = partition(from_ms);
        let first_day = first_day.split('/').next().unwrap_or_default();
        let mut pages = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&base)
            .start_after(format!("{base}{first_day}"))
            .into_paginator()
            .send();
        'pages: while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| anyhow!("listing s3://{bucket}/{base}: {}", describe(&e)))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let Some(hour) = key.strip_prefix(&base).and_then(parse_partition) else {
                    continue;
                };
                if hour >= to_ms {
                    // Later keys are in this or later days; only this day can still match
                    // (hours sort within a day).
                    if hour - hour.rem_euclid(86_400_000) >= to_ms {
                        break 'pages;
                    }
                    continue;
                }
                if hour + MS_PER_HOUR > from_ms {
                    keys.push(key.to_owned());
                }
            }
        }
    }
    Ok(keys)
}

/// The content of one object.
pub async fn get_object(client: &Client, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
    let output = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| anyhow!("reading s3://{bucket}/{key}: {}", describe(&e)))?;
    let body = output
        .body
        .collect()
        .await
        .with_context(|| format!("reading the body of s3://{bucket}/{key}"))?;
    Ok(body.into_bytes().to_vec())
}

/// Every archived message of `classes` received in `[from_ms, to_ms)`, object by object in
/// key order, each object in its write order. A message archived twice (redelivered by the
/// broker) appears twice.
pub async fn read_messages(
    client: &Client,
    bucket: &str,
    prefix: &str,
    classes: &[Class],
    from_ms: i64,
    to_ms: i64,
) -> anyhow::Result<Vec<RawMessage>> {
    let mut messages = Vec::new();
    for key in list_objects(client, bucket, prefix, classes, from_ms, to_ms).await? {
        let object = get_object(client, bucket, &key).await?;
        let decoded =
            decode_object(&object).with_context(|| format!("decoding s3://{bucket}/{key}"))?;
        messages.extend(
            decoded
                .into_iter()
                .filter(|m| (from_ms..to_ms).contains(&m.received_ms)),
        );
    }
    Ok(messages)
}

/// A one-line reason for a failed S3 call: the service's error code and message (with the
/// HTTP status), or the chain of causes of a connection failure or timeout.
pub fn describe<E>(error: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let SdkError::ServiceError(service) = error {
        let err = service.err();
        let mut reason = err.code().unwrap_or("unknown error").to_owned();
        if let Some(message) = err.message() {
            reason.push_str(": ");
            reason.push_str(message);
        }
        reason.push_str(&format!(" (HTTP {})", service.raw().status().as_u16()));
        return reason;
    }
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !reason.ends_with(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = cause.source();
    }
    reason
}
