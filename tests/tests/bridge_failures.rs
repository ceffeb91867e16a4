//! The bridge when things break, with real parts: the `bridge` process killed with SIGKILL in
//! the middle of a stream and started again, PostgreSQL crashing and coming back, the object
//! store unreachable for a while, and two bridges sharing the stream. However it breaks, every
//! message a taxi published ends up in PostgreSQL exactly once and in the archive.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bridge::archive::embedded::EmbeddedS3;
use bridge::archive::start_embedded;
use testkit::s3::MotoServer;
use tests::archive::{archived_multiset, read_all};
use tests::bridge_process::BridgeProcess;
use tests::platform::{
    along, bounded, drive, eventually, expected_keys, external_archive, flow_metrics, home, ids,
    multiset_diff, position, wait_for_positions, Platform, Progress, Taxi, ARRIVAL,
};
use tests::unix_ms;
use tokio::task::JoinHandle;

/// Upper bound of one test.
const LIMIT: Duration = Duration::from_secs(150);

/// Taxis `taxi-1` .. `taxi-<taxis>` start publishing `positions` positions each, one every
/// `pace`, in the background.
async fn start_stream(
    platform: &Platform,
    taxis: usize,
    positions: u64,
    pace: Duration,
) -> Result<Vec<JoinHandle<Result<Taxi>>>> {
    let mut drives = Vec::new();
    for n in 1..=taxis {
        let taxi = platform.taxi(&format!("taxi-{n}")).await?;
        drives.push(tokio::spawn(drive(
            taxi,
            home(n),
            1..=positions,
            Some(pace),
        )));
    }
    Ok(drives)
}

/// Waits for the taxis of [`start_stream`] to have published everything (and had it
/// acknowledged by the broker).
async fn finish_stream(drives: Vec<JoinHandle<Result<Taxi>>>) -> Result<Vec<Taxi>> {
    let mut taxis = Vec::new();
    for drive in drives {
        taxis.push(drive.await.context("a taxi task failed")??);
    }
    Ok(taxis)
}

/// Waits until at least `at_least` positions of `taxis` are stored.
async fn wait_for_some(platform: &Platform, taxis: &[String], at_least: i64) -> Result<i64> {
    wait_for_positions(&platform.database_url(), taxis, at_least as usize).await
}

/// PostgreSQL holds every position of `taxis` exactly once, and nothing else for them.
async fn assert_each_position_once(platform: &Platform, taxis: &[Taxi]) -> Result<()> {
    let ids = ids(taxis);
    let expected: Vec<(String, i64)> = expected_keys(taxis).into_iter().collect();
    let arrived = wait_for_positions(&platform.database_url(), &ids, expected.len()).await;
    let db = platform.db().await?;
    let stored = db.position_rows(&ids).await?;
    let duplicates = db.duplicate_position_keys().await?;
    if stored != expected {
        let stored_set: BTreeSet<&(String, i64)> = stored.iter().collect();
        let missing: Vec<&(String, i64)> = expected
            .iter()
            .filter(|k| !stored_set.contains(k))
            .collect();
        let shown = &missing[..missing.len().min(20)];
        let waited = arrived
            .err()
            .map(|e| format!(" ({e:#})"))
            .unwrap_or_default();
        bail!(
            "{} rows stored for {} positions published, {duplicates} keys stored twice, \
             {} missing, e.g. {shown:?}{waited}",
            stored.len(),
            expected.len(),
            missing.len(),
        );
    }
    assert_eq!(duplicates, 0, "(taxi, seq) keys stored more than once");
    Ok(())
}

/// An embedded S3 server run by the test (not by a bridge process) and the archive settings
/// pointing at it; the server lives as long as the first value is kept.
async fn archive_outside_the_bridge(
    platform: &Platform,
) -> Result<(EmbeddedS3, bridge::config::ArchiveConfig)> {
    let s3 = start_embedded(
        &platform.dir.path().join("s3"),
        "127.0.0.1:0".parse().context("address")?,
    )
    .await?;
    let archive = external_archive(
        &s3.endpoint,
        &s3.access_key_id,
        &s3.secret_access_key,
        "us-east-1",
    );
    Ok((s3, archive))
}

