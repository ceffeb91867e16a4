//! What PostgreSQL itself can take on this machine, without MQTT: the same kind of rows the
//! taxis publish, written into the bridge's `positions` table (same schema, same primary key)
//!
//! - by plain binary COPY from one connection, one COPY (one transaction) per batch of the
//!   bridge's batch size, rows sorted by key as the bridge sends them: the ceiling;
//! - by the bridge's own [`Store::write`] (binary COPY in a savepoint plus the
//!   `latest_positions` upsert, one transaction per batch), from one connection, and from two
//!   at once as the bridge's pipeline does.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bridge::record::Record;
use bridge::store::types::Timestamp;
use bridge::store::{Store, COPY_POSITIONS, POSITION_TYPES};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;

use simulator::measure;
use simulator::motion::{Walker, BERLIN};
use simulator::pki::taxi_id;

/// Rows written over some time.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteRate {
    pub rows: u64,
    pub elapsed: Duration,
}

impl WriteRate {
    pub fn per_second(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.rows as f64 / self.elapsed.as_secs_f64()
        }
    }
}

/// `total` positions as `taxis` taxis publishing `rate` positions per second in all would
/// send them (interleaved in time, each taxi moving along its own path), ending now, cut into
/// batches of `batch` in arrival order.
pub fn generate(taxis: usize, total: u64, batch: usize, rate: f64) -> Vec<Vec<Record>> {
    let taxis = taxis.max(1);
    let interval_us = 1e6 / rate.max(1.0);
    let step = Duration::from_secs_f64(taxis as f64 / rate.max(1.0));
    let now_ms = measure::unix_ms();
    let start_ms = now_ms - (total as f64 * interval_us / 1000.0) as i64 - 1_000;
    let start_us = start_ms as u64 * 1000;
    let ids: Vec<String> = (1..=taxis).map(taxi_id).collect();
    let mut walkers: Vec<Walker> = (0..taxis).map(|i| Walker::new(BERLIN, i as u64)).collect();
    let mut batches = Vec::with_capacity((total as usize).div_ceil(batch.max(1)));
    let mut current = Vec::with_capacity(batch);
    for n in 0..total {
        let index = (n % taxis as u64) as usize;
        let offset_us = (n as f64 * interval_us) as u64;
        let fix = walkers[index].step(step);
        let ts_ms = start_ms + (offset_us / 1000) as i64;
        current.push(Record::Position {
            taxi: ids[index].clone(),
            position: wire::Position {
                // Unique per taxi and increasing, like the taxis' clock-based seq.
                seq: start_us + offset_us + n,
                ts_ms,
                lat: fix.lat,
                lon: fix.lon,
                speed_kmh: Some(fix.speed_kmh),
                heading_deg: Some(fix.heading_deg),
                accuracy_m: Some(fix.accuracy_m),
            },
            received_ms: ts_ms + 2,
        });
        if current.len() == batch {
            batches.push(std::mem::replace(&mut current, Vec::with_capacity(batch)));
        }
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// One position as COPY sends it.
struct CopyRow<'a> {
    taxi: &'a str,
    seq: i64,
    ts: Timestamp,
    lat: f64,
    lon: f64,
    speed_kmh: Option<f32>,
    heading_deg: Option<f32>,
    accuracy_m: Option<f32>,
    received: Timestamp,
}

/// Plain binary COPY of every batch into `positions` of the database at `url`, one COPY per
/// batch (autocommit: each is its own transaction), from one connection. Rows are turned into
/// COPY rows and sorted by key before the clock starts.
pub async fn copy(url: &str, batches: &[Vec<Record>]) -> Result<WriteRate> {
    let prepared: Vec<Vec<CopyRow<'_>>> = batches
        .iter()
        .map(|batch| {
            let mut rows: Vec<CopyRow<'_>> = batch.iter().filter_map(copy_row).collect();
            rows.sort_by(|a, b| (a.taxi, a.ts, a.seq).cmp(&(b.taxi, b.ts, b.seq)));
            rows
        })
        .collect();
    let client = super::database::connect(url).await?;
    let statement = client.prepare(COPY_POSITIONS).await?;
    let started = Instant::now();
    let mut rows = 0;
    for batch in &prepared {
        let sink = client.copy_in(&statement).await.context("starting COPY")?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &POSITION_TYPES));
        for row in batch {
            let values: [&(dyn ToSql + Sync); 9] = [
                &row.taxi,
                &row.seq,
                &row.ts,
                &row.lat,
                &row.lon,
                &row.speed_kmh,
                &row.heading_deg,
                &row.accuracy_m,
                &row.received,
            ];
            writer.as_mut().write(&values).await.context("COPY row")?;
        }
        rows += writer.finish().await.context("finishing COPY")?;
    }
    Ok(WriteRate {
        rows,
        elapsed: started.elapsed(),
    })
}

fn copy_row(record: &Record) -> Option<CopyRow<'_>> {
    let Record::Position {
        taxi,
        position,
        received_ms,
    } = record
    else {
        return None;
    };
    Some(CopyRow {
        taxi,
        seq: i64::try_from(position.seq).ok()?,
        ts: Timestamp::new(position.ts_ms)?,
        lat: position.lat,
        lon: position.lon,
        speed_kmh: position.speed_kmh,
        heading_deg: position.heading_deg,
        accuracy_m: position.accuracy_m,
        received: Timestamp::new(*received_ms)?,
    })
}

/// Every batch through the bridge's [`Store::write`] into the database at `url`, from
/// `connections` connections at once, each taking the next batch when done with its last.
pub async fn store_write(
    url: &str,
    batches: Arc<Vec<Vec<Record>>>,
    connections: usize,
) -> Result<WriteRate> {
    let mut stores = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        stores.push(Store::connect(url).await.context("connecting the store")?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut writers = Vec::with_capacity(stores.len());
    for mut store in stores {
        let (batches, next) = (batches.clone(), next.clone());
        writers.push(tokio::spawn(async move {
            let mut rows = 0;
            while let Some(batch) = batches.get(next.fetch_add(1, Ordering::Relaxed)) {
                let stats = store.write(batch).await.context("Store::write")?;
                rows += stats.positions_inserted;
            }
            anyhow::Ok(rows)
        }));
    }
    let mut rows = 0;
    for writer in writers {
        rows += writer.await.context("store writer task failed")??;
    }
    Ok(WriteRate {
        rows,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_rows_are_unique_per_taxi_and_batched() {
        let batches = generate(3, 10, 4, 1000.0);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let mut keys = std::collections::HashSet::new();
        for record in batches.iter().flatten() {
            let Record::Position { taxi, position, .. } = record else {
                panic!("not a position");
            };
            assert!(keys.insert((taxi.clone(), position.seq)));
            assert!(position.ts_ms <= measure::unix_ms());
            assert!(copy_row(record).is_some());
        }
    }
}
