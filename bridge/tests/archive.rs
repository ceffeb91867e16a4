//! The raw archive against real S3 implementations: the embedded server (s3s-fs) and
//! moto_server. Messages go in through `Archive::append` and come back, byte for byte, through
//! listing, fetching and decoding the objects.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bridge::archive::object::{hour_start_ms, parse_partition};
use bridge::archive::{self, decode_object, start_embedded, Archive, Class};
use bridge::config::ArchiveConfig;
use bridge::record::RawMessage;
use bytes::Bytes;
use testkit::s3::MotoServer;

/// 2024-03-01T00:00:00Z: the test messages straddle this midnight.
const MIDNIGHT: i64 = 1_709_251_200_000;
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,bridge=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

fn config(endpoint: &str, access_key_id: &str, secret_access_key: &str) -> ArchiveConfig {
    init_logs();
    let mut config = bridge::config::Config::default().archive;
    config.embedded = false;
    config.endpoint = endpoint.to_owned();
    config.access_key_id = access_key_id.to_owned();
    config.secret_access_key = secret_access_key.to_owned();
    config.bucket = "taxi-raw".to_owned();
    config.prefix = "raw".to_owned();
    config.roll_bytes = 256 * 1024;
    config.roll_interval_ms = 60_000;
    config.min_backoff_ms = 20;
    config.max_backoff_ms = 200;
    config
}

/// `n` messages over every class, spread over two hours around midnight, with awkward
/// payloads: empty, 0xFF bytes, every byte value, 64 KiB, JSON, postcard.
fn messages(n: usize) -> Vec<RawMessage> {
    let topics = [
        "taxi/t1/position",
        "taxi/t2/tour",
        "taxi/t3/ack",
        "taxi/t4/status",
        "not/a/taxi/topic",
        "taxi/t5/position",
    ];
    (0..n)
        .map(|i| {
            let payload: Vec<u8> = match i % 7 {
                0 => Vec::new(),
                1 => vec![0xFF; 1 + i % 13],
                2 => (0..=255u8).collect(),
                3 if i % 21 == 3 => (0..64 * 1024).map(|j| (j * 31 + i) as u8).collect(),
                4 => vec![0x01, 0x00, 0x02],
                _ => format!(
                    "{{\"seq\":{i},\"ts_ms\":{},\"lat\":52.5,\"lon\":13.4}}",
                    MIDNIGHT + i as i64
                )
                .into_bytes(),
            };
            RawMessage {
                topic: topics[i % topics.len()].to_owned(),
                payload: Bytes::from(payload),
                // Spread over the hour before and the hour after midnight.
                received_ms: MIDNIGHT - 3_000_000 + (i as i64) * 6_000_000 / n as i64,
            }
        })
        .collect()
}

/// Every archived object of the test range, decoded, checked for its key.
async fn read_archive(
    client: &aws_sdk_s3::Client,
    config: &ArchiveConfig,
) -> Vec<(String, Vec<RawMessage>)> {
    let keys = archive::list_objects(
        client,
        &config.bucket,
        &config.prefix,
        &Class::ALL,
        MIDNIGHT - 86_400_000,
        MIDNIGHT + 86_400_000,
    )
    .await
    .unwrap();
    let mut objects = Vec::new();
    for key in keys {
        let object = archive::get_object(client, &config.bucket, &key)
            .await
            .unwrap();
        let decoded = decode_object(&object).unwrap();
        check_key(&key, &decoded);
        objects.push((key, decoded));
    }
    objects
}

/// The key names the class and hour of every message in it, and the bridge and segment.
fn check_key(key: &str, messages: &[RawMessage]) {
    assert!(!messages.is_empty(), "{key}: empty object");
    let rest = key.strip_prefix("raw/").unwrap();
    let (class, rest) = rest.split_once('/').unwrap();
    let hour = parse_partition(rest).unwrap_or_else(|| panic!("{key}: no partition"));
    let name = rest.rsplit('/').next().unwrap();
    assert!(
        name.starts_with("b1-")
            && name.ends_with(".jsonl.gz")
            && name.len() == "b1-".len() + 12 + 9,
        "{key}"
    );
    for m in messages {
        assert_eq!(Class::of_topic(&m.topic).0.as_str(), class, "{key}");
        assert_eq!(hour_start_ms(m.received_ms), hour, "{key}");
    }
}

