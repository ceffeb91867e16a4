//! Running many asynchronous jobs with at most a given number at a time.

use std::future::Future;

use anyhow::Result;
use tokio::task::JoinSet;

/// Runs `job(0)`..`job(count - 1)` with at most `concurrency` running at once, each as its
/// own task, and returns every result with its index, in completion order.
pub async fn run_bounded<T, F, Fut>(
    count: usize,
    concurrency: usize,
    mut job: F,
) -> Vec<(usize, Result<T>)>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let concurrency = concurrency.max(1);
    let mut running = JoinSet::new();
    let mut results = Vec::with_capacity(count);
    let mut next = 0;
    while next < count || !running.is_empty() {
        while next < count && running.len() < concurrency {
            let index = next;
            let future = job(index);
            running.spawn(async move { (index, future.await) });
            next += 1;
        }
        match running.join_next().await {
            Some(Ok(result)) => results.push(result),
            Some(Err(e)) => results.push((usize::MAX, Err(anyhow::anyhow!("job failed: {e}")))),
            None => {}
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn never_exceeds_the_limit_and_returns_everything() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let results = run_bounded(50, 4, |i| {
            let (running, peak) = (running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                if i == 7 {
                    anyhow::bail!("seven");
                }
                Ok(i * 2)
            }
        })
        .await;
        assert_eq!(results.len(), 50);
        assert!(peak.load(Ordering::SeqCst) <= 4);
        let mut ok: Vec<usize> = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().copied())
            .collect();
        ok.sort_unstable();
        assert_eq!(ok.len(), 49);
        assert!(results.iter().any(|(i, r)| *i == 7 && r.is_err()));
    }
}
