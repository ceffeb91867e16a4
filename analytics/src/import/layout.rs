//! The two layouts of TLC yellow-taxi trip records, recognised by their column names (in a
//! CSV header or a Parquet schema; case and order do not matter, extra columns are ignored):
//!
//! - [`Layout::Coordinates`]: January 2015 to June 2016, pickup and dropoff as
//!   longitude/latitude (`pickup_longitude`, ...), published as CSV.
//! - [`Layout::ZoneIds`]: July 2016 on, pickup and dropoff as TLC taxi zone ids
//!   (`PULocationID`, `DOLocationID`), published as CSV until 2022 and as Parquet since.

use std::fmt;

/// A TLC yellow-taxi layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Points as longitude/latitude (2015 to mid-2016).
    Coordinates,
    /// Points as TLC taxi zone ids (mid-2016 on).
    ZoneIds,
}

impl Layout {
    /// The name stored in `nyc_imports.layout` and printed in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Coordinates => "coordinates",
            Layout::ZoneIds => "zone-ids",
        }
    }

    /// The layout of a [`Layout::name`].
    pub fn from_name(name: &str) -> Option<Layout> {
        [Layout::Coordinates, Layout::ZoneIds]
            .into_iter()
            .find(|l| l.name() == name)
    }

    /// The TLC's header of this layout.
    pub fn header(self) -> &'static str {
        match self {
            Layout::Coordinates => COORDINATES_HEADER,
            Layout::ZoneIds => ZONE_IDS_HEADER,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The header of the 2015 CSV files.
pub const COORDINATES_HEADER: &str = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,\
passenger_count,trip_distance,pickup_longitude,pickup_latitude,RateCodeID,store_and_fwd_flag,\
dropoff_longitude,dropoff_latitude,payment_type,fare_amount,extra,mta_tax,tip_amount,\
tolls_amount,improvement_surcharge,total_amount";

/// The columns of the current files (CSV header or Parquet schema).
pub const ZONE_IDS_HEADER: &str = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,\
passenger_count,trip_distance,RatecodeID,store_and_fwd_flag,PULocationID,DOLocationID,\
payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,\
total_amount,congestion_surcharge,airport_fee";

/// Columns both layouts need.
const COMMON: [&str; 10] = [
    "VendorID",
    "tpep_pickup_datetime",
    "tpep_dropoff_datetime",
    "passenger_count",
    "trip_distance",
    "payment_type",
    "fare_amount",
    "tip_amount",
    "tolls_amount",
    "total_amount",
];
const POINTS: [&str; 4] = [
    "pickup_longitude",
    "pickup_latitude",
    "dropoff_longitude",
    "dropoff_latitude",
];
const ZONES: [&str; 2] = ["PULocationID", "DOLocationID"];

/// Where the pickup and dropoff are, as positions of the file's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Places {
    Points {
        pickup_lon: usize,
        pickup_lat: usize,
        dropoff_lon: usize,
        dropoff_lat: usize,
    },
    Zones {
        pickup: usize,
        dropoff: usize,
    },
}

/// The positions of the columns the import reads, in a file's own column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Columns {
    pub layout: Layout,
    pub vendor_id: usize,
    pub pickup_at: usize,
    pub dropoff_at: usize,
    pub passenger_count: usize,
    pub trip_distance: usize,
    pub payment_type: usize,
    pub fare: usize,
    pub tip: usize,
    pub tolls: usize,
    pub total: usize,
    pub places: Places,
    /// Fields a row needs: one more than the last position read.
    pub width: usize,
}

/// The name of the column at each position (for messages), in the order of the TLC files.
pub(crate) const NAMES: [&str; 16] = [
    "VendorID",
    "tpep_pickup_datetime",
    "tpep_dropoff_datetime",
    "passenger_count",
    "trip_distance",
    "pickup_longitude",
    "pickup_latitude",
    "dropoff_longitude",
    "dropoff_latitude",
    "PULocationID",
    "DOLocationID",
    "payment_type",
    "fare_amount",
    "tip_amount",
    "tolls_amount",
    "total_amount",
];

