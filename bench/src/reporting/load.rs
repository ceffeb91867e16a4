//! A closed-loop HTTP load: `workers` clients, each sending its next request as soon as the
//! previous answer has been read whole, for a fixed time. Latency is from sending to the
//! last byte of the body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

/// What a load measured.
#[derive(Debug)]
pub struct Measured {
    pub requests: u64,
    pub seconds: f64,
    /// Latencies in microseconds.
    pub latency_us: Histogram<u64>,
    /// Answers whose `x-cache` header said `hit`.
    pub hits: u64,
}

impl Measured {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    pub fn p50_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.5) as f64 / 1e3
    }
    pub fn p99_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.99) as f64 / 1e3
    }
}

/// Sends `GET base + path(n)` for n = 0, 1, 2, ... from `workers` clients for `duration`.
/// Any answer other than 200 stops the load with an error naming it.
pub async fn run(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    workers: usize,
    duration: Duration,
    path: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> Result<Measured> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (client, next, path) = (client.clone(), next.clone(), path.clone());
        let (base, token) = (base.to_owned(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3)?;
            let mut hits = 0u64;
            while Instant::now() < deadline {
                let url = format!("{base}{}", path(next.fetch_add(1, Ordering::Relaxed)));
                let sent = Instant::now();
                let answer = client
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?;
                let status = answer.status();
                let hit = answer
                    .headers()
                    .get("x-cache")
                    .is_some_and(|v| v.as_bytes() == b"hit");
                let body = answer.bytes().await.with_context(|| format!("GET {url}"))?;
                if status != reqwest::StatusCode::OK {
                    bail!(
                        "GET {url}: {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    );
                }
                latency.record(sent.elapsed().as_micros() as u64)?;
                hits += u64::from(hit);
            }
            anyhow::Ok((latency, hits))
        }));
    }
    let mut latency_us = Histogram::<u64>::new(3)?;
    let mut hits = 0;
    for task in tasks {
        let (worker, worker_hits) = task.await.context("a load worker")??;
        latency_us.add(&worker)?;
        hits += worker_hits;
    }
    Ok(Measured {
        requests: latency_us.len(),
        seconds: started.elapsed().as_secs_f64(),
        latency_us,
        hits,
    })
}
