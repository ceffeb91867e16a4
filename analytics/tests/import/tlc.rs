//! Small TLC files of both layouts, written the way the TLC publishes them: known good rows
//! on known New York days, and one bad row of each kind.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

/// The header of the TLC's 2015 files, as they have it.
pub const HEADER_2015: &str = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,pickup_longitude,pickup_latitude,RateCodeID,store_and_fwd_flag,dropoff_longitude,dropoff_latitude,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount";

/// January 2015: 5 good rows (3 on 2015-01-01, 2 on 2015-01-02) and, on lines 5 to 10, one
/// bad row of each kind.
pub const CSV_2015_01: &[&str] = &[
    // line 2: Empire State Building to Grand Central.
    "1,2015-01-01 00:10:00,2015-01-01 00:25:00,1,2.50,-73.9857,40.7484,1,N,-73.9772,40.7527,1,10.5,0.5,0.5,2.25,0,0.3,14.05",
    // line 3: JFK to Manhattan, flat fare and tolls.
    "2,2015-01-01 12:00:00,2015-01-01 12:30:00,2,17.00,-73.7781,40.6413,2,N,-73.9857,40.7484,2,52,0,0.5,0,5.33,0.3,58.13",
    // line 4: late evening in New York, already 2015-01-02 in UTC.
    "1,2015-01-01 23:30:00,2015-01-01 23:50:00,1,1.20,-73.9911,40.7506,1,N,-73.9877,40.7411,1,7,0.5,0.5,1.5,0,0.3,9.8",
    // line 5: unparseable fare.
    "2,2015-01-02 07:00:00,2015-01-02 07:10:00,1,1.00,-73.9857,40.7484,1,N,-73.9772,40.7527,1,abc,0,0.5,0,0,0.3,7.3",
    // line 6: dropoff before pickup.
    "2,2015-01-02 10:00:00,2015-01-02 09:50:00,1,1.00,-73.9857,40.7484,1,N,-73.9772,40.7527,1,6.5,0,0.5,0,0,0.3,7.3",
    // line 7: negative distance.
    "1,2015-01-02 11:00:00,2015-01-02 11:10:00,1,-1.50,-73.9857,40.7484,1,N,-73.9772,40.7527,1,6.5,0,0.5,0,0,0.3,7.3",
    // line 8: negative fare (a refund).
    "1,2015-01-02 12:00:00,2015-01-02 12:10:00,1,1.00,-73.9857,40.7484,1,N,-73.9772,40.7527,3,-5,0,-0.5,0,0,-0.3,-5.8",
    // line 9: no GPS fix: 0,0.
    "2,2015-01-02 13:00:00,2015-01-02 13:10:00,1,1.00,0,0,1,N,-73.9772,40.7527,1,6.5,0,0.5,0,0,0.3,7.3",
    // line 10: a cut row.
    "2,2015-01-02 14:00:00,2015-01-02 14:10:00,1,1.00,-73.9857,40.7484,1,N,-73.9772",
    // line 11.
    "2,2015-01-02 08:00:00,2015-01-02 08:12:00,1,0.90,-73.9819,40.7681,1,N,-73.9760,40.7614,2,6.5,0,0.5,0,0,0.3,7.3",
    // line 12.
    "2,2015-01-02 18:45:10,2015-01-02 19:05:59,3,3.10,-73.9900,40.7300,1,N,-73.9500,40.7800,1,14,1,0.5,3,0,0.3,18.8",
];

