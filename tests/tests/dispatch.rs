//! Orders to taxis, end to end with real parts: the broker, the bridge with its dispatch API,
//! PostgreSQL, taxis as rumqttc clients and as `mosquitto_sub`, the backoffice as
//! `mosquitto_pub`, and `taxictl`.
//!
//! Whether something did *not* reach a taxi is checked without waiting on a clock: a marker
//! order sent afterwards must be the next (or only) thing the taxi receives.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::bridge_process::BridgeProcess;
use tests::dispatch::{
    answer, answer_and_wait, answer_and_wait_stored, answering_taxi, dispatch_config,
    expect_marker_next, expect_only_copies_before_marker, inbox_message, inbox_taxi,
    mosquitto_inbox_taxi, next_inbox, next_mosquitto_inbox, next_new_inbox, taxictl,
    wait_dispatch_subscribed, wait_for_ack_stored, wait_for_orders_in, DispatchApi,
    RestartableBroker, TOKEN, TOKEN_NAME,
};
use tests::platform::{bounded, eventually, Platform, Progress};
use tests::{unix_ms, TestPki};

/// Upper bound of one test.
const LIMIT: Duration = Duration::from_secs(120);

/// A platform with an in-process bridge whose dispatch API is on; resends every 30 s (so
/// that what a test sees comes from the API call or the taxi's reconnection).
async fn platform_with_dispatch() -> Result<(Platform, bridge::RunningBridge, DispatchApi)> {
    platform_with_dispatch_resending(30_000).await
}

