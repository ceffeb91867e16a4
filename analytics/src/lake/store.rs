//! The lake's object store: one S3 client for reading and writing objects (`object_store`,
//! which DataFusion reads through too) and, because `object_store` cannot create buckets, the
//! archive's S3 client for creating the bucket on first use. Also the lake's key layout.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use tokio::sync::OnceCell;

use super::LakeConfig;

/// An S3 store and what it takes to create its bucket.
pub(crate) struct Store {
    pub(crate) config: LakeConfig,
    pub(crate) objects: Arc<dyn ObjectStore>,
    bucket_ready: OnceCell<()>,
}

impl Store {
    /// Builds the clients; nothing is sent yet.
    pub(crate) fn new(config: &LakeConfig) -> anyhow::Result<Store> {
        let endpoint = config.endpoint.trim();
        let mut builder = if config.access_key_id.trim().is_empty() {
            // AWS_* variables, web identity, instance metadata.
            AmazonS3Builder::from_env()
        } else {
            AmazonS3Builder::new()
                .with_access_key_id(config.access_key_id.trim())
                .with_secret_access_key(config.secret_access_key.trim())
        };
        builder = builder.with_bucket_name(config.bucket.trim());
        if !config.region.trim().is_empty() {
            builder = builder.with_region(config.region.trim());
        }
        if !endpoint.is_empty() {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        // The body's SHA-256 in the signature costs a pass over every uploaded file (a tenth
        // of an import's time). Skipped where the transport already protects the body: TLS,
        // or a server on this machine; kept for plain HTTP to another host.
        builder = builder.with_unsigned_payload(body_is_protected(endpoint));
        let min_backoff = Duration::from_millis(config.min_backoff_ms);
        let builder = builder
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_connect_timeout(Duration::from_millis(config.connect_timeout_ms))
                    .with_timeout(Duration::from_millis(config.request_timeout_ms)),
            )
            // A few quick retries of each request; publishing retries whole files on top.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: min_backoff,
                    max_backoff: min_backoff * 4,
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_millis(config.request_timeout_ms),
            });
        let objects = builder.build().with_context(|| {
            format!(
                "lake: cannot build the S3 client for bucket {} at {}",
                config.bucket,
                config.endpoint_name()
            )
        })?;
        Ok(Store {
            config: config.clone(),
            objects: Arc::new(objects),
            bucket_ready: OnceCell::new(),
        })
    }

    /// `s3://<bucket>`, the URL the store is registered under in DataFusion.
    pub(crate) fn bucket_url(&self) -> String {
        format!("s3://{}", self.config.bucket.trim())
    }

    /// `<prefix>/<dataset>` (no trailing slash).
    pub(crate) fn dataset_prefix(&self, dataset: &str) -> String {
        match self.config.clean_prefix() {
            "" => dataset.to_owned(),
            prefix => format!("{prefix}/{dataset}"),
        }
    }

    /// `<prefix>/<dataset>/dt=<day>` (no trailing slash).
    pub(crate) fn day_prefix(&self, dataset: &str, day: jiff::civil::Date) -> ObjectPath {
        ObjectPath::from(format!(
            "{}/dt={}",
            self.dataset_prefix(dataset),
            day.strftime("%Y-%m-%d")
        ))
    }

    /// `<prefix>/<dataset>/dt=<day>/<part>.parquet`.
    pub(crate) fn part_key(&self, dataset: &str, day: jiff::civil::Date, part: &str) -> ObjectPath {
        self.day_prefix(dataset, day)
            .join(format!("{part}.parquet").as_str())
    }

    /// `s3://<bucket>/<key>`, for messages.
    pub(crate) fn url_of(&self, key: &ObjectPath) -> String {
        format!("{}/{key}", self.bucket_url())
    }

    /// Creates the bucket unless it exists, once per process. An error other than "cannot
    /// reach the store" is not fatal: the bucket may exist while we may not create buckets.
    pub(crate) async fn ensure_bucket(&self) -> anyhow::Result<()> {
        self.bucket_ready
            .get_or_try_init(|| self.create_bucket())
            .await
            .map(|_| ())
    }

    async fn create_bucket(&self) -> anyhow::Result<()> {
        let client = bridge::archive::s3::client(&self.archive_config(), None).await;
        let bucket = self.config.bucket.trim();
        let mut request = client.create_bucket().bucket(bucket);
        let region = self.config.region.trim();
        if !region.is_empty() && region != "us-east-1" {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => {
                tracing::info!(bucket, "lake bucket created");
                Ok(())
            }
            Err(e) => match e.as_service_error() {
                Some(se)
                    if se.is_bucket_already_owned_by_you() || se.is_bucket_already_exists() =>
                {
                    Ok(())
                }
                Some(_) => {
                    tracing::debug!(bucket, error = %bridge::archive::s3::describe(&e), "cannot create the lake bucket; assuming it exists");
                    Ok(())
                }
                None => Err(anyhow!(
                    "lake: creating bucket {bucket} at {}: {}",
                    self.config.endpoint_name(),
                    bridge::archive::s3::describe(&e)
                )),
            },
        }
    }

    /// The archive's client settings, with the lake's endpoint, bucket and credentials.
    fn archive_config(&self) -> bridge::config::ArchiveConfig {
        let mut archive = bridge::Config::default().archive;
        archive.endpoint = self.config.endpoint.trim().to_owned();
        archive.embedded = false;
        archive.bucket = self.config.bucket.trim().to_owned();
        archive.region = self.config.region.trim().to_owned();
        archive.access_key_id = self.config.access_key_id.trim().to_owned();
        archive.secret_access_key = self.config.secret_access_key.trim().to_owned();
        archive.prefix = self.config.clean_prefix().to_owned();
        archive
    }
}

/// Whether the transport to `endpoint` protects a request's body on its own: HTTPS (AWS
/// itself when no endpoint is set), or plain HTTP to this machine.
fn body_is_protected(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return true;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::body_is_protected;

    #[test]
    fn only_plain_http_to_another_host_signs_the_body() {
        for endpoint in [
            "",
            "https://s3.example.com",
            "http://127.0.0.1:9000",
            "http://localhost:9000/",
            "http://[::1]:9000",
        ] {
            assert!(body_is_protected(endpoint), "{endpoint}");
        }
        for endpoint in [
            "http://10.0.0.5:9000",
            "http://minio.internal",
            "http://[fd00::1]:80",
        ] {
            assert!(!body_is_protected(endpoint), "{endpoint}");
        }
    }
}
