//! The lake end to end: the platform's tables exported day by day to S3 (the embedded server
//! and moto), read back by DuckDB and by `analytics sql` with exactly PostgreSQL's totals;
//! days rewritten, corrupt objects and an unreachable store.

#[path = "lake/fixture.rs"]
mod fixture;
#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;

use analytics::lake::{self, export_day, schema, Lake};
use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use fixture::{date, Database, DST_DAY, NEXT_DAY};
use object_store::ObjectStoreExt;

/// Exports both days to `lake`, checking the row counts the export reports against
/// PostgreSQL's.
async fn export_both_days(config: &analytics::Config, lake: &Lake, db: &Database) {
    for day in [DST_DAY, NEXT_DAY] {
        let stats = export_day(config, lake, &db.client, date(day))
            .await
            .unwrap();
        let expected = db
            .rows(&format!(
                "SELECT count(*)::text FROM positions
                 WHERE (ts AT TIME ZONE 'Europe/Berlin')::date = DATE '{day}'"
            ))
            .await;
        assert_eq!(
            stats.rows("positions").unwrap().to_string(),
            expected[0],
            "{day}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reads_exactly_what_postgres_holds_and_a_rewritten_day_replaces_the_old_one() {
    let db = fixture::database().await;
    let dir = tempfile::tempdir().unwrap();
    let s3 = fixture::embedded(&dir.path().join("s3"), "127.0.0.1:0").await;
    let config = fixture::config(
        &db.postgres.url(),
        dir.path().join("data"),
        &s3.endpoint,
        (&s3.access_key_id, &s3.secret_access_key),
    );
    let lake = Lake::open(&config.lake).await.unwrap();
    export_both_days(&config, &lake, &db).await;

    let bucket_dir = dir.path().join("s3").join(&config.lake.bucket);
    let expected = fixture::postgres_totals(&db, &[DST_DAY, NEXT_DAY]).await;
    // Every dataset has rows on both days (the 23-hour day too).
    assert_eq!(expected.len(), 8, "{expected:#?}");
    assert_eq!(fixture::duckdb_totals(&bucket_dir, "lake"), expected);

    // One object per dataset and day, nothing else: no temporary files among them.
    let files = fixture::duckdb(&format!(
        "SELECT count(*) FROM glob('{}/lake/*/*/*')",
        bucket_dir.display()
    ))
    .unwrap();
    assert_eq!(files, vec!["8"]);

    // A late position on the ordinary day, and that day's windows gone (recomputed empty):
    // exporting the day again replaces its positions and removes its windows.
    db.client
        .batch_execute(
            "INSERT INTO positions (taxi_id, seq, ts, lat, lon, received_at)
             VALUES ('taxi-1', 999999, '2026-03-30 10:00:00.5+00', 52.5, 13.4, now());
             DELETE FROM windows WHERE window_start >= '2026-03-29 22:00:00+00'
                                   AND window_start < '2026-03-30 22:00:00+00';",
        )
        .await
        .unwrap();
    let stats = export_day(&config, &lake, &db.client, date(NEXT_DAY))
        .await
        .unwrap();
    assert_eq!(stats.rows("windows"), Some(0));
    let after = fixture::postgres_totals(&db, &[DST_DAY, NEXT_DAY]).await;
    assert_ne!(after, expected);
    assert_eq!(fixture::duckdb_totals(&bucket_dir, "lake"), after);
    let positions_next_day = fixture::duckdb(&format!(
        "SELECT count(*), count(DISTINCT (taxi_id, seq, ts)) FROM read_parquet('{}/lake/positions/dt={NEXT_DAY}/*.parquet')",
        bucket_dir.display()
    ))
    .unwrap();
    let in_postgres = db
        .rows(
            "SELECT count(*)::text FROM positions
             WHERE (ts AT TIME ZONE 'Europe/Berlin')::date = DATE '2026-03-30'",
        )
        .await;
    assert_eq!(
        positions_next_day,
        vec![format!("{}|{}", in_postgres[0], in_postgres[0])]
    );
    assert!(!bucket_dir
        .join("lake/windows/dt=2026-03-30/part-0.parquet")
        .exists());
    assert!(lake
        .parts("windows", date(NEXT_DAY))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        lake.parts("windows", date(DST_DAY)).await.unwrap(),
        vec!["part-0"]
    );

    // The export recorded what it published.
    let recorded = db
        .rows("SELECT dataset || ' ' || day || ' ' || rows FROM lake_exports WHERE dataset = 'windows' ORDER BY day")
        .await;
    assert_eq!(recorded.len(), 2);
    assert!(recorded[1].ends_with("2026-03-30 0"), "{recorded:?}");

    // Zones are H3 cells at resolution 8: 15 lowercase hex digits starting with 88.
    let zones = fixture::duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{}/lake/positions/*/*.parquet')
         WHERE NOT regexp_full_match(zone, '88[0-9a-f]{{13}}')",
        bucket_dir.display()
    ))
    .unwrap();
    assert_eq!(zones, vec!["0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_sql_over_moto_gives_postgres_totals() {
    let db = fixture::database().await;
    let moto = testkit::s3::MotoServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = fixture::config(
        &db.postgres.url(),
        dir.path().join("data"),
        &moto.endpoint,
        (&moto.access_key_id, &moto.secret_access_key),
    );
    let lake = Lake::open(&config.lake).await.unwrap();
    export_both_days(&config, &lake, &db).await;

    let mut lines = Vec::new();
    for (dataset, query) in fixture::LAKE_TOTALS {
        let mut out = Vec::new();
        analytics::sql::run(
            &config,
            &query.replace("{table}", dataset),
            analytics::sql::Format::Csv,
            &mut out,
        )
        .await
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        // The header, then the rows as CSV.
        lines.extend(text.lines().skip(1).map(|l| l.replace(',', "|")));
    }
    assert_eq!(
        lines,
        fixture::postgres_totals(&db, &[DST_DAY, NEXT_DAY]).await
    );

    // The table format: aligned, with the row count.
    let mut out = Vec::new();
    analytics::sql::run(
        &config,
        "SELECT dt, count(*) AS tours FROM tours GROUP BY dt ORDER BY dt",
        analytics::sql::Format::Table,
        &mut out,
    )
    .await
    .unwrap();
    let table = String::from_utf8(out).unwrap();
    assert!(table.contains("| dt         | tours |"), "{table}");
    assert!(table.contains("| 2026-03-29 |"), "{table}");
    assert!(table.trim_end().ends_with("(2 rows)"), "{table}");

    // An SQL error says what is wrong.
    let mut out = Vec::new();
    let error = analytics::sql::run(
        &config,
        "SELECT nope FROM tours",
        analytics::sql::Format::Csv,
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(format!("{error:#}").contains("nope"), "{error:#}");
}

/// A small file of the windows dataset with `rows` rows, written the way writers do.
fn windows_file(path: &std::path::Path, rows: i64) {
    let schema = schema::windows();
    let start = 1_774_735_200_000_000i64; // 2026-03-28 22:00 UTC
    let ts = |offset: i64| {
        Arc::new(
            TimestampMicrosecondArray::from(
                (0..rows)
                    .map(|k| start + k * 600_000_000 + offset)
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        )
    };
    let ints = |f: fn(i64) -> i64| Arc::new(Int64Array::from((0..rows).map(f).collect::<Vec<_>>()));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            ts(0),
            ts(10_000_000),
            Arc::new(StringArray::from(vec!["fleet"; rows as usize])),
            ints(|k| k),
            ints(|_| 3),
            Arc::new(Float64Array::from(vec![Some(30.0); rows as usize])),
            Arc::new(Float64Array::from(vec![None; rows as usize])),
            ints(|_| 1),
            ints(|_| 1),
            ints(|k| k * 100),
            ints(|_| 0),
            ints(|_| 0),
            ints(|_| 0),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, schema, Some(lake::writer_properties()))
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_datasets_are_tables_and_corrupt_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = fixture::embedded(&dir.path().join("s3"), "127.0.0.1:0").await;
    let config = fixture::config(
        "postgres://unused",
        dir.path().join("data"),
        &s3.endpoint,
        (&s3.access_key_id, &s3.secret_access_key),
    );
    let lake = Lake::open(&config.lake).await.unwrap();

    // A lake with nothing in it: every dataset is an empty table with its columns and dt.
    let ctx = lake.session().await.unwrap();
    for dataset in schema::DATASETS {
        let batches = ctx
            .sql(&format!("SELECT count(*), min(dt) FROM {dataset}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let counts = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(counts.value(0), 0, "{dataset}");
        let schema = ctx
            .table(*dataset)
            .await
            .unwrap()
            .schema()
            .as_arrow()
            .clone();
        assert_eq!(
            schema.fields().len(),
            schema::of(dataset).unwrap().fields().len() + 1
        );
        assert_eq!(
            schema.field_with_name("dt").unwrap().data_type(),
            &arrow::datatypes::DataType::Date32
        );
    }

    // A day published, then a corrupt object beside it (written by someone else).
    let good = dir.path().join("good.parquet");
    windows_file(&good, 12);
    lake.publish_file("windows", date(DST_DAY), "part-0", &good)
        .await
        .unwrap();
    assert!(good.exists(), "the caller's file stays");
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&s3.endpoint)
        .with_allow_http(true)
        .with_bucket_name(&config.lake.bucket)
        .with_region("us-east-1")
        .with_access_key_id(&s3.access_key_id)
        .with_secret_access_key(&s3.secret_access_key)
        .build()
        .unwrap();
    let corrupt_key = format!("lake/windows/dt={NEXT_DAY}/part-0.parquet");
    store
        .put(
            &corrupt_key.as_str().into(),
            b"PAR1 this is not parquet".to_vec().into(),
        )
        .await
        .unwrap();
    let ctx = lake.session().await.unwrap();
    let result = async {
        ctx.sql("SELECT count(*), sum(positions) FROM windows")
            .await?
            .collect()
            .await
    }
    .await;
    let error = format!("{}", result.unwrap_err());
    assert!(error.contains(&corrupt_key), "{error}");

    // Through analytics sql too.
    let mut out = Vec::new();
    let error = analytics::sql::run(
        &config,
        "SELECT count(*) FROM windows",
        analytics::sql::Format::Csv,
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(format!("{error:#}").contains(&corrupt_key), "{error:#}");
    // A file whose footer is fine but whose page index is not: named too.
    let mut damaged = std::fs::read(&good).unwrap();
    let end = damaged.len() - 8;
    let footer = u32::from_le_bytes(damaged[end..end + 4].try_into().unwrap()) as usize;
    for byte in &mut damaged[4..end - footer] {
        *byte = 0xff;
    }
    let damaged_key = "lake/windows/dt=2026-03-31/part-0.parquet";
    store
        .put(&damaged_key.into(), damaged.into())
        .await
        .unwrap();
    let ctx = lake.session().await.unwrap();
    let result = async {
        ctx.sql("SELECT sum(positions) FROM windows WHERE dt = DATE '2026-03-31'")
            .await?
            .collect()
            .await
    }
    .await;
    let error = format!("{}", result.unwrap_err());
    assert!(error.contains(damaged_key), "{error}");
    store.delete(&damaged_key.into()).await.unwrap();
    // The good day still reads on its own.
    let batches = ctx
        .sql(&format!(
            "SELECT count(*) FROM windows WHERE dt = DATE '{DST_DAY}'"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let counts = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(counts.value(0), 12);

    // A corrupt local file, or one with other columns, is refused before anything is sent.
    let bad = dir.path().join("bad.parquet");
    std::fs::write(&bad, b"not parquet at all").unwrap();
    let error = lake
        .publish_file("windows", date("2026-03-31"), "part-0", &bad)
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains(&bad.display().to_string()),
        "{error:#}"
    );
    let error = lake
        .publish_file("positions", date("2026-03-31"), "part-0", &good)
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("does not have the columns of positions"),
        "{error:#}"
    );
    assert!(lake
        .parts("windows", date("2026-03-31"))
        .await
        .unwrap()
        .is_empty());
    assert!(lake
        .parts("positions", date("2026-03-31"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_the_publish_with_its_name_and_keeps_the_published_day() {
    let dir = tempfile::tempdir().unwrap();
    let s3_dir = dir.path().join("s3");
    let s3 = fixture::embedded(&s3_dir, "127.0.0.1:0").await;
    let addr = s3.local_addr.to_string();
    let config = fixture::config(
        "postgres://unused",
        dir.path().join("data"),
        &s3.endpoint,
        (&s3.access_key_id, &s3.secret_access_key),
    );
    let lake = Lake::open(&config.lake).await.unwrap();
    let first = dir.path().join("first.parquet");
    windows_file(&first, 5);
    lake.publish_file("windows", date(DST_DAY), "part-0", &first)
        .await
        .unwrap();

    // The store goes away; a new version of the day cannot be published.
    drop(s3);
    let second = dir.path().join("second.parquet");
    windows_file(&second, 9);
    let error = lake
        .publish_file("windows", date(DST_DAY), "part-0", &second)
        .await
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains(&format!("http://{addr}")), "{message}");
    assert!(
        message.contains("lake/windows/dt=2026-03-29/part-0.parquet"),
        "{message}"
    );
    assert!(message.contains("after 3 tries"), "{message}");
    // Readers still see the whole first version, and the new file waits locally.
    let glob = s3_dir
        .join(&config.lake.bucket)
        .join("lake/windows/*/*.parquet");
    let read = || {
        fixture::duckdb(&format!(
            "SELECT count(*) FROM read_parquet('{}')",
            glob.display()
        ))
        .unwrap()
    };
    assert_eq!(read(), vec!["5"]);
    assert!(second.exists());

    // The store is back (same port, same directory): the waiting file is published whole.
    let _s3 = fixture::embedded(&s3_dir, &addr).await;
    lake.publish_file("windows", date(DST_DAY), "part-0", &second)
        .await
        .unwrap();
    assert_eq!(read(), vec!["9"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_larger_than_a_part_is_uploaded_in_parts_and_appears_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s3_dir = dir.path().join("s3");
    let s3 = fixture::embedded(&s3_dir, "127.0.0.1:0").await;
    let moto = testkit::s3::MotoServer::start().await.unwrap();
    // Positions with incompressible coordinates: about 6.5 MB, two parts of 5 MiB.
    let file = dir.path().join("big.parquet");
    let rows = 250_000i64;
    {
        let schema = schema::positions();
        let file = std::fs::File::create(&file).unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            file,
            schema.clone(),
            Some(lake::writer_properties()),
        )
        .unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let n = 50_000usize;
        for chunk in 0..(rows / n as i64) {
            let seqs: Vec<i64> = (0..n as i64).map(|i| chunk * n as i64 + i).collect();
            let ts = || {
                Arc::new(
                    TimestampMicrosecondArray::from(
                        seqs.iter()
                            .map(|s| 1_774_735_200_000_000 + s * 1_000)
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                )
            };
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(vec!["taxi-1"; n])),
                    Arc::new(Int64Array::from(seqs.clone())),
                    ts(),
                    Arc::new(Float64Array::from(
                        (0..n).map(|_| 52.0 + random()).collect::<Vec<_>>(),
                    )),
                    Arc::new(Float64Array::from(
                        (0..n).map(|_| 13.0 + random()).collect::<Vec<_>>(),
                    )),
                    Arc::new(arrow::array::Float32Array::from(vec![None; n])),
                    Arc::new(arrow::array::Float32Array::from(vec![None; n])),
                    Arc::new(arrow::array::Float32Array::from(vec![None; n])),
                    ts(),
                    Arc::new(StringArray::from(vec!["881f1d4887fffff"; n])),
                ],
            )
            .unwrap();
            writer.write(&batch).unwrap();
        }
        writer.close().unwrap();
    }
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(
        size > 5 * 1024 * 1024 && size < 10 * 1024 * 1024,
        "{size} bytes"
    );

    for (endpoint, access) in [
        (
            s3.endpoint.clone(),
            (s3.access_key_id.clone(), s3.secret_access_key.clone()),
        ),
        (
            moto.endpoint.clone(),
            (moto.access_key_id.clone(), moto.secret_access_key.clone()),
        ),
    ] {
        let mut config = fixture::config(
            "postgres://unused",
            dir.path().join("data"),
            &endpoint,
            (&access.0, &access.1),
        );
        config.lake.part_size_bytes = 5 * 1024 * 1024;
        let lake = Lake::open(&config.lake).await.unwrap();
        lake.publish_file("positions", date(DST_DAY), "part-0", &file)
            .await
            .unwrap();
        let ctx = lake.session().await.unwrap();
        let batches = ctx
            .sql("SELECT count(*), sum(seq) FROM positions")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let count = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        let sum = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!((count, sum), (rows, rows * (rows - 1) / 2), "{endpoint}");
        // S3 gives an object written in parts an ETag ending in "-<parts>".
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_bucket_name(&config.lake.bucket)
            .with_region("us-east-1")
            .with_access_key_id(&access.0)
            .with_secret_access_key(&access.1)
            .build()
            .unwrap();
        let head = store
            .head(&"lake/positions/dt=2026-03-29/part-0.parquet".into())
            .await
            .unwrap();
        let etag = head.e_tag.unwrap_or_default();
        assert!(etag.trim_matches('"').ends_with("-2"), "{endpoint}: {etag}");
    }
    // The embedded server's copy is the same bytes, readable by DuckDB as a plain file.
    let published = s3_dir.join("taxi-lake/lake/positions/dt=2026-03-29/part-0.parquet");
    assert_eq!(
        std::fs::read(&published).unwrap(),
        std::fs::read(&file).unwrap()
    );
    assert_eq!(
        fixture::duckdb(&format!(
            "SELECT count(*) FROM read_parquet('{}')",
            published.display()
        ))
        .unwrap(),
        vec![rows.to_string()]
    );
}
