//! The reporting dashboard in a real headless Chromium, as a dispatcher uses it: they sign
//! in on the OpenID provider's own page (authorization code with PKCE, run by the page),
//! see the simulated taxis on the map and watch them move (pushed, not polled), see the
//! 10-second windows and the daily results as charts, page through the orders, send a taxi
//! an order from the form and watch it become accepted, while a real MQTT client subscribed
//! as that taxi receives it, then sign out. Besides: the order and live routes' permissions,
//! and the development sign-in and the tile base map, both off unless configured.
//!
//! Screenshots of each step are kept in `target/test-artifacts/dashboard/`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tests::dashboard::{
    artifacts_dir, Browser, Stage, ACCOUNT, INBOX_TAXI, PASSWORD, SEEDED_ORDERS, SIMULATED,
};
use tests::dispatch::{answer, inbox_taxi, next_inbox};
use tests::platform::bounded;

/// Upper bound of the whole test.
const LIMIT: Duration = Duration::from_secs(120);
/// How long the page may take for one step.
const STEP: Duration = Duration::from_secs(15);

/// The taxis on the page's map: id → (lat, lon, device time).
async fn positions(page: &tests::dashboard::Page) -> Result<BTreeMap<String, (f64, f64, i64)>> {
    let value = page
        .eval("Object.values(window.dashboard.taxis).map(t => [t.taxi_id, t.lat, t.lon, t.ts_ms])")
        .await?;
    let mut taxis = BTreeMap::new();
    for taxi in value.as_array().context("no taxis array")? {
        taxis.insert(
            taxi[0].as_str().unwrap_or_default().to_owned(),
            (
                taxi[1].as_f64().unwrap_or_default(),
                taxi[2].as_f64().unwrap_or_default(),
                taxi[3].as_i64().unwrap_or_default(),
            ),
        );
    }
    Ok(taxis)
}

