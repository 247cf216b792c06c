//! Event-time helpers: durations, window arithmetic, RFC 3339 reading and writing.

/// Parses a duration such as `500ms`, `5s`, `1m`, `2h`, `1d` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    if split == 0 {
        return None;
    }
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The start of the tumbling window of `size_ms` holding `t_ms` (aligned to the Unix epoch).
#[inline]
pub fn window_start(t_ms: i64, size_ms: i64) -> i64 {
    t_ms.div_euclid(size_ms) * size_ms
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A timestamp of `unit` converted to `to` (rounded down), `None` when it overflows 64 bits.
pub fn convert_timestamp(
    v: i64,
    unit: arrow::datatypes::TimeUnit,
    to: arrow::datatypes::TimeUnit,
) -> Option<i64> {
    use arrow::datatypes::TimeUnit;
    let exponent = |u: TimeUnit| match u {
        TimeUnit::Second => 0u32,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 9,
    };
    let (from, to) = (exponent(unit), exponent(to));
    if from <= to {
        v.checked_mul(10i64.pow(to - from))
    } else {
        Some(v.div_euclid(10i64.pow(from - to)))
    }
}

/// The value at `row` of `array`, a timestamp array of `unit`, in `to` (see
/// [`convert_timestamp`]); `None` when the array is not of that unit or the value overflows.
pub fn timestamp_at(
    array: &dyn arrow::array::Array,
    unit: arrow::datatypes::TimeUnit,
    row: usize,
    to: arrow::datatypes::TimeUnit,
) -> Option<i64> {
    use arrow::array::AsArray;
    use arrow::datatypes::{
        TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    let v = match unit {
        TimeUnit::Second => array.as_primitive_opt::<TimestampSecondType>()?.value(row),
        TimeUnit::Millisecond => array
            .as_primitive_opt::<TimestampMillisecondType>()?
            .value(row),
        TimeUnit::Microsecond => array
            .as_primitive_opt::<TimestampMicrosecondType>()?
            .value(row),
        TimeUnit::Nanosecond => array
            .as_primitive_opt::<TimestampNanosecondType>()?
            .value(row),
    };
    convert_timestamp(v, unit, to)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Appends `ms` as an RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-22T10:05:00.000Z`.
pub fn write_rfc3339_ms(out: &mut Vec<u8>, ms: i64) {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    let mut buf = [0u8; 24];
    if (0..=9999).contains(&y) {
        let put = |b: &mut [u8], v: i64, n: usize| {
            let mut v = v;
            for i in (0..n).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(&mut buf[0..4], y, 4);
        buf[4] = b'-';
        put(&mut buf[5..7], mo as i64, 2);
        buf[7] = b'-';
        put(&mut buf[8..10], d as i64, 2);
        buf[10] = b'T';
        put(&mut buf[11..13], h, 2);
        buf[13] = b':';
        put(&mut buf[14..16], mi, 2);
        buf[16] = b':';
        put(&mut buf[17..19], s, 2);
        buf[19] = b'.';
        put(&mut buf[20..23], milli, 3);
        buf[23] = b'Z';
        out.extend_from_slice(&buf);
    } else {
        out.extend_from_slice(
            format!("{y:+06}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z").as_bytes(),
        );
    }
}

/// `ms` as an RFC 3339 UTC string with milliseconds.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let mut v = Vec::with_capacity(24);
    write_rfc3339_ms(&mut v, ms);
    String::from_utf8(v).unwrap_or_default()
}

/// Parses an RFC 3339 timestamp (`2026-11-22T10:05:00Z`, fractional seconds and offsets
/// allowed, `t`/space as separator) into epoch milliseconds (fractions below 1 ms truncated).
pub fn parse_rfc3339_ms(s: &[u8]) -> Option<i64> {
    fn num(s: &[u8], at: usize, n: usize) -> Option<i64> {
        let mut v = 0i64;
        for &c in s.get(at..at + n)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as i64;
        }
        Some(v)
    }
    if s.len() < 20 || s[4] != b'-' || s[7] != b'-' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    if !matches!(s[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(s, 0, 4)?, num(s, 5, 2)?, num(s, 8, 2)?);
    let (h, mi, sec) = (num(s, 11, 2)?, num(s, 14, 2)?, num(s, 17, 2)?);
    if !(1..=12).contains(&mo)
        || d < 1
        || d > days_in_month(y, mo as u32)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if s[i] == b'.' {
        i += 1;
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + (s[i] - b'0') as i64;
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_min = match s.get(i)? {
        b'Z' | b'z' if i + 1 == s.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == s.len() && s[i + 3] == b':' => {
            let (oh, om) = (num(s, i + 1, 2)?, num(s, i + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if *sign == b'+' {
                m
            } else {
                -m
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    Some(((days * 24 + h) * 60 + mi - offset_min) * 60_000 + sec * 1000 + millis)
}

fn days_in_month(y: i64, m: u32) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every unit to every other, rounded down (before the epoch too), and overflow refused.
    #[test]
    fn timestamps_convert_between_units() {
        use arrow::array::TimestampNanosecondArray;
        use arrow::datatypes::TimeUnit::*;
        assert_eq!(convert_timestamp(2, Second, Microsecond), Some(2_000_000));
        assert_eq!(convert_timestamp(1_999, Millisecond, Second), Some(1));
        assert_eq!(convert_timestamp(-1, Nanosecond, Microsecond), Some(-1));
        assert_eq!(
            convert_timestamp(-1_001, Microsecond, Millisecond),
            Some(-2)
        );
        assert_eq!(convert_timestamp(7, Millisecond, Millisecond), Some(7));
        assert_eq!(convert_timestamp(i64::MAX / 10, Second, Millisecond), None);
        let a = TimestampNanosecondArray::from(vec![1_500_000, -1]);
        assert_eq!(timestamp_at(&a, Nanosecond, 0, Millisecond), Some(1));
        assert_eq!(timestamp_at(&a, Nanosecond, 1, Millisecond), Some(-1));
        // the array is not of the unit said
        assert_eq!(timestamp_at(&a, Second, 0, Millisecond), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("5s"), Some(5000));
        assert_eq!(parse_duration_ms("7m"), Some(420_000));
        assert_eq!(parse_duration_ms("2h"), Some(7_200_000));
        assert_eq!(parse_duration_ms("1d"), Some(86_400_000));
        assert_eq!(parse_duration_ms("0s"), Some(0));
        for bad in ["", "5", "s", "5x", "-5s", "5 s", "1.5s"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn windows_align_to_epoch_also_before_1970() {
        assert_eq!(window_start(1_700_000_059_999, 60_000), 1_700_000_040_000);
        assert_eq!(window_start(-1, 60_000), -60_000);
        assert_eq!(window_start(0, 60_000), 0);
    }

    #[test]
    fn rfc3339_round_trip() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        for ms in [
            0i64,
            1_700_000_000_123,
            -1,
            951_782_400_000,
            4_102_444_800_000,
        ] {
            assert_eq!(parse_rfc3339_ms(format_rfc3339_ms(ms).as_bytes()), Some(ms));
        }
        assert_eq!(
            parse_rfc3339_ms(b"2023-11-14T23:13:20.5+01:00"),
            Some(1_700_000_000_500)
        );
        assert_eq!(
            parse_rfc3339_ms(b"2023-11-14 22:13:20Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_ms(b"2023-11-14T22:13:20.123456789Z"),
            Some(1_700_000_000_123)
        );
        for bad in [
            &b"not-a-time"[..],
            b"2023-13-01T00:00:00Z",
            b"2023-02-30T00:00:00Z",
            b"2023-11-14T22:13:20",
            b"2023-11-14T22:13:20Zx",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None);
        }
    }
}
