//! The `[lake]` section: where the lake lives and how hard publishing tries.

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;

/// Where the lake's objects go and how they get there.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    /// S3 endpoint URL (`http://` or `https://`; the archive's embedded server by default);
    /// empty: AWS's endpoint for `region`.
    pub endpoint: String,
    /// Bucket of the lake; created on first use if it is missing.
    pub bucket: String,
    /// S3 region (AWS and most S3-compatible stores accept `us-east-1`).
    pub region: String,
    /// Static credentials; both empty: the environment chain (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, web identity, instance metadata).
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Key prefix of the lake inside the bucket (`lake`: `s3://<bucket>/lake/<dataset>/...`).
    pub prefix: String,
    /// Key prefix of the reporting service's file area inside the bucket
    /// (`files`: `s3://<bucket>/files/data/<path>`, rows of JSON uploads under
    /// `files/rows/`, refused uploads under `files/rejected/`). Its directories are the
    /// tables of the `files` schema. Must lie outside `prefix`.
    pub files_prefix: String,
    /// Files up to this size are uploaded with one PUT; larger ones as a multipart upload
    /// with parts of this size, streamed from the local file (memory: one part). At least
    /// 5 MiB (S3's smallest part), at most 5 GiB.
    pub part_size_bytes: u64,
    /// Tries to publish one file before giving up (the local file stays where it is).
    pub publish_attempts: u32,
    /// First delay between tries; doubles up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Time to open a connection to the store.
    pub connect_timeout_ms: u64,
    /// Time for one request (a PUT of one part, a listing, a read).
    pub request_timeout_ms: u64,
}

impl Default for LakeConfig {
    fn default() -> LakeConfig {
        LakeConfig {
            endpoint: "http://127.0.0.1:9000".to_owned(),
            bucket: "taxi-lake".to_owned(),
            region: "us-east-1".to_owned(),
            access_key_id: "taxi-dev".to_owned(),
            secret_access_key: "taxi-dev-secret".to_owned(),
            prefix: "lake".to_owned(),
            files_prefix: "files".to_owned(),
            part_size_bytes: 16 * MIB,
            publish_attempts: 8,
            min_backoff_ms: 200,
            max_backoff_ms: 10_000,
            connect_timeout_ms: 3_000,
            request_timeout_ms: 120_000,
        }
    }
}

impl LakeConfig {
    /// Checks every rule serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), service::ConfigError> {
        use service::ConfigError as E;
        let bucket = self.bucket.trim();
        if bucket.is_empty() {
            return Err(E::invalid("lake.bucket", "must not be empty"));
        }
        if bucket.len() < 3
            || bucket.len() > 63
            || !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(E::invalid(
                "lake.bucket",
                format!("{bucket:?} is not an S3 bucket name (3-63 of a-z 0-9 . -)"),
            ));
        }
        let endpoint = self.endpoint.trim();
        let has_scheme = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !has_scheme {
            return Err(E::invalid(
                "lake.endpoint",
                format!("{endpoint:?} must start with http:// or https:// (or be empty: AWS)"),
            ));
        }
        if self.access_key_id.trim().is_empty() != self.secret_access_key.trim().is_empty() {
            return Err(E::invalid(
                "lake.access_key_id",
                "set both lake.access_key_id and lake.secret_access_key, or neither",
            ));
        }
        if self
            .prefix
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(E::invalid(
                "lake.prefix",
                "must not contain . or .. segments",
            ));
        }
        self.validate_files_prefix()?;
        if !(5 * MIB..=5 * 1024 * MIB).contains(&self.part_size_bytes) {
            return Err(E::invalid(
                "lake.part_size_bytes",
                "must be between 5 MiB (5242880) and 5 GiB",
            ));
        }
        if self.publish_attempts == 0 {
            return Err(E::invalid("lake.publish_attempts", "must be at least 1"));
        }
        if self.min_backoff_ms == 0 || self.min_backoff_ms > self.max_backoff_ms {
            return Err(E::invalid(
                "lake.min_backoff_ms",
                "must be at least 1 and at most lake.max_backoff_ms",
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(E::invalid("lake.connect_timeout_ms", "must be at least 1"));
        }
        if self.request_timeout_ms == 0 {
            return Err(E::invalid("lake.request_timeout_ms", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_files_prefix(&self) -> Result<(), service::ConfigError> {
        use service::ConfigError as E;
        let files = self.clean_files_prefix();
        if files.is_empty() {
            return Err(E::invalid("lake.files_prefix", "must not be empty"));
        }
        if files
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        {
            return Err(E::invalid(
                "lake.files_prefix",
                "must not contain empty, . or .. segments",
            ));
        }
        let lake = self.clean_prefix();
        let inside =
            |outer: &str, inner: &str| inner == outer || inner.starts_with(&format!("{outer}/"));
        let overlaps = if lake.is_empty() {
            let first = files.split('/').next().unwrap_or_default();
            super::schema::DATASETS.contains(&first)
        } else {
            inside(lake, files) || inside(files, lake)
        };
        if overlaps {
            return Err(E::invalid(
                "lake.files_prefix",
                format!("{files:?} must lie outside the datasets (lake.prefix {lake:?})"),
            ));
        }
        Ok(())
    }

    /// The file area's prefix without leading or trailing slashes (never empty once
    /// validated).
    pub fn clean_files_prefix(&self) -> &str {
        self.files_prefix.trim_matches('/')
    }

    /// The prefix without leading or trailing slashes (may be empty).
    pub fn clean_prefix(&self) -> &str {
        self.prefix.trim_matches('/')
    }

    /// The endpoint as shown in messages.
    pub fn endpoint_name(&self) -> String {
        let endpoint = self.endpoint.trim();
        if endpoint.is_empty() {
            format!("AWS S3 ({})", self.region)
        } else {
            endpoint.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        LakeConfig::default().validate().unwrap();
        type Change = Box<dyn Fn(&mut LakeConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            ("lake.bucket", Box::new(|c| c.bucket = "Bad_Bucket".into())),
            (
                "lake.endpoint",
                Box::new(|c| c.endpoint = "localhost:9000".into()),
            ),
            (
                "lake.access_key_id",
                Box::new(|c| c.secret_access_key.clear()),
            ),
            ("lake.prefix", Box::new(|c| c.prefix = "a/../b".into())),
            (
                "lake.files_prefix",
                Box::new(|c| c.files_prefix = "/".into()),
            ),
            (
                "lake.files_prefix",
                Box::new(|c| c.files_prefix = "lake/files".into()),
            ),
            (
                "lake.files_prefix",
                Box::new(|c| {
                    c.prefix = String::new();
                    c.files_prefix = "positions".into();
                }),
            ),
            (
                "lake.part_size_bytes",
                Box::new(|c| c.part_size_bytes = 1024),
            ),
            (
                "lake.publish_attempts",
                Box::new(|c| c.publish_attempts = 0),
            ),
            (
                "lake.min_backoff_ms",
                Box::new(|c| c.min_backoff_ms = 20_000),
            ),
            (
                "lake.connect_timeout_ms",
                Box::new(|c| c.connect_timeout_ms = 0),
            ),
            (
                "lake.request_timeout_ms",
                Box::new(|c| c.request_timeout_ms = 0),
            ),
        ];
        for (key, change) in cases {
            let mut config = LakeConfig::default();
            change(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }
}