/// The ids of the rows the orders table shows.
async fn order_rows(page: &tests::dashboard::Page) -> Result<Vec<String>> {
    let ids = page
        .eval("Array.from(document.querySelectorAll('#orders-table tbody tr')).map(r => r.dataset.id)")
        .await?;
    Ok(ids
        .as_array()
        .context("no rows")?
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_signs_in_watches_the_fleet_pages_orders_and_sends_one() -> Result<()> {
    bounded(LIMIT, async {
        let began = Instant::now();
        let stage = Stage::start().await?;
        let mut inbox = inbox_taxi(
            &stage.platform,
            &stage.platform.pki.client(INBOX_TAXI, "taxi")?,
            false,
        )
        .await?;
        std::fs::create_dir_all(artifacts_dir())?;
        let browser = Arc::new(Browser::launch(&artifacts_dir().join("chromium.log")).await?);
        let page = browser.new_page().await?;
        eprintln!("stage ready in {:?}", began.elapsed());

        // Signed out: the page offers single sign-on, and nothing else.
        page.goto(&stage.url).await?;
        page.wait_for(
            "the sign-in button",
            "!document.querySelector('#signin-button').hidden",
            STEP,
        )
        .await?;
        ensure!(page.eval("document.querySelector('#tabs').hidden").await? == true);
        page.screenshot("1-signed-out").await?;

        // The provider's own sign-in page, filled in and submitted like a person would.
        page.click("#signin-button").await?;
        page.wait_for(
            "the provider's sign-in page",
            "location.pathname.startsWith('/interaction/') && !!document.querySelector('#login')",
            STEP,
        )
        .await?;
        let provider_port = stage.provider.port().to_string();
        ensure!(
            page.eval("location.port").await? == Value::String(provider_port),
            "the sign-in page is the provider's"
        );
        page.fill("#login", ACCOUNT).await?;
        page.fill("#password", PASSWORD).await?;
        page.screenshot("2-provider-sign-in").await?;
        page.click("#submit").await?;
        page.wait_for(
            "signed in on the dashboard",
            "window.dashboard && window.dashboard.signedIn === true",
            STEP,
        )
        .await?;
        let me = page.eval("window.dashboard.me").await?;
        ensure!(me["roles"] == serde_json::json!(["dispatcher"]), "{me}");
        ensure!(
            page.eval("location.search").await? == "",
            "the code and state are gone from the address bar"
        );
        ensure!(
            page.eval("document.querySelector('#order-form').hidden").await? == false,
            "a dispatcher may send orders"
        );
        ensure!(
            page.eval("document.querySelector('[data-tab=invoices]').hidden").await? == true,
            "a dispatcher sees no invoices"
        );

        // The map: every simulated taxi, then moving as positions arrive.
        let all_there = format!(
            "{:?}.every(id => window.dashboard.taxis[id])",
            SIMULATED
        );
        page.wait_for("the simulated taxis on the map", &all_there, STEP)
            .await?;
        let before = positions(&page).await?;
        let deadline = Instant::now() + STEP;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = positions(&page).await?;
            let moved = SIMULATED
                .iter()
                .filter(|id| match (before.get(**id), now.get(**id)) {
                    (Some(a), Some(b)) => b.2 > a.2 && (a.0, a.1) != (b.0, b.1),
                    _ => false,
                })
                .count();
            if moved == SIMULATED.len() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "taxis did not move on the map: before {before:?}, now {now:?}"
            );
        }
        let updates = page.eval("Number(document.querySelector('#map').dataset.updates)").await?;
        ensure!(updates.as_u64().unwrap_or(0) >= 2, "pushed updates: {updates}");

        // The live windows chart has its points; the map has its zones.
        let points = page
            .wait_for(
                "the windows chart",
                "window.dashboard.charts.windows && window.dashboard.charts.windows.points",
                STEP,
            )
            .await?;
        ensure!(points.as_u64().unwrap_or(0) >= 100, "{points} points");
        page.wait_for("zones on the map", "window.dashboard.map.zones.length >= 3", STEP)
            .await?;
        page.screenshot("3-live-map").await?;

        // An order from the form reaches the taxi, and the page follows its state.
        page.fill("#order-taxi", INBOX_TAXI).await?;
        page.fill("#order-text", "Pick up at Alexanderplatz 1").await?;
        page.click("#order-send").await?;
        let received = next_inbox(&mut inbox, INBOX_TAXI).await?;
        ensure!(
            received.text == "Pick up at Alexanderplatz 1",
            "{received:?}"
        );
        let id = received.order_id.clone();
        let item = format!("document.querySelector('#sent-orders li[data-order-id=\"{id}\"]')");
        page.wait_for(
            "the order on the page, sent",
            &format!("{item} && ['queued', 'sent'].includes({item}.dataset.state)"),
            STEP,
        )
        .await?;
        answer(&mut inbox, INBOX_TAXI, 1, &id, "received", None).await?;
        answer(&mut inbox, INBOX_TAXI, 2, &id, "accepted", None).await?;
        page.wait_for(
            "the order on the page, accepted",
            &format!("{item} && {item}.dataset.state === 'accepted'"),
            STEP,
        )
        .await?;
        let history = page
            .eval(&format!("window.dashboard.orders['{id}'].history"))
            .await?;
        for state in ["sent", "received", "accepted"] {
            ensure!(
                history
                    .as_array()
                    .is_some_and(|h| h.contains(&Value::from(state))),
                "{state} missing from the page's history {history}"
            );
        }
        page.screenshot("4-order-accepted").await?;

        // The orders table, five a page: the next page shows other orders.
        page.click("[data-tab=orders]").await?;
        page.wait_for(
            "the first page of orders",
            "window.dashboard.tables.orders.page === 1",
            STEP,
        )
        .await?;
        page.eval(
            "(() => { const s = document.querySelector('#orders-table .page-size'); s.value = '5';
               s.dispatchEvent(new Event('change')); })()",
        )
        .await?;
        page.wait_for(
            "five orders on the first page",
            "window.dashboard.tables.orders.ids.length === 5 && !window.dashboard.tables.orders.loading",
            STEP,
        )
        .await?;
        let first = order_rows(&page).await?;
        ensure!(first.len() == 5, "{first:?}");
        page.click("#orders-table .next").await?;
        page.wait_for(
            "the second page of orders",
            "window.dashboard.tables.orders.page === 2 && !window.dashboard.tables.orders.loading",
            STEP,
        )
        .await?;
        let second = order_rows(&page).await?;
        ensure!(second.len() == 5, "{second:?}");
        ensure!(
            second.iter().all(|id| !first.contains(id)),
            "page 2 {second:?} repeats page 1 {first:?}"
        );
        ensure!(SEEDED_ORDERS + 1 > 10, "enough orders for three pages");
        page.screenshot("5-orders-page-2").await?;
        page.click("#orders-table .previous").await?;
        page.wait_for(
            "back on the first page",
            "window.dashboard.tables.orders.page === 1 && !window.dashboard.tables.orders.loading",
            STEP,
        )
        .await?;
        ensure!(order_rows(&page).await? == first, "the first page again");

        // The daily results and the cumulative trips.
        page.click("[data-tab=daily]").await?;
        let daily = page
            .wait_for(
                "the daily chart",
                "window.dashboard.charts.daily && window.dashboard.charts.cumulative && window.dashboard.charts.cumulative.points",
                STEP,
            )
            .await?;
        ensure!(daily == 10, "{daily} days");
        page.screenshot("6-daily").await?;

        // Signing out forgets the token here and goes on to the provider's sign-out, which
        // submits itself; only once the provider has ended its session does the next
        // navigation belong to the test (before that, the form's answer would replace it).
        page.click("#signout").await?;
        page.wait_for(
            "signed out at the provider",
            &format!(
                "location.port === '{}' && location.pathname === '/session/end/success'",
                stage.provider.port()
            ),
            STEP,
        )
        .await?;
        page.goto(&stage.url).await?;
        page.wait_for(
            "signed out on the dashboard",
            "!document.querySelector('#signin-button').hidden",
            STEP,
        )
        .await?;
        ensure!(
            page.eval("sessionStorage.getItem('token')").await? == Value::Null,
            "the token is forgotten"
        );

        let problems: Vec<String> = browser
            .console()
            .into_iter()
            .filter(|line| line.starts_with("exception") || line.contains("Content Security Policy"))
            .collect();
        ensure!(problems.is_empty(), "the page reported: {problems:#?}");
        eprintln!("dashboard test took {:?}", began.elapsed());
        Ok(())
    })
    .await
}

