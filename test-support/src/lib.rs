//! Test helpers shared by the workspace's suites: a seeded random number generator whose seed
//! is printed when a test fails, and a mutation engine for hostile-input tests.
//!
//! ```
//! use test_support::{Mutation, Mutator, Rng};
//! let mut rng = Rng::new(42);
//! let input = vec![0u8; 64];
//! let mutator = Mutator::new(&[Mutation::FlipBit, Mutation::InterestingU32]).times(1, 4);
//! let mutated = mutator.mutated(&mut rng, &input);
//! assert_eq!(mutated.len(), input.len());
//! ```
//!
//! Every run is deterministic for a given seed. Setting `TEST_SEED` (decimal or `0x` hex) mixes
//! that value into every seed, to explore other streams; a failing test prints the effective
//! seed and the `TEST_SEED` that reproduces it.
#![warn(missing_docs)]

use std::ops::Range;

/// The environment variable whose value is mixed into every seed.
pub const SEED_ENV: &str = "TEST_SEED";

/// A xorshift64* generator (Vigna, 2016) with a splitmix64-scrambled seed. Not for
/// cryptography: it only has to be fast, seeded and reproducible.
///
/// When the thread is panicking as the generator is dropped (a test failure, or a panic in the
/// code under test), the seed is printed to stderr.
#[derive(Debug)]
pub struct Rng {
    state: u64,
    seed: u64,
    env: Option<u64>,
    draws: u64,
}

impl Rng {
    /// A generator for `seed`, or for `seed ^ $TEST_SEED` when that variable is set.
    ///
    /// # Panics
    /// If `TEST_SEED` is set but is not a number.
    pub fn new(seed: u64) -> Rng {
        let env = std::env::var(SEED_ENV)
            .ok()
            .map(|v| parse_seed(&v).unwrap_or_else(|| panic!("{SEED_ENV}={v:?} is not a number")));
        Self::with_env(seed, env)
    }

