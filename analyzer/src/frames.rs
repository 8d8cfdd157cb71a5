//! The analysis as polars DataFrames: what `toktrace.load()` hands to Python
//! and what the exports write. Column names carry their units, as the JSON does.
//!
//! - `steps`: one row per engine iteration;
//! - `slices`: step × request (what each scheduled request did in a step);
//! - `tokens`: one row per generated token, with its timing breakdown and,
//!   when the trace captured them, id, logprob, rank and top-K (list columns);
//! - `requests`: one row per request with its metrics (the `requests --json`
//!   fields);
//! - `interference`: one row per (slow token, culprit): who delayed which
//!   token, how and by how much.
//!
//! A [`Selection`] narrows every frame to a time window and/or some requests.

use crate::analysis::Analysis;
use crate::data::{RequestIx, StepIx};
use crate::select::Selection;
use polars::prelude::*;

/// The frames.
pub struct Frames {
    /// Engine iterations.
    pub steps: DataFrame,
    /// Step × request.
    pub slices: DataFrame,
    /// Generated tokens.
    pub tokens: DataFrame,
    /// Requests with metrics.
    pub requests: DataFrame,
    /// Slow token × culprit.
    pub interference: DataFrame,
}

/// The frames' names, in the order [`Frames::named`] gives them (also the
/// fleet dataset's table names).
pub const NAMES: [&str; 5] = ["steps", "slices", "tokens", "requests", "interference"];

