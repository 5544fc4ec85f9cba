//! NumPy's `default_rng(seed).permutation(n)`, bit for bit: SeedSequence turns the seed
//! into PCG64's 128-bit state and increment, and `Generator.shuffle` runs Fisher-Yates from
//! the top with `random_interval` (rejection sampling under a bit mask, 32-bit draws while
//! the bound fits, from PCG64's buffered halves). Hugging Face `datasets`'
//! `Dataset.shuffle(seed)` is this permutation, which is how the paper's calibration rows
//! are drawn. Checked element for element against NumPy by tests/numpy_permutation.rs
//! (goldens from scripts/golden/numpy_permutation.py).

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const POOL: usize = 4;

/// NumPy's `SeedSequence` for an integer seed without spawn key.
struct SeedSequence {
    pool: [u32; POOL],
}

impl SeedSequence {
    fn new(seed: u64) -> Self {
        // The integer's 32-bit words, least significant first (at least one word).
        let entropy: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        let mut hash_const = INIT_A;
        let mut hashmix = |value: u32| -> u32 {
            let mut v = value ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_A);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> 16)
        };
        let mix = |x: u32, y: u32| -> u32 {
            let r = MIX_MULT_L
                .wrapping_mul(x)
                .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
            r ^ (r >> 16)
        };
        let mut pool = [0u32; POOL];
        for (i, p) in pool.iter_mut().enumerate() {
            *p = hashmix(entropy.get(i).copied().unwrap_or(0));
        }
        for src in 0..POOL {
            for dst in 0..POOL {
                if src != dst {
                    let h = hashmix(pool[src]);
                    pool[dst] = mix(pool[dst], h);
                }
            }
        }
        for &e in entropy.iter().skip(POOL) {
            for p in pool.iter_mut() {
                *p = mix(*p, hashmix(e));
            }
        }
        SeedSequence { pool }
    }

    /// `generate_state(n, np.uint64)`: 2n 32-bit words read as little-endian pairs.
    fn generate_u64(&self, n: usize) -> Vec<u64> {
        let mut hash_const = INIT_B;
        let words: Vec<u32> = (0..2 * n)
            .map(|i| {
                let mut v = self.pool[i % POOL] ^ hash_const;
                hash_const = hash_const.wrapping_mul(MULT_B);
                v = v.wrapping_mul(hash_const);
                v ^ (v >> 16)
            })
            .collect();
        words
            .chunks_exact(2)
            .map(|w| w[0] as u64 | (w[1] as u64) << 32)
            .collect()
    }
}

const PCG_MULT: u128 = 0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645;

/// PCG64 (XSL-RR 128/64) as NumPy's `PCG64` bit generator, with its 32-bit buffer.
pub struct Pcg64 {
    state: u128,
    inc: u128,
    spare: Option<u32>,
}

impl Pcg64 {
    /// `numpy.random.PCG64(seed)` / the bit generator of `default_rng(seed)`.
    pub fn from_seed(seed: u64) -> Self {
        let w = SeedSequence::new(seed).generate_u64(4);
        // PCG_128BIT_CONSTANT(high, low): the first word of each pair is the high half.
        let init_state = (w[0] as u128) << 64 | w[1] as u128;
        let init_seq = (w[2] as u128) << 64 | w[3] as u128;
        let mut g = Pcg64 {
            state: 0,
            inc: (init_seq << 1) | 1,
            spare: None,
        };
        g.step();
        g.state = g.state.wrapping_add(init_state);
        g.step();
        g
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let hi = (self.state >> 64) as u64;
        let lo = self.state as u64;
        (hi ^ lo).rotate_right((hi >> 58) as u32)
    }

    /// Low half of a fresh 64-bit draw, the high half kept for the next call.
    pub fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let x = self.next_u64();
        self.spare = Some((x >> 32) as u32);
        x as u32
    }

    /// Uniform in `0..=max` (NumPy's `random_interval`).
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = u64::MAX >> max.leading_zeros();
        if max <= u32::MAX as u64 {
            loop {
                let v = self.next_u32() as u64 & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = self.next_u64() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `Generator.shuffle` of a 1-d array.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.interval(i as u64) as usize;
            v.swap(i, j);
        }
    }
}

/// `numpy.random.default_rng(seed).permutation(n)`.
pub fn permutation(seed: u64, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    Pcg64::from_seed(seed).shuffle(&mut v);
    v
}