/// Everything sent is archived exactly once, byte for byte, each object in send order.
fn assert_same(sent: &[RawMessage], objects: &[(String, Vec<RawMessage>)]) {
    let order: BTreeMap<(i64, &str), usize> = sent
        .iter()
        .enumerate()
        .map(|(i, m)| ((m.received_ms, m.topic.as_str()), i))
        .collect();
    assert_eq!(
        order.len(),
        sent.len(),
        "test messages must be distinguishable"
    );
    let mut seen = vec![false; sent.len()];
    for (key, messages) in objects {
        let mut last = None;
        for m in messages {
            let i = *order
                .get(&(m.received_ms, m.topic.as_str()))
                .unwrap_or_else(|| panic!("{key}: unexpected message {m:?}"));
            assert_eq!(m, &sent[i], "{key}: content differs");
            assert!(!seen[i], "{key}: message {i} archived twice");
            seen[i] = true;
            assert!(last < Some(i), "{key}: order not preserved");
            last = Some(i);
        }
    }
    let missing: Vec<usize> = (0..sent.len()).filter(|&i| !seen[i]).collect();
    assert!(missing.is_empty(), "missing messages: {missing:?}");
}

async fn append_in_batches(archive: &Archive, sent: &[RawMessage], batch: usize) {
    for chunk in sent.chunks(batch) {
        let started = Instant::now();
        archive.append(chunk).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "append took {:?}",
            started.elapsed()
        );
    }
}

async fn flush(archive: &Archive) {
    tokio::time::timeout(FLUSH_TIMEOUT, archive.flush())
        .await
        .expect("flush timed out")
        .unwrap();
    assert_eq!(archive.pending_segments(), 0);
    assert_eq!(archive.oldest_pending_received_ms(), None);
}