/// `POST path` with a JSON body (as given) and `token`: status and body.
async fn post(
    client: &reqwest::Client,
    api: &tests::reporting::Api,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, Value)> {
    let mut request = client
        .post(format!("{}{path}", api.base))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_sent_with_orders_send_only_and_the_live_stream_needs_the_fleet_permission(
) -> Result<()> {
    use tests::reporting::{ANALYST, DISPATCHER, VIEWER};
    bounded(LIMIT, async {
        let stage = Stage::start().await?;
        let client = tests::reporting::https_client(&stage.platform.pki)?;
        let api = &stage.api;
        let order = r#"{"taxi_id": "cab-inbox", "kind": "order", "text": "To the airport"}"#;

        assert_eq!(post(&client, api, "/v1/orders", None, order).await?.0, 401);
        for token in [VIEWER, ANALYST] {
            let (status, body) = post(&client, api, "/v1/orders", Some(token), order).await?;
            ensure!(status == 403, "{status} {body}");
            ensure!(
                body["error"].as_str().unwrap_or("").contains("orders.send"),
                "{body}"
            );
        }
        let (status, _) = post(&client, api, "/v1/orders", Some(DISPATCHER), "not json").await?;
        ensure!(status == 400, "{status}");
        // The dispatch API's own refusal comes back as it is, naming the field.
        let (status, body) = post(
            &client,
            api,
            "/v1/orders",
            Some(DISPATCHER),
            r#"{"taxi_id": "cab-inbox", "kind": "order"}"#,
        )
        .await?;
        ensure!(status == 422 && body["field"] == "text", "{status} {body}");

        let (status, sent) = post(&client, api, "/v1/orders", Some(DISPATCHER), order).await?;
        ensure!(status == 201, "{status} {sent}");
        let id = sent["order_id"].as_str().context("no order_id")?.to_owned();
        let shown = stage
            .api
            .get(&format!("/v1/orders/{id}"), Some(ANALYST))
            .await?;
        ensure!(shown.status == 200, "{shown:?}");
        let shown = shown.json()?;
        ensure!(
            shown["taxi_id"] == "cab-inbox" && shown["text"] == "To the airport",
            "{shown}"
        );
        ensure!(
            shown["history"][0]["state"] == "queued",
            "the history starts queued: {shown}"
        );
        let viewer = stage
            .api
            .get(&format!("/v1/orders/{id}"), Some(VIEWER))
            .await?;
        ensure!(viewer.status == 403, "{viewer:?}");
        let missing = stage
            .api
            .get("/v1/orders/no-such-order", Some(ANALYST))
            .await?;
        ensure!(missing.status == 404, "{missing:?}");

        // The live stream: 401 without a token, a snapshot first with one.
        let live = format!("{}/v1/live", api.base);
        let anonymous = client.get(&live).send().await?;
        ensure!(anonymous.status() == 401, "{}", anonymous.status());
        let mut stream = client.get(&live).bearer_auth(VIEWER).send().await?;
        ensure!(stream.status() == 200, "{}", stream.status());
        ensure!(
            stream
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream")),
            "{:?}",
            stream.headers()
        );
        let mut text = String::new();
        let deadline = Instant::now() + STEP;
        while !(text.contains("event: positions") && text.contains("cab-1")) {
            ensure!(Instant::now() < deadline, "no positions pushed: {text}");
            let chunk = tokio::time::timeout(STEP, stream.chunk())
                .await
                .context("the live stream went quiet")??
                .context("the live stream ended")?;
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        ensure!(text.starts_with("event: snapshot"), "{text}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_sign_in_and_the_base_map_are_off_unless_configured() -> Result<()> {
    use tests::reporting::{config, start_in_process, Database, ADMIN};
    bounded(LIMIT, async {
        tests::init();
        let database = Database::start().await?;
        database
            .client
            .execute(
                "INSERT INTO latest_positions (taxi_id, seq, ts, lat, lon, received_at)
                 VALUES ('cab-1', 1, now(), 52.52, 13.405, now())",
                &[],
            )
            .await?;
        let tiles = tests::dashboard::TileServer::start().await?;
        let pki = tests::TestPki::new()?;
        let plain = start_in_process(config(&database.url(), &pki), &pki).await?;
        let mut settings = config(&database.url(), &pki);
        settings.dashboard.dev_sign_in = true;
        settings.dashboard.tile_url = Some(tiles.url.clone());
        let dev = start_in_process(settings, &pki).await?;
        let browser = Arc::new(Browser::launch(&artifacts_dir().join("chromium-dev.log")).await?);
        let page = browser.new_page().await?;

        // By default: no single sign-on configured, and no token field either.
        page.goto(&format!("{}/dashboard/", plain.base)).await?;
        page.wait_for(
            "the sign-in section",
            "window.dashboard && window.dashboard.settings && !document.querySelector('#signin').hidden",
            STEP,
        )
        .await?;
        ensure!(page.eval("document.querySelector('#dev-signin').hidden").await? == true);
        ensure!(page.eval("document.querySelector('#signin-button').hidden").await? == true);
        let message = page.eval("document.querySelector('#signin-message').textContent").await?;
        ensure!(message.as_str().unwrap_or("").contains("not configured"), "{message}");

        // Asked for: the token field, and a static token signs in.
        page.goto(&format!("{}/dashboard/", dev.base)).await?;
        page.wait_for(
            "the development sign-in",
            "!document.querySelector('#dev-signin').hidden",
            STEP,
        )
        .await?;
        page.fill("#dev-token", ADMIN).await?;
        page.eval("document.querySelector('#dev-signin').requestSubmit()").await?;
        page.wait_for(
            "signed in with the token",
            "window.dashboard && window.dashboard.signedIn === true",
            STEP,
        )
        .await?;
        ensure!(page.eval("window.dashboard.me.roles").await? == serde_json::json!(["admin"]));
        ensure!(page.eval("document.querySelector('#order-form').hidden").await? == false);

        // The base map: tiles of the configured server under the taxi.
        page.wait_for("the taxi on the map", "window.dashboard.taxis['cab-1']", STEP)
            .await?;
        let deadline = Instant::now() + STEP;
        while tiles.requests() == 0 {
            ensure!(Instant::now() < deadline, "no tile was asked for");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        page.screenshot("7-development-sign-in").await?;
        Ok(())
    })
    .await
}
