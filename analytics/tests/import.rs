//! The historical import end to end: small TLC files of both layouts (a 2015 CSV, the same
//! layout gzip-compressed, a current Parquet file and the zone lookup table) imported into
//! the lake on the embedded S3 server and read back with DuckDB and `Lake::session`; rejects
//! and imports checked in PostgreSQL; a second import, an interrupted one, bad files, the
//! command line and the import at start.

#[path = "support/mod.rs"]
mod support;
#[path = "import/tlc.rs"]
mod tlc;
#[path = "import/world.rs"]
mod world;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use analytics::import::{self, FileSummary, Layout, Outcome, Reason};
use world::{duckdb, sha256, World};

fn day(text: &str) -> jiff::civil::Date {
    text.parse().unwrap()
}

fn micros(utc: &str) -> i64 {
    utc.parse::<jiff::Timestamp>().unwrap().as_microsecond()
}

fn reasons(list: &[(Reason, u64)]) -> BTreeMap<Reason, u64> {
    list.iter().copied().collect()
}

fn h3(lat: f64, lon: f64) -> String {
    h3o::LatLng::new(lat, lon)
        .unwrap()
        .to_cell(h3o::Resolution::Eight)
        .to_string()
}

/// The three files of the main test and the zone table, written into the world.
struct Files {
    csv: std::path::PathBuf,
    gz: std::path::PathBuf,
    parquet: std::path::PathBuf,
    zones: std::path::PathBuf,
}

fn write_files(world: &World) -> Files {
    let files = Files {
        csv: world.input("yellow_tripdata_2015-01.csv"),
        gz: world.input("yellow_tripdata_dst.csv.gz"),
        parquet: world.input("yellow_tripdata_2024-01.parquet"),
        zones: world.input("taxi_zone_lookup.csv"),
    };
    tlc::write_csv(&files.csv, tlc::HEADER_2015, tlc::CSV_2015_01);
    tlc::write_csv_gz(
        &files.gz,
        &tlc::HEADER_2015.replace("RateCodeID", "RatecodeID"),
        tlc::CSV_DST,
    );
    tlc::write_parquet_2024_01(&files.parquet);
    std::fs::write(&files.zones, tlc::ZONE_LOOKUP).unwrap();
    files
}

/// Rows per New York day in the lake, as DuckDB counts them.
fn lake_days(world: &World) -> Vec<String> {
    duckdb(&format!(
        "SELECT dt, count(*) FROM {} GROUP BY dt ORDER BY dt",
        world.trips_table()
    ))
}

const EXPECTED_DAYS: [&str; 7] = [
    "2015-01-01|3",
    "2015-01-02|2",
    "2015-11-01|2",
    "2015-11-02|1",
    "2016-03-13|1",
    "2024-01-01|2",
    "2024-01-02|2",
];

async fn rejects(world: &World) -> Vec<String> {
    world
        .rows(
            "SELECT substr(file_sha256, 1, 8), line::text, reason FROM nyc_import_rejects
             ORDER BY file_sha256, line",
        )
        .await
}

