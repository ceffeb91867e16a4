//! `analytics chart`: the charts of daily_fleet as files a person can open. SVG that parses
//! as XML with the titles, axis names, dates and legend in it; PNG of the configured size
//! with both sources' lines drawn; and a clear error when there is nothing to draw.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::path::Path;

use analytics::Config;
use quick_xml::events::Event;
use testkit::postgres::TestPostgres;

async fn database() -> (TestPostgres, tokio_postgres::Client, Config) {
    let db = support::Database::start().await;
    let mut config = Config::default();
    config.postgres.url = db.url();
    (db.postgres, db.client, config)
}

/// 20 fleet days from 2026-10-10 (10 trips more each day, revenue 123.45 a day more) and
/// 10 NYC days from 2026-10-15.
const ROWS: &str = "
INSERT INTO daily_fleet (day, source, trips, revenue_cents, distance_m, active_taxis, positions,
                         avg_fare_cents, flagged_invoices, orders_accepted, orders_rejected,
                         orders_expired, orders_open, cumulative_trips)
SELECT DATE '2026-10-10' + k, 'fleet', 10 * (k + 1), 12345 * (k + 1), 1000, 3, 100, 1234.5, 0,
       1, 0, 0, 0, 5 * (k + 1) * (k + 2)
FROM generate_series(0, 19) k;
INSERT INTO daily_fleet (day, source, trips, revenue_cents, distance_m, cumulative_trips)
SELECT DATE '2026-10-15' + k, 'nyc', 300, 900000 + 1000 * k, 50000, 300 * (k + 1)
FROM generate_series(0, 9) k;";