    fn with_env(seed: u64, env: Option<u64>) -> Rng {
        let seed = seed ^ env.unwrap_or(0);
        // splitmix64 turns small, similar seeds into unrelated, non-zero states.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng {
            state: if z == 0 { 0x2545_f491_4f6c_dd1d } else { z },
            seed,
            env,
            draws: 0,
        }
    }

    /// The effective seed (after mixing in `TEST_SEED`).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// What is printed when a test fails while this generator is alive.
    pub fn report(&self) -> String {
        let rerun = match self.env {
            Some(e) => format!("rerun with {SEED_ENV}={e:#x} to reproduce"),
            None => "the run is deterministic: rerun the test to reproduce".to_owned(),
        };
        format!(
            "test-support: Rng seed {:#x}, {} draws so far; {rerun}",
            self.seed, self.draws
        )
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.draws += 1;
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// An index in `0..len`; 0 when `len` is 0.
    pub fn index(&mut self, len: usize) -> usize {
        // usize is at most 64 bits on every supported target.
        self.below(len as u64) as usize
    }

    /// A value in `range`; `range.start` when the range is empty.
    pub fn in_range(&mut self, range: Range<u64>) -> u64 {
        range.start + self.below(range.end.saturating_sub(range.start))
    }

    /// True with probability `1 / n` (always for `n <= 1`).
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// A random element of `items`.
    ///
    /// # Panics
    /// If `items` is empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        assert!(!items.is_empty(), "Rng::pick from an empty slice");
        &items[self.index(items.len())]
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

impl Drop for Rng {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Byte values that tend to hit edge cases: zero, all ones, sign boundaries, ULEB continuation
/// and small opcodes.
pub const INTERESTING_BYTES: [u8; 6] = [0, 0xff, 0x7f, 0x80, 0x40, 0x0c];

/// 32-bit values that tend to hit edge cases as lengths, offsets and counts.
pub const INTERESTING_U32: [u32; 6] = [0, u32::MAX, 0x7fff_ffff, 0xffff_fff0, 16, 1];

/// One kind of change to a byte buffer. Positions are drawn inside the region being mutated
/// (the whole buffer unless [`Mutator::mutate_in`] narrows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// Flips one bit.
    FlipBit,
    /// Sets one byte to a value from [`INTERESTING_BYTES`].
    InterestingByte,
    /// Overwrites four bytes with a little-endian value from [`INTERESTING_U32`]: a lying
    /// length, count or offset.
    InterestingU32,
    /// Overwrites eight bytes with random ones: a lying 64-bit size, pointer or header word.
    RandomU64,
    /// Cuts the buffer at a point in the region (everything after it goes, as in a truncated
    /// download).
    Truncate,
    /// Zeroes the region from a random point to its end; the length is kept.
    ZeroTail,
    /// Copies a chunk of up to 64 bytes of the region to another place in it (the buffer grows).
    DuplicateChunk,
    /// Inserts one random byte (the buffer grows by one).
    InsertByte,
}

impl Mutation {
    /// Every kind.
    pub const ALL: [Mutation; 8] = [
        Mutation::FlipBit,
        Mutation::InterestingByte,
        Mutation::InterestingU32,
        Mutation::RandomU64,
        Mutation::Truncate,
        Mutation::ZeroTail,
        Mutation::DuplicateChunk,
        Mutation::InsertByte,
    ];

    /// Whether the change keeps the buffer's length.
    pub fn keeps_length(self) -> bool {
        !matches!(
            self,
            Mutation::Truncate | Mutation::DuplicateChunk | Mutation::InsertByte
        )
    }
}

/// Applies a random number of randomly chosen [`Mutation`]s to a buffer.
#[derive(Debug, Clone)]
pub struct Mutator {
    kinds: Vec<Mutation>,
    min: usize,
    max: usize,
    word_align: usize,
}

impl Default for Mutator {
    /// Every kind of mutation, one to four per case.
    fn default() -> Self {
        Mutator::new(&Mutation::ALL)
    }
}

impl Mutator {
    /// A mutator drawing from `kinds`, one to four mutations per case.
    ///
    /// # Panics
    /// If `kinds` is empty.
    pub fn new(kinds: &[Mutation]) -> Mutator {
        assert!(!kinds.is_empty(), "a Mutator needs at least one kind");
        Mutator {
            kinds: kinds.to_vec(),
            min: 1,
            max: 4,
            word_align: 1,
        }
    }

    /// Between `min` and `max` (inclusive) mutations per case.
    ///
    /// # Panics
    /// If `min > max`.
    pub fn times(mut self, min: usize, max: usize) -> Mutator {
        assert!(min <= max, "Mutator::times({min}, {max})");
        self.min = min;
        self.max = max;
        self
    }

    /// Word writes ([`Mutation::InterestingU32`], [`Mutation::RandomU64`]) land at multiples of
    /// `align` from the region's start, as header fields do.
    ///
    /// # Panics
    /// If `align` is 0.
    pub fn word_align(mut self, align: usize) -> Mutator {
        assert!(align > 0, "Mutator::word_align(0)");
        self.word_align = align;
        self
    }

    /// A mutated copy of `input`.
    pub fn mutated(&self, rng: &mut Rng, input: &[u8]) -> Vec<u8> {
        let mut data = input.to_vec();
        self.mutate(rng, &mut data);
        data
    }

    /// Mutates the whole of `data`; returns the kinds applied, in order.
    pub fn mutate(&self, rng: &mut Rng, data: &mut Vec<u8>) -> Vec<Mutation> {
        let len = data.len();
        self.mutate_in(rng, data, 0..len)
    }

    /// Mutates `data` inside `region` only (clamped to the buffer; a region that a change
    /// shrinks or grows is adjusted before the next one). Kinds that do not fit the region
    /// (a word in a 3-byte region, anything in an empty one) are skipped: the result lists the
    /// kinds actually applied, in order.
    pub fn mutate_in(
        &self,
        rng: &mut Rng,
        data: &mut Vec<u8>,
        region: Range<usize>,
    ) -> Vec<Mutation> {
        let mut region = region.start.min(data.len())..region.end.min(data.len());
        let n = self.min + rng.index(self.max - self.min + 1);
        let mut applied = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = *rng.pick(&self.kinds);
            let before = data.len();
            if apply(rng, kind, data, region.clone(), self.word_align) {
                applied.push(kind);
            }
            // Keep the region inside the buffer and let it follow growth.
            let end = if data.len() >= before {
                region.end + (data.len() - before)
            } else {
                region.end.min(data.len())
            };
            region = region.start.min(data.len())..end;
        }
        applied
    }
}

