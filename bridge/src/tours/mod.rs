//! Tours: the lifecycle of each tour, its fare and its invoice.
//!
//! The pipeline stores every tour event once in `tour_events`. One processor (per database:
//! bridges take turns through an advisory lock) then judges the stored events, in device-time
//! order per taxi, once they have settled ([`crate::config::ToursConfig::settle_delay_ms`]):
//!
//! - [`lifecycle`]: the rules. A start opens a tour; an end closes it. An end without a
//!   start, a second start, a second (different) end, an end before its start and an event
//!   for a tour of another taxi are rejected to `dead_letters` with a reason code; the same
//!   event again (another `seq`, same content) changes nothing.
//! - [`tariff`]: the tariff and the fare arithmetic (public: the simulator uses it too);
//!   [`fare`] reads the tour's track from the stored positions.
//! - [`invoice`]: on an end, the fare compared with the meter reading (flagged when they
//!   differ too much), the `invoices` row, and an `orders` row (kind `invoice`, state
//!   `queued`) that dispatch delivers to the taxi's inbox; all in the judging transaction.
//! - [`notify`]: publishes each invoice on `backoffice/invoices` (QoS 1) and records the
//!   broker's acknowledgement; invoices not acknowledged yet are published again.
//! - [`processor`]: the loop tying these together.

pub mod fare;
pub mod invoice;
pub mod lifecycle;
pub mod notify;
pub mod processor;
pub mod tariff;

pub use processor::start;
