//! Stage 2 of the scanner: a validating recursive-descent walk over one record.

use super::number;
use super::stage1::Specials;
use super::{LineError, Val, MAX_DEPTH};

/// A cursor over one record: `b` is the record, `i` the position in it, `base` the record's
/// position in the buffer `specials` classified.
pub(super) struct Parser<'a> {
    pub(super) b: &'a [u8],
    pub(super) i: usize,
    base: usize,
    specials: &'a Specials,
}

impl<'a> Parser<'a> {
    /// A cursor at the start of `record`, which starts at `base` in the classified buffer.
    #[inline]
    pub(super) fn new(record: &'a [u8], base: usize, specials: &'a Specials) -> Self {
        Parser {
            b: record,
            i: 0,
            base,
            specials,
        }
    }

    /// A second cursor on the same record at position `i`.
    pub(super) fn at(&self, i: usize) -> Self {
        Parser { i, ..*self }
    }

    /// The first byte at or after `i` that is `"`, `\` or a control character, or the end.
    #[inline]
    fn next_special(&self, i: usize) -> usize {
        (self.specials.next(self.base + i) - self.base).min(self.b.len())
    }

    /// Skips whitespace, a `:` and whitespace.
    #[inline]
    pub(super) fn colon(&mut self) -> Result<(), LineError> {
        self.ws();
        if self.peek() != Some(b':') {
            return Err(LineError::syntax("expected `:` after a field name", self.i));
        }
        self.i += 1;
        self.ws();
        Ok(())
    }

    #[inline]
    pub(super) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    pub(super) fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\r' | b'\n') = self.peek() {
            self.i += 1;
        }
    }

    /// Parses a string starting at `"`; returns the content's range and whether it has escapes.
    #[inline(always)]
    pub(super) fn string(&mut self) -> Result<(usize, usize, bool), LineError> {
        let b = self.b;
        let start = self.i + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            // Jump to the next `"`, `\` or control character (stage 1's bitmap).
            i = self.next_special(i);
            let Some(&c) = b.get(i) else {
                return Err(LineError::syntax("unterminated string", self.i));
            };
            match c {
                b'"' => {
                    self.i = i + 1;
                    return Ok((start, i, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            if b.len() < i + 6 || !b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit)
                            {
                                return Err(LineError::syntax("bad \\u escape in a string", i));
                            }
                            i += 6;
                        }
                        _ => return Err(LineError::syntax("bad escape in a string", i)),
                    }
                }
                _ => return Err(LineError::syntax("control character in a string", i)),
            }
        }
    }

    /// After a member of an object or array: consumes `,` (false: another member follows) or
    /// the closing `close` (true: the container ended).
    #[inline]
    pub(super) fn member_end(&mut self, close: u8) -> Result<bool, LineError> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                self.ws();
                Ok(false)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(true)
            }
            _ => Err(LineError::syntax(
                if close == b'}' {
                    "expected `,` or `}`"
                } else {
                    "expected `,` or `]`"
                },
                self.i,
            )),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), LineError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(LineError::syntax("invalid literal", self.i))
        }
    }

    #[inline(always)]
    fn number(&mut self) -> Result<Val, LineError> {
        let (v, end) = number::parse(self.b, self.i)?;
        self.i = end;
        Ok(v)
    }

    /// Parses a value into a slot. Always inlined: returned from a call, the `Val` went
    /// through memory behind the larger `Result`, a store-forwarding stall on every field
    /// (7 % of the file path's CPU, measured).
    #[inline(always)]
    pub(super) fn value(&mut self) -> Result<Val, LineError> {
        match self.peek() {
            Some(b'"') => {
                let (s, e, escaped) = self.string()?;
                Ok(Val::Str {
                    start: s as u32,
                    end: e as u32,
                    escaped,
                })
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true").map(|_| Val::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|_| Val::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|_| Val::Null),
            Some(b'N') => self.literal(b"NaN").map(|_| Val::Float(f64::NAN)),
            Some(b'I') => self.literal(b"Infinity").map(|_| Val::Float(f64::INFINITY)),
            Some(b'{') => {
                let s = self.i;
                self.skip_value(0)?;
                Ok(Val::Obj {
                    start: s as u32,
                    end: self.i as u32,
                })
            }
            Some(b'[') => {
                let s = self.i;
                self.skip_value(0)?;
                Ok(Val::Arr {
                    start: s as u32,
                    end: self.i as u32,
                })
            }
            None => Err(LineError::syntax("unexpected end of the record", self.i)),
            _ => Err(LineError::syntax("expected a value", self.i)),
        }
    }

    /// Checks and skips any value, found at nesting `depth` (at most [`MAX_DEPTH`], inner
    /// values included). Iterative, not recursive: a line nested [`MAX_DEPTH`] deep needs
    /// no stack (a recursive skip overflowed a worker's 2 MiB stack at about 400 levels in a
    /// debug build, which aborted the process instead of dead-lettering the line).
    pub(super) fn skip_value(&mut self, depth: usize) -> Result<(), LineError> {
        // bit `l` set: the container open at level `l` is an object (else an array)
        let mut objects = [0u64; MAX_DEPTH / 64 + 2];
        let mut open = 0usize;
        loop {
            // at a value
            if depth + open > MAX_DEPTH {
                return Err(LineError::syntax("nested too deeply", self.i));
            }
            let opened = match self.peek() {
                Some(c @ (b'{' | b'[')) => {
                    self.i += 1;
                    self.ws();
                    let close = if c == b'{' { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                        false
                    } else {
                        let (word, bit) = (open / 64, 1u64 << (open % 64));
                        if c == b'{' {
                            objects[word] |= bit;
                            self.field_name()?;
                        } else {
                            objects[word] &= !bit;
                        }
                        open += 1;
                        true
                    }
                }
                _ => {
                    self.value()?;
                    false
                }
            };
            if opened {
                continue;
            }
            // after a value: close the containers that end here, or go to the next member
            loop {
                let Some(level) = open.checked_sub(1) else {
                    return Ok(());
                };
                let object = objects[level / 64] & (1 << (level % 64)) != 0;
                if !self.member_end(if object { b'}' } else { b']' })? {
                    if object {
                        self.field_name()?;
                    }
                    break;
                }
                open = level;
            }
        }
    }

    /// An object member's `"name":` and the blanks after it.
    fn field_name(&mut self) -> Result<(), LineError> {
        if self.peek() != Some(b'"') {
            return Err(LineError::syntax("expected a quoted field name", self.i));
        }
        self.string()?;
        self.ws();
        if self.peek() != Some(b':') {
            return Err(LineError::syntax("expected `:`", self.i));
        }
        self.i += 1;
        self.ws();
        Ok(())
    }
}