/// Every text node of an SVG document, checking that the document is well-formed XML with
/// an `<svg>` root of `width` x `height`.
fn svg_texts(path: &Path, width: u32, height: u32) -> Vec<String> {
    let xml = std::fs::read_to_string(path).unwrap();
    assert!(
        xml.trim_start().starts_with("<svg"),
        "{}",
        &xml[..xml.len().min(200)]
    );
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut texts = Vec::new();
    let mut depth = 0;
    let mut root_seen = false;
    loop {
        match reader
            .read_event()
            .unwrap_or_else(|e| panic!("{}: not XML: {e}", path.display()))
        {
            Event::Start(element) => {
                if depth == 0 {
                    assert_eq!(element.name().as_ref(), b"svg");
                    let attribute = |name: &str| {
                        element
                            .try_get_attribute(name)
                            .unwrap()
                            .map(|a| String::from_utf8(a.value.to_vec()).unwrap())
                    };
                    assert_eq!(attribute("width"), Some(width.to_string()));
                    assert_eq!(attribute("height"), Some(height.to_string()));
                    root_seen = true;
                }
                depth += 1;
            }
            Event::End(_) => depth -= 1,
            Event::Text(text) => {
                let text = text.decode().unwrap().trim().to_owned();
                if !text.is_empty() {
                    texts.push(text);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert!(root_seen && depth == 0, "{}: unbalanced", path.display());
    texts
}

/// Width, height and RGB pixels of a PNG file.
fn png_pixels(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    let pixels = buffer[..info.buffer_size()]
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, pixels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_are_valid_svg_and_png_with_axes_dates_and_both_sources() {
    let (_postgres, client, config) = database().await;
    let out = tempfile::tempdir().unwrap();

    // Nothing aggregated yet: an error that says what to do, and no files.
    let error = analytics::chart::render(&config, out.path())
        .await
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("daily_fleet is empty"), "{message}");
    assert!(message.contains("analytics aggregate"), "{message}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    client.batch_execute(ROWS).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO tours (tour_id, taxi_id, state, started_seq, started_at, start_lat,
                                start_lon, ended_seq, ended_at, end_lat, end_lon, updated_at)
             VALUES ('t1', 'taxi-1', 'ended', 1, now(), 52.5, 13.4, 2, now(), 52.5, 13.4, now());
             INSERT INTO invoices (tour_id, taxi_id, started_at, ended_at, track_points,
                                   distance_m, driving_s, waiting_s, base_cents, distance_cents,
                                   driving_cents, waiting_cents, night_cents, zone_cents, zones,
                                   fare_cents, currency, flagged, order_id, issued_at)
             VALUES ('t1', 'taxi-1', now(), now(), 2, 0, 0, 0, 390, 0, 0, 0, 0, 0, ARRAY[]::text[],
                     390, 'EUR', false, 'invoice-t1', now());",
        )
        .await
        .unwrap();
    let written = analytics::chart::render(&config, out.path()).await.unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "cumulative_trips.svg",
            "cumulative_trips.png",
            "daily_revenue.svg",
            "daily_revenue.png"
        ]
    );

    let cumulative = svg_texts(&out.path().join("cumulative_trips.svg"), 1200, 600);
    let revenue = svg_texts(&out.path().join("daily_revenue.svg"), 1200, 600);
    for (texts, title, y_axis) in [
        (
            &cumulative,
            "Trips since the first day",
            "Trips (cumulative)",
        ),
        (&revenue, "Revenue per day", "Revenue (currency units)"),
    ] {
        for expected in [title, y_axis, "Day"] {
            assert!(
                texts.iter().any(|t| t == expected),
                "{expected} not in {texts:?}"
            );
        }
        // Readable dates on the x axis, inside the data's range.
        let dates: Vec<&String> = texts
            .iter()
            .filter(|t| t.len() == 10 && t.starts_with("2026-1"))
            .collect();
        assert!(dates.len() >= 4, "{texts:?}");
        assert!(
            dates
                .iter()
                .all(|d| d.as_str() >= "2026-10-10" && d.as_str() <= "2026-10-29"),
            "{dates:?}"
        );
    }
    assert!(cumulative.iter().any(|t| t == "Fleet"), "{cumulative:?}");
    assert!(
        cumulative.iter().any(|t| t == "NYC taxis (TLC history)"),
        "{cumulative:?}"
    );
    assert!(revenue.iter().any(|t| t == "Fleet (EUR)"), "{revenue:?}");
    assert!(
        revenue.iter().any(|t| t == "NYC taxis (TLC history) (USD)"),
        "{revenue:?}"
    );
    // Revenue in currency units: the top is about 9,090 (NYC), not 909,000 cents.
    assert!(revenue.iter().any(|t| t == "8,000"), "{revenue:?}");
    assert!(
        !revenue.iter().any(|t| t.contains("900,000")),
        "{revenue:?}"
    );
    // The cumulative axis reaches the fleet's last total, 2,100 trips.
    assert!(cumulative.iter().any(|t| t == "2,000"), "{cumulative:?}");

    for name in ["cumulative_trips.png", "daily_revenue.png"] {
        let (width, height, pixels) = png_pixels(&out.path().join(name));
        assert_eq!((width, height), (1200, 600), "{name}");
        let white = pixels.iter().filter(|p| **p == [255, 255, 255]).count();
        assert!(white < pixels.len() * 98 / 100, "{name} is (almost) blank");
        // Both lines, in their colours; black text and axes.
        let colours: HashSet<[u8; 3]> = pixels.iter().copied().collect();
        for colour in [[0, 92, 175], [214, 96, 0], [0, 0, 0]] {
            assert!(colours.contains(&colour), "{name} has no {colour:?} pixel");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_size_is_used_and_a_single_day_is_drawn() {
    let (_postgres, client, mut config) = database().await;
    client
        .batch_execute(
            "INSERT INTO daily_fleet (day, source, trips, revenue_cents, distance_m, cumulative_trips)
             VALUES (DATE '2026-03-29', 'fleet', 7, 7000, 100, 7)",
        )
        .await
        .unwrap();
    config.daily.chart_width = 800;
    config.daily.chart_height = 400;
    let out = tempfile::tempdir().unwrap();
    analytics::chart::render(&config, out.path()).await.unwrap();
    let texts = svg_texts(&out.path().join("cumulative_trips.svg"), 800, 400);
    assert!(texts.iter().any(|t| t == "2026-03-29"), "{texts:?}");
    // No invoice yet: the fleet's currency is not known, and not made up.
    let revenue = svg_texts(&out.path().join("daily_revenue.svg"), 800, 400);
    assert!(revenue.iter().any(|t| t == "Fleet"), "{revenue:?}");
    let (width, height, pixels) = png_pixels(&out.path().join("daily_revenue.png"));
    assert_eq!((width, height), (800, 400));
    assert!(
        pixels.contains(&[0, 92, 175]),
        "the lone day's marker is drawn"
    );
}
