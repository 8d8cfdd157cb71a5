//! Sampled tokens: ids from a skewed vocabulary, logprobs and top-K candidates.
//!
//! Ids are Zipf-like: an octave `e` in `0..17` is chosen uniformly, then an id
//! uniformly inside `[2^e - 1, 2^(e+1) - 1)`, shifted past the special ids, so
//! the density falls as 1/id (id 3 alone takes ~6 % of the draws, like a
//! comma). Special ids (BOS 0, EOS 1, PAD 2) are never drawn; they appear only
//! where the simulation forces them.
//!
//! With top-K on, each token has a logprob, a rank and K distinct candidates
//! with strictly descending logprobs forming a sub-distribution (their
//! probabilities sum below 1). The sampled token is the top candidate 85 % of
//! the time, ranks 2–5 14 % of the time, and outside the top five (rank ≥ 6,
//! its logprob below the last candidate's) 1 % of the time. When the rank is
//! above K the sampled id is not among the candidates.
//!
//! Columns follow probe-core's conventions: one id per token, one logprob and
//! rank per token of a run with `top_k: Some(_)`, K candidate ids and logprobs
//! per such token, best first.

use crate::rng::Rng;
use probe_core::event::SampledTokens;

/// Beginning-of-sequence id.
pub const BOS: u32 = 0;
/// End-of-sequence id.
pub const EOS: u32 = 1;
/// Padding id.
pub const PAD: u32 = 2;
/// First ordinary (non-special) id.
pub const FIRST_ORDINARY: u32 = 3;
/// Octaves of the Zipf-like id distribution.
const OCTAVES: u64 = 17;
/// One past the largest id drawn.
pub const VOCAB: u32 = FIRST_ORDINARY + (1 << OCTAVES) - 1;
/// Largest rank drawn for a token outside the top five.
const MAX_RANK: u32 = 50;

/// Draws tokens into a step's columns.
#[derive(Debug, Clone)]
pub struct TokenSampler {
    rng: Rng,
    top_k: Option<u8>,
}

impl TokenSampler {
    /// A sampler with its own random stream; `top_k: None` records ids only.
    pub fn new(rng: Rng, top_k: Option<u8>) -> TokenSampler {
        TokenSampler { rng, top_k }
    }

    /// Candidates per token (`None`: no logprob data).
    pub fn top_k(&self) -> Option<u8> {
        self.top_k
    }

    /// A Zipf-like ordinary id.
    #[inline]
    fn zipf(&mut self) -> u32 {
        let x = self.rng.next_u64();
        let e = ((x >> 40) * OCTAVES) >> 24;
        let low = (1u64 << e) - 1;
        let id = low + (x & low);
        FIRST_ORDINARY + id as u32
    }

    /// A Zipf-like id not among `taken`.
    #[inline]
    fn zipf_not_in(&mut self, taken: &[u32]) -> u32 {
        loop {
            let id = self.zipf();
            if !taken.contains(&id) {
                return id;
            }
        }
    }

    fn rank(&mut self) -> u32 {
        let u = self.rng.uniform();
        if u < 0.85 {
            1
        } else if u < 0.92 {
            2
        } else if u < 0.955 {
            3
        } else if u < 0.975 {
            4
        } else if u < 0.99 {
            5
        } else {
            let extra = self.rng.uniform_open().ln() / 0.7f64.ln();
            (6 + extra as u32).min(MAX_RANK)
        }
    }

    /// Append one token to `t` (the caller pushes its run). `forced` replaces
    /// the sampled id (a special token), which is then the top candidate.
    #[inline]
    pub fn push(&mut self, t: &mut SampledTokens, forced: Option<u32>) {
        let Some(k) = self.top_k else {
            let id = forced.unwrap_or_else(|| self.zipf());
            t.ids.0.push(id);
            return;
        };
        let k = u32::from(k);
        let rank = if forced.is_some() { 1 } else { self.rank() };
        // Top-1 probability p0 = exp(l0); the rest of the mass is shared out
        // geometrically, each candidate 0.2–0.6 times the previous one.
        let l0 = -self.rng.exponential(0.35).min(30.0);
        let p0 = l0.exp();
        let rest = (1.0 - p0).max(1e-12);
        let l1 = (rest * self.rng.range(0.1, 0.35)).min(p0 * 0.95).ln();
        let start = t.top_ids.0.len();
        let mut lp = l0;
        let mut sampled_lp = l0;
        for j in 0..k.max(rank) {
            if j == 1 {
                lp = l1;
            } else if j > 1 {
                lp -= self.rng.range(0.51, 1.61);
            }
            if j < k {
                let id = self.zipf_not_in(&t.top_ids.0[start..]);
                t.top_ids.0.push(id);
                t.top_logprobs.0.push(lp as f32);
            }
            if j + 1 == rank {
                sampled_lp = lp;
            }
        }
        let id = if rank <= k {
            let slot = start + rank as usize - 1;
            if let Some(f) = forced {
                t.top_ids.0[slot] = f;
            }
            t.top_ids.0[slot]
        } else {
            let taken = &t.top_ids.0[start..];
            forced.unwrap_or_else(|| self.zipf_not_in(taken))
        };
        t.ids.0.push(id);
        t.logprobs.0.push(sampled_lp as f32);
        t.ranks.0.push(rank);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_core::event::TokenRun;

    fn sample(top_k: Option<u8>, n: u32) -> SampledTokens {
        let mut s = TokenSampler::new(Rng::new(11, 0), top_k);
        let mut t = SampledTokens::default();
        for i in 0..n {
            t.runs.push(TokenRun {
                req: i,
                first_index: 0,
                count: 1,
                top_k,
            });
            s.push(&mut t, (i % 97 == 0).then_some(EOS));
        }
        t
    }

    #[test]
    fn columns_are_consistent_and_candidates_sane() {
        let t = sample(Some(5), 20_000);
        t.check().expect("columns agree");
        let mut rank1 = 0;
        let mut outside = 0;
        for v in t.iter() {
            let (id, lp, rank) = (v.token_id.unwrap(), v.logprob.unwrap(), v.rank.unwrap());
            assert_eq!(v.top_ids.len(), 5);
            assert!(lp < 0.0);
            assert!(v.top_logprobs.windows(2).all(|w| w[0] > w[1]));
            let p: f32 = v.top_logprobs.iter().map(|l| l.exp()).sum();
            assert!(p <= 1.0 + 1e-4, "{p}");
            for (i, a) in v.top_ids.iter().enumerate() {
                assert!(!v.top_ids[i + 1..].contains(a));
            }
            if rank <= 5 {
                assert_eq!(v.top_ids[rank as usize - 1], id);
                assert_eq!(v.top_logprobs[rank as usize - 1], lp);
            } else {
                assert!(!v.top_ids.contains(&id));
                assert!(lp < v.top_logprobs[4]);
                outside += 1;
            }
            rank1 += u32::from(rank == 1);
        }
        assert!(rank1 > 16_500 && rank1 < 17_800, "{rank1}");
        assert!(outside > 100 && outside < 350, "{outside}");
    }

    #[test]
    fn ids_only_without_top_k() {
        let t = sample(None, 1000);
        t.check().expect("columns agree");
        assert_eq!(t.ids.len(), 1000);
        assert!(t.logprobs.is_empty() && t.top_ids.is_empty());
        assert!(t.ids.0.iter().all(|&id| id < VOCAB));
        assert!(t
            .ids
            .0
            .iter()
            .filter(|&&id| id < FIRST_ORDINARY)
            .all(|&id| id == EOS));
    }
}
