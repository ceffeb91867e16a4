//! The H3 cell of each pickup point, as h3o computes it, but mostly without h3o's
//! trigonometry (which took a quarter of a reader's time).
//!
//! h3o projects a point onto a face of the icosahedron (gnomonic projection) and takes the
//! cell whose centre is the nearest point of a regular hexagonal lattice in that plane. Over
//! a small area the projection is nearly affine, so the lattice seen in longitude/latitude
//! is nearly regular too. The plane is cut into square tiles of about one cell; for each
//! tile, built once from h3o itself, the lattice coordinates `(i, j)` (h3o's local IJ,
//! axes at 120°) of a point are an affine function of its longitude and latitude, fitted on
//! the centres of the cells around the tile's own cell. A point gets the cell of its
//! nearest lattice point, unless it lies within the tile's margin of the border between
//! two cells: then, as for every point of a tile where the fit is not good enough (near a
//! pentagon, an icosahedron edge, a pole, the antimeridian, or at coarse resolutions),
//! h3o computes it. The margin is ten times the largest error of the fit at the centres of
//! the cells around (and never less than 1/1000 of the distance between two centres), so
//! the cell is always the one h3o gives.
//!
//! At most [`MAX_TILES`] tiles are kept (they are dropped all at once past that), so memory
//! does not depend on the file.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use h3o::{CellIndex, CoordIJ, LatLng, LocalIJ, Resolution};

/// Most tiles kept: about 2.5 MiB per reader, a square of 50 by 50 km at resolution 8.
const MAX_TILES: usize = 8192;
/// Lattice offsets from a tile's cell whose cells a tile keeps: -R..=R on both axes.
const R: i32 = 2;
const SIDE: usize = (2 * R + 1) as usize;
/// Smallest margin, in distances between two cell centres.
const MIN_MARGIN: f64 = 1e-3;
/// The margin is this many times the largest error of the fit.
const SAFETY: f64 = 10.0;
/// A fit whose error is larger than this (in centre distances) is not used.
const MAX_ERROR: f64 = 0.01;

/// The cells of points at one resolution.
pub(crate) struct Cells {
    resolution: Resolution,
    /// Tile side, degrees of latitude and of longitude.
    side: f64,
    /// Each tile's fit, by (latitude, longitude) tile number; `None` when h3o computes all
    /// its points.
    tiles: HashMap<(i64, i64), Option<Fit>, BuildHasherDefault<TileHasher>>,
    /// Points whose cell h3o computed and tiles built (tests look at them).
    computed: u64,
    built: u64,
}

struct Fit {
    anchor: CellIndex,
    /// The anchor cell's own local IJ coordinates.
    origin: CoordIJ,
    /// Longitude and latitude of the anchor cell's centre, degrees.
    lon: f64,
    lat: f64,
    /// From (Δlon, Δlat) to lattice coordinates (Δi, Δj): `[[a, b], [c, d]]`.
    a: f64,
    b: f64,
    c: f64,
    d: f64,
    margin: f64,
    /// Cells at the offsets -R..=R from the anchor; 0 when not looked up yet.
    cells: [u64; SIDE * SIDE],
}

impl Cells {
    pub(crate) fn new(resolution: Resolution) -> Cells {
        // About one cell edge; the fit covers points up to two centre distances away.
        let side = resolution.edge_length_km() / 111.32;
        Cells {
            resolution,
            side,
            tiles: HashMap::default(),
            computed: 0,
            built: 0,
        }
    }