/// Applies one mutation of `kind` inside `region` (which must lie inside `data`). Returns
/// false, leaving `data` unchanged, when the kind does not fit the region.
fn apply(
    rng: &mut Rng,
    kind: Mutation,
    data: &mut Vec<u8>,
    region: Range<usize>,
    align: usize,
) -> bool {
    let Range { start, end } = region;
    let len = end.saturating_sub(start);
    // A position for a `width`-byte write, aligned to `align` from `start`.
    let word_at = |rng: &mut Rng, width: usize| -> Option<usize> {
        let slots = len.checked_sub(width)? / align + 1;
        Some(start + align * rng.index(slots))
    };
    match kind {
        Mutation::FlipBit if len > 0 => {
            let i = start + rng.index(len);
            data[i] ^= 1 << rng.below(8);
        }
        Mutation::InterestingByte if len > 0 => {
            let i = start + rng.index(len);
            data[i] = *rng.pick(&INTERESTING_BYTES);
        }
        Mutation::InterestingU32 => {
            let Some(i) = word_at(rng, 4) else {
                return false;
            };
            let v = *rng.pick(&INTERESTING_U32);
            data[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::RandomU64 => {
            let Some(i) = word_at(rng, 8) else {
                return false;
            };
            let v = rng.next_u64();
            data[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::Truncate if len > 0 => data.truncate(start + rng.index(len)),
        Mutation::ZeroTail if len > 0 => {
            let cut = start + rng.index(len);
            data[cut..end].fill(0);
        }
        Mutation::DuplicateChunk if len > 1 => {
            let from = start + rng.index(len - 1);
            let n = 1 + rng.index((end - from).min(64));
            let chunk = data[from..from + n].to_vec();
            let at = start + rng.index(len + 1);
            data.splice(at..at, chunk);
        }
        Mutation::InsertByte => {
            let at = start + rng.index(len + 1);
            data.insert(at, rng.next_u64() as u8);
        }
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let a: Vec<u64> = {
            let mut r = Rng::with_env(7, None);
            (0..64).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::with_env(7, None);
            (0..64).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        for other in [0u64, 6, 8, 7 | 1 << 63] {
            let mut r = Rng::with_env(other, None);
            let c: Vec<u64> = (0..64).map(|_| r.next_u64()).collect();
            let same = a.iter().zip(&c).filter(|(x, y)| x == y).count();
            assert_eq!(same, 0, "seed {other} repeats seed 7's values");
        }
        // TEST_SEED mixes in: 7 ^ 1 is seed 6.
        let mut mixed = Rng::with_env(7, Some(1));
        let mut six = Rng::with_env(6, None);
        assert_eq!(mixed.seed(), 6);
        assert_eq!(mixed.next_u64(), six.next_u64());
    }

    #[test]
    fn every_bit_varies_and_below_is_uniform_enough() {
        let mut r = Rng::with_env(1, None);
        let (mut ones, mut zeros) = (0u64, 0u64);
        for _ in 0..256 {
            let v = r.next_u64();
            ones |= v;
            zeros |= !v;
        }
        assert_eq!((ones, zeros), (u64::MAX, u64::MAX));
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            buckets[r.below(10) as usize] += 1;
        }
        // Expected 10,000 each; 5 sigma is about 475.
        assert!(
            buckets.iter().all(|&b| (9_500..=10_500).contains(&b)),
            "{buckets:?}"
        );
        assert_eq!(r.below(0), 0);
        assert_eq!(r.index(1), 0);
        assert!((0..1000).all(|_| (5..9).contains(&r.in_range(5..9))));
        assert_eq!(r.in_range(9..9), 9);
        assert_eq!(r.bytes(13).len(), 13);
    }

    #[test]
    fn parse_seed_accepts_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed(" 0x2a "), Some(42));
        assert_eq!(parse_seed("0X2A"), Some(42));
        assert_eq!(parse_seed("forty-two"), None);
    }

    #[test]
    fn report_names_the_seed_and_how_to_rerun() {
        let r = Rng::with_env(0x10, Some(0x3));
        assert!(r.report().contains("seed 0x13"), "{}", r.report());
        assert!(r.report().contains("TEST_SEED=0x3"), "{}", r.report());
        let r = Rng::with_env(0x10, None);
        assert!(r.report().contains("seed 0x10"), "{}", r.report());
    }

    /// Run by `seed_is_printed_when_a_test_panics` in a child process.
    #[test]
    #[ignore = "helper: panics on purpose"]
    fn panics_holding_an_rng() {
        let mut r = Rng::with_env(0xdead, None);
        let _ = r.next_u64();
        if std::env::var_os("TEST_SUPPORT_PANIC").is_some() {
            panic!("deliberate");
        }
    }

    #[test]
    fn seed_is_printed_when_a_test_panics() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::panics_holding_an_rng", "--ignored"])
            .args(["--nocapture", "--test-threads=1"])
            .env("TEST_SUPPORT_PANIC", "1")
            .env_remove(SEED_ENV)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the helper should have failed");
        assert!(
            stderr.contains("test-support: Rng seed 0xdead, 1 draws so far"),
            "stderr: {stderr}"
        );
    }

    /// Applies `kind` many times to copies of a buffer, inside a region, and checks what each
    /// application may change.
    fn check_kind(kind: Mutation) -> usize {
        let mut rng = Rng::with_env(kind as u64 + 100, None);
        let orig: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        let region = 40..120;
        let m = Mutator::new(&[kind]).times(1, 1);
        let mut changed = 0;
        for _ in 0..500 {
            let mut data = orig.clone();
            let applied = m.mutate_in(&mut rng, &mut data, region.clone());
            assert_eq!(applied, vec![kind]);
            assert_eq!(
                &data[..region.start],
                &orig[..region.start],
                "{kind:?} before region"
            );
            if kind.keeps_length() {
                assert_eq!(data.len(), orig.len(), "{kind:?} length");
                assert_eq!(
                    &data[region.end..],
                    &orig[region.end..],
                    "{kind:?} after region"
                );
            } else {
                assert_ne!(data.len(), orig.len(), "{kind:?} should change the length");
            }
            match kind {
                Mutation::Truncate => {
                    assert!((region.start..region.end).contains(&data.len()), "{kind:?}");
                }
                Mutation::InsertByte => assert_eq!(data.len(), orig.len() + 1),
                Mutation::DuplicateChunk => {
                    let grown = data.len() - orig.len();
                    assert!((1..=64).contains(&grown), "{kind:?} grew by {grown}");
                    // What follows the region is only shifted.
                    assert_eq!(&data[region.end + grown..], &orig[region.end..]);
                }
                Mutation::FlipBit => {
                    let diff: u32 = data
                        .iter()
                        .zip(&orig)
                        .map(|(a, b)| (a ^ b).count_ones())
                        .sum();
                    assert_eq!(diff, 1, "{kind:?} flips exactly one bit");
                }
                _ => {}
            }
            changed += usize::from(data != orig);
        }
        changed
    }

    #[test]
    fn each_kind_changes_only_its_region() {
        for kind in Mutation::ALL {
            let changed = check_kind(kind);
            // Writes of a value equal to the old one, and zeroing already-zero bytes, are the
            // only no-ops; they are rare with this input.
            assert!(changed > 400, "{kind:?} changed only {changed} of 500");
        }
    }

    #[test]
    fn word_writes_are_aligned_and_small_regions_skip_them() {
        let mut rng = Rng::with_env(3, None);
        let m = Mutator::new(&[Mutation::RandomU64])
            .times(1, 1)
            .word_align(8);
        for _ in 0..200 {
            let mut data = vec![0u8; 100];
            m.mutate_in(&mut rng, &mut data, 10..50);
            // The random word may have zero bytes: every non-zero byte must lie in one slot
            // that starts at 10 + 8k and ends by 50.
            let nonzero: Vec<usize> = (0..data.len()).filter(|&i| data[i] != 0).collect();
            if let (Some(&first), Some(&last)) = (nonzero.first(), nonzero.last()) {
                let slot = 10 + (first - 10) / 8 * 8;
                assert!(
                    first >= 10 && last < slot + 8 && slot + 8 <= 50,
                    "{nonzero:?}"
                );
            }
        }
        let mut tiny = vec![1u8, 2, 3];
        let applied = Mutator::new(&[Mutation::InterestingU32, Mutation::RandomU64])
            .mutate(&mut rng, &mut tiny);
        assert!(applied.is_empty());
        assert_eq!(tiny, [1, 2, 3]);
        // An empty buffer only takes an insertion.
        for _ in 0..50 {
            let mut empty = Vec::new();
            let applied = Mutator::default().times(1, 1).mutate(&mut rng, &mut empty);
            assert!(
                applied.is_empty() || applied == [Mutation::InsertByte],
                "{applied:?}"
            );
            assert_eq!(empty.len(), applied.len());
        }
    }

    #[test]
    fn counts_per_case_respect_times() {
        let mut rng = Rng::with_env(9, None);
        let m = Mutator::new(&[Mutation::FlipBit]).times(2, 5);
        let mut seen = [false; 6];
        for _ in 0..500 {
            let mut data = vec![0u8; 64];
            let n = m.mutate(&mut rng, &mut data).len();
            assert!((2..=5).contains(&n), "{n}");
            seen[n] = true;
        }
        assert_eq!(seen, [false, false, true, true, true, true]);
    }
}
