//! Meta's times (Unix seconds or milliseconds, as numbers or numeric strings) and the simplified
//! body's ISO strings, brought to the one form events carry: ISO 8601 UTC with milliseconds,
//! `2025-02-21T16:52:54.000Z`.

use serde_json::value::RawValue;
use time::{Date, Month};

use crate::json;

/// A Unix time below this is seconds, from it on milliseconds. Meta uses seconds in `changes[]`
/// and milliseconds in `messaging[]`; the two ranges only meet in 1973 (ms) / 5138 (s), so the
/// magnitude tells them apart without trusting the envelope.
const SECONDS_BELOW: i64 = 100_000_000_000;

/// The instants a four-digit year can show, 0000-01-01 to 9999-12-31, in Unix milliseconds.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

const MS_PER_DAY: i64 = 86_400_000;
/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// Unix milliseconds from a number or numeric string, seconds or milliseconds by magnitude.
/// `None` when it is neither, or falls outside the years 0000-9999.
pub(crate) fn unix_ms(raw: &RawValue) -> Option<i64> {
    match json::number(raw) {
        Some(n) => unix_ms_from_text(n),
        None => unix_ms_from_text(json::string(raw)?.trim()),
    }
}

fn unix_ms_from_text(text: &str) -> Option<i64> {
    let ms = if let Ok(n) = text.parse::<i64>() {
        if n < SECONDS_BELOW {
            n.checked_mul(1000)?
        } else {
            n
        }
    } else {
        let f = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
        // `as` saturates; the range check below rejects what saturated.
        (if f < SECONDS_BELOW as f64 {
            f * 1000.0
        } else {
            f
        }) as i64
    };
    (MIN_MS..=MAX_MS).contains(&ms).then_some(ms)
}

