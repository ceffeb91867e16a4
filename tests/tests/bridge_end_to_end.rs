//! The bridge end to end, with real parts: taxis publish over mutual TLS to the broker, the
//! bridge consumes them through its shared subscription and stores them in a private
//! PostgreSQL cluster and a raw archive on a real S3 server (its embedded s3s-fs server, or
//! moto_server). What a user of the data would notice is checked: every row exactly once, the
//! newest position, tours, dead letters with their exact payload, the archive byte for byte,
//! and a replay from the archive.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bridge::archive::object::Class;
use bridge::config::ArchiveConfig;
use testkit::s3::MotoServer;
use tests::archive::{archived_multiset, read_all};
use tests::platform::{
    bounded, drive, drive_fleet, eventually, expected_keys, external_archive, fix_time, home, ids,
    multiset_diff, position, preview, resolved_archive, wait_for_positions, Db, Platform, Progress,
    Taxi, ARRIVAL, BERLIN,
};
use tests::unix_ms;
use wire::{AckState, TourEvent, TourEventKind};

/// Upper bound of one test.
const LIMIT: Duration = Duration::from_secs(120);

/// Which S3 server holds the archive.
#[derive(Clone, Copy, Debug)]
enum S3 {
    /// The bridge's own embedded server (`archive.embedded = true`).
    Embedded,
    /// moto_server, an independent implementation.
    Moto,
}

/// The archive section for `s3`, and the moto server to keep alive meanwhile.
async fn archive_on(platform: &Platform, s3: S3) -> Result<(ArchiveConfig, Option<MotoServer>)> {
    Ok(match s3 {
        S3::Embedded => (platform.embedded_archive("s3"), None),
        S3::Moto => {
            let moto = MotoServer::start().await?;
            let archive = external_archive(
                &moto.endpoint,
                &moto.access_key_id,
                &moto.secret_access_key,
                &moto.region,
            );
            (archive, Some(moto))
        }
    })
}

/// A stored position as the tests compare it: taxi, seq, device time (ms), lat, lon, speed,
/// heading, accuracy.
type PositionRow = (
    String,
    i64,
    i64,
    f64,
    f64,
    Option<f32>,
    Option<f32>,
    Option<f32>,
);

async fn stored_positions(db: &Db, taxis: &[String]) -> Result<Vec<PositionRow>> {
    db.rows(
        "SELECT taxi_id, seq, (extract(epoch FROM ts) * 1000)::int8, lat, lon, speed_kmh, \
         heading_deg, accuracy_m FROM positions WHERE taxi_id = ANY($1) ORDER BY 1, 2",
        &[&taxis],
    )
    .await
}

/// Equal, coordinates within a nanodegree (a JSON number may decode one ulp off).
fn same_position(a: &PositionRow, b: &PositionRow) -> bool {
    let near = |x: f64, y: f64| (x - y).abs() < 1e-9;
    (&a.0, a.1, a.2, a.5, a.6, a.7) == (&b.0, b.1, b.2, b.5, b.6, b.7)
        && near(a.3, b.3)
        && near(a.4, b.4)
}