/// A platform with an in-process bridge whose dispatch API is on, resending unconfirmed
/// orders every `resend_ms`; dispatch subscribed.
async fn platform_with_dispatch_resending(
    resend_ms: u64,
) -> Result<(Platform, bridge::RunningBridge, DispatchApi)> {
    let platform = Platform::start().await?;
    let config = dispatch_config(&platform, "d1", resend_ms)?;
    let running = platform.start_bridge(&config).await?;
    let api = DispatchApi {
        addr: running
            .dispatch_api
            .context("the dispatch API is not running")?,
    };
    wait_dispatch_subscribed(running.http_addr, 1.0).await?;
    Ok((platform, running, api))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_sent_through_the_api_reaches_exactly_that_taxi() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge, api) = platform_with_dispatch().await?;
        let (a, b, c) = (
            platform.pki.client("taxi-a", "taxi")?,
            platform.pki.client("taxi-b", "taxi")?,
            platform.pki.client("taxi-c", "taxi")?,
        );
        let mut taxi_a = inbox_taxi(&platform, &a, true).await?;
        let mut taxi_c = inbox_taxi(&platform, &c, false).await?;
        let mut taxi_b = mosquitto_inbox_taxi(&platform, &b)?;
        taxi_b.expect_subscribed().await?;

        let sent = api
            .send(json!({
                "taxi_id": "taxi-a", "kind": "order", "text": "Pick up at Alexanderplatz 1",
                "order_id": "o-a-1", "expires_in_s": 600
            }))
            .await?;
        ensure!(
            sent["state"] == "queued" && sent["sender"] == TOKEN_NAME,
            "{sent}"
        );
        let received = next_inbox(&mut taxi_a, "taxi-a").await?;
        ensure!(received.order_id == "o-a-1", "{received:?}");
        ensure!(
            received.text == "Pick up at Alexanderplatz 1",
            "{received:?}"
        );
        ensure!(received.kind == wire::InboxKind::Order, "{received:?}");
        let expires = received.expires_ms.context("no expires_ms")?;
        ensure!(expires > unix_ms() + 500_000, "expires_ms {expires}");

        // A generated order id, and a message rather than an order, to the mosquitto taxi.
        let sent_b = api
            .send(json!({ "taxi_id": "taxi-b", "kind": "message", "text": "Please call dispatch" }))
            .await?;
        let id_b = sent_b["order_id"]
            .as_str()
            .context("no order id")?
            .to_owned();
        let message = next_mosquitto_inbox(&mut taxi_b, "taxi-b").await?;
        ensure!(
            message.order_id == id_b && message.text == "Please call dispatch",
            "{message:?}"
        );

        // Markers: taxi-c's first message is its own, nothing of taxi-a's or taxi-b's.
        expect_marker_next(&api, &mut taxi_c, "taxi-c", "o-c-marker", "taxi-c received").await?;
        // Copies of its own order may come again (a resend); nothing else.
        expect_only_copies_before_marker(&api, &mut taxi_a, "taxi-a", "o-a-marker", "o-a-1")
            .await?;
        api.send_to("taxi-b", "o-b-marker", "marker").await?;
        taxi_b
            .expect_line("the marker on taxi-b", tests::WAIT, |line| {
                line.message()
                    .filter(|(_, payload)| payload.contains("o-b-marker"))
            })
            .await?;
        let on_b: Vec<String> = taxi_b
            .messages()
            .into_iter()
            .map(|(topic, payload)| {
                let message: wire::InboxMessage = wire::decode(payload.as_bytes()).unwrap();
                format!("{topic} {}", message.order_id)
            })
            .collect();
        ensure!(
            on_b.iter()
                .all(|m| *m == format!("taxi/taxi-b/inbox {id_b}")
                    || m == "taxi/taxi-b/inbox o-b-marker"),
            "taxi-b received {on_b:?}"
        );
        for taxi in [&mut taxi_a, &mut taxi_c] {
            for message in taxi.messages() {
                ensure!(
                    message.topic == format!("taxi/{}/inbox", taxi.client_id()),
                    "{} received {message:?}",
                    taxi.client_id()
                );
            }
        }
        // Delivered orders are `sent` once the broker has them.
        api.wait_for_state("o-a-1", "sent").await?;
        api.wait_for_state(&id_b, "sent").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_taxis_acks_move_its_order_forward_and_no_other_taxis_ack_does() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge, api) = platform_with_dispatch().await?;
        let a = platform.pki.client("taxi-a", "taxi")?;
        let mut taxi_a = inbox_taxi(&platform, &a, true).await?;
        let mut taxi_b = platform.taxi("taxi-b").await?;

        api.send_to("taxi-a", "o-1", "To the airport").await?;
        next_inbox(&mut taxi_a, "taxi-a").await?;
        api.wait_for_state("o-1", "sent").await?;

        // taxi-b answers taxi-a's order: stored as taxi-b's ack, the order does not move.
        answer_and_wait_stored(
            &platform,
            &mut taxi_b.client,
            "taxi-b",
            1,
            "o-1",
            "accepted",
        )
        .await?;
        let order = api.order("o-1").await?;
        ensure!(
            order["state"] == "sent",
            "another taxi's ack moved the order: {order}"
        );

        answer_and_wait(&api, &mut taxi_a, "taxi-a", 1, "o-1", "received", None).await?;
        let accepted =
            answer_and_wait(&api, &mut taxi_a, "taxi-a", 2, "o-1", "accepted", None).await?;
        // States never move back, and a final answer is final.
        answer(&mut taxi_a, "taxi-a", 3, "o-1", "received", None).await?;
        answer(
            &mut taxi_a,
            "taxi-a",
            4,
            "o-1",
            "rejected",
            Some("changed my mind"),
        )
        .await?;
        wait_for_ack_stored(&platform, "taxi-a", 4).await?;
        let order = api.order("o-1").await?;
        ensure!(order["state"] == "accepted", "{order}");
        ensure!(order["updated_ms"] == accepted["updated_ms"], "{order}");
        let history = api.history("o-1").await?;
        ensure!(
            history == ["queued", "sent", "received", "accepted"],
            "{history:?}"
        );
        let events = order["history"].as_array().context("history")?;
        for pair in events.windows(2) {
            ensure!(
                pair[0]["at_ms"].as_i64() <= pair[1]["at_ms"].as_i64(),
                "{order}"
            );
        }

        // A rejection with its reason; `accepted` may skip `received`.
        api.send_to("taxi-a", "o-2", "Second pick-up").await?;
        next_inbox(&mut taxi_a, "taxi-a").await?;
        let rejected = answer_and_wait(
            &api,
            &mut taxi_a,
            "taxi-a",
            5,
            "o-2",
            "rejected",
            Some("busy"),
        )
        .await?;
        ensure!(rejected["reason"] == "busy", "{rejected}");

        // The list shows both, newest first.
        let list = api.call("GET", "/v1/taxis/taxi-a/orders", None).await?;
        ensure!(list.status == 200, "{list:?}");
        let ids: Vec<&str> = list.body["orders"]
            .as_array()
            .context("orders")?
            .iter()
            .filter_map(|o| o["order_id"].as_str())
            .collect();
        ensure!(ids == ["o-2", "o-1"], "{ids:?}");
        let only = api
            .call("GET", "/v1/taxis/taxi-a/orders?state=rejected", None)
            .await?;
        ensure!(
            only.body["orders"].as_array().map(Vec::len) == Some(1),
            "{only:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_for_an_offline_taxi_is_delivered_when_it_comes_online() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge, api) = platform_with_dispatch().await?;
        let (a, b) = (
            platform.pki.client("taxi-a", "taxi")?,
            platform.pki.client("taxi-b", "taxi")?,
        );
        // Neither taxi has ever connected: the broker has no session to queue them in.
        api.send_to("taxi-a", "o-a", "For taxi-a, offline").await?;
        api.send_to("taxi-b", "o-b", "For taxi-b, offline").await?;
        api.wait_for_state("o-a", "sent").await?;

        let mut taxi_a = inbox_taxi(&platform, &a, false).await?;
        let received = next_inbox(&mut taxi_a, "taxi-a").await?;
        ensure!(received.order_id == "o-a", "{received:?}");
        answer_and_wait(&api, &mut taxi_a, "taxi-a", 1, "o-a", "received", None).await?;

        let mut taxi_b = mosquitto_inbox_taxi(&platform, &b)?;
        let message = next_mosquitto_inbox(&mut taxi_b, "taxi-b").await?;
        ensure!(message.order_id == "o-b", "{message:?}");

        // Confirmed orders are not sent again when the taxi comes back.
        taxi_a.disconnect().await?;
        let mut taxi_a = inbox_taxi(&platform, &a, false).await?;
        expect_marker_next(
            &api,
            &mut taxi_a,
            "taxi-a",
            "o-a-marker",
            "a received order came again",
        )
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_survives_a_broker_restart_and_a_bridge_restart() -> Result<()> {
    bounded(LIMIT, async {
        let pki = TestPki::new()?;
        let (mut broker, running) = RestartableBroker::start(&pki)?;
        let platform = Platform::with_broker(pki, running).await?;
        let config = dispatch_config(&platform, "d1", 2_000)?;
        let mut bridge = BridgeProcess::spawn(&config)?;
        bridge.wait_ready().await?;
        wait_dispatch_subscribed(bridge.http_addr, 1.0).await?;
        let api = DispatchApi {
            addr: config.dispatch.api.listen,
        };
        let a = platform.pki.client("taxi-a", "taxi")?;

        // The taxi's persistent session exists, then the taxi goes away.
        inbox_taxi(&platform, &a, true).await?.kill().await;
        api.send_to("taxi-a", "o-1", "Survives everything").await?;
        api.wait_for_state("o-1", "sent").await?;

        // The broker restarts: what it held for the taxi is gone.
        broker.restart(&platform.pki)?;
        wait_dispatch_subscribed(bridge.http_addr, 2.0).await?;
        // The bridge is killed and started again.
        bridge.kill().await?;
        bridge.start()?;
        bridge.wait_ready().await?;
        wait_dispatch_subscribed(bridge.http_addr, 1.0).await?;

        let mut taxi = inbox_taxi(&platform, &a, true).await?;
        let received = next_inbox(&mut taxi, "taxi-a").await?;
        ensure!(received.order_id == "o-1", "{received:?}");

        // Not acknowledged yet: it comes again (when the taxi comes back, or periodically).
        taxi.kill().await;
        let mut taxi = inbox_taxi(&platform, &a, true).await?;
        let again = next_inbox(&mut taxi, "taxi-a").await?;
        ensure!(again.order_id == "o-1", "{again:?}");

        // Once the taxi has it, it stops.
        answer_and_wait(&api, &mut taxi, "taxi-a", 1, "o-1", "received", None).await?;
        taxi.kill().await;
        let mut taxi = inbox_taxi(&platform, &a, true).await?;
        // Copies already on their way before the ack was applied may still arrive.
        expect_only_copies_before_marker(&api, &mut taxi, "taxi-a", "o-marker", "o-1").await?;
        let order = api.order("o-1").await?;
        ensure!(order["state"] == "received", "{order}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_order_is_never_delivered() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge, api) = platform_with_dispatch().await?;
        let (a, b) = (
            platform.pki.client("taxi-a", "taxi")?,
            platform.pki.client("taxi-b", "taxi")?,
        );
        // taxi-a has a persistent session, in which the broker would keep the order;
        // taxi-b has none.
        inbox_taxi(&platform, &a, true).await?.disconnect().await?;
        api.send(json!({ "taxi_id": "taxi-a", "kind": "order", "text": "Too late", "order_id": "o-late-a", "expires_in_s": 1 }))
            .await?;
        api.send(json!({ "taxi_id": "taxi-b", "kind": "order", "text": "Too late", "order_id": "o-late-b", "expires_ms": unix_ms() + 1_000 }))
            .await?;
        // Another part of the platform queues an order that has already expired.
        let db = platform.db().await?;
        db.client()
            .execute(
                "INSERT INTO orders (order_id, taxi_id, kind, text, sender, created_at, expires_at, state, updated_at) \
                 VALUES ('o-late-c', 'taxi-a', 'invoice', 'Old invoice', 'platform', now() - interval '1 hour', \
                 now() - interval '1 minute', 'queued', now())",
                &[],
            )
            .await?;
        for id in ["o-late-a", "o-late-b", "o-late-c"] {
            let order = api.wait_for_state(id, "expired").await?;
            let history = api.history(id).await?;
            ensure!(history.last().map(String::as_str) == Some("expired"), "{order}");
        }

        let mut taxi_a = inbox_taxi(&platform, &a, true).await?;
        let mut taxi_b = inbox_taxi(&platform, &b, false).await?;
        for (taxi, id, marker) in [
            (&mut taxi_a, "taxi-a", "o-a-marker"),
            (&mut taxi_b, "taxi-b", "o-b-marker"),
        ] {
            expect_marker_next(&api, taxi, id, marker, "expired order delivered").await?;
        }
        // An expired order stays expired whatever its taxi says.
        answer_and_wait_stored(&platform, &mut taxi_a, "taxi-a", 1, "o-late-a", "accepted")
            .await?;
        ensure!(api.order("o-late-a").await?["state"] == "expired");
        ensure!(api.order("o-late-c").await?["attempts"] == 0, "an expired order was published");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_from_the_backoffice_over_mqtt_and_from_the_platform_are_recorded_and_delivered(
) -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge, api) = platform_with_dispatch().await?;
        let a = platform.pki.client("taxi-a", "taxi")?;
        let backoffice = platform.pki.client("backoffice", "backoffice")?;
        let mut taxi_a = inbox_taxi(&platform, &a, true).await?;

        let created_ms = unix_ms();
        let order = json!({
            "order_id": "bo-1", "kind": "order", "text": "From the backoffice app",
            "created_ms": created_ms, "expires_ms": created_ms + 600_000
        });
        platform
            .broker
            .mosquitto_pub(&backoffice)
            .topic("taxi/taxi-a/inbox")
            .message(&order.to_string())
            .run_acked()
            .await?;
        let received = next_inbox(&mut taxi_a, "taxi-a").await?;
        ensure!(received.order_id == "bo-1", "{received:?}");
        let recorded = api.wait_for_state("bo-1", "sent").await?;
        ensure!(recorded["sender"] == "mqtt", "{recorded}");
        ensure!(recorded["taxi_id"] == "taxi-a", "{recorded}");
        ensure!(recorded["text"] == "From the backoffice app", "{recorded}");
        ensure!(recorded["created_ms"] == created_ms, "{recorded}");
        ensure!(recorded["expires_ms"] == created_ms + 600_000, "{recorded}");
        answer_and_wait(&api, &mut taxi_a, "taxi-a", 1, "bo-1", "accepted", None).await?;

        // Queued by another part of the platform (e.g. an invoice): delivered by the sweep.
        platform
            .db()
            .await?
            .client()
            .execute(
                "INSERT INTO orders (order_id, taxi_id, kind, text, sender, created_at, state, updated_at) \
                 VALUES ('invoice-t1', 'taxi-a', 'invoice', 'Tour t1: 12.40 EUR', 'platform', now(), 'queued', now())",
                &[],
            )
            .await?;
        let invoice = next_new_inbox(&mut taxi_a, "taxi-a", &["bo-1"]).await?;
        ensure!(invoice.order_id == "invoice-t1", "{invoice:?}");
        ensure!(invoice.kind == wire::InboxKind::Invoice, "{invoice:?}");
        let order = api.wait_for_state("invoice-t1", "sent").await?;
        ensure!(order["sender"] == "platform", "{order}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_missing_and_invalid_credentials() -> Result<()> {
    bounded(LIMIT, async {
        let (_platform, _bridge, api) = platform_with_dispatch().await?;
        let body = json!({ "taxi_id": "taxi-a", "kind": "order", "text": "x" }).to_string();
        let requests = [
            ("POST", "/v1/orders"),
            ("GET", "/v1/orders/o-1"),
            ("GET", "/v1/taxis/taxi-a/orders"),
        ];
        let credentials: [(&str, Option<&str>); 5] = [
            ("none", None),
            ("wrong token", Some("Bearer not-the-token")),
            (
                "basic auth",
                Some("Basic b2ZmaWNlOmRpc3BhdGNoLXRlc3QtdG9rZW4="),
            ),
            ("token without scheme", Some(TOKEN)),
            ("hash instead of token", Some("Bearer 0000")),
        ];
        for (method, path) in requests {
            for (what, authorization) in credentials {
                let mut headers = vec![("Content-Type", "application/json")];
                if let Some(value) = authorization {
                    headers.push(("Authorization", value));
                }
                let answer = api.raw(method, path, &headers, body.as_bytes()).await?;
                ensure!(
                    answer.status == 401,
                    "{method} {path} with {what}: {answer:?}"
                );
                ensure!(
                    !answer.error().is_empty(),
                    "{method} {path} with {what}: {answer:?}"
                );
                ensure!(
                    answer.headers.contains("www-authenticate: bearer"),
                    "{answer:?}"
                );
            }
        }
        // Nothing was created.
        let list = api.call("GET", "/v1/taxis/taxi-a/orders", None).await?;
        ensure!(
            list.status == 200 && list.body["orders"] == json!([]),
            "{list:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_every_malformed_body_with_a_clear_message() -> Result<()> {
    bounded(LIMIT, async {
        let (_platform, _bridge, api) = platform_with_dispatch().await?;
        let valid = json!({ "taxi_id": "taxi-a", "kind": "order", "text": "Go" });
        let with = |field: &str, value: Value| {
            let mut body = valid.clone();
            body[field] = value;
            body.to_string()
        };
        let without = |field: &str| {
            let mut body = valid.clone();
            body.as_object_mut().map(|o| o.remove(field));
            body.to_string()
        };
        let cases: Vec<(String, u16, &str)> = vec![
            (String::new(), 400, "empty"),
            ("{\"taxi_id\":".to_owned(), 400, "not valid JSON"),
            ("[]".to_owned(), 400, "JSON object"),
            ("\"order\"".to_owned(), 400, "JSON object"),
            (without("taxi_id"), 422, "taxi_id: is required"),
            (without("kind"), 422, "kind: is required"),
            (without("text"), 422, "text: is required"),
            (with("taxi_id", json!("taxi/+")), 422, "taxi_id"),
            (with("taxi_id", json!("")), 422, "taxi_id"),
            (with("taxi_id", json!(42)), 422, "taxi_id: must be a string, not a number"),
            (with("kind", json!("pizza")), 422, "kind: must be"),
            (with("kind", json!(null)), 422, "kind: is required"),
            (with("text", json!("")), 422, "text: must not be empty"),
            (with("text", json!("x".repeat(5000))), 422, "text: is 5000 bytes long"),
            (with("text", json!(["a"])), 422, "text: must be a string, not an array"),
            (with("order_id", json!("has space")), 422, "order_id"),
            (with("order_id", json!("x".repeat(129))), 422, "order_id"),
            (with("order_id", json!(7)), 422, "order_id: must be a string"),
            (with("expires_in_s", json!(0)), 422, "expires_in_s"),
            (with("expires_in_s", json!(-5)), 422, "expires_in_s"),
            (with("expires_in_s", json!("60")), 422, "expires_in_s: must be a whole number"),
            (with("expires_in_s", json!(10_000_000)), 422, "expires_in_s: must be between"),
            (with("expires_ms", json!(1_000)), 422, "expires_ms: 1000 is in the past"),
            (with("expires_ms", json!(1.5)), 422, "expires_ms: must be a whole number"),
            (with("priority", json!("high")), 422, "unknown field \"priority\""),
        ];
        let authorization = format!("Bearer {TOKEN}");
        for (body, status, needle) in &cases {
            let answer = api
                .raw(
                    "POST",
                    "/v1/orders",
                    &[("Authorization", &authorization), ("Content-Type", "application/json")],
                    body.as_bytes(),
                )
                .await?;
            ensure!(
                answer.status == *status && answer.error().contains(needle),
                "body {body:.80}: expected {status} with {needle:?}, got {answer:?}"
            );
        }
        let both = json!({ "taxi_id": "t", "kind": "order", "text": "x", "expires_in_s": 5, "expires_ms": unix_ms() + 5000 });
        let answer = api.call("POST", "/v1/orders", Some(&both)).await?;
        ensure!(answer.status == 422 && answer.error().contains("not both"), "{answer:?}");

        // Not JSON at all, too large.
        let form = api
            .raw("POST", "/v1/orders", &[("Authorization", &authorization), ("Content-Type", "application/x-www-form-urlencoded")], b"taxi_id=a")
            .await?;
        ensure!(form.status == 415 && form.error().contains("application/json"), "{form:?}");
        let huge = with("text", json!("x".repeat(70_000)));
        let answer = api
            .raw("POST", "/v1/orders", &[("Authorization", &authorization), ("Content-Type", "application/json")], huge.as_bytes())
            .await?;
        ensure!(answer.status == 413 && answer.error().contains("larger than"), "{answer:?}");

        // The same order id: repeated request answered with the stored order, another order refused.
        let first = api.send(with("order_id", json!("o-dup")).parse()?).await?;
        let repeated = api.call("POST", "/v1/orders", Some(&with("order_id", json!("o-dup")).parse()?)).await?;
        ensure!(repeated.status == 200 && repeated.body["created_ms"] == first["created_ms"], "{repeated:?}");
        let mut other: Value = with("order_id", json!("o-dup")).parse()?;
        other["text"] = json!("Something else");
        let conflict = api.call("POST", "/v1/orders", Some(&other)).await?;
        ensure!(conflict.status == 409 && conflict.error().contains("already used"), "{conflict:?}");

        // Reading: unknown order, bad ids and query parameters.
        for (path, status, needle) in [
            ("/v1/orders/nope", 404, "no order"),
            ("/v1/orders/bad%20id", 400, "order_id"),
            ("/v1/taxis/taxi-a/orders?limit=0", 400, "limit"),
            ("/v1/taxis/taxi-a/orders?limit=ten", 400, "limit"),
            ("/v1/taxis/taxi-a/orders?state=lost", 400, "state"),
            ("/v1/taxis/taxi-a/orders?colour=red", 400, "colour"),
            ("/v1/taxis/taxi%2Fa/orders", 400, "taxi_id"),
            ("/v1/elsewhere", 404, "no such endpoint"),
        ] {
            let answer = api.call("GET", path, None).await?;
            ensure!(
                answer.status == status && answer.error().contains(needle),
                "GET {path}: expected {status} with {needle:?}, got {answer:?}"
            );
        }
        // Nothing refused was stored: only the one valid order exists.
        let list = api.call("GET", "/v1/taxis/taxi-a/orders", None).await?;
        ensure!(list.body["orders"].as_array().map(Vec::len) == Some(1), "{list:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxictl_sends_shows_and_lists_orders() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge, api) = platform_with_dispatch().await?;
        let a = platform.pki.client("taxi-a", "taxi")?;
        let mut taxi_a = inbox_taxi(&platform, &a, true).await?;

        let (ok, out, err) = taxictl(
            &api,
            TOKEN,
            &[
                "order",
                "send",
                "--taxi",
                "taxi-a",
                "--text",
                "Hauptbahnhof, platform 3",
                "--id",
                "cli-1",
                "--expires-in",
                "600",
            ],
        )
        .await?;
        ensure!(
            ok && out.contains("order cli-1 for taxi-a: queued"),
            "{out}{err}"
        );
        let received = next_inbox(&mut taxi_a, "taxi-a").await?;
        ensure!(
            received.order_id == "cli-1" && received.text == "Hauptbahnhof, platform 3",
            "{received:?}"
        );
        answer_and_wait(&api, &mut taxi_a, "taxi-a", 1, "cli-1", "accepted", None).await?;

        let (ok, out, err) = taxictl(&api, TOKEN, &["order", "show", "cli-1"]).await?;
        ensure!(ok, "{err}");
        for needle in [
            "order cli-1 for taxi-a (order, from office): accepted",
            "Hauptbahnhof",
            "queued",
            "sent",
            "accepted",
            "ack seq 1",
        ] {
            ensure!(out.contains(needle), "no {needle:?} in:\n{out}");
        }
        let (ok, out, err) = taxictl(&api, TOKEN, &["order", "list", "--taxi", "taxi-a"]).await?;
        ensure!(
            ok && out.contains("cli-1") && out.contains("accepted"),
            "{out}{err}"
        );
        let (ok, out, _) = taxictl(&api, TOKEN, &["--json", "order", "show", "cli-1"]).await?;
        let shown: Value = serde_json::from_str(&out).context("--json output")?;
        ensure!(ok && shown["state"] == "accepted", "{out}");

        // Refusals come back as a message and a failing exit status.
        let (ok, _, err) = taxictl(&api, "wrong", &["order", "show", "cli-1"]).await?;
        ensure!(
            !ok && err.contains("401") && err.contains("invalid token"),
            "{err}"
        );
        let (ok, _, err) = taxictl(
            &api,
            TOKEN,
            &[
                "order", "send", "--taxi", "taxi-a", "--text", "x", "--kind", "pizza",
            ],
        )
        .await?;
        ensure!(!ok && err.contains("422") && err.contains("kind"), "{err}");
        let (ok, _, err) = taxictl(&api, TOKEN, &["order", "show", "missing"]).await?;
        ensure!(!ok && err.contains("404"), "{err}");
        let received_again = taxi_a.messages_on("taxi/taxi-a/inbox");
        ensure!(
            received_again.iter().all(|m| inbox_message(m)
                .map(|i| i.order_id == "cli-1")
                .unwrap_or(false)),
            "{received_again:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_order_is_sent_again_until_its_taxi_confirms_it() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge, api) = platform_with_dispatch_resending(300).await?;
        let a = platform.pki.client("taxi-a", "taxi")?;
        let mut taxi_a = inbox_taxi(&platform, &a, true).await?;

        api.send_to("taxi-a", "o-1", "Answer me").await?;
        let first = next_inbox(&mut taxi_a, "taxi-a").await?;
        let again = next_inbox(&mut taxi_a, "taxi-a").await?;
        ensure!(first == again, "{first:?} then {again:?}");
        let confirmed =
            answer_and_wait(&api, &mut taxi_a, "taxi-a", 1, "o-1", "received", None).await?;

        // Another order's resends show time passing: meanwhile o-1 is not published again.
        api.send_to("taxi-a", "o-2", "Clock").await?;
        eventually(
            "o-2 published three times",
            Duration::from_secs(30),
            || async {
                let order = api.order("o-2").await?;
                Ok(if order["attempts"].as_i64() >= Some(3) {
                    Progress::Done(())
                } else {
                    Progress::Waiting(format!("{order}"))
                })
            },
        )
        .await?;
        let order = api.order("o-1").await?;
        ensure!(
            order["attempts"] == confirmed["attempts"],
            "o-1 was published again after it was confirmed: {order}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_api_orders_reaches_every_taxi() -> Result<()> {
    const TAXIS: usize = 4;
    const ORDERS: usize = 6_000;
    const CALLERS: usize = 16;
    bounded(Duration::from_secs(300), async {
        let (platform, _bridge, api) = platform_with_dispatch_resending(500).await?;
        let mut taxis = Vec::new();
        for t in 0..TAXIS {
            let id = format!("taxi-{t}");
            let cert = platform.pki.client(&id, "taxi")?;
            let taxi = inbox_taxi(&platform, &cert, true).await?;
            taxis.push(answering_taxi(taxi, &id, &["received"], 1));
        }

        // Back to back, as fast as the API answers.
        let mut callers = tokio::task::JoinSet::new();
        for caller in 0..CALLERS {
            callers.spawn(async move {
                for n in (caller..ORDERS).step_by(CALLERS) {
                    let taxi = format!("taxi-{}", n % TAXIS);
                    api.send_to(&taxi, &format!("burst-{n}"), "Burst").await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(outcome) = callers.join_next().await {
            outcome??;
        }

        // Each order is `received` once its taxi has it: none may stay queued or sent.
        wait_for_orders_in(
            &platform,
            "received",
            ORDERS as i64,
            Duration::from_secs(120),
        )
        .await?;
        let reached: usize = taxis
            .iter()
            .map(|(ids, _)| ids.lock().expect("received ids").len())
            .sum();
        ensure!(
            reached == ORDERS,
            "{reached} of {ORDERS} orders reached their taxi"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_published_over_mqtt_and_answered_at_once_end_answered() -> Result<()> {
    const ORDERS: usize = 400;
    bounded(Duration::from_secs(300), async {
        let platform = Platform::start().await?;
        let mut config = dispatch_config(&platform, "d1", 30_000)?;
        // Acks stored as soon as they come, at the same time as dispatch records the order.
        config.batch.max_messages = 1;
        config.batch.max_delay_ms = 1;
        let bridge = platform.start_bridge(&config).await?;
        wait_dispatch_subscribed(bridge.http_addr, 1.0).await?;
        let a = platform.pki.client("taxi-a", "taxi")?;
        let taxi_a = inbox_taxi(&platform, &a, true).await?;
        let (received, _answering) = answering_taxi(taxi_a, "taxi-a", &["received", "accepted"], 1);
        let backoffice = platform.pki.client("backoffice", "backoffice")?;
        let backoffice = platform.broker.client(&backoffice).connect().await?;

        let created_ms = unix_ms();
        for n in 0..ORDERS {
            let order = json!({
                "order_id": format!("mqtt-{n}"), "kind": "order", "text": "Answer at once",
                "created_ms": created_ms, "expires_ms": created_ms + 600_000
            });
            backoffice
                .publish("taxi/taxi-a/inbox", 1, false, order.to_string().as_bytes())
                .await?;
            if n % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        // Each order's acks are stored however close to its recording they came.
        wait_for_orders_in(
            &platform,
            "accepted",
            ORDERS as i64,
            Duration::from_secs(60),
        )
        .await?;
        let reached = received.lock().expect("received ids").len();
        ensure!(
            reached == ORDERS,
            "{reached} of {ORDERS} orders reached the taxi"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatch_api_serves_https_when_given_a_certificate() -> Result<()> {
    bounded(LIMIT, async {
        let platform = Platform::start().await?;
        let mut config = dispatch_config(&platform, "d1", 30_000)?;
        config.dispatch.api.tls_cert = Some(platform.pki.server_cert_path().to_owned());
        config.dispatch.api.tls_key = Some(platform.pki.server_key_path().to_owned());
        let running = platform.start_bridge(&config).await?;
        let addr = running
            .dispatch_api
            .context("the dispatch API is not running")?;
        wait_dispatch_subscribed(running.http_addr, 1.0).await?;

        let https = tests::reporting::https_client(&platform.pki)?;
        let created = https
            .post(format!("https://localhost:{}/v1/orders", addr.port()))
            .bearer_auth(tests::dispatch::TOKEN)
            .json(&serde_json::json!({"taxi_id": "taxi-a", "kind": "message", "text": "over TLS"}))
            .send()
            .await?;
        assert_eq!(created.status().as_u16(), 201);
        let order: serde_json::Value = created.json().await?;
        assert_eq!(order["text"], "over TLS");
        let without_token = https
            .get(format!(
                "https://localhost:{}/v1/taxis/taxi-a/orders",
                addr.port()
            ))
            .send()
            .await?;
        assert_eq!(without_token.status().as_u16(), 401);

        // Plain HTTP on the same port gets no HTTP answer.
        let plain = DispatchApi { addr };
        assert!(
            plain
                .call("GET", "/v1/taxis/taxi-a/orders", None)
                .await
                .is_err(),
            "the port must not speak plain HTTP"
        );
        Ok(())
    })
    .await
}
