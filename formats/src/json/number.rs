//! JSON numbers: integers of up to 18 digits parsed eight digits at a time without a branch
//! per digit; everything else (more digits, fractions, exponents, `-Infinity`, leading zeros)
//! by the reference parser.

use super::{LineError, Val};

/// Parses the number at `start` of `b`; returns it and the position after it. Always
/// inlined with its fast path: a result handed back through memory from a call that is not
/// inlined was read back wider than it was written, a store-forwarding stall on every number
/// (3.8 % of the file path's CPU, measured with `perf annotate`).
#[inline(always)]
pub(super) fn parse(b: &[u8], start: usize) -> Result<(Val, usize), LineError> {
    match parse_fast(b, start) {
        Some(found) => Ok(found),
        None => parse_slow(b, start),
    }
}

/// An integer `-?[1-9][0-9]{0,17}` not followed by `.`, `e` or `E`, when 8 bytes can be read
/// at each digit group; `None` for anything else.
#[inline(always)]
fn parse_fast(b: &[u8], start: usize) -> Option<(Val, usize)> {
    let neg = *b.get(start)? == b'-';
    let mut i = start + neg as usize;
    if !matches!(b.get(i), Some(b'1'..=b'9')) {
        return None;
    }
    let mut v: i64 = 0;
    let mut digits = 0;
    loop {
        let word = u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?);
        let n = digit_run(word);
        if digits + n > 18 {
            return None;
        }
        if n > 0 {
            v = v * POW10[n] + eight_digits(word << (8 * (8 - n))) as i64;
        }
        digits += n;
        i += n;
        if n < 8 {
            break;
        }
    }
    if matches!(b.get(i), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some((Val::Int(if neg { -v } else { v }), i))
}

const POW10: [i64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// How many of the bytes of `word` (little-endian, first byte lowest) are ASCII digits before
/// the first one that is not.
#[inline]
fn digit_run(word: u64) -> usize {
    // a byte is a digit when its high nibble is 3 and adding 6 keeps it so; a carry out of a
    // byte above 0xf9 only reaches the bytes after it, which are not counted
    let hi = word & 0xF0F0_F0F0_F0F0_F0F0;
    let carried = (word.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) >> 4;
    let not_digit = (hi | carried) ^ 0x3333_3333_3333_3333;
    (not_digit.trailing_zeros() / 8) as usize
}

/// The value of eight ASCII digits (little-endian, the first the most significant); bytes
/// that are zero (shifted in) count as leading zeros.
#[inline]
fn eight_digits(word: u64) -> u64 {
    // leading zero bytes minus b'0' would wrap: subtract only where a digit is
    let digits = word & 0x0F0F_0F0F_0F0F_0F0F;
    let v = (digits * 10 + (digits >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v * 100 + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    (v * 10_000 + (v >> 32)) & 0xFFFF_FFFF
}

/// The reference parser of a number at `start` (every form JSON and `json.loads` accept).
#[inline(never)]
fn parse_slow(b: &[u8], start: usize) -> Result<(Val, usize), LineError> {
    let mut i = start;
    let neg = b.get(i) == Some(&b'-');
    if neg {
        i += 1;
        if b[i..].starts_with(b"Infinity") {
            return Ok((Val::Float(f64::NEG_INFINITY), i + 8));
        }
    }
    let int_start = i;
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while let Some(b'0'..=b'9') = b.get(i) {
                i += 1;
            }
        }
        _ => return Err(LineError::syntax("invalid number", start)),
    }
    let int_end = i;
    let mut float = false;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let d = i;
        while let Some(b'0'..=b'9') = b.get(i) {
            i += 1;
        }
        if i == d {
            return Err(LineError::syntax("invalid number", start));
        }
        float = true;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let d = i;
        while let Some(b'0'..=b'9') = b.get(i) {
            i += 1;
        }
        if i == d {
            return Err(LineError::syntax("invalid number", start));
        }
        float = true;
    }
    if !float {
        let mut v: i64 = 0;
        for &c in &b[int_start..int_end] {
            v = match v.checked_mul(10).and_then(|v| {
                if neg {
                    v.checked_sub((c - b'0') as i64)
                } else {
                    v.checked_add((c - b'0') as i64)
                }
            }) {
                Some(v) => v,
                None => {
                    let text = std::str::from_utf8(&b[start..i])
                        .map_err(|_| LineError::syntax("invalid number", start))?;
                    let x = text
                        .parse::<f64>()
                        .map_err(|_| LineError::syntax("invalid number", start))?;
                    return Ok((Val::BigInt(x), i));
                }
            };
        }
        return Ok((Val::Int(v), i));
    }
    // the slice is ASCII digits, signs, dots and exponents
    let text = std::str::from_utf8(&b[start..i])
        .map_err(|_| LineError::syntax("invalid number", start))?;
    text.parse::<f64>()
        .map(|x| (Val::Float(x), i))
        .map_err(|_| LineError::syntax("invalid number", start))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed number shown, and where parsing ended.
    type Shown = (String, usize);

    fn both(text: &str) -> (Option<Shown>, Result<Shown, String>) {
        let b = format!("{text},\"x\":1}}").into_bytes();
        let show = |(v, e): (Val, usize)| (format!("{v:?}"), e);
        (
            parse_fast(&b, 0).map(show),
            parse_slow(&b, 0).map(show).map_err(|e| e.message),
        )
    }

    #[test]
    fn the_fast_path_agrees_with_the_reference() {
        let mut cases: Vec<String> = [
            "0",
            "-0",
            "1",
            "-1",
            "7",
            "12345678",
            "123456789",
            "1700000000001",
            "-1700000000001",
            "999999999999999999",
            "-999999999999999999",
            "1000000000000000000",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "99999999999999999999",
            "1.5",
            "1e3",
            "1E3",
            "-",
            "-x",
            "01",
            "00",
            "1.",
            "1e",
            "-Infinity",
            "12345678.5",
            "87654321e2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut x = 1u64;
        for len in 1..=20 {
            for _ in 0..50 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let s: String = (0..len)
                    .map(|k| char::from(b'0' + ((x >> (k * 3)) % 10) as u8))
                    .collect();
                cases.push(s.clone());
                cases.push(format!("-{s}"));
            }
        }
        for c in cases {
            let (fast, slow) = both(&c);
            if let Some(f) = fast {
                assert_eq!(Ok(f), slow, "{c}");
            }
        }
        // the common shapes take the fast path
        assert!(both("1700000000001").0.is_some());
        assert!(both("-42").0.is_some());
        assert!(both("999999999999999999").0.is_some());
    }

    #[test]
    fn digit_runs_and_groups() {
        assert_eq!(digit_run(u64::from_le_bytes(*b"12345678")), 8);
        assert_eq!(digit_run(u64::from_le_bytes(*b"123,5678")), 3);
        assert_eq!(digit_run(u64::from_le_bytes(*b"/:09\xffabc")), 0);
        for c in 0..=255u8 {
            let w = u64::from_le_bytes([c, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
            assert_eq!(digit_run(w), c.is_ascii_digit() as usize, "{c}");
            let w = u64::from_le_bytes([b'5', c, 0xfa, 0xff, 0, 0, 0, 0]);
            assert_eq!(digit_run(w), 1 + c.is_ascii_digit() as usize, "{c}");
        }
        assert_eq!(eight_digits(u64::from_le_bytes(*b"12345678")), 12_345_678);
        assert_eq!(eight_digits(u64::from_le_bytes(*b"123,,,,,") << 40), 123);
    }
}