/// Around the daylight-saving changes (header in the 2016 spelling, `RatecodeID`): 4 good
/// rows (2 on 2015-11-01, 1 on 2015-11-02, 1 on 2016-03-13) and a dropoff out of New York.
pub const CSV_DST: &[&str] = &[
    // line 2: 01:50 EDT to 01:10 EST, across the autumn change.
    "1,2015-11-01 01:50:00,2015-11-01 01:10:00,1,4.00,-73.9857,40.7484,1,N,-73.9500,40.8000,1,15,0.5,0.5,3,0,0.3,19.3",
    // line 3.
    "2,2015-11-01 14:00:00,2015-11-01 14:20:00,1,2.00,-73.9857,40.7484,1,N,-73.9772,40.7527,1,9.5,0,0.5,2,0,0.3,12.3",
    // line 4: a dropoff in Westchester, north of the box.
    "2,2015-11-01 15:00:00,2015-11-01 15:50:00,1,25.00,-73.9857,40.7484,1,N,-73.7600,41.0300,1,70,0,0.5,0,0,0.3,70.8",
    // line 5.
    "1,2015-11-02 09:00:00,2015-11-02 09:10:00,1,1.00,-73.9857,40.7484,1,N,-73.9772,40.7527,1,6,0,0.5,1,0,0.3,7.8",
    // line 6: 02:30 does not exist on 2016-03-13; it reads as 03:30 EDT.
    "1,2016-03-13 02:30:00,2016-03-13 03:45:00,1,1.00,-73.9857,40.7484,1,N,-73.9772,40.7527,1,6,0,0.5,1,0,0.3,7.8",
];

/// The TLC's taxi zone lookup table, a few of its rows.
pub const ZONE_LOOKUP: &str = "\"LocationID\",\"Borough\",\"Zone\",\"service_zone\"
1,\"EWR\",\"Newark Airport\",\"EWR\"
132,\"Queens\",\"JFK Airport\",\"Airports\"
161,\"Manhattan\",\"Midtown Center\",\"Yellow Zone\"
236,\"Manhattan\",\"Upper East Side North\",\"Yellow Zone\"
237,\"Manhattan\",\"Upper East Side South\",\"Yellow Zone\"
";

