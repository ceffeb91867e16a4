//! The import tests' world: a PostgreSQL with the bridge's and the analytics layer's schema,
//! the embedded S3 server over a temporary directory (so DuckDB reads the lake's objects as
//! plain files), the analytics configuration pointing at both, and DuckDB.

use std::path::{Path, PathBuf};
use std::process::Command;

use analytics::Config;
use testkit::postgres::TestPostgres;

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
        let postgres = TestPostgres::builder().fsync(false).start().unwrap();
        let url = postgres.url();
        let mut store = bridge::store::Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s3 =
            bridge::archive::start_embedded(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
        let mut config = Config::default();
        config.postgres.url = url.clone();
        config.data_dir = dir.path().join("data");
        config.lake.endpoint = s3.endpoint.clone();
        config.lake.access_key_id = s3.access_key_id.clone();
        config.lake.secret_access_key = s3.secret_access_key.clone();
        config.lake.publish_attempts = 3;
        config.lake.min_backoff_ms = 50;
        config.lake.max_backoff_ms = 200;
        config.lake.connect_timeout_ms = 1_000;
        config.lake.request_timeout_ms = 10_000;
        config.validate().unwrap();
        analytics::db::migrate(&config.postgres).await.unwrap();
        let client = analytics::db::connect_once(&url).await.unwrap();
        World {
            _postgres: postgres,
            client,
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
        self.client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| row.get::<_, Option<String>>(i).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect()
    }
}

/// Runs `sql` in DuckDB (Python) and returns its rows as `|`-joined text (NULL: empty).
pub fn duckdb(sql: &str) -> Vec<String> {
    let script = "import sys, duckdb\n\
                  for row in duckdb.sql(sys.argv[1]).fetchall():\n    \
                  print('|'.join('' if v is None else str(v) for v in row))";
    let output = Command::new("python3")
        .args(["-c", script, sql])
        .output()
        .expect("running python3 (with duckdb: scripts/setup installs it)");
    assert!(
        output.status.success(),
        "duckdb failed on {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Lowercase hex SHA-256 of a file.
pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}
