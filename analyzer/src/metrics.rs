//! Per-request latency metrics from the token timeline.
//!
//! Definitions (docs/analysis.md repeats them):
//! - TTFT: arrival (at the frontend when it was traced, else at the engine) to
//!   the first token's exit; `ttft_emit` to its emit when a frontend recorded it.
//! - inter-token gaps: exit(i) − exit(i−1) (engine side) and emit(i) − emit(i−1)
//!   (client side); percentiles through an HDR histogram (microseconds, 2
//!   significant digits: within 1 %), the maximum exact.
//! - TPOT: (last exit − first exit) / (n − 1).
//! - queue: engine arrival to the first step that scheduled the request;
//!   prefill: that step's start to the first token's exit; decode: first to
//!   last exit.
//! - fluidity-index (Etalon): over the decode tokens, token i is released at
//!   exit(i−1) with deadline D_d plus the slack earlier tokens banked
//!   (slack_i = slack_{i−1} + D_d − gap_i when met, 0 when missed); the index
//!   is the fraction of deadlines met. D_d defaults to 5 × the engine's median
//!   decode-only step (Sarathi-Serve's "strict" TBT target).

use crate::data::Request;
use hdrhistogram::Histogram;

/// Latency figures of one request, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    /// Arrival to first exit.
    pub ttft_ns: Option<u64>,
    /// Arrival to first emit.
    pub ttft_emit_ns: Option<u64>,
    /// Mean time per output token after the first.
    pub tpot_ns: Option<f64>,
    /// Exit-side gaps.
    pub itl: Option<Quantiles>,
    /// Emit-side gaps.
    pub emit_itl: Option<Quantiles>,
    /// Largest exit gap and the token index it led to.
    pub max_itl: Option<(u64, u32)>,
    /// Waiting before the first scheduled step.
    pub queue_ns: Option<u64>,
    /// First scheduled step to first token.
    pub prefill_ns: Option<u64>,
    /// First to last token.
    pub decode_ns: Option<u64>,
    /// Arrival to the last token's exit (or emit when later).
    pub e2e_ns: Option<u64>,
    /// Etalon fluidity-index, None without decode tokens.
    pub fluidity_index: Option<f64>,
}

/// Quantiles of a gap distribution, nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quantiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

/// Gaps are histogrammed in microseconds, 2 significant digits (1 %), up to
/// an hour: a few thousand counters, cheap to clear and scan per request.
fn new_histogram() -> Option<Histogram<u32>> {
    Histogram::<u32>::new_with_bounds(1, 3_600_000_000, 2).ok()
}

fn quantiles(h: &mut Histogram<u32>, gaps: impl Iterator<Item = u64>) -> Option<Quantiles> {
    h.reset();
    let mut max = 0;
    for g in gaps {
        h.saturating_record((g / 1_000).max(1));
        max = max.max(g);
    }
    if h.is_empty() {
        return None;
    }
    // Back to nanoseconds: the bucket's midpoint, never above the largest gap
    // actually seen (which is exact).
    let at = |q: f64| (h.median_equivalent(h.value_at_quantile(q)) * 1_000).min(max);
    Some(Quantiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max,
    })
}

/// A reusable histogram for [`latency`].
pub struct Scratch(Option<Histogram<u32>>);

impl Default for Scratch {
    fn default() -> Self {
        Scratch(new_histogram())
    }
}

/// Compute the latency figures; `exits` holds each recorded token's exit,
/// `first_scheduled_ns` the start of the request's first step.
pub fn latency(
    scratch: &mut Scratch,
    r: &Request,
    exits: &[u64],
    first_scheduled_ns: Option<u64>,
    tbt_deadline_ns: f64,
) -> Latency {
    let n = exits.len();
    let mut l = Latency::default();
    let arrival = r.arrival_ns();
    let first_exit = exits.first().copied();
    let last_exit = exits.last().copied();
    l.ttft_ns = arrival.zip(first_exit).map(|(a, e)| e.saturating_sub(a));
    l.ttft_emit_ns = arrival.zip(r.emit(0)).map(|(a, e)| e.saturating_sub(a));
    if n >= 2 {
        if let (Some(f), Some(last)) = (first_exit, last_exit) {
            l.tpot_ns = Some(last.saturating_sub(f) as f64 / (n - 1) as f64);
        }
    }
    let gaps = || exits.windows(2).map(|w| w[1].saturating_sub(w[0]));
    l.itl = scratch.0.as_mut().and_then(|h| quantiles(h, gaps()));
    l.max_itl = gaps().zip(r.token_index.get(1..).unwrap_or(&[])).fold(
        None,
        |best: Option<(u64, u32)>, (g, &i)| match best {
            Some((b, _)) if b >= g => best,
            _ => Some((g, i)),
        },
    );
    if !r.emit_ns.is_empty() {
        let emits: Vec<u64> = (0..n).filter_map(|i| r.emit(i)).collect();
        let emit_gaps = emits.windows(2).map(|w| w[1].saturating_sub(w[0]));
        l.emit_itl = scratch.0.as_mut().and_then(|h| quantiles(h, emit_gaps));
    }
    l.queue_ns = r
        .engine_arrival_ns
        .zip(first_scheduled_ns)
        .map(|(a, s)| s.saturating_sub(a));
    l.prefill_ns = first_scheduled_ns
        .zip(first_exit)
        .map(|(s, e)| e.saturating_sub(s));
    l.decode_ns = first_exit.zip(last_exit).map(|(f, e)| e.saturating_sub(f));
    let end = last_exit.map(|e| e.max(r.emit(n.saturating_sub(1)).unwrap_or(0)));
    l.e2e_ns = arrival.zip(end).map(|(a, e)| e.saturating_sub(a));
    l.fluidity_index = fluidity(gaps(), tbt_deadline_ns);
    l
}

/// Etalon's fluidity-index over decode gaps with deadline `d` (module docs).
pub fn fluidity(gaps: impl Iterator<Item = u64>, d: f64) -> Option<f64> {
    if d <= 0.0 {
        return None;
    }
    let mut slack = 0.0f64;
    let (mut met, mut n) = (0u64, 0u64);
    for g in gaps {
        n += 1;
        let g = g as f64;
        if g <= d + slack {
            met += 1;
            slack += d - g;
        } else {
            slack = 0.0;
        }
    }
    (n > 0).then(|| met as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fluidity_banks_slack_and_forgets_it_on_a_miss() {
        // Deadline 10: 5 banks 5, 14 fits in 10 + 5, 30 misses, 12 misses (no slack left).
        assert_eq!(fluidity([5, 14, 30, 12].into_iter(), 10.0), Some(0.5));
        assert_eq!(fluidity(std::iter::empty(), 10.0), None);
    }

    #[test]
    fn metrics_of_a_simple_request() {
        let r = Request {
            engine_arrival_ns: Some(0),
            token_index: vec![0, 1, 2, 3],
            ..Default::default()
        };
        let exits = [100, 110, 150, 160];
        let l = latency(&mut Scratch::default(), &r, &exits, Some(20), 20.0);
        assert_eq!(l.ttft_ns, Some(100));
        assert_eq!(l.tpot_ns, Some(20.0));
        assert_eq!(l.max_itl, Some((40, 2)));
        assert_eq!(l.queue_ns, Some(20));
        assert_eq!(l.prefill_ns, Some(80));
        assert_eq!(l.decode_ns, Some(60));
        assert_eq!(l.itl.map(|q| q.max), Some(40));
        assert_eq!(l.fluidity_index, Some(2.0 / 3.0));
    }
}