impl Frames {
    /// Name and frame, in a fixed order.
    pub fn named(&mut self) -> [(&'static str, &mut DataFrame); 5] {
        let [steps, slices, tokens, requests, interference] = NAMES;
        [
            (steps, &mut self.steps),
            (slices, &mut self.slices),
            (tokens, &mut self.tokens),
            (requests, &mut self.requests),
            (interference, &mut self.interference),
        ]
    }
}

fn col<T, V>(name: &str, values: V) -> Column
where
    Series: NamedFrom<V, T>,
    T: ?Sized,
{
    Series::new(name.into(), values).into_column()
}

/// A column of one value per row: `column_of!(rows, "name", |row| value)`.
macro_rules! column_of {
    ($rows:expr, $name:literal, |$x:ident| $e:expr) => {
        col($name, $rows.iter().map(|$x| $e).collect::<Vec<_>>())
    };
}

/// Build the frames of what `sel` covers. `slices` holds decode rows only
/// when the trace was loaded with `decode_slices`; `tokens` has ids and top-K
/// only for requests loaded with detail.
pub fn frames(a: &Analysis, sel: &Selection) -> PolarsResult<Frames> {
    let steps_in: Vec<StepIx> = (0..a.data.steps.len() as StepIx)
        .filter(|&s| sel.step(a, s))
        .collect();
    let requests_in: Vec<RequestIx> = (0..a.data.requests.len() as RequestIx)
        .filter(|&r| sel.request(a, r))
        .collect();
    Ok(Frames {
        steps: steps(a, &steps_in)?,
        slices: slices(a, sel, &steps_in)?,
        tokens: tokens(a, sel, &requests_in)?,
        requests: requests(a, &requests_in)?,
        interference: interference(a, sel, &requests_in)?,
    })
}

fn steps(a: &Analysis, selected: &[StepIx]) -> PolarsResult<DataFrame> {
    let d = &a.data;
    let s: Vec<&crate::data::StepRow> = selected.iter().map(|&i| &d.steps[i as usize]).collect();
    let process = |x: &crate::data::StepRow| &d.processes[x.process as usize];
    DataFrame::new_infer_height(vec![
        column_of!(s, "process", |x| process(x).name.as_str()),
        column_of!(s, "step", |x| x.step_id),
        column_of!(s, "start_unix_ns", |x| process(x).unix_ns(x.start_ns)),
        column_of!(s, "end_unix_ns", |x| process(x).unix_ns(x.end_ns)),
        column_of!(s, "duration_ms", |x| x.duration_ns() as f64 / 1e6),
        column_of!(s, "requests", |x| x.requests),
        column_of!(s, "prefill_tokens", |x| x.prefill_tokens),
        column_of!(s, "cached_tokens", |x| x.cached_tokens),
        column_of!(s, "decode_tokens", |x| x.decode_tokens),
        column_of!(s, "context_tokens", |x| x.context_tokens),
        column_of!(s, "waiting", |x| x.waiting),
        column_of!(s, "running", |x| x.running),
        column_of!(s, "kv_usage", |x| x.kv_usage),
        column_of!(s, "preempted", |x| x.preempted),
        column_of!(s, "finished", |x| x.finished),
        column_of!(s, "sampled_tokens", |x| x.sampled),
    ])
}

fn slices(a: &Analysis, sel: &Selection, steps: &[StepIx]) -> PolarsResult<DataFrame> {
    let d = &a.data;
    // With steps chosen, a step's slices come whole (see Selection::steps).
    let named = |r: RequestIx| {
        sel.steps.is_some() || sel.requests.as_ref().is_none_or(|ids| ids.contains(&r))
    };
    let s: Vec<&crate::data::Slice> = steps
        .iter()
        .flat_map(|&step| d.slices_of(step))
        .filter(|x| named(x.request))
        .collect();
    let step = |x: &crate::data::Slice| &d.steps[x.step as usize];
    DataFrame::new_infer_height(vec![
        column_of!(s, "step", |x| step(x).step_id),
        column_of!(s, "process", |x| d.processes[step(x).process as usize]
            .name
            .as_str()),
        column_of!(s, "request_id", |x| d.requests[x.request as usize]
            .display_id()),
        column_of!(s, "prefill_tokens", |x| x.prefill_tokens),
        column_of!(s, "cached_tokens", |x| x.cached_tokens),
        column_of!(s, "decode_tokens", |x| x.decode_tokens),
        column_of!(s, "context_tokens", |x| x.context_tokens),
    ])
}

fn tokens(a: &Analysis, sel: &Selection, selected: &[RequestIx]) -> PolarsResult<DataFrame> {
    let mut request_id = Vec::new();
    let mut index = Vec::new();
    let mut step = Vec::new();
    let mut enter = Vec::new();
    let mut exit = Vec::new();
    let mut emit = Vec::new();
    let mut gap = Vec::new();
    let mut excess = Vec::new();
    let mut attributed = Vec::new();
    let mut token_id = Vec::new();
    let mut logprob = Vec::new();
    let mut rank = Vec::new();
    let mut text: Vec<Option<String>> = Vec::new();
    let mut top_ids: Vec<Series> = Vec::new();
    let mut top_logprobs: Vec<Series> = Vec::new();
    for &r in selected {
        let req = &a.data.requests[r as usize];
        let p = &a.data.processes[req.process as usize];
        let detail = req.detail.as_ref();
        for t in a.timings(r) {
            if !sel.contains(p.unix_ns(t.exit_ns)) {
                continue;
            }
            let i = t.position;
            request_id.push(req.display_id().to_string());
            index.push(t.index);
            step.push(a.data.steps[t.step as usize].step_id);
            enter.push(p.unix_ns(t.enter_ns));
            exit.push(p.unix_ns(t.exit_ns));
            emit.push(req.emit(i).map(|e| p.unix_ns(e)));
            gap.push(t.gap_ns as f64 / 1e6);
            excess.push(t.excess_ns / 1e6);
            attributed.push(t.attributed_ns() / 1e6);
            token_id.push(detail.and_then(|d| d.ids.get(i).copied().flatten()));
            logprob.push(detail.and_then(|d| d.logprobs.get(i).copied().flatten()));
            rank.push(detail.and_then(|d| d.ranks.get(i).copied().flatten()));
            text.push(detail.and_then(|d| d.texts.get(i).cloned().flatten()));
            let (ids, lps): (Vec<u32>, Vec<f32>) =
                detail.map(|d| d.top(i).unzip()).unwrap_or_default();
            top_ids.push(Series::new("".into(), ids));
            top_logprobs.push(Series::new("".into(), lps));
        }
    }
    DataFrame::new_infer_height(vec![
        col("request_id", request_id),
        col("index", index),
        col("step", step),
        col("enter_unix_ns", enter),
        col("exit_unix_ns", exit),
        col("emit_unix_ns", emit),
        col("gap_ms", gap),
        col("excess_ms", excess),
        col("interference_ms", attributed),
        col("token_id", token_id),
        col("logprob", logprob),
        col("rank", rank),
        col("text", text),
        col("top_ids", top_ids),
        col("top_logprobs", top_logprobs),
    ])
}

fn requests(a: &Analysis, selected: &[RequestIx]) -> PolarsResult<DataFrame> {
    let rows: Vec<_> = selected.iter().map(|&r| a.request_row(r)).collect();
    DataFrame::new_infer_height(vec![
        column_of!(rows, "request_id", |r| r.request_id.clone()),
        column_of!(rows, "internal_id", |r| r.internal_id.clone()),
        column_of!(rows, "trace_id", |r| r.trace_id.clone()),
        column_of!(rows, "arrival_unix_ns", |r| r.arrival_unix_ns),
        column_of!(rows, "prompt_tokens", |r| r.prompt_tokens),
        column_of!(rows, "cached_tokens", |r| r.cached_tokens),
        column_of!(rows, "output_tokens", |r| r.output_tokens as u64),
        column_of!(rows, "finish_reason", |r| r.finish_reason.clone()),
        column_of!(rows, "ttft_ms", |r| r.ttft_ms),
        column_of!(rows, "ttft_emit_ms", |r| r.ttft_emit_ms),
        column_of!(rows, "tpot_ms", |r| r.tpot_ms),
        column_of!(rows, "itl_p50_ms", |r| r.itl_p50_ms),
        column_of!(rows, "itl_p90_ms", |r| r.itl_p90_ms),
        column_of!(rows, "itl_p99_ms", |r| r.itl_p99_ms),
        column_of!(rows, "max_itl_ms", |r| r.max_itl_ms),
        column_of!(rows, "max_itl_index", |r| r.max_itl_index),
        column_of!(rows, "emit_itl_p50_ms", |r| r.emit_itl_p50_ms),
        column_of!(rows, "emit_itl_p99_ms", |r| r.emit_itl_p99_ms),
        column_of!(rows, "queue_ms", |r| r.queue_ms),
        column_of!(rows, "prefill_ms", |r| r.prefill_ms),
        column_of!(rows, "decode_ms", |r| r.decode_ms),
        column_of!(rows, "e2e_ms", |r| r.e2e_ms),
        column_of!(rows, "fluidity_index", |r| r.fluidity_index),
        column_of!(rows, "stalls", |r| r.stalls),
        column_of!(rows, "preemptions", |r| r.preemptions as u64),
        column_of!(rows, "interference_ms", |r| r.interference_ms),
        column_of!(rows, "flags", |r| r.flags.join(",")),
    ])
}

fn interference(a: &Analysis, sel: &Selection, selected: &[RequestIx]) -> PolarsResult<DataFrame> {
    let mut request_id = Vec::new();
    let mut index = Vec::new();
    let mut step = Vec::new();
    let mut exit = Vec::new();
    let mut gap = Vec::new();
    let mut excess = Vec::new();
    let mut culprit = Vec::new();
    let mut cause = Vec::new();
    let mut delay = Vec::new();
    for &r in selected {
        let req = &a.data.requests[r as usize];
        let p = &a.data.processes[req.process as usize];
        for t in a.timings(r) {
            if t.shares.is_empty() || !sel.contains(p.unix_ns(t.exit_ns)) {
                continue;
            }
            for s in &t.shares {
                request_id.push(req.display_id().to_string());
                index.push(t.index);
                step.push(a.data.steps[t.step as usize].step_id);
                exit.push(p.unix_ns(t.exit_ns));
                gap.push(t.gap_ns as f64 / 1e6);
                excess.push(t.excess_ns / 1e6);
                culprit.push(a.data.requests[s.culprit as usize].display_id().to_string());
                cause.push(s.cause.name());
                delay.push(s.ns / 1e6);
            }
        }
    }
    DataFrame::new_infer_height(vec![
        col("request_id", request_id),
        col("index", index),
        col("step", step),
        col("exit_unix_ns", exit),
        col("gap_ms", gap),
        col("excess_ms", excess),
        col("culprit_request_id", culprit),
        col("cause", cause),
        col("delay_ms", delay),
    ])
}
