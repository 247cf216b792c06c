//! Stage 1 of the scanner, in the spirit of simdjson's: one pass over a buffer of records that
//! classifies every byte, 64 bytes at a time, into a bitmap of the bytes a JSON string scanner
//! must stop at: `"`, `\` and the control characters below 0x20 (which a strict parser refuses
//! inside strings, and which include the newline ending each record).
//!
//! The scanner (stage 2) then finds the end of a string, or the byte that makes it bad, with a
//! `trailing_zeros` on a word of the bitmap instead of a loop over its bytes.
//!
//! Three kernels give bit-identical bitmaps: AVX2 (32-byte lanes), SSE2 (16-byte lanes) and a
//! portable scalar one. The best one the processor has is chosen once per process, at run time
//! (`is_x86_feature_detected!`); tests run every kernel on the same inputs.

use std::sync::OnceLock;

/// Bytes classified per bitmap word.
const BLOCK: usize = 64;

/// A kernel: sets bit `j` of `out[k]` when byte `64 k + j` of `data` is special. `out` holds
/// exactly `data.len() / 64` words (whole blocks only).
type Kernel = fn(&[u8], &mut [u64]);

/// The bitmap of special bytes (`"`, `\`, below 0x20) of one buffer.
#[derive(Default)]
pub(crate) struct Specials {
    words: Vec<u64>,
    len: usize,
}

/// The kernels this build knows, by name (tests and benchmarks compare them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KernelKind {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Sse2,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl KernelKind {
    /// The fastest kernel the processor runs, detected once.
    pub(crate) fn best() -> KernelKind {
        static BEST: OnceLock<KernelKind> = OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::env::var_os("WEIR_JSON_SCALAR").is_some() {
                    return KernelKind::Scalar;
                }
                if is_x86_feature_detected!("avx2") {
                    return KernelKind::Avx2;
                }
                // SSE2 is part of the x86_64 baseline
                KernelKind::Sse2
            }
            #[cfg(not(target_arch = "x86_64"))]
            KernelKind::Scalar
        })
    }

    /// Every kernel this processor can run (for tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<KernelKind> {
        #[allow(unused_mut)]
        let mut v = vec![KernelKind::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            v.push(KernelKind::Sse2);
            if is_x86_feature_detected!("avx2") {
                v.push(KernelKind::Avx2);
            }
        }
        v
    }

    fn kernel(self) -> Kernel {
        match self {
            KernelKind::Scalar => scalar,
            #[cfg(target_arch = "x86_64")]
            KernelKind::Sse2 => x86::sse2,
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => x86::avx2,
        }
    }
}

impl Specials {
    /// Classifies `data` with the given kernel.
    pub(crate) fn fill_with(&mut self, data: &[u8], kind: KernelKind) {
        let whole = data.len() / BLOCK;
        let words = data.len().div_ceil(BLOCK);
        self.words.clear();
        self.words.resize(words, 0);
        self.len = data.len();
        (kind.kernel())(&data[..whole * BLOCK], &mut self.words[..whole]);
        if whole < words {
            // the last, partial block: padded with a byte that is not special
            let mut tail = [b' '; BLOCK];
            let rest = &data[whole * BLOCK..];
            tail[..rest.len()].copy_from_slice(rest);
            let mut w = [0u64];
            (kind.kernel())(&tail, &mut w);
            self.words[whole] = w[0];
        }
    }

    /// Frees the bitmap of an unusually large buffer (kept ones cover up to 4 MiB).
    pub(crate) fn shrink(&mut self) {
        if self.words.capacity() > (4 << 20) / BLOCK {
            *self = Specials::default();
        }
    }

    /// The position of the first special byte at or after `from`, or the buffer's length.
    #[inline]
    pub(crate) fn next(&self, from: usize) -> usize {
        let mut k = from / BLOCK;
        let Some(&first) = self.words.get(k) else {
            return self.len;
        };
        let mut w = first & (u64::MAX << (from % BLOCK));
        loop {
            if w != 0 {
                return (k * BLOCK + w.trailing_zeros() as usize).min(self.len);
            }
            k += 1;
            match self.words.get(k) {
                Some(&n) => w = n,
                None => return self.len,
            }
        }
    }

    /// The bitmap words (for tests).
    #[cfg(test)]
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }
}