/// The ids of the taxis `taxi-1` .. `taxi-<n>`.
fn fleet_ids(n: usize) -> Vec<String> {
    (1..=n).map(|n| format!("taxi-{n}")).collect()
}

/// `bridge` is killed with SIGKILL while taxis stream positions, and started again on the
/// same data directory: PostgreSQL ends up with every position exactly once (what was
/// committed but not acknowledged is delivered again and dropped as a duplicate), and the
/// archive, whose spool survives the crash, has every message at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_killed_mid_stream_loses_nothing_and_doubles_nothing() -> Result<()> {
    bounded(LIMIT, async {
        const TAXIS: usize = 5;
        const POSITIONS: u64 = 1000;
        let platform = Platform::start().await?;
        // The archive's S3 server lives in the test, so that it survives the bridge.
        let (_s3, archive) = archive_outside_the_bridge(&platform).await?;
        let config = platform.bridge_config("b1", archive.clone());
        let mut bridge = BridgeProcess::spawn(&config)?;
        bridge.wait_ready().await?;
        platform.wait_until_consuming().await?;

        let stream = start_stream(&platform, TAXIS, POSITIONS, Duration::from_millis(3)).await?;
        let ids = fleet_ids(TAXIS);
        let total = TAXIS as i64 * POSITIONS as i64;
        let at_kill = wait_for_some(&platform, &ids, total / 4).await?;
        bridge.ensure_running()?;
        bridge.kill().await?;
        let still_streaming = stream.iter().any(|drive| !drive.is_finished());
        eprintln!(
            "killed the bridge with {at_kill} of {total} positions stored; taxis still \
             publishing: {still_streaming}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        bridge.start()?;
        bridge.wait_ready().await?;

        let taxis = finish_stream(stream).await?;
        assert_each_position_once(&platform, &taxis).await?;
        bridge.ensure_running()?;
        eprintln!(
            "after the restart: {} duplicates dropped",
            bridge.metric("bridge_duplicates_total").await?
        );

        // Every message is in the archive, at least once (a redelivered one may be twice),
        // and nothing else is.
        let expected = platform.published.multiset();
        eventually(
            "every published message in the archive",
            ARRIVAL,
            || async {
                let archived = archived_multiset(&read_all(&archive).await?);
                let missing = expected
                    .keys()
                    .filter(|sent| !archived.contains_key(*sent))
                    .count();
                let unknown = archived
                    .keys()
                    .filter(|sent| !expected.contains_key(*sent))
                    .count();
                ensure!(
                    unknown == 0,
                    "{unknown} archived messages were never published"
                );
                Ok(if missing == 0 {
                    Progress::Done(())
                } else {
                    Progress::Waiting(format!("{missing} messages not archived"))
                })
            },
        )
        .await?;
        bridge.ensure_running()?;
        Ok(())
    })
    .await
}

/// PostgreSQL crashes (immediate stop) in the middle of a stream and comes back two seconds
/// later: every position ends up stored exactly once, and the bridge carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_stream_loses_nothing() -> Result<()> {
    bounded(LIMIT, async {
        const TAXIS: usize = 5;
        const POSITIONS: u64 = 600;
        let platform = Platform::start().await?;
        let config = platform.bridge_config("b1", platform.embedded_archive("s3"));
        let running = platform.start_bridge(&config).await?;
        platform.wait_until_consuming().await?;

        let stream = start_stream(&platform, TAXIS, POSITIONS, Duration::from_millis(4)).await?;
        let ids = fleet_ids(TAXIS);
        let total = TAXIS as i64 * POSITIONS as i64;
        let at_crash = wait_for_some(&platform, &ids, total / 5).await?;
        platform.stop_postgres_immediately().await?;
        let still_streaming = stream.iter().any(|drive| !drive.is_finished());
        eprintln!(
            "PostgreSQL stopped with {at_crash} of {total} positions stored; taxis still \
             publishing: {still_streaming}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        platform.start_postgres_again().await?;

        let mut taxis = finish_stream(stream).await?;
        assert_each_position_once(&platform, &taxis).await?;

        // The bridge is still alive and consuming.
        let (status, _) = tests::http::get(running.http_addr, "/health").await?;
        assert_eq!(status, 200, "/health after the database came back");
        let taxi = &mut taxis[0];
        taxi.publish_position(position(
            POSITIONS + 1,
            unix_ms(),
            along(home(1), POSITIONS + 1),
        ))
        .await?;
        taxi.wait_acked().await?;
        if let Err(e) = assert_each_position_once(&platform, &taxis).await {
            let metrics = flow_metrics(running.http_addr).await;
            return Err(e.context(format!("after the restart; metrics:\n{metrics}")));
        }
        Ok(())
    })
    .await
}

