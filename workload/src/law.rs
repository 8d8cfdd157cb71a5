//! The step-time law: how long one simulated engine iteration takes.
//!
//! With `D` decode tokens, `P` prefill tokens, `c̄` the mean context length of
//! the scheduled requests and `C` their total context (tokens held in the KV
//! cache after the step), the step takes
//!
//! ```text
//! t = [ 2.5 ms
//!     + 0.04 ms · D^0.85
//!     + 0.015 ms · P^1.08 · (1 + c̄ / 8192)
//!     + 0.002 ms · √C ] · LogNormal(median 1, σ 0.08)
//!     + hiccup
//! ```
//!
//! where `hiccup` is 0, except in 0.5 % of steps where it is a Pareto draw
//! (scale 5 ms, shape 1.5) capped at 30 ms — a GC pause, a page fault storm, a
//! noisy neighbour. Between two steps the engine spends a scheduling gap of
//! 120 µs plus an exponential with mean 30 µs.
//!
//! The law is deliberately *not* linear in `D`, `P` and context (sub-linear
//! decode, super-linear prefill scaled by context, square-root context term,
//! multiplicative noise), so an analyzer that fits a linear model
//! `a + b·D + c·P + d·C` to a trace from this generator is tested against a
//! mis-specified truth and cannot pass by construction.

use crate::rng::Rng;

/// What a step computed, as the law sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepLoad {
    /// Decode tokens computed (one per decoding request).
    pub decode: u32,
    /// Prompt tokens computed (prefill and recompute chunks).
    pub prefill: u32,
    /// Mean context length of the scheduled requests after the step.
    pub ctx_mean: f64,
    /// Total context of the scheduled requests after the step.
    pub ctx_total: u64,
}

/// Fixed cost of a step (kernel launches, sampling, output processing), ms.
pub const BASE_MS: f64 = 2.5;
/// Decode coefficient, ms.
pub const DECODE_MS: f64 = 0.04;
/// Decode exponent (sub-linear: batching amortises weight reads).
pub const DECODE_EXP: f64 = 0.85;
/// Prefill coefficient, ms.
pub const PREFILL_MS: f64 = 0.015;
/// Prefill exponent (super-linear: attention over the chunk).
pub const PREFILL_EXP: f64 = 1.08;
/// Context length at which prefill cost doubles.
pub const PREFILL_CTX_SCALE: f64 = 8192.0;
/// Coefficient of the square root of the total context, ms.
pub const CONTEXT_MS: f64 = 0.002;
/// Log-space sigma of the multiplicative noise.
pub const NOISE_SIGMA: f64 = 0.08;
/// Probability that a step suffers a hiccup.
pub const HICCUP_P: f64 = 0.005;
/// Smallest hiccup, ms.
pub const HICCUP_MIN_MS: f64 = 5.0;
/// Largest hiccup, ms.
pub const HICCUP_MAX_MS: f64 = 30.0;
/// Fixed part of the gap between steps, ns.
pub const GAP_BASE_NS: f64 = 120_000.0;
/// Mean of the exponential part of the gap between steps, ns.
pub const GAP_MEAN_NS: f64 = 30_000.0;

/// The law without noise, in milliseconds.
pub fn mean_ms(load: &StepLoad) -> f64 {
    let d = f64::from(load.decode);
    let p = f64::from(load.prefill);
    let mut t = BASE_MS;
    if load.decode > 0 {
        t += DECODE_MS * d.powf(DECODE_EXP);
    }
    if load.prefill > 0 {
        t += PREFILL_MS * p.powf(PREFILL_EXP) * (1.0 + load.ctx_mean / PREFILL_CTX_SCALE);
    }
    t + CONTEXT_MS * (load.ctx_total as f64).sqrt()
}

/// Draw the duration of a step, in nanoseconds (at least 1 µs).
pub fn step_ns(load: &StepLoad, rng: &mut Rng) -> u64 {
    let mut ms = mean_ms(load) * (NOISE_SIGMA * rng.normal()).exp();
    if rng.chance(HICCUP_P) {
        ms += rng.pareto(HICCUP_MIN_MS, 1.5).min(HICCUP_MAX_MS);
    }
    ((ms * 1e6) as u64).max(1_000)
}

/// Draw the scheduling gap before the next step, in nanoseconds.
pub fn gap_ns(rng: &mut Rng) -> u64 {
    (GAP_BASE_NS + rng.exponential(GAP_MEAN_NS)) as u64
}

/// One-line statement of the law, for `--help` and the process info.
pub const LAW_TEXT: &str = "t = [2.5 ms + 0.04 ms*D^0.85 + 0.015 ms*P^1.08*(1 + ctx_mean/8192) \
+ 0.002 ms*sqrt(ctx_total)] * LogNormal(1, 0.08) + hiccup (0.5%: Pareto(5 ms, 1.5) capped at 30 ms); \
gap between steps 120 us + Exp(30 us)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn law_is_not_linear() {
        let at = |decode, prefill| {
            mean_ms(&StepLoad {
                decode,
                prefill,
                ctx_mean: 0.0,
                ctx_total: 0,
            })
        };
        // Doubling the decode batch less than doubles its cost; prefill more.
        let d1 = at(32, 0) - BASE_MS;
        let d2 = at(64, 0) - BASE_MS;
        assert!(d2 < 2.0 * d1 * 0.95);
        let p1 = at(0, 1024) - BASE_MS;
        let p2 = at(0, 2048) - BASE_MS;
        assert!(p2 > 2.0 * p1 * 1.03);
    }

    #[test]
    fn durations_are_positive_and_centred() {
        let mut rng = Rng::new(3, 0);
        let load = StepLoad {
            decode: 64,
            prefill: 0,
            ctx_mean: 600.0,
            ctx_total: 38_400,
        };
        let mean = mean_ms(&load) * 1e6;
        let n = 20_000;
        let mut v: Vec<u64> = (0..n).map(|_| step_ns(&load, &mut rng)).collect();
        v.sort_unstable();
        let median = v[n / 2] as f64;
        assert!((median / mean - 1.0).abs() < 0.02, "{median} vs {mean}");
        assert!(v.iter().all(|&t| t > 0));
        assert!((0..1000).all(|_| gap_ns(&mut rng) >= 120_000));
    }
}
