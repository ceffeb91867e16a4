//! Tours end to end with real parts: the broker, `bridge` processes judging tours with a
//! known tariff, PostgreSQL, taxis as rumqttc clients (and one simulated taxi with its
//! meter), and the backoffice following `backoffice/invoices` with `mosquitto_sub`.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tests::platform::{bounded, eventually, Platform, Progress, ARRIVAL};
use tests::tours::{
    ensure_no_tour_dead_letters, follow_invoices, invoice, known_route, next_published_invoice,
    north, platform_with_tours, recent_start_ms, spawn_consuming, start_tours_bridge, test_tariff,
    tour_dead_letters, tour_state, tours_config, verdicts, wait_for_inbox, wait_for_invoice,
    wait_until_all_applied, wait_until_judged, TourTaxi, KNOWN_ROUTE_FARE_CENTS, SETTLE_MS,
};
use tests::WAIT;
use wire::TourEventKind::{Ended, Started};

/// Upper bound of one test.
const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tour_over_a_known_route_is_invoiced_to_the_taxi_and_the_backoffice() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, bridge) = platform_with_tours().await?;
        let mut backoffice = follow_invoices(&platform).await?;

        let mut taxi = TourTaxi::new(&platform, "taxi-7").await?;
        let inbox = taxi.taxi.topic("inbox");
        ensure!(taxi.taxi.client.subscribe_and_wait(&[(&inbox, 1)]).await? == [1]);
        let start_ms = recent_start_ms(30);
        let route = known_route(start_ms);
        // The hand-worked fare is what the tariff computes for the route.
        ensure!(
            test_tariff().fare(&route).total_cents == KNOWN_ROUTE_FARE_CENTS,
            "{:?}",
            test_tariff().fare(&route)
        );
        taxi.drive_tour("t-7-1", &route, Some(KNOWN_ROUTE_FARE_CENTS))
            .await?;

        let row = wait_for_invoice(&platform, "t-7-1").await?;
        ensure!(
            row.fare_cents == KNOWN_ROUTE_FARE_CENTS as i64,
            "fare {} instead of {KNOWN_ROUTE_FARE_CENTS}: {row:?}",
            row.fare_cents
        );
        ensure!(
            (
                row.base_cents,
                row.distance_cents,
                row.driving_cents,
                row.waiting_cents
            ) == (400, 1_000, 90, 240),
            "{row:?}"
        );
        ensure!(
            (row.night_cents, row.zone_cents) == (0, 150) && row.zones == ["station"],
            "{row:?}"
        );
        ensure!((row.distance_m - 5_000.0).abs() < 1.0, "{row:?}");
        ensure!(
            row.taxi_id == "taxi-7" && row.meter_cents == Some(KNOWN_ROUTE_FARE_CENTS as i64),
            "{row:?}"
        );
        ensure!(
            row.difference_cents == Some(0) && !row.flagged,
            "meter equal to the fare is not flagged: {row:?}"
        );
        ensure!(row.order_id == "invoice-t-7-1", "{row:?}");
        let db = platform.db().await?;
        ensure!(
            tour_state(&db, "t-7-1").await? == Some(("taxi-7".into(), "ended".into())),
            "{:?}",
            tour_state(&db, "t-7-1").await?
        );

        // The backoffice gets the invoice as JSON.
        let published = next_published_invoice(&mut backoffice).await?;
        ensure!(
            published.tour_id == "t-7-1"
                && published.taxi_id == "taxi-7"
                && published.fare_cents == KNOWN_ROUTE_FARE_CENTS
                && published.distance_m == 5_000
                && (published.driving_s, published.waiting_s) == (540, 240)
                && published.started_ms == route[0].ts_ms
                && published.ended_ms == route[route.len() - 1].ts_ms
                && published.currency == "EUR"
                && !published.flagged
                && published.order_id == "invoice-t-7-1",
            "{published:?}"
        );

        // The taxi gets the summary in its inbox, tracked like every order.
        let message = wait_for_inbox(&mut taxi.taxi, "invoice-t-7-1", WAIT).await?;
        ensure!(message.kind == wire::InboxKind::Invoice, "{message:?}");
        ensure!(
            message.text.contains("18.80 EUR") && message.text.contains("t-7-1"),
            "{message:?}"
        );
        // The taxi confirms it; the order records it.
        let ack = serde_json::json!({
            "seq": 1, "order_id": "invoice-t-7-1", "state": "received", "ts_ms": tests::unix_ms(),
        });
        taxi.taxi.publish("ack", ack.to_string().as_bytes()).await?;
        taxi.taxi.wait_acked().await?;
        let order = eventually("the invoice order received", ARRIVAL, || async {
            let order: (String, String, String, String) = db
                .row(
                    "SELECT taxi_id, kind, sender, state FROM orders WHERE order_id = $1",
                    &[&"invoice-t-7-1"],
                )
                .await?;
            Ok(if order.3 == "received" {
                Progress::Done(order)
            } else {
                Progress::Waiting(format!("{order:?}"))
            })
        })
        .await?;
        ensure!(
            (order.0.as_str(), order.1.as_str(), order.2.as_str())
                == ("taxi-7", "invoice", "platform"),
            "{order:?}"
        );
        let judged = wait_until_all_applied(&platform, "taxi-7", 2).await?;
        ensure!(judged.iter().all(|v| v.4.is_none()), "{judged:?}");
        ensure_no_tour_dead_letters(&db, "taxi-7").await?;
        // Counted in /metrics.
        bridge
            .wait_for_metric("bridge_invoices_issued_total", 1.0, WAIT)
            .await?;
        bridge
            .wait_for_metric("bridge_invoices_published_total", 1.0, WAIT)
            .await?;
        ensure!(bridge.metric("bridge_invoices_flagged_total").await? == 0.0);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lifecycle_violation_lands_in_dead_letters_with_its_reason() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, bridge) = platform_with_tours().await?;
        let start_ms = recent_start_ms(30);
        let at = |s: i64, km: f64| north(start_ms, s, km);

        let mut a = TourTaxi::new(&platform, "taxi-a").await?;
        // An end without a start.
        a.tour("ghost", Ended, at(0, 0.0), Some(500)).await?;
        // A tour, started twice (the second time elsewhere, later).
        a.tour("t-a", Started, at(60, 0.0), None).await?;
        a.tour("t-a", Started, at(120, 0.5), None).await?;
        a.taxi.wait_acked().await?;
        // Another taxi starts and ends taxi-a's tour.
        let mut b = TourTaxi::new(&platform, "taxi-b").await?;
        b.tour("t-a", Started, at(200, 1.0), None).await?;
        b.tour("t-a", Ended, at(300, 2.0), Some(800)).await?;
        b.taxi.wait_acked().await?;
        // taxi-a ends its tour, then ends it again differently.
        a.tour("t-a", Ended, at(400, 2.0), Some(1_000)).await?;
        a.tour("t-a", Ended, at(500, 3.0), Some(1_200)).await?;
        a.taxi.wait_acked().await?;

        let judged_a = wait_until_judged(&platform, "taxi-a", 5).await?;
        let judged_b = wait_until_judged(&platform, "taxi-b", 2).await?;
        let outcome = |v: &tests::tours::Verdict| (v.3.clone().unwrap_or_default(), v.4.clone());
        let a_outcomes: Vec<_> = judged_a.iter().map(outcome).collect();
        ensure!(
            a_outcomes
                == [
                    ("rejected".into(), Some("tour_end_without_start".into())),
                    ("applied".into(), None),
                    ("rejected".into(), Some("tour_second_start".into())),
                    ("applied".into(), None),
                    ("rejected".into(), Some("tour_second_end".into())),
                ],
            "{judged_a:?}"
        );
        let b_outcomes: Vec<_> = judged_b.iter().map(outcome).collect();
        ensure!(
            b_outcomes
                == [
                    ("rejected".into(), Some("tour_other_taxi".into())),
                    ("rejected".into(), Some("tour_other_taxi".into())),
                ],
            "{judged_b:?}"
        );

        let db = platform.db().await?;
        let dead_a = tour_dead_letters(&db, "taxi-a").await?;
        let codes_a: Vec<&str> = dead_a.iter().map(|d| d.0.as_str()).collect();
        ensure!(
            codes_a
                == [
                    "tour_end_without_start",
                    "tour_second_start",
                    "tour_second_end"
                ],
            "{dead_a:?}"
        );
        // Each dead letter says why and carries the event.
        ensure!(
            dead_a[0].1.contains("never started") && dead_a[0].2.contains("\"ghost\""),
            "{:?}",
            dead_a[0]
        );
        let event: wire::TourEvent = wire::decode(dead_a[1].2.as_bytes())?;
        ensure!(
            event.tour_id == "t-a" && event.kind == Started && event.ts_ms == at(120, 0.5).ts_ms,
            "{event:?}"
        );
        let dead_b = tour_dead_letters(&db, "taxi-b").await?;
        ensure!(
            dead_b.len() == 2
                && dead_b.iter().all(|d| d.0 == "tour_other_taxi"
                    && d.1.contains("taxi-a")
                    && d.1.contains("taxi-b")),
            "{dead_b:?}"
        );
        // The tour stays taxi-a's, ended by taxi-a's first end, with one invoice.
        ensure!(tour_state(&db, "t-a").await? == Some(("taxi-a".into(), "ended".into())));
        let row = wait_for_invoice(&platform, "t-a").await?;
        ensure!(
            row.taxi_id == "taxi-a" && row.meter_cents == Some(1_000),
            "{row:?}"
        );
        ensure!(tour_state(&db, "ghost").await?.is_none());
        ensure!(invoice(&db, "ghost").await?.is_none());
        // Each reason counted in /metrics.
        let addr = bridge.http_addr;
        eventually("rejections counted by reason", WAIT, || async move {
            let (_, page) = tests::http::get(addr, "/metrics").await?;
            let counted: Vec<Option<f64>> = [
                "tour_end_without_start",
                "tour_second_start",
                "tour_second_end",
                "tour_other_taxi",
            ]
            .iter()
            .map(|reason| {
                tests::http::sample(&page, "bridge_tour_rejections_total", &[("reason", reason)])
            })
            .collect();
            Ok(if counted == [Some(1.0), Some(1.0), Some(1.0), Some(2.0)] {
                Progress::Done(())
            } else {
                Progress::Waiting(format!("{counted:?}"))
            })
        })
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_events_are_idempotent() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge) = platform_with_tours().await?;
        let route = known_route(recent_start_ms(30));
        let (first, last) = (route[0], route[route.len() - 1]);
        let mut taxi = TourTaxi::new(&platform, "taxi-r").await?;
        taxi.drive_tour("t-r", &route, Some(KNOWN_ROUTE_FARE_CENTS))
            .await?;
        let first_invoice = wait_for_invoice(&platform, "t-r").await?;
        // The device sends both events again with new sequence numbers (a reboot), and the
        // very same messages again (a redelivery): nothing changes.
        taxi.tour("t-r", Started, first, None).await?;
        taxi.tour("t-r", Ended, last, Some(KNOWN_ROUTE_FARE_CENTS))
            .await?;
        let resent = [
            (Started, first, None),
            (Ended, last, Some(KNOWN_ROUTE_FARE_CENTS)),
        ];
        for (seq, (kind, at, meter)) in (taxi.tour_seq - 1..).zip(resent) {
            let payload = tests::tours::tour_event(seq, "t-r", kind, at, meter);
            taxi.taxi.publish("tour", &payload).await?;
        }
        taxi.taxi.wait_acked().await?;

        let judged = wait_until_judged(&platform, "taxi-r", 4).await?;
        let outcomes: Vec<Option<&str>> = judged.iter().map(|v| v.3.as_deref()).collect();
        ensure!(
            outcomes
                == [
                    Some("applied"),
                    Some("applied"),
                    Some("repeated"),
                    Some("repeated")
                ],
            "{judged:?}"
        );
        let db = platform.db().await?;
        ensure_no_tour_dead_letters(&db, "taxi-r").await?;
        ensure!(
            db.count(
                "SELECT count(*) FROM tour_events WHERE taxi_id = 'taxi-r'",
                &[]
            )
            .await?
                == 4,
            "the redelivered messages are stored once"
        );
        ensure!(
            db.count("SELECT count(*) FROM invoices WHERE tour_id = 't-r'", &[])
                .await?
                == 1
        );
        ensure!(
            db.count(
                "SELECT count(*) FROM orders WHERE taxi_id = 'taxi-r' AND kind = 'invoice'",
                &[]
            )
            .await?
                == 1
        );
        let mut row = invoice(&db, "t-r").await?.context("invoice gone")?;
        row.published = first_invoice.published;
        ensure!(row == first_invoice, "{row:?} != {first_invoice:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_arriving_before_its_start_is_judged_in_device_time_order() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge) = platform_with_tours().await?;
        let route = known_route(recent_start_ms(30));
        let (first, last) = (route[0], route[route.len() - 1]);
        let mut taxi = TourTaxi::new(&platform, "taxi-o").await?;
        for point in &route[1..route.len() - 1] {
            taxi.position(*point).await?;
        }
        // The end is published first (the start was held back by the device): both arrive
        // well within the settle delay of each other.
        taxi.tour_seq = 10;
        taxi.tour("t-o", Ended, last, Some(KNOWN_ROUTE_FARE_CENTS))
            .await?;
        taxi.taxi.wait_acked().await?;
        let pause = Duration::from_millis(SETTLE_MS / 4);
        tokio::time::sleep(pause).await;
        let payload = tests::tours::tour_event(5, "t-o", Started, first, None);
        taxi.taxi.publish("tour", &payload).await?;
        taxi.taxi.wait_acked().await?;

        let row = wait_for_invoice(&platform, "t-o").await?;
        ensure!(
            row.fare_cents == KNOWN_ROUTE_FARE_CENTS as i64 && !row.flagged,
            "{row:?}"
        );
        wait_until_all_applied(&platform, "taxi-o", 2).await?;
        let db = platform.db().await?;
        ensure_no_tour_dead_letters(&db, "taxi-o").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_meter_difference_is_flagged() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge) = platform_with_tours().await?;
        let mut backoffice = follow_invoices(&platform).await?;

        // 10.00 more than the fare: flagged. 0.50 less: within the tolerance.
        let mut over = TourTaxi::new(&platform, "taxi-over").await?;
        over.drive_tour(
            "t-over",
            &known_route(recent_start_ms(40)),
            Some(KNOWN_ROUTE_FARE_CENTS + 1_000),
        )
        .await?;
        let mut close = TourTaxi::new(&platform, "taxi-close").await?;
        close
            .drive_tour(
                "t-close",
                &known_route(recent_start_ms(40)),
                Some(KNOWN_ROUTE_FARE_CENTS - 50),
            )
            .await?;

        let flagged = wait_for_invoice(&platform, "t-over").await?;
        ensure!(
            flagged.flagged && flagged.difference_cents == Some(1_000),
            "{flagged:?}"
        );
        ensure!(
            flagged.flag_reason.as_deref() == Some("meter 10.00 EUR above the fare of 18.80 EUR"),
            "{flagged:?}"
        );
        let fine = wait_for_invoice(&platform, "t-close").await?;
        ensure!(
            !fine.flagged && fine.difference_cents == Some(-50) && fine.flag_reason.is_none(),
            "{fine:?}"
        );

        // The backoffice sees the flag.
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let invoice = next_published_invoice(&mut backoffice).await?;
            if !seen
                .iter()
                .any(|i: &wire::Invoice| i.tour_id == invoice.tour_id)
            {
                seen.push(invoice);
            }
        }
        let over_invoice = seen
            .iter()
            .find(|i| i.tour_id == "t-over")
            .context("no invoice of t-over")?;
        ensure!(
            over_invoice.flagged
                && over_invoice.difference_cents == Some(1_000)
                && over_invoice.meter_cents == Some(KNOWN_ROUTE_FARE_CENTS + 1_000),
            "{over_invoice:?}"
        );
        let db = platform.db().await?;
        ensure!(verdicts(&db, Some("taxi-over")).await?.len() == 2);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_not_yet_published_is_published_after_a_restart() -> Result<()> {
    bounded(LIMIT, async {
        let platform = Platform::start().await?;
        // First without publishing: the invoice is issued, its publication left pending.
        let mut config = tours_config(&platform, "b1");
        config.tours.publish_invoices = false;
        let mut bridge = spawn_consuming(&platform, &config).await?;
        let mut taxi = TourTaxi::new(&platform, "taxi-p").await?;
        taxi.drive_tour("t-p", &known_route(recent_start_ms(30)), Some(1_880))
            .await?;
        let row = wait_for_invoice(&platform, "t-p").await?;
        ensure!(!row.published, "{row:?}");

        let mut backoffice = follow_invoices(&platform).await?;
        // Killed and started again, publishing: the pending invoice goes out.
        config.tours.publish_invoices = true;
        bridge.restart_with(config).await?;
        let published = next_published_invoice(&mut backoffice).await?;
        ensure!(
            published.tour_id == "t-p" && published.fare_cents == KNOWN_ROUTE_FARE_CENTS,
            "{published:?}"
        );
        let db = platform.db().await?;
        eventually("invoice marked published", WAIT, || async {
            let row = invoice(&db, "t-p").await?.context("invoice gone")?;
            Ok(if row.published {
                Progress::Done(())
            } else {
                Progress::Waiting(format!("{row:?}"))
            })
        })
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_judge_each_tour_once() -> Result<()> {
    bounded(LIMIT, async {
        const TAXIS: usize = 4;
        let platform = Platform::start().await?;
        let _b1 = start_tours_bridge(&platform, "b1").await?;
        let _b2 = start_tours_bridge(&platform, "b2").await?;
        let mut drives = Vec::new();
        for n in 1..=TAXIS {
            let mut taxi = TourTaxi::new(&platform, &format!("taxi-{n}")).await?;
            drives.push(tokio::spawn(async move {
                // Two tours, 20 minutes apart.
                let first_start = recent_start_ms(45);
                for tour in 1..=2 {
                    let route = known_route(first_start + (tour - 1) * 1_200_000);
                    let id = format!("t-{}-{tour}", taxi.id());
                    taxi.drive_tour(&id, &route, Some(KNOWN_ROUTE_FARE_CENTS))
                        .await?;
                }
                anyhow::Ok(taxi)
            }));
        }
        for drive in drives {
            drive.await??;
        }
        for n in 1..=TAXIS {
            for tour in 1..=2 {
                let row = wait_for_invoice(&platform, &format!("t-taxi-{n}-{tour}")).await?;
                ensure!(
                    row.fare_cents == KNOWN_ROUTE_FARE_CENTS as i64 && !row.flagged,
                    "{row:?}"
                );
            }
        }
        let db = platform.db().await?;
        for n in 1..=TAXIS {
            wait_until_all_applied(&platform, &format!("taxi-{n}"), 4).await?;
        }
        ensure!(db.count("SELECT count(*) FROM invoices", &[]).await? == 2 * TAXIS as i64);
        ensure!(
            db.count("SELECT count(*) FROM orders WHERE kind = 'invoice'", &[])
                .await?
                == 2 * TAXIS as i64
        );
        ensure!(
            db.count(
                "SELECT count(*) FROM dead_letters WHERE topic LIKE 'taxi/%/tour'",
                &[]
            )
            .await?
                == 0
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_taxis_honest_meter_agrees_with_its_invoices() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge) = platform_with_tours().await?;
        // Five fixes a second, a passenger every half second after a tour, tours of 3 s,
        // an honest meter priced with the platform's tariff.
        let ms = Duration::from_millis;
        let behaviour = simulator::taxi::Behaviour {
            rate: 5.0,
            hail_every: Some(ms(500)),
            tour_length: ms(3_000)..=ms(3_000),
            offline_every: None,
            meter_error_share: 0.0,
            tariff: test_tariff(),
            ..simulator::taxi::Behaviour::default()
        };
        let id = "taxi-sim";
        let cert = platform.pki.client(id, "taxi")?;
        let client = simulator::pki::Client::from_pem(
            id,
            platform.pki.ca_pem().as_bytes(),
            cert.cert_pem.as_bytes(),
            cert.key_pem.as_bytes(),
        )?;
        let spec = simulator::taxi::TaxiSpec {
            client,
            host: platform.broker.mqtt_addr.ip().to_string(),
            port: platform.broker.mqtt_addr.port(),
            behaviour,
            seed: 7,
        };
        let counters = std::sync::Arc::new(simulator::taxi::Counters::default());
        let mut taxi = simulator::taxi::SimulatedTaxi::spawn(spec, counters, None);
        taxi.wait_listening(WAIT).await?;

        let db = platform.db().await?;
        let invoices = eventually("two invoices of the simulated taxi", ARRIVAL, || async {
            let rows: Vec<(String, i64, Option<i64>, bool)> = db
                .rows(
                    "SELECT tour_id, fare_cents, meter_cents, flagged FROM invoices \
                     WHERE taxi_id = $1 ORDER BY ended_at",
                    &[&id],
                )
                .await?;
            Ok(if rows.len() >= 2 {
                Progress::Done(rows)
            } else {
                Progress::Waiting(format!("{rows:?}"))
            })
        })
        .await?;
        taxi.stop().await;
        for (tour_id, fare, meter, flagged) in &invoices {
            let meter = meter.with_context(|| format!("{tour_id} has no meter reading"))?;
            ensure!(
                !flagged && (meter - fare).abs() <= 2,
                "{tour_id}: fare {fare}, meter {meter}: {invoices:?}"
            );
        }
        ensure_no_tour_dead_letters(&db, id).await?;
        Ok(())
    })
    .await
}
