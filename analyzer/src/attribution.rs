//! Interference attribution: why a token took as long as it did.
//!
//! A generated token's gap (its exit minus the previous token's exit) is split
//! into what the trace's step model expects — the token's own work in a step
//! of its batch's decode composition, plus the engine's usual pause between
//! steps — and the excess. The excess has two sources, each shared among the
//! requests that caused it by the work they added (the model's prediction of
//! their prefill tokens and context):
//!
//! - *co-scheduled prefill*: the token's own step ran longer than a
//!   decode-only step of that batch would have, because other requests' prompt
//!   tokens were computed in it;
//! - *scheduling delay*: the request sat out steps between its two tokens
//!   (queued behind others' prefill, or preempted — its KV blocks given to the
//!   requests prefilled in the step that preempted it).
//!
//! Excess nobody's prefill explains stays unattributed (engine hiccups,
//! noise), and so does all of it in the engine's warm-up ([`crate::warmup`]). Only tokens after the first are attributed; the first
//! token's wait is the request's TTFT.

use crate::data::{RequestIx, StepIx, StepRow, TraceData};
use crate::step_model::StepModel;
use crate::warmup::Warmup;

/// What caused a share of a token's excess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Prefill computed in the token's own step.
    CoScheduledPrefill,
    /// Prefill computed in steps the request sat out while waiting.
    Queued,
    /// Prefill of the step that preempted the request, and of the steps it sat out.
    Preemption,
}

impl Cause {
    /// Every cause, in the order reports list them.
    pub const ALL: [Cause; 3] = [Cause::CoScheduledPrefill, Cause::Queued, Cause::Preemption];

    /// The name the JSON and the exports use.
    pub fn name(self) -> &'static str {
        match self {
            Cause::CoScheduledPrefill => "co_scheduled_prefill",
            Cause::Queued => "queued",
            Cause::Preemption => "preemption",
        }
    }
}

/// One culprit's share of a token's excess.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// The request whose work delayed the token.
    pub culprit: RequestIx,
    /// Nanoseconds of delay laid at its door.
    pub ns: f64,
    /// How.
    pub cause: Cause,
}

/// The breakdown of one token's gap.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenTiming {
    /// Position in the request's token list.
    pub position: usize,
    /// The token's index in the answer.
    pub index: u32,
    /// The step that computed it.
    pub step: StepIx,
    /// Start of that step.
    pub enter_ns: u64,
    /// End of that step.
    pub exit_ns: u64,
    /// exit − previous exit (from the arrival for the first token).
    pub gap_ns: u64,
    /// enter − previous exit: time spent outside a running step.
    pub scheduling_ns: u64,
    /// exit − enter.
    pub running_ns: u64,
    /// The model's expectation of the gap: a decode-only step of this batch
    /// plus the usual pause between steps.
    pub expected_ns: f64,
    /// gap − expected, at least 0.
    pub excess_ns: f64,
    /// Who caused the excess (several shares per culprit possible).
    pub shares: Vec<Share>,
}

impl TokenTiming {
    /// Excess attributed to requests other than the token's own.
    pub fn attributed_ns(&self) -> f64 {
        // + 0.0: an empty float sum is -0.0, which CSV and JSON would show.
        self.shares.iter().map(|s| s.ns).sum::<f64>() + 0.0
    }
}

/// Per engine process: its step model and usual pause between steps.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcessModel {
    /// Fitted step-time model (None: too few steps).
    pub model: Option<StepModel>,
    /// Median pause between one step's end and the next one's start.
    pub pause_ns: f64,
    /// Median duration of steps without prefill (the interference-free decode
    /// iteration), 0 when there were none.
    pub decode_step_ns: f64,
    /// The process's warm-up, when its first steps had one.
    #[serde(default)]
    pub warmup: Option<Warmup>,
}

impl ProcessModel {
    /// Whether a step of this process (its end time) was part of its warm-up.
    pub fn in_warmup(&self, end_ns: u64) -> bool {
        self.warmup.is_some_and(|w| end_ns <= w.end_ns)
    }
}

/// Fit a model per process on its steps after the warm-up (and always
/// after the first step, which carries some of it even when short).
pub fn fit_processes(data: &TraceData) -> Vec<ProcessModel> {
    (0..data.processes.len() as u32)
        .map(|p| {
            let steps: Vec<_> = data.steps.iter().filter(|s| s.process == p).collect();
            let warmup = crate::warmup::detect(&steps);
            let skip = warmup.map_or(1, |w| (w.steps as usize).max(1));
            fit_steps(&steps, skip, warmup)
        })
        .collect()
}

/// The model of one process from its steps, leaving out the first `skip`
/// (the warm-up, which `warmup` describes when there was one).
pub fn fit_steps(steps: &[&StepRow], skip: usize, warmup: Option<Warmup>) -> ProcessModel {
    let model = StepModel::fit(steps.iter().skip(skip).copied());
    let mut pauses: Vec<u64> = steps
        .windows(2)
        .map(|w| w[1].start_ns.saturating_sub(w[0].end_ns))
        .collect();
    let mut decode: Vec<u64> = steps
        .iter()
        .skip(skip)
        .filter(|s| s.prefill_tokens == 0 && s.decode_tokens > 0)
        .map(|s| s.duration_ns())
        .collect();
    ProcessModel {
        model,
        pause_ns: median(&mut pauses),
        decode_step_ns: median(&mut decode),
        warmup,
    }
}