/// A CSV with CRLF line ends and an empty last line, as some TLC files have.
pub fn write_csv(path: &Path, header: &str, rows: &[&str]) {
    let mut text = String::from(header);
    text.push_str("\r\n");
    for row in rows {
        text.push_str(row);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    std::fs::write(path, text).unwrap();
}

pub fn write_csv_gz(path: &Path, header: &str, rows: &[&str]) {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(header.as_bytes()).unwrap();
    encoder.write_all(b"\n").unwrap();
    for row in rows {
        encoder.write_all(row.as_bytes()).unwrap();
        encoder.write_all(b"\n").unwrap();
    }
    std::fs::write(path, encoder.finish().unwrap()).unwrap();
}

/// One row of the current layout.
struct Row {
    vendor: i32,
    pickup: Option<&'static str>,
    dropoff: &'static str,
    passengers: Option<f64>,
    miles: f64,
    pu: i32,
    dolocation: i32,
    payment: i64,
    fare: f64,
    tip: f64,
    tolls: f64,
    total: f64,
}

/// January 2024 in the current Parquet layout: 4 good rows (2 on 2024-01-01, 2 on
/// 2024-01-02) and, as rows 4 to 7, a missing pickup time, a dropoff before its pickup, a
/// negative fare and a negative distance.
fn rows_2024_01() -> Vec<Row> {
    let row = |pickup, dropoff, pu, dolocation, fare: f64, miles| Row {
        vendor: 2,
        pickup,
        dropoff,
        passengers: Some(1.0),
        miles,
        pu,
        dolocation,
        payment: 1,
        fare,
        tip: 0.0,
        tolls: 0.0,
        total: fare + 1.0,
    };
    vec![
        // 1: JFK to the Upper East Side, with a tip and tolls.
        Row {
            tip: 15.5,
            tolls: 6.94,
            total: 99.19,
            ..row(
                Some("2024-01-01T00:05:00"),
                "2024-01-01T00:50:00",
                132,
                236,
                70.0,
                17.3,
            )
        },
        // 2: no passenger count.
        Row {
            passengers: None,
            ..row(
                Some("2024-01-01T10:00:00"),
                "2024-01-01T10:15:00",
                161,
                237,
                12.1,
                1.6,
            )
        },
        // 3: zone 264 ("Unknown") is not in the lookup.
        row(
            Some("2024-01-02T09:00:00"),
            "2024-01-02T09:30:00",
            264,
            264,
            20.0,
            3.0,
        ),
        // 4: no pickup time.
        row(None, "2024-01-02T10:00:00", 161, 236, 9.3, 1.0),
        // 5: dropoff before pickup.
        row(
            Some("2024-01-02T11:00:00"),
            "2024-01-02T10:00:00",
            161,
            236,
            9.3,
            1.0,
        ),
        // 6: a refund.
        row(
            Some("2024-01-02T12:00:00"),
            "2024-01-02T12:10:00",
            161,
            236,
            -9.3,
            1.0,
        ),
        // 7: negative distance.
        row(
            Some("2024-01-02T13:00:00"),
            "2024-01-02T13:10:00",
            161,
            236,
            9.3,
            -1.0,
        ),
        // 8: just before midnight, ending the next day.
        row(
            Some("2024-01-02T23:59:59"),
            "2024-01-03T00:10:00",
            236,
            132,
            60.0,
            16.0,
        ),
    ]
}

/// Writes [`rows_2024_01`] with the columns and types of the TLC's current files
/// (timestamps in nanoseconds without zone, int32 zone ids, int64 payment types, doubles).
pub fn write_parquet_2024_01(path: &Path) {
    let rows = rows_2024_01();
    let nanos = |text: &str| {
        text.parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_nanosecond() as i64
    };
    let doubles = |f: &dyn Fn(&Row) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let timestamp = || DataType::Timestamp(TimeUnit::Nanosecond, None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("VendorID", DataType::Int32, true),
        Field::new("tpep_pickup_datetime", timestamp(), true),
        Field::new("tpep_dropoff_datetime", timestamp(), true),
        Field::new("passenger_count", DataType::Float64, true),
        Field::new("trip_distance", DataType::Float64, true),
        Field::new("RatecodeID", DataType::Float64, true),
        Field::new("store_and_fwd_flag", DataType::Utf8, true),
        Field::new("PULocationID", DataType::Int32, true),
        Field::new("DOLocationID", DataType::Int32, true),
        Field::new("payment_type", DataType::Int64, true),
        Field::new("fare_amount", DataType::Float64, true),
        Field::new("extra", DataType::Float64, true),
        Field::new("mta_tax", DataType::Float64, true),
        Field::new("tip_amount", DataType::Float64, true),
        Field::new("tolls_amount", DataType::Float64, true),
        Field::new("improvement_surcharge", DataType::Float64, true),
        Field::new("total_amount", DataType::Float64, true),
        Field::new("congestion_surcharge", DataType::Float64, true),
        Field::new("Airport_fee", DataType::Float64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(
            rows.iter().map(|r| r.vendor).collect::<Vec<_>>(),
        )),
        Arc::new(TimestampNanosecondArray::from(
            rows.iter().map(|r| r.pickup.map(nanos)).collect::<Vec<_>>(),
        )),
        Arc::new(TimestampNanosecondArray::from(
            rows.iter().map(|r| nanos(r.dropoff)).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            rows.iter().map(|r| r.passengers).collect::<Vec<_>>(),
        )),
        doubles(&|r| r.miles),
        doubles(&|_| 1.0),
        Arc::new(StringArray::from(vec!["N"; rows.len()])),
        Arc::new(Int32Array::from(
            rows.iter().map(|r| r.pu).collect::<Vec<_>>(),
        )),
        Arc::new(Int32Array::from(
            rows.iter().map(|r| r.dolocation).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.payment).collect::<Vec<_>>(),
        )),
        doubles(&|r| r.fare),
        doubles(&|_| 0.0),
        doubles(&|_| 0.5),
        doubles(&|r| r.tip),
        doubles(&|r| r.tolls),
        doubles(&|_| 1.0),
        doubles(&|r| r.total),
        doubles(&|_| 2.5),
        doubles(&|_| 0.0),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}
