//! The platform on a broker no one here wrote: Mosquitto 2.0, configured with exactly what
//! `broker export-acl` prints (the ACL from our role rules, the `mosquitto.conf` with mTLS and
//! the certificate's CN as user name), and the services unchanged as its clients.
//!
//! - Ingest: taxis publish positions and tour events; two `bridge` processes share the
//!   subscription (`$share/ingest/...`, persistent sessions); one is killed with SIGKILL in
//!   the middle of the stream and started again; PostgreSQL holds every message exactly once.
//! - Orders: an order posted to the dispatch API reaches a simulated taxi on its inbox through
//!   Mosquitto, and the taxi's answers move the order to `accepted`.
//! - The exported ACL, enforced by Mosquitto: a taxi publishing as another taxi is dropped
//!   (MQTT 5: "not authorized"), a taxi subscribed to other inboxes gets only its own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use simulator::taxi::{Behaviour, Counters, SimulatedTaxi, TaxiSpec};
use tests::bridge_process::BridgeProcess;
use tests::broker::MqttBroker;
use tests::dispatch::{dispatch_config, wait_dispatch_subscribed, DispatchApi};
use tests::mosquitto::MosquittoBroker;
use tests::mqtt::MqttClient;
use tests::platform::{
    along, bounded, eventually, expected_keys, fix_time, home, ids, position, wait_for_positions,
    Platform, Progress, Taxi, ARRIVAL,
};
use tests::{inbox_json, position_json, unix_ms, Event, TestPki, WAIT};
use wire::{TourEvent, TourEventKind};

/// Upper bound of one test.
const LIMIT: Duration = Duration::from_secs(90);

/// A platform whose broker is Mosquitto with the exported configuration.
async fn platform_on_mosquitto() -> Result<Platform<MosquittoBroker>> {
    let pki = TestPki::new()?;
    let broker = MosquittoBroker::start(&pki).await?;
    Platform::with_broker(pki, broker).await
}

/// A tour event of `taxi` at its home, at `ts_ms`.
fn tour_event(taxi: &Taxi, n: usize, seq: u64, kind: TourEventKind, ts_ms: i64) -> TourEvent {
    let (lat, lon) = home(n);
    TourEvent {
        seq,
        tour_id: format!("t-{}", taxi.id),
        kind,
        ts_ms,
        lat,
        lon,
        meter_cents: Some(1200),
    }
}

/// The n-th taxi's shift: tour started, `positions` positions one every `pace` (timed by
/// `fix_time`), tour ended; every publish acknowledged by the broker.
async fn shift(mut taxi: Taxi, n: usize, positions: u64, pace: Duration) -> Result<Taxi> {
    let now = unix_ms();
    let started = tour_event(
        &taxi,
        n,
        1,
        TourEventKind::Started,
        fix_time(now, positions, 0),
    );
    taxi.publish("tour", &wire::encode_json(&started)).await?;
    let mut ticker = tokio::time::interval(pace);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 1..=positions {
        ticker.tick().await;
        let ts_ms = fix_time(now, positions, seq);
        taxi.publish_position(position(seq, ts_ms, along(home(n), seq)))
            .await?;
    }
    let ended = tour_event(&taxi, n, 2, TourEventKind::Ended, unix_ms());
    taxi.publish("tour", &wire::encode_postcard(&ended)).await?;
    taxi.wait_acked().await?;
    Ok(taxi)
}

