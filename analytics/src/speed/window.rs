//! Tumbling windows of device time: `[start, start + length)`, aligned on the unix epoch, so
//! that every process (and every restart) cuts time at the same instants.
//!
//! Instants are unix milliseconds. A window is *due* (may be closed) once the wall clock has
//! passed its end, the allowed lateness and the commit grace; see the module doc of
//! [`crate::speed`].

/// One window, `[start_ms, end_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Window {
    /// The window of `length_ms` holding the instant `ms`.
    pub fn containing(ms: i64, length_ms: i64) -> Window {
        let start_ms = ms.div_euclid(length_ms) * length_ms;
        Window {
            start_ms,
            end_ms: start_ms + length_ms,
        }
    }

    /// The first window of `length_ms` starting at or after `ms` (`ms` itself when it is a
    /// window boundary: the window after one that ended at `ms`).
    pub fn starting_from(ms: i64, length_ms: i64) -> Window {
        let containing = Window::containing(ms, length_ms);
        if containing.start_ms == ms {
            containing
        } else {
            Window {
                start_ms: containing.end_ms,
                end_ms: containing.end_ms + length_ms,
            }
        }
    }

    /// Events of this window received after this instant are late.
    pub fn lateness_deadline_ms(self, allowed_lateness_ms: i64) -> i64 {
        self.end_ms + allowed_lateness_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_on_the_epoch() {
        let w = Window::containing(1_732_200_007_500, 10_000);
        assert_eq!(
            w,
            Window {
                start_ms: 1_732_200_000_000,
                end_ms: 1_732_200_010_000
            }
        );
        assert_eq!(Window::containing(1_732_200_000_000, 10_000), w);
        assert_eq!(
            Window::containing(1_732_200_009_999, 10_000).start_ms,
            w.start_ms
        );
        assert_eq!(Window::containing(-1, 10_000).start_ms, -10_000);
    }

    #[test]
    fn the_window_after_a_boundary_starts_there() {
        assert_eq!(
            Window::starting_from(20_000, 10_000),
            Window {
                start_ms: 20_000,
                end_ms: 30_000
            }
        );
        assert_eq!(Window::starting_from(20_001, 10_000).start_ms, 30_000);
        assert_eq!(Window::starting_from(29_999, 10_000).start_ms, 30_000);
    }

    #[test]
    fn the_deadline_is_the_end_plus_the_lateness() {
        let w = Window::containing(5, 10_000);
        assert_eq!(w.lateness_deadline_ms(2_000), 12_000);
    }
}
