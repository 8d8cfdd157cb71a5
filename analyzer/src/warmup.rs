//! Warm-up: an engine process's first steps, run far slower than the same
//! work later (kernels compiled or tuned on first use, lazy allocation):
//! 3–18 s for vLLM's first step on these CPU machines, against milliseconds
//! in steady state. Requests that arrived before it was over waited on the
//! engine's start, not on its serving; their TTFT says nothing about how the
//! engine serves, and a trace's statistics and charts would be dominated by
//! it. The analyzer marks the stretch per process, lays none of its delay on
//! other requests, and leaves the requests that waited on it out of the
//! latency statistics unless asked (`--include-warmup`).
//!
//! A step is warm-up when it is one of the process's first
//! [`WARMUP_WINDOW`] steps and ran both at least [`WARMUP_FACTOR`] × what the
//! process's step model predicts for its composition (fitted on the steps
//! after it) and at least [`WARMUP_FLOOR_NS`] longer: a slow first step of a
//! long prompt is work, a slow first step of ten tokens is not. The warm-up
//! ends with the last such step.

use crate::data::StepRow;
use crate::step_model::StepModel;
use serde::{Deserialize, Serialize};

/// Only the process's first steps can be warm-up.
pub const WARMUP_WINDOW: usize = 16;
/// How many times the predicted duration a warm-up step takes at least.
pub const WARMUP_FACTOR: f64 = 10.0;
/// And how much longer than predicted, at least (a slow step of a fast
/// engine is noise, not warm-up).
pub const WARMUP_FLOOR_NS: f64 = 1e9;

/// The warm-up of one engine process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warmup {
    /// Leading steps of the process that were warm-up.
    pub steps: u32,
    /// When the first one started.
    pub start_ns: u64,
    /// When the last one ended: requests that arrived before waited on it.
    pub end_ns: u64,
}

impl Warmup {
    /// Its length.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// The warm-up among one process's steps (in order), if any.
pub fn detect(steps: &[&StepRow]) -> Option<Warmup> {
    if steps.len() < 2 {
        return None;
    }
    // The yardstick: steps after the window when there are enough, else
    // every step but the first.
    let reference = if steps.len() >= WARMUP_WINDOW + 8 {
        &steps[WARMUP_WINDOW..]
    } else {
        &steps[1..]
    };
    let model = StepModel::fit(reference.iter().copied());
    let typical = median_duration(reference);
    let last = steps.iter().take(WARMUP_WINDOW).rposition(|s| {
        let predicted = model.map_or(typical, |m| m.predict_step(s).max(0.0));
        let took = s.duration_ns() as f64;
        took >= WARMUP_FACTOR * predicted && took - predicted >= WARMUP_FLOOR_NS
    })?;
    Some(Warmup {
        steps: last as u32 + 1,
        start_ns: steps[0].start_ns,
        end_ns: steps[last].end_ns,
    })
}

fn median_duration(steps: &[&StepRow]) -> f64 {
    let mut d: Vec<u64> = steps.iter().map(|s| s.duration_ns()).collect();
    if d.is_empty() {
        return 0.0;
    }
    let mid = d.len() / 2;
    *d.select_nth_unstable(mid).1 as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(start_ms: u64, dur_ms: u64, prefill: u32, decode: u32) -> StepRow {
        StepRow {
            start_ns: start_ms * 1_000_000,
            end_ns: (start_ms + dur_ms) * 1_000_000,
            prefill_tokens: prefill,
            decode_tokens: decode,
            requests: 4,
            ..Default::default()
        }
    }

    /// Steady state: decode steps of 10 ms, and now and then a prefill of
    /// 1,000 tokens at 0.4 ms a token.
    fn steady(from_ms: u64, n: usize) -> Vec<StepRow> {
        (0..n)
            .map(|i| {
                let t = from_ms + 500 * i as u64;
                if i % 10 == 5 {
                    step(t, 410, 1000, 4)
                } else {
                    step(t, 10 + (i % 3) as u64, 0, 4)
                }
            })
            .collect()
    }

    fn refs(v: &[StepRow]) -> Vec<&StepRow> {
        v.iter().collect()
    }

    #[test]
    fn a_slow_first_step_of_little_work_is_warm_up() {
        let mut steps = vec![step(0, 17_600, 40, 0), step(17_600, 2_500, 0, 4)];
        steps.extend(steady(20_200, 60));
        let w = detect(&refs(&steps)).expect("warm-up");
        assert_eq!(w.steps, 2);
        assert_eq!(w.end_ns, 20_100 * 1_000_000);
    }

    #[test]
    fn a_long_prompt_early_on_is_work_not_warm_up() {
        // 5,000 prompt tokens at the steady rate: 2 s, one of the first steps.
        let mut steps = vec![step(0, 12, 0, 4), step(12, 2_010, 5000, 4)];
        steps.extend(steady(2_100, 60));
        assert_eq!(detect(&refs(&steps)), None);
    }

    #[test]
    fn a_fast_engine_has_no_warm_up_to_report() {
        // Ten times slower, but only by 90 ms: below the floor.
        let mut steps = vec![step(0, 100, 10, 0)];
        steps.extend(steady(100, 60));
        assert_eq!(detect(&refs(&steps)), None);
        assert_eq!(detect(&refs(&steps[..1])), None);
    }

    #[test]
    fn a_slow_step_past_the_window_is_not_warm_up() {
        let mut steps = steady(0, 40);
        steps[WARMUP_WINDOW + 2] = step(500 * (WARMUP_WINDOW as u64 + 2), 9_000, 10, 4);
        assert_eq!(detect(&refs(&steps)), None);
    }
}
