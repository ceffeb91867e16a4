//! Parsing the text of one CSV field, by hand and without allocating: millions of rows go
//! through here, so each parser reads the bytes once and says only "yes, this value" or
//! "no". Messages for the rows that fail are built by the caller, on the slow path.

/// A local wall-clock time as written by the TLC (`YYYY-MM-DD HH:MM:SS`, New York time,
/// no zone): seconds since 1970-01-01 00:00:00 of that same wall clock.
pub(crate) fn local_seconds(text: &[u8]) -> Option<i64> {
    // `2015-01-15 19:05:39`, also with a `T`; fractional seconds are ignored.
    if text.len() < 19 {
        return None;
    }
    if text[4] != b'-' || text[7] != b'-' || !(text[10] == b' ' || text[10] == b'T') {
        return None;
    }
    if text[13] != b':' || text[16] != b':' {
        return None;
    }
    if text.len() > 19 && (text[19] != b'.' || !text[20..].iter().all(u8::is_ascii_digit)) {
        return None;
    }
    let year = digits(&text[0..4])?;
    let month = digits(&text[5..7])?;
    let day = digits(&text[8..10])?;
    let hour = digits(&text[11..13])?;
    let minute = digits(&text[14..16])?;
    let second = digits(&text[17..19])?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Dollars (`12.5`, `-0.30`, `7`) as cents, rounded half away from zero.
pub(crate) fn cents(text: &[u8]) -> Option<i64> {
    let (negative, text) = sign(text);
    let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &b""[..]),
    };
    if whole.is_empty() && fraction.is_empty() || whole.len() > 15 {
        return None;
    }
    if !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value = if whole.is_empty() { 0 } else { digits(whole)? };
    for i in 0..2 {
        value = value * 10 + fraction.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    // The third decimal decides: 5 or more rounds away from zero whatever follows.
    if fraction.get(2).is_some_and(|&d| d >= b'5') {
        value += 1;
    }
    Some(if negative { -value } else { value })
}

/// A whole number (`3`), also written as a float with no fraction (`3.0`, as TLC files
/// since 2020 do for some counts).
pub(crate) fn integer(text: &[u8]) -> Option<i64> {
    let (negative, text) = sign(text);
    let whole = match text.iter().position(|&b| b == b'.') {
        Some(dot) if text[dot + 1..].iter().all(|&b| b == b'0') => &text[..dot],
        Some(_) => return None,
        None => text,
    };
    if whole.is_empty() || whole.len() > 15 {
        return None;
    }
    let value = digits(whole)?;
    Some(if negative { -value } else { value })
}

/// An optional whole number: empty is `None`; anything else must parse.
pub(crate) fn optional_integer(text: &[u8]) -> Result<Option<i64>, ()> {
    if text.is_empty() {
        return Ok(None);
    }
    integer(text).map(Some).ok_or(())
}

/// A finite decimal number (`-73.99`, `1.5e1`); `NaN` and infinities are not numbers here.
///
/// The usual shape (`-73.993896`: a sign, at most 15 digits, a point) is computed here:
/// its digits as an integer below 2^53 and the power of ten are both exact doubles, so one
/// division rounds correctly, which is the same value the standard library's parser gives
/// (its own fast path, Clinger's). Anything else goes to the standard parser.
pub(crate) fn number(text: &[u8]) -> Option<f64> {
    if let Some(value) = short_decimal(text) {
        return Some(value);
    }
    let text = std::str::from_utf8(text).ok()?;
    let value: f64 = text.trim().parse().ok()?;
    value.is_finite().then_some(value)
}

/// Exact powers of ten as doubles (all up to 10^22 are).
const POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// `[+-]digits[.digits]` with 1 to 15 digits in all (so the integer of its digits is below
/// 2^53): its value, correctly rounded. `None` for any other text.
fn short_decimal(text: &[u8]) -> Option<f64> {
    let (negative, body) = sign(text);
    if body.is_empty() || body.len() > 16 {
        return None;
    }
    let mut mantissa: u64 = 0;
    let mut digits = 0;
    let mut point = None;
    for (i, &b) in body.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                digits += 1;
            }
            b'.' if point.is_none() => point = Some(i),
            _ => return None,
        }
    }
    // At least one digit on each side of a point: `5.` and `.5` go the long way.
    let decimals = match point {
        None => 0,
        Some(at) if at > 0 && at + 1 < body.len() => body.len() - at - 1,
        Some(_) => return None,
    };
    if digits == 0 || digits > 15 {
        return None;
    }
    let magnitude = mantissa as f64 / POWERS_OF_TEN[decimals];
    Some(if negative { -magnitude } else { magnitude })
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian; Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date `days` after 1970-01-01: (year, month, day).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn sign(text: &[u8]) -> (bool, &[u8]) {
    match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    }
}

