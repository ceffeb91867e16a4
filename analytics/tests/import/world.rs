//! The import tests' world: a PostgreSQL with the bridge's and the analytics layer's schema,
//! the embedded S3 server over a temporary directory (so DuckDB reads the lake's objects as
//! plain files), the analytics configuration pointing at both, and DuckDB.

use std::path::{Path, PathBuf};

use analytics::Config;
use testkit::postgres::TestPostgres;

pub use crate::support::duckdb;
use crate::support::{config, embedded, text_rows, Database};

pub struct World {
    /// Kept running while the world lives.
    _postgres: TestPostgres,
    pub client: tokio_postgres::Client,
    _s3: bridge::archive::EmbeddedS3,
    pub config: Config,
    /// Holds the S3 directory, the scratch directory and the generated files.
    pub dir: tempfile::TempDir,
}

impl World {
    pub async fn start() -> World {
        let db = Database::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s3 = embedded(&dir.path().join("s3")).await;
        let config = config(
            &db.url(),
            dir.path().join("data"),
            &s3.endpoint,
            (&s3.access_key_id, &s3.secret_access_key),
        );
        World {
            _postgres: db.postgres,
            client: db.client,
            _s3: s3,
            config,
            dir,
        }
    }

    /// Where the test writes its input files.
    pub fn input(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("input");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// `trips_nyc` as DuckDB reads it from the embedded server's directory.
    pub fn trips_table(&self) -> String {
        let glob = self.trips_dir().join("*").join("*.parquet");
        format!(
            "read_parquet('{}', hive_partitioning = true)",
            glob.display()
        )
    }

    /// The dataset's directory in the embedded server's bucket.
    pub fn trips_dir(&self) -> PathBuf {
        self.dir
            .path()
            .join("s3")
            .join(&self.config.lake.bucket)
            .join(&self.config.lake.prefix)
            .join("trips_nyc")
    }

    /// Rows of a query as `|`-joined text (NULL as an empty string).
    pub async fn rows(&self, sql: &str) -> Vec<String> {
        text_rows(&self.client, sql).await
    }
}

/// Lowercase hex SHA-256 of a file.
pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}