fn published_rows(taxis: &[Taxi]) -> Vec<PositionRow> {
    let mut rows: Vec<PositionRow> = taxis
        .iter()
        .flat_map(|taxi| {
            taxi.positions.iter().map(|p| {
                (
                    taxi.id.clone(),
                    p.seq as i64,
                    p.ts_ms,
                    p.lat,
                    p.lon,
                    p.speed_kmh,
                    p.heading_deg,
                    p.accuracy_m,
                )
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    rows
}

/// A tour of one taxi: started at its home, ended a little north.
struct Tour {
    id: String,
    started: TourEvent,
    ended: TourEvent,
}

/// A taxi's shift: tour started (tour seq 1), `positions` positions, an ack, tour ended (tour
/// seq 2); JSON and postcard mixed.
async fn shift(mut taxi: Taxi, n: usize, positions: u64) -> Result<(Taxi, Tour)> {
    let (lat, lon) = home(n);
    let tour_id = format!("t-{}-1", taxi.id);
    // Started just before the first position (see `fix_time`).
    let started = TourEvent {
        seq: 1,
        tour_id: tour_id.clone(),
        kind: TourEventKind::Started,
        ts_ms: fix_time(unix_ms(), positions, 0),
        lat,
        lon,
        meter_cents: Some(390),
    };
    taxi.publish("tour", &wire::encode_json(&started)).await?;
    let mut taxi = drive(taxi, (lat, lon), 1..=positions, None).await?;
    let ack = wire::Ack {
        seq: 1,
        order_id: format!("o-{}", taxi.id),
        state: AckState::Accepted,
        ts_ms: unix_ms(),
        reason: None,
    };
    taxi.publish("ack", &wire::encode_postcard(&ack)).await?;
    let ended = TourEvent {
        seq: 2,
        tour_id: tour_id.clone(),
        kind: TourEventKind::Ended,
        ts_ms: unix_ms(),
        lat: lat + 0.01,
        lon,
        meter_cents: Some(2340),
    };
    taxi.publish("tour", &wire::encode_postcard(&ended)).await?;
    taxi.wait_acked().await?;
    Ok((
        taxi,
        Tour {
            id: tour_id,
            started,
            ended,
        },
    ))
}

async fn stores_each_position_and_tour_once(s3: S3) -> Result<()> {
    const TAXIS: usize = 5;
    const POSITIONS: u64 = 200;
    let platform = Platform::start().await?;
    let (archive, _moto) = archive_on(&platform, s3).await?;
    let config = platform.bridge_config("b1", archive);
    let _running = platform.start_bridge(&config).await?;
    platform.wait_until_consuming().await?;

    let mut shifts = Vec::new();
    for n in 1..=TAXIS {
        let taxi = platform.taxi(&format!("taxi-{n}")).await?;
        shifts.push(tokio::spawn(shift(taxi, n, POSITIONS)));
    }
    let mut taxis = Vec::new();
    let mut tours = Vec::new();
    for shift in shifts {
        let (taxi, tour) = shift.await??;
        taxis.push(taxi);
        tours.push(tour);
    }
    let ids = ids(&taxis);
    let url = platform.database_url();
    wait_for_positions(&url, &ids, TAXIS * POSITIONS as usize).await?;
    let db = platform.db().await?;
    eventually("both events of every tour stored", ARRIVAL, || async {
        let complete = db
            .count(
                "SELECT count(*) FROM tours WHERE taxi_id = ANY($1) \
                 AND started_at IS NOT NULL AND ended_at IS NOT NULL",
                &[&ids],
            )
            .await?;
        let acks = db
            .count("SELECT count(*) FROM acks WHERE taxi_id = ANY($1)", &[&ids])
            .await?;
        Ok(if complete == TAXIS as i64 && acks == TAXIS as i64 {
            Progress::Done(())
        } else {
            Progress::Waiting(format!("{complete} complete tours, {acks} acks"))
        })
    })
    .await?;

    // Exactly the positions published, each once, with their values.
    let stored = stored_positions(&db, &ids).await?;
    let expected = published_rows(&taxis);
    ensure!(
        stored.len() == expected.len(),
        "{} positions stored, {} published",
        stored.len(),
        expected.len()
    );
    let differing: Vec<String> = stored
        .iter()
        .zip(&expected)
        .filter(|(s, e)| !same_position(s, e))
        .map(|(s, e)| format!("stored {s:?}, published {e:?}"))
        .collect();
    assert!(
        differing.is_empty(),
        "{} stored positions differ from the published ones, e.g.:\n{}",
        differing.len(),
        differing[..differing.len().min(5)].join("\n")
    );
    assert_eq!(
        db.duplicate_position_keys().await?,
        0,
        "a (taxi, seq) stored twice"
    );

    for (taxi, tour) in taxis.iter().zip(&tours) {
        // The newest fix of each taxi.
        let last = taxi.positions.last().context("no positions")?;
        let latest: (i64, i64, f64, f64) = db
            .row(
                "SELECT seq, (extract(epoch FROM ts) * 1000)::int8, lat, lon \
                 FROM latest_positions WHERE taxi_id = $1",
                &[&taxi.id],
            )
            .await
            .with_context(|| format!("latest position of {}", taxi.id))?;
        assert!(
            (latest.0, latest.1) == (last.seq as i64, last.ts_ms)
                && (latest.2 - last.lat).abs() < 1e-9
                && (latest.3 - last.lon).abs() < 1e-9,
            "latest position of {}: stored {latest:?}, newest published {last:?}",
            taxi.id
        );

        // The tour, from its two events.
        let stored_tour: (i64, f64, f64, i64, f64, f64, Option<i64>) = db
            .row(
                "SELECT (extract(epoch FROM started_at) * 1000)::int8, start_lat, start_lon, \
                 (extract(epoch FROM ended_at) * 1000)::int8, end_lat, end_lon, meter_cents \
                 FROM tours WHERE taxi_id = $1 AND tour_id = $2",
                &[&taxi.id, &tour.id],
            )
            .await
            .with_context(|| format!("tour {} of {}", tour.id, taxi.id))?;
        let expected_tour = (
            tour.started.ts_ms,
            tour.started.lat,
            tour.started.lon,
            tour.ended.ts_ms,
            tour.ended.lat,
            tour.ended.lon,
            Some(2340),
        );
        let near = |x: f64, y: f64| (x - y).abs() < 1e-9;
        assert!(
            (stored_tour.0, stored_tour.3, stored_tour.6)
                == (expected_tour.0, expected_tour.3, expected_tour.6)
                && near(stored_tour.1, expected_tour.1)
                && near(stored_tour.2, expected_tour.2)
                && near(stored_tour.4, expected_tour.4)
                && near(stored_tour.5, expected_tour.5),
            "tour of {}: stored {stored_tour:?}, published {expected_tour:?}",
            taxi.id
        );
    }
    assert_eq!(
        db.count(
            "SELECT count(*) FROM tour_events WHERE taxi_id = ANY($1)",
            &[&ids]
        )
        .await?,
        2 * TAXIS as i64,
        "tour events"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM tours", &[]).await?,
        TAXIS as i64,
        "one row per tour"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dead_letters", &[]).await?,
        0,
        "every message was valid"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_stores_each_position_and_tour_once_embedded_s3() -> Result<()> {
    bounded(LIMIT, stores_each_position_and_tour_once(S3::Embedded)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_stores_each_position_and_tour_once_moto() -> Result<()> {
    bounded(LIMIT, stores_each_position_and_tour_once(S3::Moto)).await
}

/// `len` bytes of a fixed pseudo-random sequence, first byte `first`.
fn noise(len: usize, first: u8, mut state: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    if let Some(b) = bytes.first_mut() {
        *b = first;
    }
    bytes
}

async fn archive_holds_every_message(s3: S3) -> Result<()> {
    const TAXIS: usize = 3;
    const POSITIONS: u64 = 100;
    let started_ms = unix_ms();
    let platform = Platform::start().await?;
    let (archive, _moto) = archive_on(&platform, s3).await?;
    let config = platform.bridge_config("b1", archive);
    let running = platform.start_bridge(&config).await?;
    platform.wait_until_consuming().await?;

    let mut taxis = drive_fleet(&platform, "taxi", TAXIS, POSITIONS, None).await?;
    // Invalid messages are archived too, byte for byte.
    let lat_123 = format!(
        r#"{{"seq":9000,"ts_ms":{},"lat":123.0,"lon":13.4}}"#,
        unix_ms()
    );
    let mut invalid = 0;
    for (n, taxi) in taxis.iter_mut().enumerate() {
        let bad: Vec<(&str, Vec<u8>)> = vec![
            (
                "position",
                noise(300, 0x9c, 0x2545_f491_4f6c_dd1d + n as u64),
            ),
            ("position", Vec::new()),
            ("position", lat_123.clone().into_bytes()),
            ("tour", b"{not json".to_vec()),
            ("ack", (0..=255u8).collect()),
            ("position", noise(70_000, b'{', 7 + n as u64)),
        ];
        for (kind, payload) in bad {
            taxi.publish(kind, &payload).await?;
            invalid += 1;
        }
        taxi.wait_acked().await?;
    }
    let ids = ids(&taxis);
    let url = platform.database_url();
    wait_for_positions(&url, &ids, TAXIS * POSITIONS as usize).await?;
    let db = platform.db().await?;
    eventually("every invalid message in dead_letters", ARRIVAL, || async {
        let by_reason: Vec<(String, i64)> = db
            .rows(
                "SELECT reason_code, count(*) FROM dead_letters WHERE taxi_id = ANY($1) \
                 GROUP BY 1 ORDER BY 1",
                &[&ids],
            )
            .await?;
        let dead: i64 = by_reason.iter().map(|(_, n)| n).sum();
        Ok(if dead >= invalid {
            Progress::Done(())
        } else {
            Progress::Waiting(format!("{dead} of {invalid} dead letters: {by_reason:?}"))
        })
    })
    .await?;

    // Everything the pipeline committed was appended to the spool first: upload it all.
    tokio::time::timeout(ARRIVAL, running.archive.flush())
        .await
        .context("the archive did not finish uploading")??;
    let archived = read_all(&resolved_archive(&config, &running)).await?;
    let expected = platform.published.multiset();
    let actual = archived_multiset(&archived);
    if let Some(diff) = multiset_diff(&expected, &actual) {
        panic!("the archive differs from what the taxis published: {diff}");
    }

    // Objects are where their messages belong: class and hour of the receive time.
    let now = unix_ms();
    for message in &archived {
        let (class, _) = Class::of_topic(&message.topic);
        let partition = bridge::archive::object::partition(message.received_ms);
        let prefix = format!("raw/{class}/{partition}/b1-");
        assert!(
            message.key.starts_with(&prefix) && message.key.ends_with(".jsonl.gz"),
            "{} {} in object {}, expected under {prefix}",
            message.topic,
            preview(&message.payload),
            message.key
        );
        assert!(
            (started_ms..=now).contains(&message.received_ms),
            "receive time {} outside the test",
            message.received_ms
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_holds_every_message_byte_for_byte_embedded_s3() -> Result<()> {
    bounded(LIMIT, archive_holds_every_message(S3::Embedded)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_holds_every_message_byte_for_byte_moto() -> Result<()> {
    bounded(LIMIT, archive_holds_every_message(S3::Moto)).await
}

/// One kind of bad input and the dead-letter reason it must get.
struct Bad {
    what: &'static str,
    /// The payload, given the time of publishing.
    payload: Box<dyn Fn(i64) -> Vec<u8>>,
    reason_code: &'static str,
}

impl Bad {
    fn new(
        what: &'static str,
        reason_code: &'static str,
        payload: impl Fn(i64) -> Vec<u8> + 'static,
    ) -> Bad {
        Bad {
            what,
            payload: Box::new(payload),
            reason_code,
        }
    }
}

/// A JSON position of seq `seq` with the given time and place, and more fields.
fn json_position(seq: u64, ts_ms: i64, lat: f64, lon: f64, extra: &str) -> Vec<u8> {
    format!(r#"{{"seq":{seq},"ts_ms":{ts_ms},"lat":{lat},"lon":{lon}{extra}}}"#).into_bytes()
}

/// Every kind of bad payload becomes a dead letter with its reason and exact bytes, and the
/// valid position published right after it is stored: bad input never blocks the stream.
///
/// A topic of the wrong shape (`taxi/taxi-1/position/extra`, `taxi/taxi-2/position` from
/// taxi-1) cannot be published by a taxi: the broker refuses it and disconnects the client
/// (`taxi_publishing_elsewhere_is_disconnected` in `authorization.rs`), so it never reaches the
/// bridge. The bridge's own handling of such topics (dead letter `topic`) is covered by the
/// unit test `bad_input_becomes_a_dead_letter_with_the_reason` of `bridge::validate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_lands_in_dead_letters_and_the_stream_goes_on() -> Result<()> {
    bounded(LIMIT, async {
        let platform = Platform::start().await?;
        let config = platform.bridge_config("b1", platform.embedded_archive("s3"));
        let running = platform.start_bridge(&config).await?;
        platform.wait_until_consuming().await?;
        let db = platform.db().await?;
        let mut taxi = platform.taxi("taxi-bad").await?;
        let topic = taxi.topic("position");
        let (lat, lon) = BERLIN;

        let cases = vec![
            Bad::new("random bytes", "unknown_version", |_| {
                noise(512, 0x9c, 0x1234_5678_9abc_def1)
            }),
            Bad::new("a cut postcard message", "postcard", |_| {
                vec![wire::POSTCARD_V1, 0xff, 0xff]
            }),
            Bad::new("an empty payload", "empty", |_| Vec::new()),
            Bad::new("only whitespace", "empty", |_| b" \n\t ".to_vec()),
            // Under the broker's 256 KiB packet limit, over the contract's 64 KiB.
            Bad::new("200 KiB", "too_large", |_| noise(200 * 1024, b'{', 99)),
            Bad::new("broken JSON", "json", |_| b"{\"seq\":1,".to_vec()),
            Bad::new("latitude 123", "invalid_value", |now| {
                json_position(1001, now, 123.0, 13.4, "")
            }),
            Bad::new("an hour in the future", "future_time", move |now| {
                json_position(1002, now + 3_600_000, lat, lon, "")
            }),
            Bad::new("older than the retention", "too_old", move |now| {
                json_position(1003, now - 10 * 86_400_000, lat, lon, "")
            }),
            Bad::new("400 km/h reported", "speed", move |now| {
                json_position(1004, now, lat, lon, r#","speed_kmh":400.0"#)
            }),
            // 100 km north, 10 s after the fixes around it.
            Bad::new("a jump of 100 km in 10 s", "implied_speed", move |now| {
                json_position(1005, now + 10_000, lat + 0.9, lon, "")
            }),
        ];

        let mut sent = Vec::new();
        let mut seq = 0;
        for (n, case) in cases.iter().enumerate() {
            let payload = (case.payload)(unix_ms());
            taxi.publish("position", &payload).await?;
            sent.push(payload);
            seq += 1;
            taxi.publish_position(position(seq, unix_ms(), BERLIN))
                .await?;
            taxi.wait_acked()
                .await
                .with_context(|| format!("publishing {}", case.what))?;
            let ids = vec![taxi.id.clone()];
            wait_for_positions(&platform.database_url(), &ids, seq as usize)
                .await
                .with_context(|| format!("the valid position after {}", case.what))?;
            eventually(
                &format!("a dead letter for {}", case.what),
                ARRIVAL,
                || async {
                    let dead = db.count("SELECT count(*) FROM dead_letters", &[]).await?;
                    Ok(if dead > n as i64 {
                        Progress::Done(())
                    } else {
                        Progress::Waiting(format!("{dead} dead letters"))
                    })
                },
            )
            .await?;
        }

        let rows = db
            .client()
            .query(
                "SELECT topic, taxi_id, reason_code, payload FROM dead_letters ORDER BY id",
                &[],
            )
            .await?;
        let mut stored: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
        for row in &rows {
            let topic: String = row.try_get(0)?;
            let taxi_id: Option<String> = row.try_get(1)?;
            assert_eq!(topic, "taxi/taxi-bad/position");
            assert_eq!(taxi_id.as_deref(), Some("taxi-bad"));
            stored
                .entry(row.try_get(3)?)
                .or_default()
                .push(row.try_get(2)?);
        }
        for (case, payload) in cases.iter().zip(&sent) {
            let reasons = stored.remove(payload);
            assert_eq!(
                reasons,
                Some(vec![case.reason_code.to_owned()]),
                "{} ({}): one dead letter with reason {}",
                case.what,
                preview(payload),
                case.reason_code
            );
        }
        let extra: Vec<String> = stored.keys().map(|p| preview(p)).collect();
        assert!(extra.is_empty(), "dead letters nobody expected: {extra:?}");

        // Every valid position after a bad one, and nothing else.
        let keys = db.position_rows(&[taxi.id.clone()]).await?;
        let expected: Vec<(String, i64)> = expected_keys(std::slice::from_ref(&taxi))
            .into_iter()
            .collect();
        assert_eq!(keys, expected, "the valid positions of {topic}");

        // Still serving.
        let (status, _) = tests::http::get(running.http_addr, "/health").await?;
        assert_eq!(status, 200);
        Ok(())
    })
    .await
}

/// Rows deleted from PostgreSQL come back from the archive, exactly as they were, and a second
/// replay changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_restores_deleted_rows_idempotently() -> Result<()> {
    bounded(LIMIT, async {
        const TAXIS: usize = 3;
        const POSITIONS: u64 = 100;
        let from_ms = unix_ms() - 60_000;
        let platform = Platform::start().await?;
        let config = platform.bridge_config("b1", platform.embedded_archive("s3"));
        let running = platform.start_bridge(&config).await?;
        platform.wait_until_consuming().await?;
        let taxis = drive_fleet(&platform, "taxi", TAXIS, POSITIONS, None).await?;
        let ids = ids(&taxis);
        let total = TAXIS * POSITIONS as usize;
        wait_for_positions(&platform.database_url(), &ids, total).await?;
        tokio::time::timeout(ARRIVAL, running.archive.flush())
            .await
            .context("the archive did not finish uploading")??;

        let db = platform.db().await?;
        // Whole rows, receive time included: a replay restores them exactly.
        let snapshot = || async {
            let rows = db
                .client()
                .query(
                    "SELECT p::text FROM positions p WHERE taxi_id = ANY($1) ORDER BY taxi_id, seq",
                    &[&ids],
                )
                .await?;
            rows.iter()
                .map(|r| Ok(r.try_get::<_, String>(0)?))
                .collect::<Result<Vec<String>>>()
        };
        let before = snapshot().await?;
        assert_eq!(before.len(), total);
        let deleted = db
            .client()
            .execute("DELETE FROM positions WHERE taxi_id = ANY($1)", &[&ids])
            .await?;
        assert_eq!(deleted, total as u64);

        let archive = resolved_archive(&config, &running);
        let to_ms = unix_ms() + 60_000;
        let first =
            bridge::replay::replay(&config, &archive, from_ms, to_ms, &[Class::Position]).await?;
        assert_eq!(
            first.positions_inserted, total as u64,
            "first replay: {first:?}"
        );
        assert_eq!(first.dead_letters, 0, "first replay: {first:?}");
        let after = snapshot().await?;
        assert_eq!(
            after, before,
            "the replayed rows differ from the deleted ones"
        );

        let second =
            bridge::replay::replay(&config, &archive, from_ms, to_ms, &[Class::Position]).await?;
        assert_eq!(second.positions_inserted, 0, "second replay: {second:?}");
        assert_eq!(
            second.positions_duplicate,
            first.positions_duplicate + total as u64,
            "second replay finds everything stored: {second:?} after {first:?}"
        );
        assert_eq!(snapshot().await?, before, "a second replay changed rows");
        assert_eq!(db.duplicate_position_keys().await?, 0);
        Ok(())
    })
    .await
}

/// A stock MQTT client as the taxi: `mosquitto_pub` sends a JSON position, it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_position_is_stored() -> Result<()> {
    bounded(LIMIT, async {
        let platform = Platform::start().await?;
        let config = platform.bridge_config("b1", platform.embedded_archive("s3"));
        let _running = platform.start_bridge(&config).await?;
        platform.wait_until_consuming().await?;

        let cert = platform.pki.client("taxi-042", "taxi")?;
        let ts_ms = unix_ms();
        let payload = format!(
            r#"{{"seq":1732200000124,"ts_ms":{ts_ms},"lat":52.52003,"lon":13.40481,"speed_kmh":31.5}}"#
        );
        platform
            .broker
            .mosquitto_pub(&cert)
            .topic("taxi/taxi-042/position")
            .message(&payload)
            .run_acked()
            .await?;
        let ids = vec!["taxi-042".to_owned()];
        wait_for_positions(&platform.database_url(), &ids, 1).await?;
        let db = platform.db().await?;
        let stored: (i64, i64, f64, f64, Option<f32>) = db
            .row(
                "SELECT seq, (extract(epoch FROM ts) * 1000)::int8, lat, lon, speed_kmh \
                 FROM positions WHERE taxi_id = 'taxi-042'",
                &[],
            )
            .await?;
        assert_eq!(
            stored,
            (1_732_200_000_124, ts_ms, 52.52003, 13.40481, Some(31.5))
        );
        Ok(())
    })
    .await
}