/// Unix milliseconds from an ISO 8601 / RFC 3339 string: `YYYY-MM-DD`, optionally followed by
/// `T` (or a space) `HH:MM[:SS[.fraction]]` and `Z` or `±HH[:]MM` (no offset: UTC). Digits past
/// the millisecond are truncated. `None` for anything else, including invalid dates.
pub(crate) fn parse_iso(text: &str) -> Option<i64> {
    let mut c = Cursor {
        bytes: text.as_bytes(),
        pos: 0,
    };
    let year = c.digits(4)?;
    c.expect(b'-')?;
    let month = Month::try_from(u8::try_from(c.digits(2)?).ok()?).ok()?;
    c.expect(b'-')?;
    let day = u8::try_from(c.digits(2)?).ok()?;
    let date = Date::from_calendar_date(i32::try_from(year).ok()?, month, day).ok()?;
    let mut ms_of_day = 0;
    let mut offset_ms = 0;
    if !c.done() {
        if !(c.eat(b'T') || c.eat(b't') || c.eat(b' ')) {
            return None;
        }
        let (hour, minute) = (c.digits(2)?, c.digits_after(b':', 2)?);
        let second = if c.eat(b':') { c.digits(2)? } else { 0 };
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        let mut millis = 0;
        if c.eat(b'.') || c.eat(b',') {
            let start = c.pos;
            while c.peek().is_some_and(|b| b.is_ascii_digit()) {
                if c.pos - start < 3 {
                    millis = millis * 10 + u32::from(c.peek()? - b'0');
                }
                c.pos += 1;
            }
            match c.pos - start {
                0 => return None,
                1 => millis *= 100,
                2 => millis *= 10,
                _ => {}
            }
        }
        ms_of_day = i64::from(((hour * 60 + minute) * 60 + second) * 1000 + millis);
        if !(c.eat(b'Z') || c.eat(b'z') || c.done()) {
            let sign = if c.eat(b'+') {
                1
            } else if c.eat(b'-') {
                -1
            } else {
                return None;
            };
            let hours = c.digits(2)?;
            let minutes = if c.eat(b':') {
                c.digits(2)?
            } else {
                c.digits(2).unwrap_or(0)
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            offset_ms = sign * i64::from((hours * 60 + minutes) * 60_000);
        }
        if !c.done() {
            return None;
        }
    }
    let days = i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY;
    let ms = days * MS_PER_DAY + ms_of_day - offset_ms;
    (MIN_MS..=MAX_MS).contains(&ms).then_some(ms)
}

/// `2025-02-21T16:52:54.000Z`. Instants outside the years 0000-9999 are clamped to them.
pub(crate) fn iso(ms: i64) -> String {
    let ms = ms.clamp(MIN_MS, MAX_MS);
    let (days, ms_of_day) = (ms.div_euclid(MS_PER_DAY), ms.rem_euclid(MS_PER_DAY));
    let date = i32::try_from(days + UNIX_EPOCH_JULIAN_DAY)
        .ok()
        .and_then(|jd| Date::from_julian_day(jd).ok())
        .unwrap_or(Date::MIN);
    // `ms_of_day` is below 86_400_000, so it fits a u32.
    let t = u32::try_from(ms_of_day).unwrap_or(0);
    let mut out = String::with_capacity(24);
    push_padded(&mut out, u32::try_from(date.year()).unwrap_or(0), 4);
    out.push('-');
    push_padded(&mut out, u32::from(u8::from(date.month())), 2);
    out.push('-');
    push_padded(&mut out, u32::from(date.day()), 2);
    out.push('T');
    push_padded(&mut out, t / 3_600_000, 2);
    out.push(':');
    push_padded(&mut out, t / 60_000 % 60, 2);
    out.push(':');
    push_padded(&mut out, t / 1000 % 60, 2);
    out.push('.');
    push_padded(&mut out, t % 1000, 3);
    out.push('Z');
    out
}

/// Appends the last `width` decimal digits of `value`, zero-padded.
fn push_padded(out: &mut String, value: u32, width: u32) {
    for place in (0..width).rev() {
        let digit = value / 10u32.pow(place) % 10;
        out.push(char::from(b'0' + u8::try_from(digit).unwrap_or(0)));
    }
}

/// A byte cursor for [`parse_iso`].
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        self.pos += usize::from(hit);
        hit
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// Exactly `n` ASCII digits as a number.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let part = self.bytes.get(self.pos..self.pos + n)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.pos += n;
        Some(part.iter().fold(0, |acc, b| acc * 10 + u32::from(b - b'0')))
    }

    fn digits_after(&mut self, separator: u8, n: usize) -> Option<u32> {
        self.expect(separator)?;
        self.digits(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> &RawValue {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn seconds_and_milliseconds_by_magnitude() {
        assert_eq!(unix_ms(raw("1740156774")), Some(1_740_156_774_000));
        assert_eq!(unix_ms(raw("1744789255994")), Some(1_744_789_255_994));
        assert_eq!(unix_ms(raw(r#""1527459824""#)), Some(1_527_459_824_000));
        assert_eq!(unix_ms(raw("99999999999")), Some(99_999_999_999_000));
        assert_eq!(unix_ms(raw("100000000000")), Some(100_000_000_000));
        assert_eq!(unix_ms(raw("1740156774.5")), Some(1_740_156_774_500));
        assert_eq!(unix_ms(raw(r#""soon""#)), None);
        assert_eq!(unix_ms(raw("9223372036854775807")), None);
        assert_eq!(unix_ms(raw("1e300")), None);
        assert_eq!(unix_ms(raw("null")), None);
    }

    #[test]
    fn formats_iso_utc_with_milliseconds() {
        assert_eq!(iso(1_740_156_774_000), "2025-02-21T16:52:54.000Z");
        assert_eq!(iso(1_744_789_255_335), "2025-04-16T07:40:55.335Z");
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(iso(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(iso(i64::MIN), "0000-01-01T00:00:00.000Z");
    }

    #[test]
    fn parses_iso_forms() {
        let noon = Some(1_704_110_400_000);
        assert_eq!(parse_iso("2024-01-01T12:00:00Z"), noon);
        assert_eq!(parse_iso("2024-01-01T12:00:00.000Z"), noon);
        assert_eq!(
            parse_iso("2024-01-01T12:00:00.1234567Z"),
            Some(1_704_110_400_123)
        );
        assert_eq!(parse_iso("2024-01-01T12:00:00.5Z"), Some(1_704_110_400_500));
        assert_eq!(parse_iso("2024-01-01T14:00:00+02:00"), noon);
        assert_eq!(parse_iso("2024-01-01T07:30:00-0430"), noon);
        assert_eq!(parse_iso("2024-01-01 12:00"), noon);
        assert_eq!(parse_iso("2024-01-01"), Some(1_704_067_200_000));
        for bad in [
            "",
            "2024",
            "2024-02-30",
            "2024-01-01T24:00:00Z",
            "2024-01-01T12:00:00.Z",
            "yesterday",
            "2024-01-01T12:00:00Zjunk",
            "２０２４-01-01",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
    }
}
