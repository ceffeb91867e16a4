//! The `[files]` section: the file API's switch and limits. Where the files live is the
//! `[lake]` section, the same keys (and type) as analytics' `[lake]`: the bucket, the store's
//! endpoint and credentials, and `lake.files_prefix`, the file area's prefix that
//! `analytics sql` reads too.

use serde::{Deserialize, Serialize};
use service::ConfigError as E;

const MIB: u64 = 1024 * 1024;

/// The file API (`/filesystem/...`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Serve `/filesystem/`; off: it answers 404.
    pub enabled: bool,
    /// Largest upload, in bytes: refused with 413 from its `Content-Length`, or as soon as
    /// a body sent without one goes past it.
    pub max_body_bytes: u64,
    /// Uploads up to this size are one PUT to the store (held in memory until then); larger
    /// ones a multipart upload with parts of this size. 5 MiB (S3's smallest part) to 1 GiB.
    pub multipart_threshold_bytes: u64,
    /// Uploads running at once; one more is answered 503 with `Retry-After`. Each holds
    /// about three parts of `multipart_threshold_bytes` in memory.
    pub max_uploads: usize,
}

impl Default for FilesConfig {
    fn default() -> FilesConfig {
        FilesConfig {
            enabled: true,
            max_body_bytes: 10 * 1024 * MIB,
            multipart_threshold_bytes: 8 * MIB,
            max_uploads: 8,
        }
    }
}

impl FilesConfig {
    /// Checks the rules serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), E> {
        if !(5 * MIB..=1024 * MIB).contains(&self.multipart_threshold_bytes) {
            return Err(E::invalid(
                "files.multipart_threshold_bytes",
                "must be between 5 MiB (5242880) and 1 GiB (1073741824)",
            ));
        }
        if !(1..=1024).contains(&self.max_uploads) {
            return Err(E::invalid("files.max_uploads", "must be 1 to 1024"));
        }
        if self.max_body_bytes == 0 {
            return Err(E::invalid("files.max_body_bytes", "must be at least 1"));
        }
        // S3 takes at most 10,000 parts per upload.
        if self.max_body_bytes > self.multipart_threshold_bytes.saturating_mul(10_000) {
            return Err(E::invalid(
                "files.max_body_bytes",
                "is more than 10,000 parts of files.multipart_threshold_bytes (S3's limit): raise the threshold or lower the limit",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        FilesConfig::default().validate().unwrap();
        let cases = [
            (
                FilesConfig {
                    multipart_threshold_bytes: 1024,
                    ..FilesConfig::default()
                },
                "files.multipart_threshold_bytes:",
            ),
            (
                FilesConfig {
                    max_uploads: 0,
                    ..FilesConfig::default()
                },
                "files.max_uploads:",
            ),
            (
                FilesConfig {
                    max_body_bytes: 0,
                    ..FilesConfig::default()
                },
                "files.max_body_bytes:",
            ),
            (
                FilesConfig {
                    max_body_bytes: 100_000 * 8 * MIB,
                    ..FilesConfig::default()
                },
                "files.max_body_bytes:",
            ),
        ];
        for (config, key) in cases {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.starts_with(key), "{key} {error}");
        }
    }
}
