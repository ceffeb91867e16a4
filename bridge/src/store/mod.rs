//! The PostgreSQL sink: batches of records stored exactly once, in one transaction each.
//!
//! - `schema`: the migrations in `bridge/migrations/`, applied by [`Store::migrate`].
//! - [`partitions`]: day partitions of `positions`, created ahead and on demand.
//! - `batch`: records turned into rows; `copy`: binary COPY; `write`: the transaction.
//! - `retention`: dropping expired partitions once archived, and the archive watermarks.
//! - [`types`]: timestamps and text as PostgreSQL takes them.
//!
//! Each message is keyed by taxi, topic and `seq` (positions by taxi, device time and `seq`,
//! the same for a resent message). A batch is acknowledged to the broker only after its
//! commit, so after a crash messages arrive again: they are counted as duplicates and not
//! stored twice. Dead letters have no key and are stored each time they arrive.
//!
//! One [`Store`] is one connection. After an error for which
//! [`StoreError::is_retryable`] is true, retry the batch; if [`Store::is_closed`], connect
//! again first.

mod batch;
mod copy;
pub use copy::{COPY_POSITIONS, POSITION_TYPES};
mod error;
pub mod partitions;
mod retention;
mod schema;
pub mod types;
mod write;

use std::collections::HashSet;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

pub use error::StoreError;
use partitions::day_of;
use types::Timestamp;

use crate::record::Record;

/// What one [`Store::write`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Positions stored by this batch.
    pub positions_inserted: u64,
    /// Positions already stored (or twice in the batch): dropped.
    pub positions_duplicate: u64,
    /// Taxis whose latest position moved forward.
    pub latest_positions: u64,
    /// Tour events stored, and dropped as already stored.
    pub tour_events: u64,
    pub tour_events_duplicate: u64,
    /// Acks stored, and dropped as already stored.
    pub acks: u64,
    pub acks_duplicate: u64,
    /// Taxis whose status changed (older or repeated statuses change nothing).
    pub statuses: u64,
    /// Dead letters stored, including records with values PostgreSQL cannot hold.
    pub dead_letters: u64,
}

/// One connection to the bridge's database.
pub struct Store {
    client: Client,
    prepared: Option<write::Prepared>,
    /// Days known to have a partition.
    known_days: HashSet<i64>,
    /// The last batch had duplicate positions: more are likely (redelivery).
    duplicates_seen: bool,
}

