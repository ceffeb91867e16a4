//! The reporting service's file API against a real PostgreSQL and a real S3 server (the
//! embedded one the platform runs): files that come back byte for byte with their ETag,
//! conditional and ranged reads, listings, deletes, every refusal with its reason, JSON and
//! CSV uploads read back as tables by `analytics sql`, a large upload streamed in bounded
//! memory, and imported NYC trips paged from the lake.

use anyhow::Result;
use reqwest::Method;
use serde_json::{json, Value};
use tests::files::{pattern, FileWorld, ENGINEER, THRESHOLD};
use tests::reporting::{ADMIN, ANALYST, VIEWER};

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_larger_than_a_part_comes_back_whole_in_ranges_and_goes() -> Result<()> {
    tests::init();
    let world = FileWorld::start(|_| {}).await?;
    let size = 2 * THRESHOLD as usize + 12_345;
    let bytes = pattern(size, 7);

    // Stored: created, with its ETag, under files/data/ in the bucket.
    let put = world
        .put(
            "/filesystem/big/blob.bin",
            "application/octet-stream",
            bytes.clone(),
        )
        .await?;
    assert_eq!(put.status, 201, "{}", put.body);
    let etag = put.header("etag").expect("an ETag").to_owned();
    let answer = put.json()?;
    assert_eq!(answer["bytes"], size);
    assert_eq!(answer["route"], "file");
    assert_eq!(answer["etag"], etag.as_str());
    let on_disk = std::fs::read(world.object_file("files/data/big/blob.bin"))?;
    assert!(on_disk == bytes, "the store holds the bytes as sent");

    // Read back whole, by a reader (analyst).
    let (status, headers, got) = world.get("/filesystem/big/blob.bin", ANALYST, &[]).await?;
    assert_eq!(status, 200);
    assert_eq!(got.len(), size);
    assert!(got == bytes, "the bytes come back as sent");
    assert_eq!(header(&headers, "etag").as_deref(), Some(etag.as_str()));
    assert_eq!(header(&headers, "accept-ranges").as_deref(), Some("bytes"));

    // HEAD: the same headers, no body.
    let (status, headers, got) = world
        .send(
            Method::HEAD,
            "/filesystem/big/blob.bin",
            Some(ANALYST),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200);
    assert!(got.is_empty());
    assert_eq!(header(&headers, "content-length"), Some(size.to_string()));
    assert_eq!(header(&headers, "etag").as_deref(), Some(etag.as_str()));

    // If-None-Match with its ETag: 304 and nothing else; another ETag: the file.
    let (status, headers, got) = world
        .get(
            "/filesystem/big/blob.bin",
            ANALYST,
            &[("if-none-match", &etag)],
        )
        .await?;
    assert_eq!(status, 304);
    assert!(got.is_empty());
    assert_eq!(header(&headers, "etag").as_deref(), Some(etag.as_str()));
    let (status, _, got) = world
        .get(
            "/filesystem/big/blob.bin",
            ANALYST,
            &[("if-none-match", "\"other\"")],
        )
        .await?;
    assert_eq!((status, got.len()), (200, size));

    // Ranges: exact bytes with 206, across a part boundary too; outside the file: 416.
    let boundary = THRESHOLD as usize;
    let cases = [
        ("bytes=100-199".to_owned(), 100, 200),
        (
            format!("bytes={}-{}", boundary - 10, boundary + 9),
            boundary - 10,
            boundary + 10,
        ),
        ("bytes=-10".to_owned(), size - 10, size),
        (format!("bytes={}-", size - 3), size - 3, size),
    ];
    for (range, start, end) in cases {
        let (status, headers, got) = world
            .get("/filesystem/big/blob.bin", ANALYST, &[("range", &range)])
            .await?;
        assert_eq!(status, 206, "{range}");
        assert!(got == bytes[start..end], "{range}: the exact bytes");
        assert_eq!(
            header(&headers, "content-range"),
            Some(format!("bytes {start}-{}/{size}", end - 1)),
            "{range}"
        );
    }
    let (status, headers, _) = world
        .get(
            "/filesystem/big/blob.bin",
            ANALYST,
            &[("range", &format!("bytes={size}-"))],
        )
        .await?;
    assert_eq!(status, 416);
    assert_eq!(
        header(&headers, "content-range"),
        Some(format!("bytes */{size}"))
    );

    // Listings: the root, the directory.
    world
        .put("/filesystem/big/notes.txt", "text/plain", b"hello".to_vec())
        .await?;
    let (status, _, body) = world.get("/filesystem/", ANALYST, &[]).await?;
    assert_eq!(status, 200);
    let root: Value = serde_json::from_slice(&body)?;
    assert_eq!(root["directories"], json!(["big/"]));
    assert_eq!(root["files"], json!([]));
    let (status, _, body) = world.get("/filesystem/big/", ANALYST, &[]).await?;
    assert_eq!(status, 200);
    let dir: Value = serde_json::from_slice(&body)?;
    let names: Vec<(&str, u64)> = dir["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap_or(""),
                f["bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(names, [("blob.bin", size as u64), ("notes.txt", 5)]);
    assert_eq!(dir["files"][0]["path"], "big/blob.bin");

    // Replaced: 200, a new ETag; the readers see the new bytes.
    let put = world
        .put(
            "/filesystem/big/notes.txt",
            "text/plain",
            b"hello again".to_vec(),
        )
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let (_, _, got) = world.get("/filesystem/big/notes.txt", ANALYST, &[]).await?;
    assert_eq!(got, b"hello again");
    // POST stores like PUT; other methods are named in Allow.
    let (status, _, _) = world
        .send(
            Method::POST,
            "/filesystem/big/posted.txt",
            Some(ENGINEER),
            &[],
            Some(b"by post".to_vec()),
        )
        .await?;
    assert_eq!(status, 201);
    let (_, _, got) = world
        .get("/filesystem/big/posted.txt", ANALYST, &[])
        .await?;
    assert_eq!(got, b"by post");
    let (status, _, _) = world
        .send(
            Method::DELETE,
            "/filesystem/big/posted.txt",
            Some(ENGINEER),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 204);
    let (status, headers, _) = world
        .send(
            Method::PATCH,
            "/filesystem/big/notes.txt",
            Some(ENGINEER),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 405);
    assert_eq!(
        header(&headers, "allow").as_deref(),
        Some("GET, HEAD, PUT, POST, DELETE")
    );

    // Who may: a reader may not write, a viewer not even read, nobody without a token.
    let (status, _, body) = world
        .send(
            Method::PUT,
            "/filesystem/big/x.txt",
            Some(ANALYST),
            &[],
            Some(b"x".to_vec()),
        )
        .await?;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("files.write"));
    let (status, _, _) = world
        .send(
            Method::DELETE,
            "/filesystem/big/blob.bin",
            Some(ANALYST),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 403);
    let (status, _, body) = world.get("/filesystem/big/blob.bin", VIEWER, &[]).await?;
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("files.read"));
    let (status, headers, _) = world
        .send(
            Method::PUT,
            "/filesystem/big/x.txt",
            None,
            &[],
            Some(b"x".to_vec()),
        )
        .await?;
    assert_eq!(status, 401);
    assert!(header(&headers, "www-authenticate").is_some());
    let (status, _, _) = world
        .send(Method::GET, "/filesystem/big/blob.bin", None, &[], None)
        .await?;
    assert_eq!(status, 401);
    let (status, _, _) = world.get("/filesystem/big/x.txt", ADMIN, &[]).await?;
    assert_eq!(status, 404, "nothing was written by the refused calls");

    // Deleted: 204, then 404 for the file; the directory goes with its last file.
    for file in ["blob.bin", "notes.txt"] {
        let path = format!("/filesystem/big/{file}");
        let (status, _, _) = world
            .send(Method::DELETE, &path, Some(ENGINEER), &[], None)
            .await?;
        assert_eq!(status, 204, "{path}");
        let (status, _, body) = world.get(&path, ADMIN, &[]).await?;
        assert_eq!(status, 404, "{path}");
        let error: Value = serde_json::from_slice(&body)?;
        assert!(error["error"]
            .as_str()
            .unwrap_or("")
            .contains("no such file"));
    }
    let (status, _, _) = world
        .send(
            Method::DELETE,
            "/filesystem/big/blob.bin",
            Some(ENGINEER),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 404);
    let (status, _, _) = world.get("/filesystem/big/", ANALYST, &[]).await?;
    assert_eq!(status, 404);

    // Every read was audited.
    let reads = world
        .service
        .api
        .metric("reporting_file_reads_total", &[("status", "200")])
        .await?;
    assert!(reads >= 6.0, "{reads} reads counted");
    let log = world.service.log()?;
    assert!(
        log.contains("file read")
            && log.contains("token:analyst-app")
            && log.contains("/big/blob.bin"),
        "the audit line names caller and path:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_names_its_reason_and_bad_json_is_kept() -> Result<()> {
    tests::init();
    const LIMIT: u64 = 1024 * 1024;
    let world = FileWorld::start(|c| c.files.max_body_bytes = LIMIT).await?;
    let auth = vec![("authorization", format!("Bearer {ENGINEER}"))];
    let no_body = || None;

    // Paths: written by hand, since clients would resolve the dots themselves.
    let long_name = "a".repeat(256);
    let long_path = vec!["b".repeat(200); 6].join("/");
    let cases: Vec<(String, &str)> = vec![
        ("/filesystem/../secret.txt".to_owned(), "path traversal"),
        (
            "/filesystem/docs/../../etc/passwd".to_owned(),
            "path traversal",
        ),
        (
            "/filesystem/docs/%2e%2e/%2E%2E/etc/passwd".to_owned(),
            "path traversal",
        ),
        ("/filesystem/docs/%2e%2e%2fetc".to_owned(), "encoded '/'"),
        ("/filesystem/docs/..%5c..%5cwin.ini".to_owned(), "backslash"),
        ("/filesystem/docs//x.txt".to_owned(), "empty name"),
        (format!("/filesystem/docs/{long_name}"), "256 bytes long"),
        (format!("/filesystem/{long_path}"), "1205 bytes long"),
        ("/filesystem/docs/%ff%fe.txt".to_owned(), "not valid UTF-8"),
        ("/filesystem/docs/%C3%28.txt".to_owned(), "not valid UTF-8"),
    ];
    for (target, reason) in &cases {
        for method in ["PUT", "GET"] {
            let answer = world.raw(method, target, &auth, no_body).await?;
            assert_eq!(answer.status, 400, "{method} {target}: {}", answer.body);
            let error = answer.json()?;
            assert_eq!(error["parameter"], "path", "{target}");
            let message = error["error"].as_str().unwrap_or_default();
            assert!(message.contains(reason), "{method} {target}: {message}");
        }
    }
    let (status, _, body) = world.get("/filesystem/", ADMIN, &[]).await?;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body)?["directories"],
        json!([]),
        "nothing was stored"
    );

    // Too large, said up front: refused before the body is read.
    let mut headers = auth.clone();
    headers.push(("content-length", (LIMIT + 1).to_string()));
    let answer = world
        .raw("PUT", "/filesystem/docs/big.bin", &headers, no_body)
        .await?;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(answer.json()?["error"]
        .as_str()
        .unwrap_or_default()
        .contains("files.max_body_bytes"));
    // Too large, found while streaming (chunked, no length): refused, nothing kept.
    let mut chunks = 0;
    let answer = world
        .raw("PUT", "/filesystem/docs/big.bin", &auth, || {
            chunks += 1;
            (chunks <= 20).then(|| vec![b'x'; 64 * 1024])
        })
        .await?;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(answer.sent > LIMIT, "the limit was passed while streaming");
    let (status, _, _) = world.get("/filesystem/docs/big.bin", ADMIN, &[]).await?;
    assert_eq!(status, 404, "nothing of the refused upload is readable");
    // Just at the limit: accepted.
    let put = world
        .put(
            "/filesystem/docs/full.bin",
            "application/octet-stream",
            vec![1; LIMIT as usize],
        )
        .await?;
    assert_eq!(put.status, 201, "{}", put.body);

    // A JSON document that does not parse: 422 naming line and column, kept under rejected/
    // with its reason; the previous version stays.
    let good = b"[{\"id\": 1}]".to_vec();
    let put = world
        .put(
            "/filesystem/docs/events.json",
            "application/json",
            good.clone(),
        )
        .await?;
    assert_eq!(put.status, 201, "{}", put.body);
    let bad = b"[\n  {\"id\": 2},\n  {\"id\": 3,}\n]\n".to_vec();
    let put = world
        .put(
            "/filesystem/docs/events.json",
            "application/json",
            bad.clone(),
        )
        .await?;
    assert_eq!(put.status, 422, "{}", put.body);
    let error = put.json()?;
    assert_eq!(
        (error["line"].clone(), error["column"].clone()),
        (json!(3), json!(12))
    );
    let message = error["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("line 3, column 12") && message.contains("expected a key"),
        "{message}"
    );
    assert_eq!(error["kept"], "rejected/files/docs/events.json");
    let kept = std::fs::read(world.object_file("files/rejected/files/docs/events.json"))?;
    assert_eq!(kept, bad, "the refused upload is kept whole");
    let reason: Value = serde_json::from_slice(&std::fs::read(
        world.object_file("files/rejected/reasons/docs/events.json.json"),
    )?)?;
    assert_eq!(reason["line"], 3);
    assert_eq!(reason["column"], 12);
    assert_eq!(reason["caller"], "token:engineer-app");
    assert!(reason["error"]
        .as_str()
        .unwrap_or_default()
        .contains("expected a key"));
    let (status, _, got) = world
        .get("/filesystem/docs/events.json", ADMIN, &[])
        .await?;
    assert_eq!(
        (status, got),
        (200, good),
        "the previous version is still served"
    );
    // By content type too, and NDJSON line by line.
    let put = world
        .put(
            "/filesystem/docs/raw",
            "application/json",
            b"{\"a\": tru}".to_vec(),
        )
        .await?;
    assert_eq!(put.status, 422, "{}", put.body);
    assert_eq!(put.json()?["column"], 10);
    let put = world
        .put(
            "/filesystem/docs/lines.ndjson",
            "text/plain",
            b"{\"a\":1}\n[2]\n".to_vec(),
        )
        .await?;
    assert_eq!(put.status, 422, "{}", put.body);
    assert_eq!(put.json()?["line"], 2);
    let (status, _, _) = world
        .get("/filesystem/docs/lines.ndjson", ADMIN, &[])
        .await?;
    assert_eq!(status, 404);
    assert!(world
        .object_file("files/rejected/files/docs/lines.ndjson")
        .exists());
    // Nothing is left in staging.
    let staging = world.object_file("files/staging");
    let left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "staged uploads are removed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_csv_uploads_are_tables_and_nyc_trips_are_paged_from_the_lake() -> Result<()> {
    tests::init();
    let world = FileWorld::start(|_| {}).await?;

    // A pretty-printed JSON array and an NDJSON file in one directory: one table.
    let array = b"[\n  {\"id\": 1, \"driver\": \"Ana\", \"km\": 12.5},\n  {\"id\": 2, \"driver\": \"Ben\", \"km\": 3}\n]\n";
    let put = world
        .put(
            "/filesystem/shifts/2026/03/a.json",
            "application/json",
            array.to_vec(),
        )
        .await?;
    assert_eq!(put.status, 201, "{}", put.body);
    let answer = put.json()?;
    assert_eq!(answer["rows"], 2);
    assert_eq!(answer["table"], "files.shifts_json");
    let put = world
        .put(
            "/filesystem/shifts/b.ndjson",
            "application/x-ndjson",
            b"{\"id\": 3, \"driver\": \"C\\u00e9line\", \"km\": 7.25}\n".to_vec(),
        )
        .await?;
    assert_eq!(put.status, 201, "{}", put.body);
    // The file itself comes back as sent.
    let (_, _, got) = world
        .get("/filesystem/shifts/2026/03/a.json", ANALYST, &[])
        .await?;
    assert_eq!(got, array.to_vec());
    let rows = world
        .sql("SELECT id, driver, km FROM files.shifts_json ORDER BY id")
        .await?;
    assert_eq!(
        rows,
        ["id,driver,km", "1,Ana,12.5", "2,Ben,3.0", "3,Céline,7.25"]
    );

    // CSV: its directory's table, with a header line.
    let csv = "zone,trips,revenue\nnorth,4,120.5\nsouth,7,88\n";
    let put = world
        .put(
            "/filesystem/zones/2026-03.csv",
            "text/csv",
            csv.as_bytes().to_vec(),
        )
        .await?;
    assert_eq!(put.status, 201, "{}", put.body);
    assert_eq!(put.json()?["table"], "files.zones_csv");
    let rows = world
        .sql("SELECT zone, trips * 2 AS twice, revenue FROM files.zones_csv ORDER BY zone")
        .await?;
    assert_eq!(
        rows,
        ["zone,twice,revenue", "north,8,120.5", "south,14,88.0"]
    );

    // A deleted JSON file takes its rows with it.
    let (status, _, _) = world
        .send(
            Method::DELETE,
            "/filesystem/shifts/b.ndjson",
            Some(ENGINEER),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 204);
    let rows = world
        .sql("SELECT count(*) AS n FROM files.shifts_json")
        .await?;
    assert_eq!(rows, ["n", "2"]);

    // NYC trips imported into the lake: 25 trips from 10:00 New York time, one a minute.
    let mut text = String::from(HEADER_2015);
    text.push('\n');
    for i in 0..25 {
        text.push_str(&format!(
            "1,2015-01-01 10:{i:02}:00,2015-01-01 10:{:02}:30,1,1.00,-73.9857,40.7484,1,N,-73.9772,40.7527,1,{}.5,0,0.5,1,0,0.3,{}.3\n",
            i,
            6 + i,
            8 + i
        ));
    }
    let file = world.scratch.path().join("yellow_tripdata_2015-01.csv");
    std::fs::write(&file, text)?;
    let summaries = analytics::import::import_files(&world.analytics()?, &[file], None).await?;
    analytics::import::all_imported(&summaries)?;

    // Parquet: one of the lake's own trips_nyc files, uploaded, is a table too.
    let day = world.object_file("lake/trips_nyc/dt=2015-01-01");
    let part = std::fs::read_dir(&day)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .expect("a trips_nyc object of 2015-01-01");
    let put = world
        .put(
            "/filesystem/nyc/copy.parquet",
            "application/octet-stream",
            std::fs::read(part)?,
        )
        .await?;
    assert_eq!(put.status, 201, "{}", put.body);
    assert_eq!(put.json()?["table"], "files.nyc_parquet");
    let rows = world
        .sql("SELECT count(*) AS n, sum(fare_cents) AS fares FROM files.nyc_parquet")
        .await?;
    assert_eq!(rows, ["n,fares", "25,46250"]);

    // 10:00 to 10:20 EST is 15:00 to 15:20 UTC: 20 trips, in pages of 8.
    let range = "from=2015-01-01T15:00:00Z&to=2015-01-01T15:20:00Z";
    let probe = world
        .service
        .api
        .get(&format!("/v1/trips/nyc?{range}&limit=8"), Some(ANALYST))
        .await?;
    assert_eq!(
        probe.status,
        200,
        "{}\n{}",
        probe.body,
        world.service.log()?
    );
    let items = world
        .service
        .api
        .all_pages(&format!("/v1/trips/nyc?{range}&limit=8"), ANALYST)
        .await?;
    assert_eq!(items.len(), 20);
    let first = &items[0];
    assert_eq!(first["pickup_at"], "2015-01-01T15:00:00.000000Z");
    assert_eq!(first["dropoff_at"], "2015-01-01T15:00:30.000000Z");
    assert_eq!(first["line"], 2);
    assert_eq!(first["fare_cents"], 650);
    assert_eq!(first["total_cents"], 830);
    assert_eq!(first["distance_m"], 1609.344);
    let lines: Vec<i64> = items.iter().filter_map(|i| i["line"].as_i64()).collect();
    assert_eq!(
        lines,
        (2..22).collect::<Vec<i64>>(),
        "each trip once, in order"
    );
    assert_eq!(items[19]["pickup_at"], "2015-01-01T15:19:00.000000Z");
    let page = world
        .service
        .api
        .get(&format!("/v1/trips/nyc?{range}&limit=8"), Some(ANALYST))
        .await?
        .json()?;
    assert_eq!(page["count"], 8);
    let next = page["next"].as_str().expect("a next page").to_owned();
    assert!(next.starts_with("/v1/trips/nyc?"), "{next}");
    // A cursor is bound to its range.
    let cursor = next.split("cursor=").nth(1).unwrap_or_default();
    let other = world
        .service
        .api
        .get(
            &format!(
                "/v1/trips/nyc?from=2015-01-01T15:00:00Z&to=2015-01-01T16:00:00Z&cursor={cursor}"
            ),
            Some(ANALYST),
        )
        .await?;
    assert_eq!(other.status, 400, "{}", other.body);
    // CSV: the whole range streamed.
    let (status, lines, _, header) = world
        .service
        .api
        .csv_lines(&format!("/v1/trips/nyc?{range}"), ANALYST)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(lines, 21, "a header and 20 trips");
    assert!(
        header.starts_with("pickup_at,dropoff_at,source_file,line,"),
        "{header}"
    );
    // Permission trips: a viewer may not.
    let refused = world
        .service
        .api
        .get(&format!("/v1/trips/nyc?{range}"), Some(VIEWER))
        .await?;
    assert_eq!(refused.status, 403);
    Ok(())
}