    /// The cell of a point (degrees), `None` for an invalid point (as h3o says).
    pub(crate) fn cell(&mut self, lat: f64, lon: f64) -> Option<CellIndex> {
        let resolution = self.resolution;
        let exact = |computed: &mut u64| {
            *computed += 1;
            LatLng::new(lat, lon).ok().map(|p| p.to_cell(resolution))
        };
        if !(lat.is_finite() && lon.is_finite()) {
            return exact(&mut self.computed);
        }
        let (y, x) = (lat / self.side, lon / self.side);
        if y.abs() > 1e15 || x.abs() > 1e15 {
            return exact(&mut self.computed);
        }
        let (ty, tx) = (floor(y), floor(x));
        let key = (ty as i64, tx as i64);
        if self.tiles.len() >= MAX_TILES && !self.tiles.contains_key(&key) {
            self.tiles.clear();
        }
        let side = self.side;
        let built = &mut self.built;
        let fit = self.tiles.entry(key).or_insert_with(|| {
            *built += 1;
            Fit::new(resolution, (ty + 0.5) * side, (tx + 0.5) * side)
        });
        match fit.as_mut().and_then(|fit| fit.cell(lat, lon)) {
            Some(cell) => Some(cell),
            None => exact(&mut self.computed),
        }
    }
}

/// The hash of tile numbers: a multiply and a rotation per number (SipHash took longer
/// than the fit itself).
#[derive(Default)]
struct TileHasher(u64);

impl Hasher for TileHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// `x.floor()` for |x| < 2^53 without a call to libm (the baseline x86-64 has no
/// rounding instruction).
fn floor(x: f64) -> f64 {
    let truncated = x as i64 as f64;
    if truncated > x {
        truncated - 1.0
    } else {
        truncated
    }
}

/// Squared distance, in centre distances, of the lattice vector `(i, j)` (axes at 120°).
fn norm2(i: f64, j: f64) -> f64 {
    i * i + j * j - i * j
}

/// The six neighbours of a lattice point in IJ coordinates.
const NEIGHBOURS: [(i32, i32); 6] = [(1, 0), (0, 1), (1, 1), (-1, 0), (0, -1), (-1, -1)];
/// Where the fit is checked: the neighbours and the next ring's points between them.
const CHECKED: [(i32, i32); 12] = [
    (1, 0),
    (0, 1),
    (1, 1),
    (-1, 0),
    (0, -1),
    (-1, -1),
    (2, 1),
    (1, 2),
    (-1, 1),
    (-2, -1),
    (-1, -2),
    (1, -1),
];

impl Fit {
    /// The fit around the cell of `(lat, lon)`, if good enough.
    fn new(resolution: Resolution, lat: f64, lon: f64) -> Option<Fit> {
        let anchor = LatLng::new(lat, lon).ok()?.to_cell(resolution);
        let origin = anchor.to_local_ij(anchor).ok()?.coord;
        let centre = |di: i32, dj: i32| -> Option<(f64, f64)> {
            let coord = CoordIJ::new(origin.i.checked_add(di)?, origin.j.checked_add(dj)?);
            let cell = CellIndex::try_from(LocalIJ::new(anchor, coord)).ok()?;
            if cell.is_pentagon() {
                return None;
            }
            let at = LatLng::from(cell);
            Some((at.lng(), at.lat()))
        };
        let (lon0, lat0) = centre(0, 0)?;
        // Central differences along both axes.
        let (ip, in_) = (centre(1, 0)?, centre(-1, 0)?);
        let (jp, jn) = (centre(0, 1)?, centre(0, -1)?);
        let (ux, uy) = ((ip.0 - in_.0) / 2.0, (ip.1 - in_.1) / 2.0);
        let (vx, vy) = ((jp.0 - jn.0) / 2.0, (jp.1 - jn.1) / 2.0);
        let det = ux * vy - vx * uy;
        if !det.is_finite() || det.abs() < f64::MIN_POSITIVE * 1e6 {
            return None;
        }
        let mut fit = Fit {
            anchor,
            origin,
            lon: lon0,
            lat: lat0,
            a: vy / det,
            b: -vx / det,
            c: -uy / det,
            d: ux / det,
            margin: 0.0,
            cells: [0; SIDE * SIDE],
        };
        let mut error: f64 = 0.0;
        for (di, dj) in CHECKED {
            let (x, y) = centre(di, dj)?;
            let (i, j) = fit.lattice(y, x);
            let e = norm2(i - f64::from(di), j - f64::from(dj)).sqrt();
            if !e.is_finite() {
                return None;
            }
            error = error.max(e);
        }
        if error > MAX_ERROR {
            return None;
        }
        fit.margin = (error * SAFETY).max(MIN_MARGIN);
        Some(fit)
    }

