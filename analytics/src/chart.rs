//! Charts of the daily aggregates (`analytics chart`): the running total of trips per day
//! and the revenue of each day, one line per source (the fleet, the NYC history), as SVG
//! for pages and PNG for anything else.
//!
//! The numbers come from PostgreSQL's `daily_fleet`, the aggregates' own store. Revenue is
//! drawn in currency units, not cents. Text needs a font in both formats (plotters measures
//! every label with it); DejaVu Sans is compiled in (analytics/assets/, with its licence), so
//! the charts look the same on every machine, with or without fonts installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::daily::calendar::{epoch_days, from_epoch_days};
use crate::daily::{store, Source, StoredDay};
use crate::Config;

/// DejaVu Sans, registered as plotters' `sans-serif`.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// The currency of the NYC TLC records.
const NYC_CURRENCY: &str = "USD";

/// Draws the charts into `out` (created if missing) and returns the files written.
pub async fn render(config: &Config, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let client = crate::db::connect_once(&config.postgres.url)
        .await
        .context("the charts read daily_fleet (postgres.url / DATABASE_URL)")?;
    let days = store::stored_days(&client)
        .await
        .context("reading the daily aggregates (is the analytics schema migrated?)")?;
    if days.is_empty() {
        bail!(
            "no daily aggregates to draw: daily_fleet is empty. Aggregate days first with \
             `analytics aggregate --from YYYY-MM-DD --to YYYY-MM-DD` or by running the service"
        );
    }
    let fleet_currency: Option<String> = client
        .query_opt("SELECT currency FROM invoices LIMIT 1", &[])
        .await
        .context("reading the fleet's currency from invoices")?
        .map(|row| row.try_get(0))
        .transpose()?;
    let charts = charts(&days, fleet_currency.as_deref());
    let size = (config.daily.chart_width, config.daily.chart_height);
    tokio::fs::create_dir_all(out)
        .await
        .with_context(|| format!("creating the chart directory {}", out.display()))?;
    let out = out.to_owned();
    tokio::task::spawn_blocking(move || write_all(&charts, &out, size))
        .await
        .context("drawing the charts")?
}

/// One chart: its file name (without extension), title, y axis and lines.
#[derive(Clone, Debug)]
pub struct Chart {
    pub name: &'static str,
    pub title: String,
    pub y_label: String,
    /// Values have cents: labels with two decimals when the range is small.
    pub money: bool,
    pub lines: Vec<Line>,
}

/// One source's line: (day as days since 1970-01-01, value).
#[derive(Clone, Debug)]
pub struct Line {
    pub label: String,
    pub points: Vec<(i32, f64)>,
}

/// The two charts of `days` (any order).
pub fn charts(days: &[StoredDay], fleet_currency: Option<&str>) -> Vec<Chart> {
    let mut by_source: BTreeMap<&'static str, Vec<&StoredDay>> = BTreeMap::new();
    for day in days {
        by_source.entry(day.source.name()).or_default().push(day);
    }
    let mut cumulative = Vec::new();
    let mut revenue = Vec::new();
    for source in Source::all() {
        let Some(days) = by_source.get_mut(source.name()) else {
            continue;
        };
        days.sort_by_key(|d| d.day);
        let (label, currency) = match source {
            Source::Fleet => ("Fleet", fleet_currency),
            Source::Nyc => ("NYC taxis (TLC history)", Some(NYC_CURRENCY)),
        };
        cumulative.push(Line {
            label: label.to_owned(),
            points: days
                .iter()
                .map(|d| (epoch_days(d.day), d.cumulative_trips as f64))
                .collect(),
        });
        revenue.push(Line {
            label: match currency {
                Some(currency) => format!("{label} ({currency})"),
                None => label.to_owned(),
            },
            points: days
                .iter()
                .map(|d| (epoch_days(d.day), d.totals.revenue_cents as f64 / 100.0))
                .collect(),
        });
    }
    vec![
        Chart {
            name: "cumulative_trips",
            title: "Trips since the first day".to_owned(),
            y_label: "Trips (cumulative)".to_owned(),
            money: false,
            lines: cumulative,
        },
        Chart {
            name: "daily_revenue",
            title: "Revenue per day".to_owned(),
            y_label: "Revenue (currency units)".to_owned(),
            money: true,
            lines: revenue,
        },
    ]
}

/// Writes every chart as `<name>.svg` and `<name>.png` into `out`.
pub fn write_all(charts: &[Chart], out: &Path, size: (u32, u32)) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let mut written = Vec::new();
    for chart in charts {
        let svg = out.join(format!("{}.svg", chart.name));
        draw(SVGBackend::new(&svg, size).into_drawing_area(), chart)
            .with_context(|| format!("drawing {}", svg.display()))?;
        written.push(svg);
        let png = out.join(format!("{}.png", chart.name));
        draw(BitMapBackend::new(&png, size).into_drawing_area(), chart)
            .with_context(|| format!("drawing {}", png.display()))?;
        written.push(png);
    }
    Ok(written)
}

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if !ok {
        bail!("the compiled-in chart font (assets/DejaVuSans.ttf) is not a font");
    }
    Ok(())
}

/// Line colours, one per source, distinguishable in colour and in grey.
const COLOURS: [RGBColor; 4] = [
    RGBColor(0, 92, 175),
    RGBColor(214, 96, 0),
    RGBColor(0, 140, 70),
    RGBColor(120, 40, 140),
];

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> anyhow::Result<()> {
    let failed = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    root.fill(&WHITE).map_err(failed)?;
    let (first, last) = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold((i32::MAX, i32::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if first > last {
        bail!("{}: nothing to draw", chart.name);
    }
    // One day alone still gets an axis a day wide on each side.
    let x_range = if first == last {
        first - 1..last + 1
    } else {
        first..last
    };
    let top = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    // Headroom above the highest point, so that the legend (upper left) covers no line.
    let y_top = if top > 0.0 { top * 1.25 } else { 1.0 };
    let small = y_top < 100.0;

    let mut plot = ChartBuilder::on(&root)
        .caption(&chart.title, (FAMILY, 30))
        .margin(24)
        // Room for the half of the last date label that lies right of the axis' end.
        .margin_right(64)
        .x_label_area_size(70)
        .y_label_area_size(110)
        .build_cartesian_2d(x_range, 0.0..y_top)
        .map_err(failed)?;
    let day_label = |x: &i32| {
        from_epoch_days(*x)
            .map(|d| d.strftime("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    let value_label = |y: &f64| {
        if chart.money && small {
            format!("{y:.2}")
        } else {
            thousands(y.round() as i64)
        }
    };
    plot.configure_mesh()
        .x_desc("Day")
        .y_desc(&chart.y_label)
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&day_label)
        .y_label_formatter(&value_label)
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 20))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(failed)?;

    for (i, line) in chart.lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let style = colour.stroke_width(3);
        plot.draw_series(LineSeries::new(line.points.iter().copied(), style))
            .map_err(failed)?
            .label(&line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        // Markers where days are few enough to be told apart (and a lone day is visible).
        if line.points.len() <= 62 {
            plot.draw_series(
                line.points
                    .iter()
                    .map(|&p| Circle::new(p, 4, colour.filled())),
            )
            .map_err(failed)?;
        }
    }
    plot.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 18))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(failed)?;
    root.present().map_err(failed)?;
    Ok(())
}

/// `1234567` as `1,234,567`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(-1_234_567), "-1,234,567");
    }
}
