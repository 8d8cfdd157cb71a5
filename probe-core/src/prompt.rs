//! A prompt's identity and the top-K sampling choice made from it.
//!
//! Requests with the same prompt get the same hash in every process and
//! every run (no per-process seed, unlike Python's `hash`), so the analyzer
//! can compare them, and the sampling choice — which requests the trace asks
//! top-K candidates for on its own — takes both copies of a repeated prompt
//! or neither.

/// FNV-1a (64 bits) of the prompt's token ids, each as 4 little-endian
/// bytes. Written in the arrival record (format 2 on).
pub fn prompt_hash(token_ids: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in token_ids {
        for b in id.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Whether a request whose prompt hashes to `hash` is in the sampled
/// fraction `rate` (0 to 1). FNV's high bits move little between similar
/// prompts, so the hash is mixed (SplitMix64's finaliser) before it is
/// compared with the rate.
pub fn topk_sampled(hash: u64, rate: f64) -> bool {
    if rate.is_nan() || rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    let mut z = hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // The top 53 bits as a uniform number in [0, 1).
    ((z >> 11) as f64) / ((1u64 << 53) as f64) < rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fixed_and_tells_prompts_apart() {
        // Pinned: other readers (and older traces) depend on these values.
        assert_eq!(prompt_hash(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(prompt_hash(&[1, 2, 3]), prompt_hash(&[1, 2, 3]));
        assert_ne!(prompt_hash(&[1, 2, 3]), prompt_hash(&[3, 2, 1]));
        assert_ne!(prompt_hash(&[1]), prompt_hash(&[1, 0]));
    }

    #[test]
    fn sampled_fraction_follows_the_rate() {
        for rate in [0.01, 0.1, 0.5] {
            let n = 100_000u32;
            let taken = (0..n)
                .filter(|i| topk_sampled(prompt_hash(&[7, *i]), rate))
                .count() as f64;
            let expected = rate * f64::from(n);
            // Binomial: five standard deviations either side.
            let sd = (expected * (1.0 - rate)).sqrt();
            assert!(
                (taken - expected).abs() < 5.0 * sd,
                "rate {rate}: {taken} of {n}"
            );
        }
        assert!(!topk_sampled(1, 0.0));
        assert!(!topk_sampled(1, f64::NAN));
        assert!(topk_sampled(1, 1.0));
    }
}
