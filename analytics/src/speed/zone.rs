//! Zones: H3 cells at the configured resolution (`windows.h3_resolution`), via h3o.
//!
//! A zone id is the cell's standard 15-character lowercase hexadecimal string (e.g.
//! `881f1d4887fffff`), the form every H3 library reads; the fleet-wide row's zone is
//! [`FLEET`]. The lake's `zone` columns use the same ids.

use h3o::{CellIndex, LatLng, Resolution};

/// The zone of the fleet-wide row.
pub const FLEET: &str = "fleet";

/// Maps coordinates to their H3 cell.
#[derive(Clone, Copy, Debug)]
pub struct Zones {
    resolution: Resolution,
}

impl Zones {
    /// Cells of `resolution` (0 to 15).
    pub fn new(resolution: u8) -> anyhow::Result<Zones> {
        let resolution = Resolution::try_from(resolution).map_err(|e| {
            anyhow::anyhow!("windows.h3_resolution: {resolution} is not an H3 resolution: {e}")
        })?;
        Ok(Zones { resolution })
    }

    /// The cell of a WGS84 position in degrees; `None` for coordinates that are not finite.
    pub fn cell(&self, lat: f64, lon: f64) -> Option<CellIndex> {
        LatLng::new(lat, lon)
            .ok()
            .map(|point| point.to_cell(self.resolution))
    }

    /// The zone id of a position (see the module doc).
    pub fn zone(&self, lat: f64, lon: f64) -> Option<String> {
        self.cell(lat, lon).map(|cell| cell.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cells computed independently with the reference H3 library (Python `h3` 4.x,
    /// `h3.latlng_to_cell(lat, lon, 8)`).
    #[test]
    fn zone_ids_are_the_reference_cells_as_lowercase_hex() {
        let zones = Zones::new(8).unwrap();
        assert_eq!(
            zones.zone(52.5219, 13.4132).as_deref(),
            Some("881f1d4897fffff")
        );
        assert_eq!(
            zones.zone(52.5163, 13.3777).as_deref(),
            Some("881f1d4887fffff")
        );
        assert_eq!(
            zones.zone(52.520008, 13.404954).as_deref(),
            Some("881f1d4895fffff")
        );
    }

    #[test]
    fn the_resolution_is_checked() {
        assert!(Zones::new(15).is_ok());
        let error = Zones::new(16).unwrap_err().to_string();
        assert!(error.contains("windows.h3_resolution"), "{error}");
        assert!(Zones::new(8).unwrap().zone(f64::NAN, 13.4).is_none());
    }
}