/// Two bridge processes share the stream through Mosquitto; one is killed with SIGKILL while
/// the taxis publish and started again: every position and tour event is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_store_every_message_once_through_mosquitto_across_a_kill() -> Result<()> {
    bounded(LIMIT, async {
        const TAXIS: usize = 4;
        const POSITIONS: u64 = 500;
        let platform = platform_on_mosquitto().await?;
        let mut first = BridgeProcess::spawn(
            &platform.bridge_config("b1", platform.embedded_archive("s3-b1")),
        )?;
        let mut second = BridgeProcess::spawn(
            &platform.bridge_config("b2", platform.embedded_archive("s3-b2")),
        )?;
        first.wait_ready().await?;
        second.wait_ready().await?;
        platform.wait_until_consuming().await?;

        let mut shifts = Vec::new();
        for n in 1..=TAXIS {
            let taxi = platform.taxi(&format!("taxi-{n}")).await?;
            shifts.push(tokio::spawn(shift(
                taxi,
                n,
                POSITIONS,
                Duration::from_millis(4),
            )));
        }
        // SIGKILL once a third of the stream is out and b1 has consumed some of it.
        let total = TAXIS * (POSITIONS as usize + 2);
        eventually(
            "a third of the stream published, b1 consuming",
            ARRIVAL,
            || async {
                let published = platform.published.all().len();
                let consumed = first.metric("bridge_messages_consumed_total").await?;
                Ok(if published >= total / 3 && consumed > 0.0 {
                    Progress::Done(())
                } else {
                    Progress::Waiting(format!("{published} published, b1 consumed {consumed}"))
                })
            },
        )
        .await?;
        first.ensure_running()?;
        first.kill().await?;
        let streaming = shifts.iter().any(|shift| !shift.is_finished());
        let published = platform.published.all().len();
        eprintln!(
            "killed b1 with {published} of {total} messages published; streaming: {streaming}"
        );
        ensure!(
            streaming,
            "the stream ended before the kill: make it longer"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.start()?;
        first.wait_ready().await?;

        let mut taxis = Vec::new();
        for shift in shifts {
            taxis.push(shift.await.context("a taxi task failed")??);
        }
        let sent = platform.published.all().len();
        assert_eq!(sent, total);

        // Exactly once: the stored keys are the published ones, no more, no fewer.
        let ids = ids(&taxis);
        let expected: Vec<(String, i64)> = expected_keys(&taxis).into_iter().collect();
        let arrived = wait_for_positions(&platform.database_url(), &ids, expected.len()).await;
        let db = platform.db().await?;
        let stored = db.position_rows(&ids).await?;
        if stored != expected {
            let have: BTreeSet<&(String, i64)> = stored.iter().collect();
            let missing: Vec<_> = expected.iter().filter(|k| !have.contains(k)).collect();
            bail!(
                "{} rows stored for {} positions published, {} missing (e.g. {:?}); {arrived:?}",
                stored.len(),
                expected.len(),
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
        let tours: Vec<(String, i64)> = eventually("every tour event stored", ARRIVAL, || async {
            let rows: Vec<(String, i64)> = db
                .rows(
                    "SELECT taxi_id, seq FROM tour_events WHERE taxi_id = ANY($1) ORDER BY 1, 2",
                    &[&ids],
                )
                .await?;
            Ok(if rows.len() >= 2 * TAXIS {
                Progress::Done(rows)
            } else {
                Progress::Waiting(format!("{} tour events", rows.len()))
            })
        })
        .await?;
        let expected_tours: Vec<(String, i64)> = ids
            .iter()
            .flat_map(|id| [(id.clone(), 1), (id.clone(), 2)])
            .collect();
        assert_eq!(tours, expected_tours);
        assert_eq!(stored.len() + tours.len(), sent, "rows = messages sent");

        first.ensure_running()?;
        second.ensure_running()?;
        let (a, b) = (
            first.metric("bridge_messages_consumed_total").await?,
            second.metric("bridge_messages_consumed_total").await?,
        );
        eprintln!(
            "consumed since its start: b1 {a}, b2 {b}; duplicates dropped: b1 {}, b2 {}",
            first.metric("bridge_duplicates_total").await?,
            second.metric("bridge_duplicates_total").await?
        );
        ensure!(a > 0.0 && b > 0.0, "both bridges took part: b1 {a}, b2 {b}");
        Ok(())
    })
    .await
}

/// A taxi that answers every order after 200 ms and accepts it, without driving a tour.
fn accepting() -> Behaviour {
    Behaviour {
        rate: 2.0,
        decide_after: Duration::from_millis(200)..=Duration::from_millis(200),
        accept_share: 1.0,
        orders_become_tours: false,
        hail_every: None,
        offline_every: None,
        ..Behaviour::default()
    }
}

/// An order posted to the dispatch API reaches a simulated taxi through Mosquitto; its
/// answers, stored by the bridge, move the order through `received` to `accepted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_round_trip_through_mosquitto() -> Result<()> {
    bounded(LIMIT, async {
        let platform = platform_on_mosquitto().await?;
        let config = dispatch_config(&platform, "b1", 30_000)?;
        let running = platform.start_bridge(&config).await?;
        let api = DispatchApi {
            addr: running.dispatch_api.context("the dispatch API is on")?,
        };
        wait_dispatch_subscribed(running.http_addr, 1.0).await?;
        platform.wait_until_consuming().await?;

        let cert = platform.pki.client("taxi-7", "taxi")?;
        let client = simulator::pki::Client::from_pem(
            "taxi-7",
            platform.pki.ca_pem().as_bytes(),
            cert.cert_pem.as_bytes(),
            cert.key_pem.as_bytes(),
        )?;
        let counters = Arc::new(Counters::default());
        let addr = platform.broker.mqtt_addr();
        let mut taxi = SimulatedTaxi::spawn(
            TaxiSpec {
                client,
                host: addr.ip().to_string(),
                port: addr.port(),
                behaviour: accepting(),
                seed: 7,
            },
            counters.clone(),
            None,
        );
        taxi.wait_listening(WAIT).await?;

        let order_id = api
            .send_to("taxi-7", "o-mosquitto-1", "Pick up at Alexanderplatz 1")
            .await?;
        let order = api.wait_for_state(&order_id, "accepted").await?;
        assert_eq!(order["taxi_id"], "taxi-7", "{order}");
        let history = api.history(&order_id).await?;
        for state in ["queued", "sent", "received", "accepted"] {
            ensure!(
                history.iter().any(|s| s == state),
                "{state} missing from {history:?}"
            );
        }
        assert_eq!(Counters::get(&counters.accepted), 1);
        assert_eq!(Counters::get(&counters.inbox_new), 1);
        taxi.stop().await;
        Ok(())
    })
    .await
}

/// Publishes `marker` on `topic` (QoS 1, acknowledged) as `client`, then reads `reader`'s
/// messages up to it: returns what came before it.
async fn before_marker(
    client: &mut MqttClient,
    reader: &mut MqttClient,
    topic: &str,
    marker: &[u8],
) -> Result<Vec<(String, Vec<u8>)>> {
    client.publish_acked(topic, false, marker).await?;
    let mut before = Vec::new();
    loop {
        let message = reader
            .expect("a message", WAIT, |event| match event {
                Event::Publish(message) => Some(message.clone()),
                _ => None,
            })
            .await
            .with_context(|| format!("the marker on {topic} never arrived"))?;
        if message.topic == topic && message.payload == marker {
            return Ok(before);
        }
        before.push((message.topic, message.payload));
    }
}

/// Mosquitto enforces the exported ACL: a taxi cannot publish as another taxi (dropped; an
/// MQTT 5 client is told "not authorized"), nor read another taxi's inbox (its subscription
/// gets nothing), nor write to an inbox; services get what their role allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_enforces_the_exported_acl() -> Result<()> {
    bounded(LIMIT, async {
        tests::init();
        let pki = TestPki::new()?;
        let broker = MosquittoBroker::start(&pki).await?;
        let checked = acl_is_enforced(&pki, &broker).await;
        checked.with_context(|| format!("Mosquitto's log ends with:\n{}", broker.log_tail(40)))
    })
    .await
}