/// The object store is unreachable while taxis publish: PostgreSQL still gets everything
/// (archiving never holds the stream back) and the archive waits in the spool. Once the store
/// is back, every message reaches it, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_storage_down_then_back_loses_nothing() -> Result<()> {
    bounded(LIMIT, async {
        const TAXIS: usize = 3;
        const POSITIONS: u64 = 300;
        let platform = Platform::start().await?;
        // A port with nothing listening yet.
        let mut moto = MotoServer::stopped()?;
        let archive = external_archive(
            &moto.endpoint,
            &moto.access_key_id,
            &moto.secret_access_key,
            &moto.region,
        );
        let config = platform.bridge_config("b1", archive.clone());
        let running = platform.start_bridge(&config).await?;
        platform.wait_until_consuming().await?;

        let stream = start_stream(&platform, TAXIS, POSITIONS, Duration::from_millis(2)).await?;
        let mut taxis = finish_stream(stream).await?;
        // Bad input is archived as well.
        taxis[0]
            .publish("position", b"\x00\xffnot a position")
            .await?;
        taxis[0].publish("position", b"").await?;
        taxis[0].wait_acked().await?;
        assert_each_position_once(&platform, &taxis).await?;
        let db = platform.db().await?;
        eventually("both dead letters stored", ARRIVAL, || async {
            let dead = db.count("SELECT count(*) FROM dead_letters", &[]).await?;
            Ok(if dead >= 2 {
                Progress::Done(())
            } else {
                Progress::Waiting(format!("{dead} dead letters"))
            })
        })
        .await?;
        let pending = running.archive.pending_segments();
        assert!(
            pending > 0,
            "nothing can have been uploaded, yet no segment is pending"
        );

        moto.start_again().await?;
        eventually("the spool uploaded", ARRIVAL, || async {
            let pending = running.archive.pending_segments();
            Ok(if pending == 0 {
                Progress::Done(())
            } else {
                Progress::Waiting(format!("{pending} segments pending"))
            })
        })
        .await?;
        let archived = archived_multiset(&read_all(&archive).await?);
        let expected = platform.published.multiset();
        if let Some(diff) = multiset_diff(&expected, &archived) {
            panic!("the archive differs from what the taxis published: {diff}");
        }
        Ok(())
    })
    .await
}

/// Two bridge processes in one shared-subscription group, one database: each message is
/// stored once, and both bridges took part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_in_one_group_store_every_message_once() -> Result<()> {
    bounded(LIMIT, async {
        const TAXIS: usize = 5;
        const POSITIONS: u64 = 400;
        let platform = Platform::start().await?;
        let (_s3, archive) = archive_outside_the_bridge(&platform).await?;
        let mut first = BridgeProcess::spawn(&platform.bridge_config("b1", archive.clone()))?;
        let mut second = BridgeProcess::spawn(&platform.bridge_config("b2", archive))?;
        assert_eq!(first.config.mqtt.group, second.config.mqtt.group);
        first.wait_ready().await?;
        second.wait_ready().await?;
        platform.wait_until_consuming().await?;

        let stream = start_stream(&platform, TAXIS, POSITIONS, Duration::from_millis(2)).await?;
        let taxis = finish_stream(stream).await?;
        assert_each_position_once(&platform, &taxis).await?;
        first.ensure_running()?;
        second.ensure_running()?;

        let total = (TAXIS as u64 * POSITIONS) as f64;
        let a = first
            .wait_for_metric("bridge_messages_consumed_total", 1.0, ARRIVAL)
            .await?;
        let b = second
            .wait_for_metric("bridge_messages_consumed_total", 1.0, ARRIVAL)
            .await?;
        eprintln!("consumed: b1 {a}, b2 {b} of {total}");
        assert!(
            a + b >= total,
            "the bridges consumed {a} + {b} messages, fewer than the {total} stored"
        );
        Ok(())
    })
    .await
}
