//! The progress bar of one file: position in the file (bytes read for a CSV, rows for a
//! Parquet file) with an ETA, and the rows per second. Drawn on stderr only when it is a
//! terminal (never in logs, CI or the service), at most a few times a second.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What the bar's position counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    Bytes,
    Rows,
}

pub(crate) struct Progress {
    bar: ProgressBar,
    started: Instant,
}

impl Progress {
    /// A bar for `label` up to `total`; hidden unless `show` and stderr is a terminal.
    pub(crate) fn new(label: &str, total: u64, unit: Unit, show: bool) -> Progress {
        let target = if show && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        };
        let position = match unit {
            Unit::Bytes => "{bytes}/{total_bytes}",
            Unit::Rows => "{human_pos}/{human_len} rows",
        };
        let template = format!("{{prefix}} [{{bar:30}}] {position} {{msg}} ETA {{eta}}");
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(total), target)
            .with_style(style)
            .with_prefix(label.to_owned());
        Progress {
            bar,
            started: Instant::now(),
        }
    }

    /// Moves the bar to `position` with `rows` read so far.
    pub(crate) fn update(&self, position: u64, rows: u64) {
        if self.bar.is_hidden() {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_position(position);
        self.bar
            .set_message(format!("{rows} rows, {:.0} rows/s", rows as f64 / seconds));
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