/// Whether byte `c` is special.
#[inline]
pub(crate) fn is_special(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

/// The portable kernel.
fn scalar(data: &[u8], out: &mut [u64]) {
    for (block, word) in data.chunks_exact(BLOCK).zip(out.iter_mut()) {
        let mut m = 0u64;
        for (j, &c) in block.iter().enumerate() {
            m |= (is_special(c) as u64) << j;
        }
        *word = m;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::BLOCK;
    use std::arch::x86_64::*;

    /// The SSE2 kernel: four 16-byte lanes per word.
    pub(super) fn sse2(data: &[u8], out: &mut [u64]) {
        for (block, word) in data.chunks_exact(BLOCK).zip(out.iter_mut()) {
            let mut m = 0u64;
            for lane in 0..4 {
                let bytes = &block[lane * 16..lane * 16 + 16];
                // SAFETY: SSE2 is part of the x86_64 baseline; `bytes` holds exactly 16 bytes
                // and `_mm_loadu_si128` has no alignment requirement.
                let bits = unsafe { lane16(bytes.as_ptr()) };
                m |= (bits as u64) << (lane * 16);
            }
            *word = m;
        }
    }

    /// The special bytes of the 16 bytes at `p`, one bit each.
    ///
    /// # Safety
    /// `p` must point to 16 readable bytes.
    #[inline(always)]
    unsafe fn lane16(p: *const u8) -> u32 {
        let v = _mm_loadu_si128(p as *const __m128i);
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let slash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // unsigned v <= 0x1f exactly when max(v, 0x1f) == 0x1f
        let low = _mm_set1_epi8(0x1f);
        let control = _mm_cmpeq_epi8(_mm_max_epu8(v, low), low);
        let any = _mm_or_si128(_mm_or_si128(quote, slash), control);
        _mm_movemask_epi8(any) as u32 & 0xffff
    }

    /// The AVX2 kernel: two 32-byte lanes per word.
    pub(super) fn avx2(data: &[u8], out: &mut [u64]) {
        // SAFETY: `avx2` is only chosen (by `KernelKind::best` / `available`) after
        // `is_x86_feature_detected!("avx2")` returned true.
        unsafe { avx2_blocks(data, out) }
    }

    /// # Safety
    /// The processor must support AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn avx2_blocks(data: &[u8], out: &mut [u64]) {
        for (block, word) in data.chunks_exact(BLOCK).zip(out.iter_mut()) {
            let p = block.as_ptr();
            // SAFETY: `block` holds 64 bytes, so both 32-byte unaligned loads are in bounds.
            let (lo, hi) = unsafe { (lane32(p), lane32(p.add(32))) };
            *word = lo as u64 | (hi as u64) << 32;
        }
    }

    /// # Safety
    /// `p` must point to 32 readable bytes and the processor must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn lane32(p: *const u8) -> u32 {
        // SAFETY: as the function's contract says.
        let v = unsafe { _mm256_loadu_si256(p as *const __m256i) };
        let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
        let slash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
        let low = _mm256_set1_epi8(0x1f);
        let control = _mm256_cmpeq_epi8(_mm256_max_epu8(v, low), low);
        let any = _mm256_or_si256(_mm256_or_si256(quote, slash), control);
        _mm256_movemask_epi8(any) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(data: &[u8], kind: KernelKind) -> Vec<u64> {
        let mut s = Specials::default();
        s.fill_with(data, kind);
        s.words().to_vec()
    }

    fn expected(data: &[u8]) -> Vec<u64> {
        let mut v = vec![0u64; data.len().div_ceil(BLOCK)];
        for (i, &c) in data.iter().enumerate() {
            if is_special(c) {
                v[i / BLOCK] |= 1 << (i % BLOCK);
            }
        }
        v
    }

    /// Inputs around the block sizes: short lines, strings and escapes across 16/32/64-byte
    /// boundaries, multi-byte UTF-8 split by a boundary, every byte value.
    fn inputs() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"{}".to_vec(),
            br#"{"a":"b\"c\\","d":1}"#.to_vec(),
            (0u8..=255).collect(),
            (0u8..=255).rev().collect(),
        ];
        for len in [15usize, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200] {
            for at in [0, 1, len / 2, len.saturating_sub(2), len.saturating_sub(1)] {
                for s in [
                    &b"\""[..],
                    b"\\\"",
                    b"\\\\",
                    b"\x01",
                    b"\n",
                    "é".as_bytes(),
                    "€".as_bytes(),
                    "😀".as_bytes(),
                    b"\x7f",
                    b"\xff",
                ] {
                    let mut line = vec![b'a'; len];
                    let at = at.min(len);
                    line.splice(at..(at + s.len()).min(len), s.iter().copied());
                    v.push(line);
                }
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..300 {
            let line: Vec<u8> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    [b'"', b'\\', b'a', 0x1f, 0x20, 0x00, 0xc3, 0xa9, b'{', 0x80][(x % 10) as usize]
                })
                .collect();
            v.push(line);
        }
        v
    }

    #[test]
    fn every_kernel_gives_the_same_bitmap() {
        let kinds = KernelKind::available();
        assert!(kinds.contains(&KernelKind::best()));
        for data in inputs() {
            let want = expected(&data);
            for &k in &kinds {
                assert_eq!(bitmap(&data, k), want, "{k:?} on {data:?}");
            }
        }
    }

    #[test]
    fn next_finds_the_first_special_byte_at_or_after_a_position() {
        for data in inputs() {
            for &k in &KernelKind::available() {
                let mut s = Specials::default();
                s.fill_with(&data, k);
                for from in 0..=data.len() + 70 {
                    let want = (from..data.len())
                        .find(|&i| is_special(data[i]))
                        .unwrap_or(data.len());
                    assert_eq!(s.next(from), want, "{k:?} from {from} in {data:?}");
                }
            }
        }
    }
}