    /// Lattice coordinates of a point relative to the anchor.
    fn lattice(&self, lat: f64, lon: f64) -> (f64, f64) {
        let (dx, dy) = (lon - self.lon, lat - self.lat);
        (self.a * dx + self.b * dy, self.c * dx + self.d * dy)
    }

    /// The cell of a point of the tile, `None` when h3o must decide (near a border, or
    /// beyond the cells kept).
    fn cell(&mut self, lat: f64, lon: f64) -> Option<CellIndex> {
        let (i, j) = self.lattice(lat, lon);
        let (fi, fj) = (floor(i), floor(j));
        // The nearest lattice point is a corner of the rhombus holding the point.
        let mut best = (0.0, 0.0, f64::INFINITY);
        for (ci, cj) in [
            (fi, fj),
            (fi + 1.0, fj),
            (fi, fj + 1.0),
            (fi + 1.0, fj + 1.0),
        ] {
            let d = norm2(i - ci, j - cj);
            if d < best.2 {
                best = (ci, cj, d);
            }
        }
        let (ci, cj, d0) = best;
        // Its distance to each border of that cell (neighbours are one centre apart).
        for (ni, nj) in NEIGHBOURS {
            let d = norm2(i - ci - f64::from(ni), j - cj - f64::from(nj));
            if (d - d0) / 2.0 < self.margin {
                return None;
            }
        }
        let r = f64::from(R);
        if !(-r..=r).contains(&ci) || !(-r..=r).contains(&cj) {
            return None;
        }
        let at = (ci as i32 + R) as usize * SIDE + (cj as i32 + R) as usize;
        if self.cells[at] == 0 {
            let coord = CoordIJ::new(
                self.origin.i.checked_add(ci as i32)?,
                self.origin.j.checked_add(cj as i32)?,
            );
            let cell = CellIndex::try_from(LocalIJ::new(self.anchor, coord)).ok()?;
            self.cells[at] = u64::from(cell);
        }
        CellIndex::try_from(self.cells[at]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform doubles in a range (splitmix64), so that the tests see the same points.
    struct Points(u64);

    impl Points {
        fn in_range(&mut self, range: std::ops::RangeInclusive<f64>) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
            range.start() + unit * (range.end() - range.start())
        }
    }

    fn exact(lat: f64, lon: f64, resolution: Resolution) -> Option<CellIndex> {
        LatLng::new(lat, lon).ok().map(|p| p.to_cell(resolution))
    }

    #[test]
    fn random_points_of_new_york_get_h3os_cells() {
        let mut rng = Points(7);
        for (resolution, points) in [
            (Resolution::Six, 5_000),
            (Resolution::Seven, 10_000),
            (Resolution::Eight, 40_000),
            (Resolution::Nine, 20_000),
            (Resolution::Ten, 2_000),
            (Resolution::Thirteen, 300),
        ] {
            let mut cells = Cells::new(resolution);
            for _ in 0..points {
                let lat = rng.in_range(40.45..=40.95);
                let lon = rng.in_range(-74.30..=-73.65);
                assert_eq!(
                    cells.cell(lat, lon),
                    exact(lat, lon, resolution),
                    "{lat},{lon} at {resolution:?}"
                );
            }
        }
    }

    #[test]
    fn points_at_the_borders_get_h3os_cells() {
        // Walk along lines through many cells in tiny steps: every crossing of a border is
        // met, with points on both sides as close to it as a double allows.
        for resolution in [Resolution::Eight, Resolution::Nine] {
            let mut cells = Cells::new(resolution);
            let step = resolution.edge_length_km() / 111.32 / 2_000.0;
            for (lat0, lon0, dlat, dlon) in [
                (40.70, -74.02, 0.3, 1.0),
                (40.60, -73.95, 1.0, 0.1),
                (40.80, -73.80, -0.7, 0.7),
            ] {
                let (mut lat, mut lon) = (lat0, lon0);
                let mut last = exact(lat, lon, resolution);
                for _ in 0..20_000 {
                    lat += dlat * step;
                    lon += dlon * step;
                    let here = exact(lat, lon, resolution);
                    if here != last {
                        // Bisect down to neighbouring doubles on both sides of the border.
                        let (mut a, mut b) = ((lat - dlat * step, lon - dlon * step), (lat, lon));
                        for _ in 0..80 {
                            let mid = ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0);
                            if mid == a || mid == b {
                                break;
                            }
                            if exact(mid.0, mid.1, resolution) == last {
                                a = mid;
                            } else {
                                b = mid;
                            }
                        }
                        for (y, x) in [a, b] {
                            assert_eq!(cells.cell(y, x), exact(y, x, resolution), "{y},{x}");
                        }
                    }
                    assert_eq!(cells.cell(lat, lon), here, "{lat},{lon}");
                    last = here;
                }
            }
        }
    }

