//! Generated NYC TLC yellow-taxi trip records in the 2015 CSV layout (pickup and dropoff
//! coordinates), for the import benchmark: plausible values, trips spread over one month in
//! pickup order, the same file for the same row count.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The 2015 header, as the TLC published it.
pub const HEADER_2015: &str = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,pickup_longitude,pickup_latitude,RateCodeID,store_and_fwd_flag,dropoff_longitude,dropoff_latitude,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount";

/// Writes `rows` trips of January 2015 to `path`; returns the file's size in bytes.
pub fn write_2015_csv(path: &Path, rows: u64) -> Result<u64> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "{HEADER_2015}")?;
    let mut rng = StdRng::seed_from_u64(2015);
    let month_s: u64 = 31 * 86_400;
    for i in 0..rows {
        let pickup = i * month_s / rows.max(1);
        let duration = rng.random_range(120..2_400u64);
        let miles: f64 = rng.random_range(0.3..12.0);
        let (plon, plat) = point(&mut rng);
        let (dlon, dlat) = point(&mut rng);
        let fare = 2.5 + miles * 2.5;
        let tip = if rng.random_bool(0.6) {
            fare * 0.2
        } else {
            0.0
        };
        let total = fare + 0.5 + 0.5 + tip + 0.3;
        writeln!(
            out,
            "{},{},{},{},{:.2},{:.6},{:.6},1,N,{:.6},{:.6},{},{:.2},0.5,0.5,{:.2},0,0.3,{:.2}",
            1 + i % 2,
            stamp(pickup),
            stamp(pickup + duration),
            1 + i % 4,
            miles,
            plon,
            plat,
            dlon,
            dlat,
            1 + i % 2,
            fare,
            tip,
            total
        )?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    Ok(size)
}

/// A point in Manhattan and around.
fn point(rng: &mut StdRng) -> (f64, f64) {
    (
        rng.random_range(-74.02..-73.93),
        rng.random_range(40.70..40.80),
    )
}

/// `2015-01-DD HH:MM:SS` for `offset` seconds into January 2015 (New York local time).
fn stamp(offset: u64) -> String {
    let offset = offset.min(31 * 86_400 - 1);
    let day = offset / 86_400 + 1;
    let rest = offset % 86_400;
    format!(
        "2015-01-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}