impl Store {
    /// Connects (without TLS). Unless the URL says otherwise: a 10 s connect timeout, TCP
    /// keep-alives after 30 s idle, application name `bridge`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("bridge");
        }
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(30));
        }
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(Store {
            client,
            prepared: None,
            known_days: HashSet::new(),
            duplicates_seen: false,
        })
    }

    /// True once the connection is gone: connect again.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The connection, for queries the store has no method for.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Applies the migrations not applied yet; returns how many. Safe to run from several
    /// bridges at once.
    pub async fn migrate(&mut self) -> Result<usize, StoreError> {
        self.prepared = None;
        schema::migrate(&mut self.client).await
    }

    /// Stores a batch in one transaction and reports what was new. Creates missing day
    /// partitions first (in their own transaction). On error nothing of the batch is stored.
    pub async fn write(&mut self, records: &[Record]) -> Result<WriteStats, StoreError> {
        let batch = batch::Batch::new(records);
        let missing: Vec<i64> = batch
            .days
            .iter()
            .copied()
            .filter(|day| !self.known_days.contains(day))
            .collect();
        if !missing.is_empty() {
            partitions::create(&mut self.client, &missing).await?;
            self.known_days.extend(missing);
        }
        if self.prepared.is_none() {
            self.prepared = Some(write::Prepared::new(&self.client).await?);
        }
        let Some(prepared) = &self.prepared else {
            return Ok(WriteStats::default());
        };
        let path = if self.duplicates_seen {
            write::PositionPath::Staging
        } else {
            write::PositionPath::Direct
        };
        let result = write::write(&mut self.client, prepared, &batch, path).await;
        if let Ok(stats) = &result {
            if !batch.positions.is_empty() {
                self.duplicates_seen = stats.positions_duplicate > 0;
            }
        }
        if let Err(e) = &result {
            // Partitions may have been dropped, or the schema changed under the prepared
            // statements: check again on the next attempt.
            if matches!(e, StoreError::MissingPartition(_)) {
                self.known_days.clear();
            }
            self.prepared = None;
        }
        result
    }

    /// Creates the day partitions from `retention_days` before the day of `today_ms` to
    /// `days_ahead` after it; returns the names of those created.
    pub async fn ensure_partitions(
        &mut self,
        today_ms: i64,
        retention_days: u32,
        days_ahead: u32,
    ) -> Result<Vec<String>, StoreError> {
        let today = day_of(today_ms);
        let days: Vec<i64> =
            (today - i64::from(retention_days)..=today + i64::from(days_ahead)).collect();
        let created = partitions::create(&mut self.client, &days).await?;
        self.known_days.extend(days);
        Ok(created)
    }

    /// Drops the day partitions that are past retention and archived by every bridge;
    /// returns their names.
    ///
    /// Validation refuses messages older than the retention window, so every row of day D
    /// was received before `end of D + retention`. D is dropped once that moment is past
    /// (`now_ms`) and every row of `archive_watermarks` is at or beyond it. Without any
    /// watermark nothing is dropped. Partitions are detached concurrently (writers are not
    /// blocked), then dropped; one session at a time does this.
    pub async fn drop_expired_partitions(
        &mut self,
        now_ms: i64,
        retention_days: u32,
    ) -> Result<Vec<String>, StoreError> {
        let dropped = retention::drop_expired(&self.client, now_ms, retention_days).await?;
        for name in &dropped {
            if let Some(day) = partitions::parse_partition_name(name) {
                self.known_days.remove(&day);
            }
        }
        Ok(dropped)
    }

    /// Records that everything this bridge received up to `safe_until_ms` (its clock) is in
    /// the archive. Never moves a watermark back.
    pub async fn set_archive_watermark(
        &mut self,
        bridge_id: &str,
        safe_until_ms: i64,
    ) -> Result<(), StoreError> {
        retention::set_watermark(&self.client, bridge_id, safe_until_ms).await
    }

    /// Forgets a bridge that is gone for good, so it no longer holds retention back.
    pub async fn remove_archive_watermark(&mut self, bridge_id: &str) -> Result<bool, StoreError> {
        let n = self
            .client
            .execute(
                "DELETE FROM archive_watermarks WHERE bridge_id = $1",
                &[&bridge_id],
            )
            .await?;
        Ok(n > 0)
    }

    /// The watermarks of all bridges: `(bridge_id, safe_until_ms)`.
    pub async fn archive_watermarks(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT bridge_id, safe_until FROM archive_watermarks ORDER BY bridge_id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get::<_, Timestamp>(1)?.ms())))
            .collect()
    }

    /// The day partitions of `positions`, oldest first.
    pub async fn partitions(&self) -> Result<Vec<String>, StoreError> {
        Ok(partitions::attached(&self.client)
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect())
    }

    /// All stored positions.
    pub async fn count_positions(&self) -> Result<i64, StoreError> {
        let row = self
            .client
            .query_one("SELECT count(*) FROM positions", &[])
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Positions stored for one taxi.
    pub async fn count_positions_of(&self, taxi: &str) -> Result<i64, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FROM positions WHERE taxi_id = $1",
                &[&taxi],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// A taxi's latest position: `(seq, ts_ms, lat, lon)`.
    pub async fn latest_position(
        &self,
        taxi: &str,
    ) -> Result<Option<(i64, i64, f64, f64)>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT seq, ts, lat, lon FROM latest_positions WHERE taxi_id = $1",
                &[&taxi],
            )
            .await?;
        row.map(|row| {
            Ok((
                row.try_get(0)?,
                row.try_get::<_, Timestamp>(1)?.ms(),
                row.try_get(2)?,
                row.try_get(3)?,
            ))
        })
        .transpose()
    }

    /// Dead letters stored.
    pub async fn count_dead_letters(&self) -> Result<i64, StoreError> {
        let row = self
            .client
            .query_one("SELECT count(*) FROM dead_letters", &[])
            .await?;
        Ok(row.try_get(0)?)
    }
}