fn median(v: &mut [u64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable(mid);
    *m as f64
}

/// The breakdown of every token of one request.
pub fn request_timings(
    data: &TraceData,
    models: &[ProcessModel],
    r: RequestIx,
) -> Vec<TokenTiming> {
    let mut out = Vec::new();
    request_timings_into(data, models, r, &mut out);
    out
}

/// [`request_timings`] into a buffer the caller reuses.
pub fn request_timings_into(
    data: &TraceData,
    models: &[ProcessModel],
    r: RequestIx,
    out: &mut Vec<TokenTiming>,
) {
    out.clear();
    let req = &data.requests[r as usize];
    let Some(pm) = models.get(req.process as usize) else {
        return;
    };
    out.reserve(req.token_step.len());
    for (pos, (&step_ix, &index)) in req.token_step.iter().zip(&req.token_index).enumerate() {
        let step = &data.steps[step_ix as usize];
        let mut t = TokenTiming {
            position: pos,
            index,
            step: step_ix,
            enter_ns: step.start_ns,
            exit_ns: step.end_ns,
            running_ns: step.duration_ns(),
            ..Default::default()
        };
        if pos == 0 {
            let from = req.engine_arrival_ns.unwrap_or(step.start_ns);
            t.gap_ns = step.end_ns.saturating_sub(from);
            t.scheduling_ns = step.start_ns.saturating_sub(from);
            out.push(t);
            continue;
        }
        let prev_ix = req.token_step[pos - 1];
        let prev = &data.steps[prev_ix as usize];
        t.gap_ns = step.end_ns.saturating_sub(prev.end_ns);
        t.scheduling_ns = step.start_ns.saturating_sub(prev.end_ns);
        if prev_ix != step_ix {
            attribute(data, pm, r, prev_ix, step_ix, &mut t);
        }
        out.push(t);
    }
}

/// Work a prefill slice added to its step, by the model (prompt tokens when
/// the model gives prefill no cost).
fn prefill_work(model: &StepModel, prefill: u32, context: u32) -> f64 {
    let w = model.per_prefill_token_ns * f64::from(prefill)
        + model.per_context_token_ns * f64::from(context);
    if w > 0.0 {
        w
    } else {
        f64::from(prefill)
    }
}

fn attribute(
    data: &TraceData,
    pm: &ProcessModel,
    victim: RequestIx,
    prev_ix: StepIx,
    step_ix: StepIx,
    t: &mut TokenTiming,
) {
    let Some(model) = pm.model else {
        return;
    };
    let step = &data.steps[step_ix as usize];
    // The engine's own start delayed the token, not anyone's work.
    if pm.in_warmup(step.end_ns) {
        return;
    }
    let slices = data.slices_of(step_ix);
    let prefill_context: u64 = slices
        .iter()
        .filter(|s| s.prefill_tokens > 0)
        .map(|s| u64::from(s.context_tokens))
        .sum();
    let decode_context = step.context_tokens.saturating_sub(prefill_context);
    let decode_only = model.predict(f64::from(step.decode_tokens), 0.0, decode_context as f64);
    t.expected_ns = decode_only + pm.pause_ns;
    t.excess_ns = (t.gap_ns as f64 - t.expected_ns).max(0.0);
    if t.excess_ns <= 0.0 {
        return;
    }
    let mut left = t.excess_ns;

    // Co-scheduled prefill: the step's overrun beyond a decode-only step.
    let overrun = (t.running_ns as f64 - decode_only).max(0.0).min(left);
    let culprits: Vec<(RequestIx, f64)> = slices
        .iter()
        .filter(|s| s.prefill_tokens > 0 && s.request != victim)
        .map(|s| {
            (
                s.request,
                prefill_work(&model, s.prefill_tokens, s.context_tokens),
            )
        })
        .collect();
    left -= share(overrun, &culprits, Cause::CoScheduledPrefill, &mut t.shares);

    // Scheduling delay: steps the request sat out between its two tokens.
    let waited = (t.scheduling_ns as f64 - pm.pause_ns).max(0.0).min(left);
    if waited > 0.0 && step_ix > prev_ix + 1 {
        let req = &data.requests[victim as usize];
        let preempted = req
            .preempted_at
            .iter()
            .any(|&p| p >= prev_ix && p < step_ix);
        let cause = if preempted {
            Cause::Preemption
        } else {
            Cause::Queued
        };
        let mut culprits: Vec<(RequestIx, f64)> = Vec::new();
        for between in prev_ix..step_ix {
            let sat_out = &data.steps[between as usize];
            if sat_out.process != step.process || pm.in_warmup(sat_out.end_ns) {
                continue;
            }
            for s in data.slices_of(between) {
                if s.prefill_tokens > 0 && s.request != victim {
                    culprits.push((
                        s.request,
                        prefill_work(&model, s.prefill_tokens, s.context_tokens),
                    ));
                }
            }
        }
        share(waited, &culprits, cause, &mut t.shares);
    }
}

/// Split `ns` among culprits by weight; returns what was handed out.
fn share(ns: f64, culprits: &[(RequestIx, f64)], cause: Cause, out: &mut Vec<Share>) -> f64 {
    let total: f64 = culprits.iter().map(|c| c.1).sum();
    if ns <= 0.0 || total <= 0.0 {
        return 0.0;
    }
    for &(culprit, w) in culprits {
        let part = ns * w / total;
        match out
            .iter_mut()
            .find(|s| s.culprit == culprit && s.cause == cause)
        {
            Some(s) => s.ns += part,
            None => out.push(Share {
                culprit,
                ns: part,
                cause,
            }),
        }
    }
    ns
}
