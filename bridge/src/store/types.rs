//! Column values PostgreSQL accepts: timestamps from unix milliseconds, and text without NUL.

use std::borrow::Cow;
use std::error::Error;

use bytes::{BufMut, BytesMut};
use postgres_types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};

/// Unix milliseconds of 2000-01-01T00:00:00Z, PostgreSQL's epoch.
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// First storable instant: 0001-01-01T00:00:00Z.
pub const MIN_MS: i64 = -62_135_596_800_000;
/// First instant past the storable range: 10000-01-01T00:00:00Z.
pub const END_MS: i64 = 253_402_300_800_000;

/// A `timestamptz` as unix milliseconds, years 1 to 9999 (see [`Timestamp::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// `None` outside years 1 to 9999.
    pub fn new(ms: i64) -> Option<Timestamp> {
        (MIN_MS..END_MS).contains(&ms).then_some(Timestamp(ms))
    }

    /// The nearest storable instant.
    pub fn clamped(ms: i64) -> Timestamp {
        Timestamp(ms.clamp(MIN_MS, END_MS - 1))
    }

    pub fn ms(self) -> i64 {
        self.0
    }
}

impl ToSql for Timestamp {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        // Microseconds since 2000-01-01; in range by construction.
        out.put_i64((self.0 - PG_EPOCH_MS) * 1000);
        Ok(IsNull::No)
    }

    accepts!(TIMESTAMPTZ);
    to_sql_checked!();
}

impl<'a> FromSql<'a> for Timestamp {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Timestamp, Box<dyn Error + Sync + Send>> {
        let bytes: [u8; 8] = raw.try_into().map_err(|_| "invalid timestamptz length")?;
        let micros = i64::from_be_bytes(bytes);
        // Rounds towards minus infinity, like the clock would have.
        Ok(Timestamp(
            micros.div_euclid(1000).saturating_add(PG_EPOCH_MS),
        ))
    }

    accepts!(TIMESTAMPTZ);
}

/// PostgreSQL text cannot hold NUL characters; they become U+FFFD so a message carrying one
/// (valid JSON and UTF-8) cannot block the stream.
pub fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range() {
        assert_eq!(Timestamp::new(0).map(Timestamp::ms), Some(0));
        assert!(Timestamp::new(MIN_MS).is_some());
        assert!(Timestamp::new(MIN_MS - 1).is_none());
        assert!(Timestamp::new(END_MS - 1).is_some());
        assert!(Timestamp::new(END_MS).is_none());
        assert!(Timestamp::new(i64::MAX).is_none());
        assert_eq!(Timestamp::clamped(i64::MIN).ms(), MIN_MS);
    }

    #[test]
    fn round_trip() -> Result<(), Box<dyn Error + Sync + Send>> {
        for ms in [0, 1, -1, PG_EPOCH_MS, 1_732_200_000_123, MIN_MS, END_MS - 1] {
            let mut buf = BytesMut::new();
            Timestamp(ms).to_sql(&Type::TIMESTAMPTZ, &mut buf)?;
            assert_eq!(Timestamp::from_sql(&Type::TIMESTAMPTZ, &buf)?.ms(), ms);
        }
        Ok(())
    }

    #[test]
    fn nul_is_replaced() {
        assert!(matches!(text("abc"), Cow::Borrowed("abc")));
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
    }
}