fn spool_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_through_the_embedded_server() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = start_embedded(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config = config(&s3.endpoint, &s3.access_key_id, &s3.secret_access_key);
    let spool = dir.path().join("spool");
    let archive = Archive::open(&config, spool.clone(), "b1").await.unwrap();
    let sent = messages(600);
    append_in_batches(&archive, &sent, 50).await;
    flush(&archive).await;
    assert!(
        spool_files(&spool).is_empty(),
        "uploaded segments are deleted"
    );

    let objects = read_archive(archive.client(), &config).await;
    assert_same(&sent, &objects);
    // Several segments (roll_bytes), both sides of midnight, every class.
    let keys: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.iter().any(|k| k.contains("/dt=2024-02-29/hour=23/")));
    assert!(keys.iter().any(|k| k.contains("/dt=2024-03-01/hour=00/")));
    for class in ["position", "tour", "ack", "status", "other"] {
        assert!(
            keys.iter().any(|k| k.starts_with(&format!("raw/{class}/"))),
            "{class}"
        );
    }
    assert!(keys.iter().any(|k| k.ends_with("-000000000002.jsonl.gz")));

    // The objects are plain files of the embedded store: zcat reads them.
    let (key, first) = &objects[0];
    let output = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(dir.path().join("s3").join(&config.bucket).join(key))
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().count(), first.len());
    assert!(text.starts_with("{\"received_ms\":"), "{text:.80}");

    // Listing by class and time range.
    let positions = archive::list_objects(
        archive.client(),
        &config.bucket,
        &config.prefix,
        &[Class::Position],
        MIDNIGHT,
        MIDNIGHT + 1,
    )
    .await
    .unwrap();
    assert!(!positions.is_empty());
    assert!(positions
        .iter()
        .all(|k| k.starts_with("raw/position/dt=2024-03-01/hour=00/")));
    let read = archive::read_messages(
        archive.client(),
        &config.bucket,
        &config.prefix,
        &[Class::Tour, Class::Ack],
        MIDNIGHT - 1_000_000,
        MIDNIGHT + 1_000_000,
    )
    .await
    .unwrap();
    let expected: Vec<&RawMessage> = sent
        .iter()
        .filter(|m| m.topic.ends_with("/tour") || m.topic.ends_with("/ack"))
        .filter(|m| (MIDNIGHT - 1_000_000..MIDNIGHT + 1_000_000).contains(&m.received_ms))
        .collect();
    let mut read_sorted: Vec<&RawMessage> = read.iter().collect();
    read_sorted.sort_by_key(|m| (m.received_ms, m.topic.clone()));
    assert_eq!(read_sorted, expected);
    assert!(
        archive::list_objects(archive.client(), &config.bucket, "raw", &Class::ALL, 0, 1)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_through_moto() {
    let moto = MotoServer::start().await.unwrap();
    let config = config(&moto.endpoint, &moto.access_key_id, &moto.secret_access_key);
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(&config, dir.path().to_owned(), "b1")
        .await
        .unwrap();
    let sent = messages(400);
    append_in_batches(&archive, &sent, 64).await;
    flush(&archive).await;
    assert_same(&sent, &read_archive(archive.client(), &config).await);

    // A second flush with nothing new returns at once; later appends go to new segments.
    flush(&archive).await;
    let more: Vec<RawMessage> = messages(30)
        .into_iter()
        .map(|mut m| {
            m.received_ms += 1;
            m
        })
        .collect();
    archive.append(&more).await.unwrap();
    flush(&archive).await;
    let all: Vec<RawMessage> = sent.iter().chain(&more).cloned().collect();
    assert_same(&all, &read_archive(archive.client(), &config).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spools_while_s3_is_down_then_uploads_everything() {
    let mut moto = MotoServer::stopped().unwrap();
    let config = config(&moto.endpoint, &moto.access_key_id, &moto.secret_access_key);
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(&config, dir.path().to_owned(), "b1")
        .await
        .unwrap();
    let sent = messages(500);
    append_in_batches(&archive, &sent, 25).await;
    // Nothing can be uploaded: flush does not finish, the segments wait in the spool.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), archive.flush())
            .await
            .is_err()
    );
    assert!(archive.pending_segments() > 1);
    assert_eq!(
        archive.oldest_pending_received_ms(),
        Some(sent[0].received_ms)
    );
    assert!(!spool_files(dir.path()).is_empty());

    moto.start_again().await.unwrap();
    flush(&archive).await;
    assert!(spool_files(dir.path()).is_empty());
    assert_same(&sent, &read_archive(archive.client(), &config).await);

    // S3 goes away again (and comes back empty): the next messages wait and are uploaded.
    moto.stop().await.unwrap();
    let later: Vec<RawMessage> = messages(50)
        .into_iter()
        .map(|mut m| {
            m.received_ms += 2;
            m
        })
        .collect();
    append_in_batches(&archive, &later, 10).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), archive.flush())
            .await
            .is_err()
    );
    moto.start_again().await.unwrap();
    flush(&archive).await;
    assert_same(&later, &read_archive(archive.client(), &config).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_left_by_a_crash_are_uploaded_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut moto = MotoServer::stopped().unwrap();
    let config = config(&moto.endpoint, &moto.access_key_id, &moto.secret_access_key);
    let sent = messages(300);
    {
        let archive = Archive::open(&config, spool.clone(), "b1").await.unwrap();
        append_in_batches(&archive, &sent, 30).await;
        // "Crash": gone without flushing, with an open segment.
    }
    // The spool lock is released once the background tasks have stopped.
    let deadline = Instant::now() + Duration::from_secs(5);
    let archive = loop {
        match Archive::open(&config, spool.clone(), "b1").await {
            Ok(archive) => break archive,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reopening: {e:#}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e:#}"),
        }
    };
    assert!(archive.pending_segments() > 1);
    assert_eq!(
        archive.oldest_pending_received_ms(),
        Some(sent[0].received_ms)
    );
    moto.start_again().await.unwrap();
    flush(&archive).await;
    assert_same(&sent, &read_archive(archive.client(), &config).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_segment_is_rolled_by_time_without_new_appends() {
    let dir = tempfile::tempdir().unwrap();
    // The archive starts its own embedded server (port 0: any free port).
    let mut config = config("", "", "");
    config.embedded = true;
    config.embedded_dir = dir.path().join("s3");
    config.embedded_listen = "127.0.0.1:0".parse().unwrap();
    config.roll_interval_ms = 200;
    let archive = Archive::open(&config, dir.path().join("spool"), "b1")
        .await
        .unwrap();
    assert!(archive.endpoint().unwrap().starts_with("http://127.0.0.1:"));
    let sent = messages(20);
    archive.append(&sent).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while archive.pending_segments() > 0 {
        assert!(Instant::now() < deadline, "not rolled and uploaded by time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_same(&sent, &read_archive(archive.client(), &config).await);
}