async fn acl_is_enforced(pki: &TestPki, broker: &MosquittoBroker) -> Result<()> {
    let taxi1_cert = pki.client("taxi-1", "taxi")?;
    let taxi2_cert = pki.client("taxi-2", "taxi")?;
    let operator_cert = pki.client("operator", "operator")?;
    let bridge_cert = pki.client("bridge", "bridge")?;

    // Publishing as another taxi: the operator (who reads taxi/#) sees only the real one.
    let mut operator = broker.client(&operator_cert).connect().await?;
    let codes = operator
        .subscribe_and_wait(&[("taxi/+/position", 1)])
        .await?;
    assert_eq!(codes, [1]);
    let mut taxi1 = broker.client(&taxi1_cert).connect().await?;
    let codes = taxi1
        .subscribe_and_wait(&[("taxi/taxi-1/inbox", 1)])
        .await?;
    assert_eq!(codes, [1]);
    taxi1
        .publish_acked("taxi/taxi-2/position", false, &position_json(1))
        .await?;
    let forged = before_marker(
        &mut taxi1,
        &mut operator,
        "taxi/taxi-1/position",
        &position_json(2),
    )
    .await?;
    assert_eq!(forged, [], "a taxi published as another taxi");

    // Reading other inboxes: taxi-2 subscribes to taxi-1's and to all of them, and gets
    // only its own.
    let mut taxi2 = broker.client(&taxi2_cert).connect().await?;
    taxi2
        .subscribe_and_wait(&[
            ("taxi/taxi-1/inbox", 1),
            ("taxi/+/inbox", 1),
            ("taxi/taxi-2/inbox", 1),
        ])
        .await?;
    let mut bridge = broker.client(&bridge_cert).connect().await?;
    let for_taxi1 = inbox_json("o-1", "for taxi-1");
    bridge
        .publish_acked("taxi/taxi-1/inbox", false, &for_taxi1)
        .await?;
    taxi1
        .expect_message("taxi/taxi-1/inbox", &for_taxi1)
        .await?;
    // A taxi cannot write to an inbox, its own or another's.
    taxi1
        .publish_acked("taxi/taxi-2/inbox", false, &inbox_json("o-2", "forged"))
        .await?;
    let marker = inbox_json("o-3", "for taxi-2");
    let leaked = before_marker(&mut bridge, &mut taxi2, "taxi/taxi-2/inbox", &marker).await?;
    assert_eq!(leaked, [], "taxi-2 read what was not for it");
    // Nothing else arrived afterwards either (copies of the marker aside: how many a client
    // with overlapping subscriptions gets is the broker's choice).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra: Vec<_> = taxi2
        .messages()
        .into_iter()
        .filter(|m| m.payload != marker)
        .collect();
    assert_eq!(extra, [], "taxi-2 got more");

    // MQTT 5: the PUBACK says so (a connection of its own: the same client id would
    // take over taxi-1's session).
    let output = broker
        .mosquitto_pub(&taxi1_cert)
        .v5()
        .qos(1)
        .topic("taxi/taxi-2/position")
        .message("{}")
        .run()
        .await?;
    ensure!(
        output.stdout.contains("received PUBACK") && output.stdout.contains("RC:135"),
        "expected PUBACK \"not authorized\" (135): {output:?}"
    );

    // Mosquitto logged the refusals.
    let denied = broker.log_lines("Denied PUBLISH from taxi-1");
    ensure!(
        denied.len() >= 3,
        "expected three refused publishes of taxi-1 in the log: {denied:#?}"
    );
    Ok(())
}