/// ASCII digits only, at least one.
fn digits(text: &[u8]) -> Option<i64> {
    if text.is_empty() {
        return None;
    }
    let mut value: i64 = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(b - b'0');
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_wall_clock_seconds() {
        assert_eq!(local_seconds(b"1970-01-01 00:00:00"), Some(0));
        assert_eq!(local_seconds(b"2015-01-15 19:05:39"), Some(1_421_348_739));
        assert_eq!(local_seconds(b"2016-02-29T23:59:59"), Some(1_456_790_399));
        assert_eq!(
            local_seconds(b"2015-01-15 19:05:39.250"),
            Some(1_421_348_739)
        );
        for bad in [
            &b"2015-02-29 00:00:00"[..],
            b"2015-13-01 00:00:00",
            b"2015-01-01 24:00:00",
            b"2015-01-01",
            b"2015/01/01 00:00:00",
            b"2015-01-01 00:00:00x",
            b"",
        ] {
            assert_eq!(local_seconds(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn days_round_trip() {
        for days in [-800_000, -1, 0, 1, 16_450, 19_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(16_450), (2015, 1, 15));
    }

    #[test]
    fn money_is_rounded_to_cents() {
        assert_eq!(cents(b"12.5"), Some(1250));
        assert_eq!(cents(b"7"), Some(700));
        assert_eq!(cents(b"-0.30"), Some(-30));
        assert_eq!(cents(b".5"), Some(50));
        assert_eq!(cents(b"0.005"), Some(1));
        assert_eq!(cents(b"-0.005"), Some(-1));
        assert_eq!(cents(b"0.0049"), Some(0));
        assert_eq!(cents(b"1.2e3"), None);
        assert_eq!(cents(b""), None);
        assert_eq!(cents(b"."), None);
        assert_eq!(cents(b"abc"), None);
    }

    #[test]
    fn integers_accept_a_zero_fraction() {
        assert_eq!(integer(b"3"), Some(3));
        assert_eq!(integer(b"3.0"), Some(3));
        assert_eq!(integer(b"-2"), Some(-2));
        assert_eq!(integer(b"3.5"), None);
        assert_eq!(integer(b""), None);
        assert_eq!(optional_integer(b""), Ok(None));
        assert_eq!(optional_integer(b"x"), Err(()));
    }

    #[test]
    fn short_decimals_are_what_the_standard_parser_reads() {
        let mut samples: Vec<String> = [
            "-73.993896",
            "40.750110",
            "0",
            "-0",
            "-0.0",
            "+1.5",
            "1.59",
            "12",
            "0.1",
            "0.3",
            "999999999999999",
            "99999999999999.9",
            "0.00000000000001",
            "-73.993896484375",
            "40.75011062622",
            "1.000000",
            "007.50",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // Coordinates and distances as the TLC writes them, on a fine grid.
        for i in 0..20_000u64 {
            let micro = 73_000_000 + i * 4_999;
            samples.push(format!("-{}.{:06}", micro / 1_000_000, micro % 1_000_000));
            samples.push(format!("{}.{:02}", i / 100, i % 100));
        }
        for text in &samples {
            let expected: f64 = text.parse().unwrap();
            let fast = short_decimal(text.as_bytes()).expect(text);
            assert_eq!(fast.to_bits(), expected.to_bits(), "{text}");
        }
        for other in [
            "1e5",
            "5.",
            ".5",
            "1.2.3",
            "",
            "-",
            "40.750110626220703",
            "0x10",
        ] {
            assert_eq!(short_decimal(other.as_bytes()), None, "{other}");
        }
        assert_eq!(
            number(b"40.750110626220703"),
            "40.750110626220703".parse().ok(),
            "the standard parser for the longer ones"
        );
        assert_eq!(number(b".5"), Some(0.5));
        assert_eq!(number(b"1.5e1"), Some(15.0));
    }

    #[test]
    fn numbers_are_finite() {
        assert_eq!(number(b"-73.99"), Some(-73.99));
        assert_eq!(number(b"NaN"), None);
        assert_eq!(number(b"inf"), None);
        assert_eq!(number(b""), None);
    }
}
