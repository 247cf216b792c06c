//! Exact numbers for Postgres clients: unsigned 64-bit integers and decimals are sent as
//! `NUMERIC` (an `INT8` cannot hold 2^63 and more, a `FLOAT8` rounds a decimal), in the text
//! or binary format the client asks for.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use pgwire::types::format::FormatOptions;
use pgwire::types::ToSqlText;
use postgres_types::{to_sql_checked, IsNull, ToSql, Type};

/// A number written in decimal (`-123.45`, `18446744073709551615`), sent as `NUMERIC`.
#[derive(Debug, Clone, PartialEq)]
pub struct Numeric(pub String);

impl ToSqlText for Numeric {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _format_options: &FormatOptions,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
}

impl ToSql for Numeric {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let b = binary(&self.0).ok_or_else(|| format!("`{}` is not a decimal number", self.0))?;
        out.put_i16(b.digits.len() as i16);
        out.put_i16(b.weight);
        out.put_u16(if b.negative { 0x4000 } else { 0 });
        out.put_u16(b.scale);
        for d in b.digits {
            out.put_i16(d);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

/// `NUMERIC`'s binary form: base-10000 digits, the weight of the first one (its power of
/// 10000), the sign and the number of decimal digits after the point.
#[derive(Debug, PartialEq)]
struct Binary {
    digits: Vec<i16>,
    weight: i16,
    negative: bool,
    scale: u16,
}

/// The binary form of a decimal number written `[-]digits[.digits]`; `None` for other text.
fn binary(text: &str) -> Option<Binary> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !all_digits(int) || !all_digits(frac) || frac.len() > u16::MAX as usize {
        return None;
    }
    // the integer part padded on the left, the fraction on the right, to groups of four
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let padded: Vec<u8> = std::iter::repeat_n(b'0', int_pad)
        .chain(int.bytes())
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', frac_pad))
        .collect();
    let mut digits: Vec<i16> = padded
        .chunks(4)
        .map(|c| c.iter().fold(0i16, |n, d| n * 10 + (d - b'0') as i16))
        .collect();
    let mut weight = ((int.len() + int_pad) / 4) as i32 - 1;
    let leading = digits.iter().take_while(|&&d| d == 0).count();
    digits.drain(..leading);
    weight -= leading as i32;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    Some(Binary {
        negative: negative && !digits.is_empty(),
        weight: i16::try_from(weight).ok()?,
        digits,
        scale: frac.len() as u16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(digits: &[i16], weight: i16, negative: bool, scale: u16) -> Option<Binary> {
        Some(Binary {
            digits: digits.to_vec(),
            weight,
            negative,
            scale,
        })
    }

    /// The forms Postgres itself sends (`SELECT 'x'::numeric` read in binary).
    #[test]
    fn decimals_take_numerics_binary_form() {
        assert_eq!(binary("0"), b(&[], 0, false, 0));
        assert_eq!(binary("0.00"), b(&[], 0, false, 2));
        assert_eq!(binary("-0.0"), b(&[], 0, false, 1));
        assert_eq!(binary("1"), b(&[1], 0, false, 0));
        assert_eq!(binary("10000"), b(&[1], 1, false, 0));
        assert_eq!(binary("12345.678"), b(&[1, 2345, 6780], 1, false, 3));
        assert_eq!(binary("-0.0001"), b(&[1], -1, true, 4));
        assert_eq!(binary("0.00001"), b(&[1000], -2, false, 5));
        assert_eq!(
            binary("18446744073709551615"),
            b(&[1844, 6744, 737, 955, 1615], 4, false, 0)
        );
        assert_eq!(
            binary("99999999999999999999999999999999999999"),
            b(
                &[99, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999],
                9,
                false,
                0
            )
        );
        for bad in ["", "-", "1e5", "1.2.3", ".5", "NaN", "12a"] {
            assert_eq!(binary(bad), None, "{bad}");
        }
    }
}
