//! Day partitions of `positions`: names, bounds, listing and creation.
//!
//! Days are UTC days of the device time, named `positions_YYYYMMDD`. A partition is created
//! as a plain table and then attached, which takes a lock on `positions` that does not block
//! writers or readers (unlike `CREATE TABLE ... PARTITION OF`). Creation runs in its own short
//! transaction under an advisory lock, so concurrent bridges never race for the same day.

use time::{Date, Month};
use tokio_postgres::{Client, GenericClient};

use super::types::{END_MS, MIN_MS};
use super::StoreError;

pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// Advisory transaction lock key held while creating partitions ("taxi" "part").
const CREATE_LOCK: i64 = 0x7461_7869_7061_7274;

/// Days since 1970-01-01 (UTC) of an instant.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// Storable days (years 1 to 9999).
fn is_storable_day(day: i64) -> bool {
    (day_of(MIN_MS)..=day_of(END_MS - 1)).contains(&day)
}

fn date(day: i64) -> Option<Date> {
    if !is_storable_day(day) {
        return None;
    }
    i32::try_from(day + UNIX_EPOCH_JULIAN_DAY)
        .ok()
        .and_then(|julian| Date::from_julian_day(julian).ok())
}

/// `positions_YYYYMMDD`, for storable days.
pub fn partition_name(day: i64) -> Option<String> {
    let d = date(day)?;
    Some(format!(
        "positions_{:04}{:02}{:02}",
        d.year(),
        u8::from(d.month()),
        d.day()
    ))
}

/// The day of a `positions_YYYYMMDD` name.
pub fn parse_partition_name(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("positions_")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[0..4].parse().ok()?;
    let month: u8 = digits[4..6].parse().ok()?;
    let day: u8 = digits[6..8].parse().ok()?;
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    Some(i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY)
}

/// `'YYYY-MM-DD 00:00:00+00'`: the start of a day as an SQL literal.
fn day_start_literal(day: i64) -> Option<String> {
    // The day after 9999-12-31 is written out by hand; `time` stops at year 9999.
    if day == day_of(END_MS - 1) + 1 {
        return Some("'10000-01-01 00:00:00+00'".to_owned());
    }
    let d = date(day)?;
    Some(format!(
        "'{:04}-{:02}-{:02} 00:00:00+00'",
        d.year(),
        u8::from(d.month()),
        d.day()
    ))
}

/// A day partition of `positions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub day: i64,
    /// False for a table left behind after it was detached.
    pub is_attached: bool,
    /// A `DETACH ... CONCURRENTLY` was interrupted; it must be finalized.
    pub detach_pending: bool,
}

/// The day partitions attached to `positions`, oldest first. Tables of other names are
/// ignored.
pub async fn attached<C: GenericClient + Sync>(client: &C) -> Result<Vec<Partition>, StoreError> {
    let rows = client
        .query(
            "SELECT c.relname::text, i.inhdetachpending
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'positions'::regclass",
            &[],
        )
        .await?;
    let mut partitions = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get(0)?;
        let detach_pending: bool = row.try_get(1)?;
        if let Some(day) = parse_partition_name(&name) {
            partitions.push(Partition {
                name,
                day,
                is_attached: true,
                detach_pending,
            });
        }
    }
    partitions.sort_by_key(|p| p.day);
    Ok(partitions)
}

/// Tables named like day partitions but not attached: left behind when dropping a
/// detached partition failed.
pub async fn detached(client: &Client) -> Result<Vec<Partition>, StoreError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c
             WHERE c.relkind = 'r' AND NOT c.relispartition
               AND c.relname ~ '^positions_[0-9]{8}$'
               AND c.relnamespace =
                   (SELECT relnamespace FROM pg_class WHERE oid = 'positions'::regclass)",
            &[],
        )
        .await?;
    let mut tables = Vec::new();
    for row in rows {
        let name: String = row.try_get(0)?;
        if let Some(day) = parse_partition_name(&name) {
            tables.push(Partition {
                name,
                day,
                is_attached: false,
                detach_pending: false,
            });
        }
    }
    Ok(tables)
}

/// Makes sure `days` have partitions. Returns the names of the partitions created; days
/// outside years 1 to 9999 are skipped.
pub async fn create(client: &mut Client, days: &[i64]) -> Result<Vec<String>, StoreError> {
    let tx = client.transaction().await?;
    // Attaching waits for a concurrent detach or ANALYZE of `positions`; rather fail (a
    // retryable error) than hold up the batch behind it for long.
    tx.batch_execute("SET LOCAL lock_timeout = '10s'").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK])
        .await?;
    let existing: Vec<i64> = attached(&tx).await?.iter().map(|p| p.day).collect();
    let mut created = Vec::new();
    let mut sql = String::new();
    for &day in days {
        if existing.contains(&day) {
            continue;
        }
        let (Some(name), Some(from), Some(to)) = (
            partition_name(day),
            day_start_literal(day),
            day_start_literal(day + 1),
        ) else {
            continue;
        };
        if created.contains(&name) {
            continue;
        }
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {name} \
             (LIKE positions INCLUDING DEFAULTS INCLUDING STORAGE);\n\
             ALTER TABLE positions ATTACH PARTITION {name} FOR VALUES FROM ({from}) TO ({to});\n"
        ));
        created.push(name);
    }
    if !sql.is_empty() {
        tx.batch_execute(&sql).await?;
    }
    tx.commit().await?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_days() {
        // 2024-11-21T14:40:00Z
        let day = day_of(1_732_200_000_000);
        assert_eq!(partition_name(day).as_deref(), Some("positions_20241121"));
        assert_eq!(parse_partition_name("positions_20241121"), Some(day));
        assert_eq!(partition_name(0).as_deref(), Some("positions_19700101"));
        assert_eq!(partition_name(-1).as_deref(), Some("positions_19691231"));
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(DAY_MS), 1);
        assert_eq!(parse_partition_name("positions_20241131"), None);
        assert_eq!(parse_partition_name("positions_2024112"), None);
        assert_eq!(parse_partition_name("positions_staging"), None);
        assert_eq!(parse_partition_name("latest_positions"), None);
        assert_eq!(
            day_start_literal(day).as_deref(),
            Some("'2024-11-21 00:00:00+00'")
        );
        let last = day_of(END_MS - 1);
        assert_eq!(partition_name(last).as_deref(), Some("positions_99991231"));
        assert_eq!(partition_name(last + 1), None);
        assert_eq!(
            day_start_literal(last + 1).as_deref(),
            Some("'10000-01-01 00:00:00+00'")
        );
        assert_eq!(
            partition_name(day_of(MIN_MS)).as_deref(),
            Some("positions_00010101")
        );
        for d in [day_of(MIN_MS), -1, 0, day, last] {
            assert_eq!(
                partition_name(d).and_then(|n| parse_partition_name(&n)),
                Some(d)
            );
        }
    }
}