impl Columns {
    /// Finds the layout in a file's column names. The error says what is missing and what
    /// both layouts look like; the caller adds the file's name.
    pub(crate) fn find<S: AsRef<str>>(names: &[S]) -> Result<Columns, String> {
        let clean: Vec<String> = names
            .iter()
            .map(|n| {
                n.as_ref()
                    .trim_start_matches('\u{feff}')
                    .trim()
                    .to_ascii_lowercase()
            })
            .collect();
        let position = |name: &str| clean.iter().position(|c| *c == name.to_ascii_lowercase());
        let missing = |wanted: &[&str]| -> Vec<String> {
            wanted
                .iter()
                .filter(|n| position(n).is_none())
                .map(|n| (*n).to_owned())
                .collect()
        };
        let has_points = position("pickup_longitude").is_some();
        let has_zones = position("pulocationid").is_some();
        let (layout, needed): (Layout, Vec<&str>) = if has_points {
            (
                Layout::Coordinates,
                COMMON.iter().chain(&POINTS).copied().collect(),
            )
        } else if has_zones {
            (
                Layout::ZoneIds,
                COMMON.iter().chain(&ZONES).copied().collect(),
            )
        } else {
            let shown: Vec<&str> = names.iter().take(25).map(AsRef::as_ref).collect();
            return Err(format!(
                "the columns [{}] are not a TLC yellow-taxi layout (no pickup_longitude nor \
                 PULocationID column); expected the 2015 layout \"{COORDINATES_HEADER}\" or the \
                 zone-id layout \"{ZONE_IDS_HEADER}\"",
                shown.join(",")
            ));
        };
        let absent = missing(&needed);
        if !absent.is_empty() {
            return Err(format!(
                "the {layout} layout needs the column(s) {} (expected \"{}\")",
                absent.join(", "),
                layout.header()
            ));
        }
        let at = |name: &str| position(name).unwrap_or(0);
        let places = match layout {
            Layout::Coordinates => Places::Points {
                pickup_lon: at("pickup_longitude"),
                pickup_lat: at("pickup_latitude"),
                dropoff_lon: at("dropoff_longitude"),
                dropoff_lat: at("dropoff_latitude"),
            },
            Layout::ZoneIds => Places::Zones {
                pickup: at("PULocationID"),
                dropoff: at("DOLocationID"),
            },
        };
        let width = needed.iter().map(|n| at(n)).max().unwrap_or(0) + 1;
        Ok(Columns {
            layout,
            vendor_id: at("VendorID"),
            pickup_at: at("tpep_pickup_datetime"),
            dropoff_at: at("tpep_dropoff_datetime"),
            passenger_count: at("passenger_count"),
            trip_distance: at("trip_distance"),
            payment_type: at("payment_type"),
            fare: at("fare_amount"),
            tip: at("tip_amount"),
            tolls: at("tolls_amount"),
            total: at("total_amount"),
            places,
            width,
        })
    }

    /// The positions read, with their TLC names, in file order.
    pub(crate) fn used(&self) -> Vec<(usize, &'static str)> {
        let mut used = vec![
            (self.vendor_id, NAMES[0]),
            (self.pickup_at, NAMES[1]),
            (self.dropoff_at, NAMES[2]),
            (self.passenger_count, NAMES[3]),
            (self.trip_distance, NAMES[4]),
            (self.payment_type, NAMES[11]),
            (self.fare, NAMES[12]),
            (self.tip, NAMES[13]),
            (self.tolls, NAMES[14]),
            (self.total, NAMES[15]),
        ];
        match self.places {
            Places::Points {
                pickup_lon,
                pickup_lat,
                dropoff_lon,
                dropoff_lat,
            } => used.extend([
                (pickup_lon, NAMES[5]),
                (pickup_lat, NAMES[6]),
                (dropoff_lon, NAMES[7]),
                (dropoff_lat, NAMES[8]),
            ]),
            Places::Zones { pickup, dropoff } => {
                used.extend([(pickup, NAMES[9]), (dropoff, NAMES[10])])
            }
        }
        used.sort();
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(header: &str) -> Vec<&str> {
        header.split(',').collect()
    }

    #[test]
    fn both_tlc_headers_are_recognised() {
        let columns = Columns::find(&split(COORDINATES_HEADER)).unwrap();
        assert_eq!(columns.layout, Layout::Coordinates);
        assert_eq!(columns.pickup_at, 1);
        assert_eq!(columns.total, 18);
        assert_eq!(columns.width, 19);
        let columns = Columns::find(&split(ZONE_IDS_HEADER)).unwrap();
        assert_eq!(columns.layout, Layout::ZoneIds);
        assert_eq!(
            columns.places,
            Places::Zones {
                pickup: 7,
                dropoff: 8
            }
        );
        assert_eq!(
            columns.width, 17,
            "congestion_surcharge and airport_fee are not needed"
        );
        assert_eq!(columns.used().len(), 12);
    }

    #[test]
    fn names_are_matched_without_case_and_with_a_bom() {
        let header = format!("\u{feff}{}", COORDINATES_HEADER.to_ascii_uppercase());
        let columns = Columns::find(&split(&header)).unwrap();
        assert_eq!(columns.vendor_id, 0);
    }

    #[test]
    fn a_wrong_header_says_what_was_expected() {
        let error = Columns::find(&["id", "name"]).unwrap_err();
        assert!(error.contains("[id,name]"), "{error}");
        assert!(error.contains(COORDINATES_HEADER), "{error}");
        let error =
            Columns::find(&split(&COORDINATES_HEADER.replace("fare_amount", "fare"))).unwrap_err();
        assert!(error.contains("needs the column(s) fare_amount"), "{error}");
    }
}