fn check_imported(summary: &FileSummary, rows: u64, rejected: &[(Reason, u64)], days: &[&str]) {
    assert_eq!(summary.outcome, Outcome::Imported, "{}", summary.line());
    assert_eq!(summary.rows, rows, "{}", summary.line());
    assert_eq!(summary.rejected, reasons(rejected), "{}", summary.line());
    let days: Vec<_> = days.iter().map(|d| day(d)).collect();
    assert_eq!(summary.days, days, "{}", summary.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_layouts_reach_the_lake_once_and_every_bad_row_is_kept_with_its_reason() {
    let world = World::start().await;
    let files = write_files(&world);
    let all = [files.csv.clone(), files.gz.clone(), files.parquet.clone()];
    let (csv_sha, gz_sha, parquet_sha) = (
        sha256(&files.csv),
        sha256(&files.gz),
        sha256(&files.parquet),
    );

    let summaries = import::import_files(&world.config, &all, Some(&files.zones))
        .await
        .unwrap();
    assert_eq!(summaries.len(), 3);
    check_imported(
        &summaries[0],
        5,
        &[
            (Reason::UnknownRowLayout, 1),
            (Reason::Unparseable, 1),
            (Reason::DropoffBeforePickup, 1),
            (Reason::NegativeDistance, 1),
            (Reason::NegativeFare, 1),
            (Reason::CoordinatesOutOfRange, 1),
        ],
        &["2015-01-01", "2015-01-02"],
    );
    assert_eq!(summaries[0].layout, Some(Layout::Coordinates));
    assert_eq!(summaries[0].format, Some(import::Format::Csv));
    assert_eq!(summaries[0].sha256.as_deref(), Some(csv_sha.as_str()));
    check_imported(
        &summaries[1],
        4,
        &[(Reason::CoordinatesOutOfRange, 1)],
        &["2015-11-01", "2015-11-02", "2016-03-13"],
    );
    assert_eq!(summaries[1].format, Some(import::Format::GzipCsv));
    check_imported(
        &summaries[2],
        4,
        &[
            (Reason::Unparseable, 1),
            (Reason::DropoffBeforePickup, 1),
            (Reason::NegativeDistance, 1),
            (Reason::NegativeFare, 1),
        ],
        &["2024-01-01", "2024-01-02"],
    );
    assert_eq!(summaries[2].layout, Some(Layout::ZoneIds));
    assert_eq!(
        import::touched_days(&summaries).len(),
        7,
        "every day written is due for its daily aggregates"
    );
    import::all_imported(&summaries).unwrap();

    // The lake: rows per New York day, one object per (day, file) named by the file's hash.
    assert_eq!(lake_days(&world), EXPECTED_DAYS);
    let part = format!("{}.parquet", &csv_sha[..16]);
    assert!(world
        .trips_dir()
        .join("dt=2015-01-01")
        .join(&part)
        .is_file());
    let objects = duckdb(&format!(
        "SELECT count(*) FROM glob('{}/*/*')",
        world.trips_dir().display()
    ));
    assert_eq!(objects, ["7"]);

    // Values of a 2015 row: 23:30 in New York is 04:30 UTC the next day, but its dt is the
    // New York day; miles in metres, dollars in cents, the pickup's H3 cell.
    let row = duckdb(&format!(
        "SELECT source_file, dt, epoch_us(pickup_at), epoch_us(dropoff_at), vendor_id,
                passenger_count, round(distance_m, 3), pickup_lon, pickup_lat, dropoff_lon,
                dropoff_lat, pickup_location_id, pickup_borough, zone, payment_type,
                fare_cents, tip_cents, tolls_cents, total_cents
         FROM {} WHERE line = 4 AND source_file = '{csv_sha}'",
        world.trips_table()
    ));
    assert_eq!(
        row,
        [format!(
            "{csv_sha}|2015-01-01|{}|{}|1|1|1931.213|-73.9911|40.7506|-73.9877|40.7411|||{}|1|700|150|0|980",
            micros("2015-01-02T04:30:00Z"),
            micros("2015-01-02T04:50:00Z"),
            h3(40.7506, -73.9911)
        )]
    );
    let jfk = duckdb(&format!(
        "SELECT round(distance_m, 3), fare_cents, tolls_cents, total_cents FROM {}
         WHERE line = 3 AND source_file = '{csv_sha}'",
        world.trips_table()
    ));
    assert_eq!(jfk, ["27358.848|5200|533|5813"]);

    // Daylight saving: the dropoff across the autumn change is the second 01:10; the spring
    // gap's 02:30 is 07:30 UTC.
    let dst = duckdb(&format!(
        "SELECT line, epoch_us(pickup_at), epoch_us(dropoff_at) FROM {}
         WHERE source_file = '{gz_sha}' AND line IN (2, 6) ORDER BY line",
        world.trips_table()
    ));
    assert_eq!(
        dst,
        [
            format!(
                "2|{}|{}",
                micros("2015-11-01T05:50:00Z"),
                micros("2015-11-01T06:10:00Z")
            ),
            format!(
                "6|{}|{}",
                micros("2016-03-13T07:30:00Z"),
                micros("2016-03-13T07:45:00Z")
            ),
        ]
    );

    // The current layout: zone ids named with the lookup table, `tlc:<id>` zones, money in
    // cents, a missing passenger count kept as null, no points.
    let current = duckdb(&format!(
        "SELECT line, dt, epoch_us(pickup_at), passenger_count, pickup_location_id,
                dropoff_location_id, pickup_borough, pickup_zone_name, zone, pickup_lon,
                fare_cents, tip_cents, tolls_cents, total_cents
         FROM {} WHERE source_file = '{parquet_sha}' ORDER BY line",
        world.trips_table()
    ));
    assert_eq!(
        current,
        [
            format!(
                "1|2024-01-01|{}|1|132|236|Queens|JFK Airport|tlc:132||7000|1550|694|9919",
                micros("2024-01-01T05:05:00Z")
            ),
            format!(
                "2|2024-01-01|{}||161|237|Manhattan|Midtown Center|tlc:161||1210|0|0|1310",
                micros("2024-01-01T15:00:00Z")
            ),
            format!(
                "3|2024-01-02|{}|1|264|264|||tlc:264||2000|0|0|2100",
                micros("2024-01-02T14:00:00Z")
            ),
            format!(
                "8|2024-01-02|{}|1|236|132|Manhattan|Upper East Side North|tlc:236||6000|0|0|6100",
                micros("2024-01-03T04:59:59Z")
            ),
        ]
    );

    // The lake's own SQL view agrees.
    let lake = analytics::lake::Lake::open(&world.config.lake)
        .await
        .unwrap();
    let session = lake.session().await.unwrap();
    let batches = session
        .sql("SELECT count(*) AS n, sum(fare_cents) AS fares FROM trips_nyc")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(text.contains("| 13 | 28860 |"), "{text}");

    // Every rejected row, with its reason, in PostgreSQL.
    let expected_rejects = {
        let mut rows = vec![];
        for (sha, line, reason) in [
            (&csv_sha, 5, "unparseable"),
            (&csv_sha, 6, "dropoff_before_pickup"),
            (&csv_sha, 7, "negative_distance"),
            (&csv_sha, 8, "negative_fare"),
            (&csv_sha, 9, "coordinates_out_of_range"),
            (&csv_sha, 10, "unknown_row_layout"),
            (&gz_sha, 4, "coordinates_out_of_range"),
            (&parquet_sha, 4, "unparseable"),
            (&parquet_sha, 5, "dropoff_before_pickup"),
            (&parquet_sha, 6, "negative_fare"),
            (&parquet_sha, 7, "negative_distance"),
        ] {
            rows.push((sha.clone(), format!("{}|{line}|{reason}", &sha[..8])));
        }
        rows.sort();
        rows.into_iter().map(|(_, row)| row).collect::<Vec<_>>()
    };
    assert_eq!(rejects(&world).await, expected_rejects);
    let details = world
        .rows(&format!(
            "SELECT detail, raw FROM nyc_import_rejects
             WHERE (file_sha256, line) IN (('{csv_sha}', 5), ('{csv_sha}', 10), ('{parquet_sha}', 4))
             ORDER BY file_sha256 = '{csv_sha}' DESC, line"
        ))
        .await;
    assert_eq!(
        details[0],
        format!(
            "fare_amount: \"abc\" is not an amount in dollars|{}",
            tlc::CSV_2015_01[3]
        )
    );
    assert_eq!(
        details[1],
        format!(
            "the row has 10 fields, the header 19|{}",
            tlc::CSV_2015_01[8]
        )
    );
    assert!(
        details[2]
            .starts_with("tpep_pickup_datetime: missing|VendorID=2,tpep_pickup_datetime=null,"),
        "{}",
        details[2]
    );

    let imports = world
        .rows("SELECT substr(sha256, 1, 8), format, layout, rows::text, rejected::text, first_day::text, last_day::text, array_length(days, 1)::text FROM nyc_imports ORDER BY first_day")
        .await;
    assert_eq!(
        imports,
        [
            format!(
                "{}|csv|coordinates|5|6|2015-01-01|2015-01-02|2",
                &csv_sha[..8]
            ),
            format!(
                "{}|csv.gz|coordinates|4|1|2015-11-01|2016-03-13|3",
                &gz_sha[..8]
            ),
            format!(
                "{}|parquet|zone-ids|4|4|2024-01-01|2024-01-02|2",
                &parquet_sha[..8]
            ),
        ]
    );

    // The same files again: skipped, with the first import's counts; nothing doubled.
    let again = import::import_files(&world.config, &all, Some(&files.zones))
        .await
        .unwrap();
    for (first, second) in summaries.iter().zip(&again) {
        assert!(
            matches!(second.outcome, Outcome::Skipped { .. }),
            "{}",
            second.line()
        );
        assert!(
            second.line().contains("already imported"),
            "{}",
            second.line()
        );
        assert_eq!(
            (second.rows, &second.rejected, &second.days),
            (first.rows, &first.rejected, &first.days)
        );
    }
    assert!(import::touched_days(&again).is_empty());
    assert_eq!(lake_days(&world), EXPECTED_DAYS);
    assert_eq!(rejects(&world).await, expected_rejects);
    assert_eq!(
        world.rows("SELECT count(*)::text FROM nyc_imports").await,
        ["3"]
    );

    // An import that stopped before it was recorded (its objects and rejects are there, its
    // nyc_imports row is not) is redone over the same objects: nothing doubled.
    world
        .client
        .execute("DELETE FROM nyc_imports WHERE sha256 = $1", &[&csv_sha])
        .await
        .unwrap();
    let redone = import::import_files(&world.config, std::slice::from_ref(&files.csv), None)
        .await
        .unwrap();
    check_imported(
        &redone[0],
        5,
        &summaries[0]
            .rejected
            .clone()
            .into_iter()
            .collect::<Vec<_>>(),
        &["2015-01-01", "2015-01-02"],
    );
    assert_eq!(lake_days(&world), EXPECTED_DAYS);
    assert_eq!(rejects(&world).await, expected_rejects);
    assert_eq!(
        world.rows("SELECT count(*)::text FROM nyc_imports").await,
        ["3"]
    );
    // The scratch files are gone.
    let scratch = world.config.data_dir.join("import");
    assert_eq!(
        std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_errors_naming_the_file_and_the_others_are_imported() {
    let world = World::start().await;
    let good = world.input("good.csv");
    tlc::write_csv(&good, tlc::HEADER_2015, &tlc::CSV_2015_01[..3]);
    let wrong = world.input("wrong_header.csv");
    std::fs::write(&wrong, "id,pickup,fare\n1,2015-01-01 00:00:00,5\n").unwrap();
    let parquet = world.input("valid.parquet");
    tlc::write_parquet_2024_01(&parquet);
    let bytes = std::fs::read(&parquet).unwrap();
    let corrupt = world.input("corrupt.parquet");
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let missing = world.input("missing.csv");

    let summaries = import::import_files(
        &world.config,
        &[
            wrong.clone(),
            corrupt.clone(),
            missing.clone(),
            good.clone(),
        ],
        None,
    )
    .await
    .unwrap();
    let failure = |summary: &FileSummary| match &summary.outcome {
        Outcome::Failed(message) => message.clone(),
        other => panic!("{}: {other:?}", summary.path.display()),
    };
    let message = failure(&summaries[0]);
    assert!(message.contains(&wrong.display().to_string()), "{message}");
    assert!(
        message.contains(tlc::HEADER_2015),
        "says what was expected: {message}"
    );
    let message = failure(&summaries[1]);
    assert!(
        message.contains(&corrupt.display().to_string()),
        "{message}"
    );
    assert!(message.contains("not a readable Parquet file"), "{message}");
    let message = failure(&summaries[2]);
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("cannot open"), "{message}");
    check_imported(&summaries[3], 3, &[], &["2015-01-01"]);
    let error = import::all_imported(&summaries).unwrap_err().to_string();
    assert!(error.starts_with("3 of 4 files not imported"), "{error}");
    for path in [&wrong, &corrupt, &missing] {
        assert!(error.contains(&path.display().to_string()), "{error}");
    }
    assert_eq!(
        world.rows("SELECT count(*)::text FROM nyc_imports").await,
        ["1"]
    );
    assert_eq!(lake_days(&world), ["2015-01-01|3"]);

    // The command: one line per file, a failure exit naming the bad file.
    let config_file = world.input("analytics.toml");
    std::fs::write(
        &config_file,
        format!(
            "data_dir = {:?}\n[postgres]\nurl = {:?}\n[lake]\nendpoint = {:?}\n",
            world.config.data_dir.display().to_string(),
            world.config.postgres.url,
            world.config.lake.endpoint
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_analytics"))
        .arg("--config")
        .arg(&config_file)
        .arg("import")
        .arg(&good)
        .arg(&wrong)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].contains("already imported") && lines[0].contains("good.csv"),
        "{stdout}"
    );
    assert!(
        lines[1].contains("wrong_header.csv: not imported"),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 of 2 files not imported") && stderr.contains("wrong_header.csv"),
        "{stderr}"
    );

    // At start: an unreadable configured file stops the start, naming the key and the path.
    let mut config = world.config.clone();
    config.import.files = vec![missing.clone()];
    let error = import::start(Arc::new(config.clone()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("import.files") && error.contains(&missing.display().to_string()),
        "{error}"
    );

    // Readable configured files are imported in the background, each once.
    let gz = world.input("dst.csv.gz");
    tlc::write_csv_gz(&gz, tlc::HEADER_2015, tlc::CSV_DST);
    config.import.files = vec![gz.clone(), good.clone()];
    import::start(Arc::new(config)).await.unwrap();
    let waited = Instant::now();
    let gz_sha = sha256(&gz);
    loop {
        let rows = world
            .rows(&format!(
                "SELECT rows::text FROM nyc_imports WHERE sha256 = '{gz_sha}'"
            ))
            .await;
        if rows == ["4"] {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the configured import did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        world.rows("SELECT count(*)::text FROM nyc_imports").await,
        ["2"]
    );
    assert_eq!(
        lake_days(&world),
        [
            "2015-01-01|3",
            "2015-11-01|2",
            "2015-11-02|1",
            "2016-03-13|1"
        ]
    );
}
