//! What the fuzz harnesses of this crate share: a seeded generator and their settings.
#![allow(dead_code)] // each harness uses its own part

/// xorshift64*: deterministic for a seed, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Cases to run: `WEIR_FUZZ_CASES`, else `default`.
pub fn cases(default: usize) -> usize {
    std::env::var("WEIR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed: `WEIR_FUZZ_SEED`, else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("WEIR_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
