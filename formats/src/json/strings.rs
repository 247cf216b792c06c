//! JSON string bodies: escapes decoded, names compared.

/// Byte equality for short names, compared a word at a time without a library call.
#[inline]
pub(super) fn eq_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i + 8 <= a.len() {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or([0; 8]));
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([1; 8]));
        if x != y {
            return false;
        }
        i += 8;
    }
    a[i..].iter().zip(&b[i..]).all(|(x, y)| x == y)
}

/// The UTF-16 code unit of the four hex digits of a `\u` escape at `at` of `s`.
#[inline]
fn code_unit(s: &[u8], at: usize) -> Option<u32> {
    let h = std::str::from_utf8(s.get(at..at + 4)?).ok()?;
    u32::from_str_radix(h, 16).ok()
}

/// Whether a checked JSON string body holds a UTF-16 surrogate escape that is not half of a
/// pair (`\ud800` alone, a low half first): valid JSON (`json.loads` keeps it), but with no
/// UTF-8 form, so [`unescape`] could only replace it (and two such strings would read as
/// one).
pub(super) fn has_lone_surrogate(s: &[u8]) -> bool {
    let unit = |at: usize| code_unit(s, at).unwrap_or(0);
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            i += 1;
            continue;
        }
        if s.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        let u = unit(i + 2);
        i += 6;
        if (0xDC00..0xE000).contains(&u) {
            return true;
        }
        if (0xD800..0xDC00).contains(&u) {
            let low = s.get(i) == Some(&b'\\')
                && s.get(i + 1) == Some(&b'u')
                && (0xDC00..0xE000).contains(&unit(i + 2));
            if !low {
                return true;
            }
            i += 6;
        }
    }
    false
}

/// Decodes the escapes of a checked JSON string body into UTF-8.
pub(super) fn unescape(s: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = s.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        let ch = match e {
            b'n' => '\n',
            b't' => '\t',
            b'r' => '\r',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'u' => {
                let hex = |at: usize| code_unit(s, at).unwrap_or(0xFFFD);
                let hi = hex(i);
                i += 4;
                if (0xD800..0xDC00).contains(&hi)
                    && s.get(i) == Some(&b'\\')
                    && s.get(i + 1) == Some(&b'u')
                {
                    let lo = hex(i + 2);
                    if (0xDC00..0xE000).contains(&lo) {
                        i += 6;
                        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            .unwrap_or('\u{FFFD}')
                    } else {
                        '\u{FFFD}'
                    }
                } else {
                    char::from_u32(hi).unwrap_or('\u{FFFD}')
                }
            }
            other => other as char,
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
}