/// The header of the TLC's 2015 files.
const HEADER_2015: &str = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,pickup_longitude,pickup_latitude,RateCodeID,store_and_fwd_flag,dropoff_longitude,dropoff_latitude,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_and_download_stream_in_bounded_memory() -> Result<()> {
    tests::init();
    const SIZE: u64 = 128 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let world = FileWorld::start(|_| {}).await?;
    let idle_kib = world.service.peak_rss_kib()?;
    let began = std::time::Instant::now();
    let block = pattern(CHUNK, 3);
    let mut sent = 0u64;
    let mut headers = vec![("authorization", format!("Bearer {ENGINEER}"))];
    headers.push(("content-length", SIZE.to_string()));
    let answer = world
        .raw("PUT", "/filesystem/bulk/big.bin", &headers, || {
            (sent < SIZE).then(|| {
                sent += CHUNK as u64;
                block.clone()
            })
        })
        .await?;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.json()?["bytes"], SIZE);
    let after_upload_kib = world.service.peak_rss_kib()?;
    eprintln!("uploaded in {:?}", began.elapsed());
    let on_disk = std::fs::metadata(world.object_file("files/data/bulk/big.bin"))?.len();
    assert_eq!(on_disk, SIZE);

    // Downloaded (streamed by the client too), the same bytes.
    let (status, _, got) = world
        .get(
            "/filesystem/bulk/big.bin",
            ANALYST,
            &[("range", "bytes=0-1048575")],
        )
        .await?;
    assert_eq!(status, 206);
    assert!(got[..CHUNK] == block[..] && got[CHUNK..2 * CHUNK] == block[..]);
    let (status, total) = world
        .download_len("/filesystem/bulk/big.bin", ANALYST)
        .await?;
    assert_eq!((status, total), (200, SIZE));
    eprintln!("downloaded by {:?}", began.elapsed());
    let peak_kib = world.service.peak_rss_kib()?;
    let grown = |kib: u64| kib.saturating_sub(idle_kib) as f64 / 1024.0;
    eprintln!(
        "128 MiB up and down: peak RSS {idle_kib} KiB -> {after_upload_kib} KiB after the upload, {peak_kib} KiB after the download"
    );
    // The parts in flight (three of 5 MiB) and the buffers around them, not the file.
    assert!(
        grown(peak_kib) < 40.0,
        "memory grew by {:.1} MiB for 128 MiB up and down: not streamed",
        grown(peak_kib)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_reached_is_a_503_not_a_hang() -> Result<()> {
    tests::init();
    let port = testkit::free_port()?;
    let world = FileWorld::start(|c| c.lake.endpoint = format!("http://127.0.0.1:{port}")).await?;
    let began = std::time::Instant::now();
    for (method, body) in [(Method::GET, None), (Method::PUT, Some(b"x".to_vec()))] {
        let (status, _, body) = world
            .send(
                method.clone(),
                "/filesystem/a/b.txt",
                Some(ENGINEER),
                &[],
                body,
            )
            .await?;
        assert_eq!(status, 503, "{method}: {}", String::from_utf8_lossy(&body));
        let error: Value = serde_json::from_slice(&body)?;
        assert_eq!(
            error["error"],
            "the file store cannot be reached; try again shortly"
        );
    }
    assert!(began.elapsed().as_secs() < 20, "{:?}", began.elapsed());
    Ok(())
}