    #[test]
    fn anywhere_else_the_cells_are_h3os_too() {
        let mut rng = Points(11);
        let mut cells = Cells::new(Resolution::Eight);
        let mut coarse = Cells::new(Resolution::Two);
        for _ in 0..5_000 {
            let lat = rng.in_range(-90.0..=90.0);
            let lon = rng.in_range(-180.0..=180.0);
            assert_eq!(cells.cell(lat, lon), exact(lat, lon, Resolution::Eight));
            assert_eq!(coarse.cell(lat, lon), exact(lat, lon, Resolution::Two));
        }
        // Around a pentagon (base cell 4's centre), the poles and the antimeridian.
        for (lat, lon) in [
            (64.7, 10.536),
            (89.9999, 12.0),
            (-89.9999, 0.0),
            (10.0, 179.9999),
            (10.0, -179.9999),
        ] {
            for k in 0..400 {
                let (y, x) = (
                    lat + f64::from(k % 20) * 1e-4,
                    lon + f64::from(k / 20) * 1e-4,
                );
                assert_eq!(cells.cell(y, x), exact(y, x, Resolution::Eight), "{y},{x}");
            }
        }
        assert_eq!(cells.cell(f64::NAN, 0.0), None);
        assert_eq!(cells.cell(1e300, 0.0), exact(1e300, 0.0, Resolution::Eight));
    }

    #[test]
    fn most_points_need_no_trigonometry() {
        let mut rng = Points(3);
        let mut cells = Cells::new(Resolution::Eight);
        for _ in 0..100_000 {
            let lat = rng.in_range(40.70..=40.80);
            let lon = rng.in_range(-74.02..=-73.93);
            assert!(cells.cell(lat, lon).is_some());
        }
        assert!(
            cells.computed < 3_000,
            "{} of 100000 points computed by h3o",
            cells.computed
        );
        // 0.1° by 0.09° is 25 by 22 tiles: each built once.
        assert!(cells.built <= 25 * 23, "{} tiles built", cells.built);
    }

    #[test]
    fn tiles_are_dropped_past_the_limit() {
        let mut cells = Cells::new(Resolution::Eight);
        let mut lat = 40.0;
        for _ in 0..MAX_TILES + 10 {
            lat += cells.side;
            assert!(cells.cell(lat, -74.0).is_some());
            assert!(cells.tiles.len() <= MAX_TILES);
        }
        assert!(cells.tiles.len() < 20);
        assert_eq!(floor(-0.5), -1.0);
        assert_eq!(floor(2.0), 2.0);
        assert_eq!(floor(-3.0), -3.0);
        assert_eq!(floor(1.999), 1.0);
    }
}
