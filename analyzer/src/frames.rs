//! The analysis as polars DataFrames: what `toktrace.load()` hands to Python
//! and what the exports write. Column names carry their units, as the JSON does.
//!
//! - `steps`: one row per engine iteration;
//! - `slices`: step × request (what each scheduled request did in a step);
//! - `tokens`: one row per generated token, with its timing breakdown and,
//!   when the trace captured them, id, logprob, rank and top-K (list columns);
//! - `requests`: one row per request with its metrics (the `requests --json`
//!   fields).

use crate::analysis::Analysis;
use crate::data::RequestIx;
use polars::prelude::*;

/// The four frames.
pub struct Frames {
    /// Engine iterations.
    pub steps: DataFrame,
    /// Step × request.
    pub slices: DataFrame,
    /// Generated tokens.
    pub tokens: DataFrame,
    /// Requests with metrics.
    pub requests: DataFrame,
}

impl Frames {
    /// Name and frame, in a fixed order.
    pub fn named(&mut self) -> [(&'static str, &mut DataFrame); 4] {
        [
            ("steps", &mut self.steps),
            ("slices", &mut self.slices),
            ("tokens", &mut self.tokens),
            ("requests", &mut self.requests),
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

/// Build the frames. `slices` holds decode rows only when the trace was
/// loaded with `decode_slices`; `tokens` has ids and top-K only for requests
/// loaded with detail.
pub fn frames(a: &Analysis) -> PolarsResult<Frames> {
    Ok(Frames {
        steps: steps(a)?,
        slices: slices(a)?,
        tokens: tokens(a)?,
        requests: requests(a)?,
    })
}

fn steps(a: &Analysis) -> PolarsResult<DataFrame> {
    let d = &a.data;
    let s = &d.steps;
    let unix = |t: u64, p: u32| d.processes[p as usize].unix_ns(t);
    DataFrame::new_infer_height(vec![
        col(
            "process",
            s.iter()
                .map(|x| d.processes[x.process as usize].name.as_str())
                .collect::<Vec<_>>(),
        ),
        col("step", s.iter().map(|x| x.step_id).collect::<Vec<_>>()),
        col(
            "start_unix_ns",
            s.iter()
                .map(|x| unix(x.start_ns, x.process))
                .collect::<Vec<_>>(),
        ),
        col(
            "end_unix_ns",
            s.iter()
                .map(|x| unix(x.end_ns, x.process))
                .collect::<Vec<_>>(),
        ),
        col(
            "duration_ms",
            s.iter()
                .map(|x| x.duration_ns() as f64 / 1e6)
                .collect::<Vec<_>>(),
        ),
        col("requests", s.iter().map(|x| x.requests).collect::<Vec<_>>()),
        col(
            "prefill_tokens",
            s.iter().map(|x| x.prefill_tokens).collect::<Vec<_>>(),
        ),
        col(
            "cached_tokens",
            s.iter().map(|x| x.cached_tokens).collect::<Vec<_>>(),
        ),
        col(
            "decode_tokens",
            s.iter().map(|x| x.decode_tokens).collect::<Vec<_>>(),
        ),
        col(
            "context_tokens",
            s.iter().map(|x| x.context_tokens).collect::<Vec<_>>(),
        ),
        col("waiting", s.iter().map(|x| x.waiting).collect::<Vec<_>>()),
        col("running", s.iter().map(|x| x.running).collect::<Vec<_>>()),
        col("kv_usage", s.iter().map(|x| x.kv_usage).collect::<Vec<_>>()),
        col(
            "preempted",
            s.iter().map(|x| x.preempted).collect::<Vec<_>>(),
        ),
        col("finished", s.iter().map(|x| x.finished).collect::<Vec<_>>()),
        col(
            "sampled_tokens",
            s.iter().map(|x| x.sampled).collect::<Vec<_>>(),
        ),
    ])
}

fn slices(a: &Analysis) -> PolarsResult<DataFrame> {
    let d = &a.data;
    let s = &d.slices;
    let id = |r: RequestIx| d.requests[r as usize].display_id();
    DataFrame::new_infer_height(vec![
        col(
            "step",
            s.iter()
                .map(|x| d.steps[x.step as usize].step_id)
                .collect::<Vec<_>>(),
        ),
        col(
            "process",
            s.iter()
                .map(|x| {
                    d.processes[d.steps[x.step as usize].process as usize]
                        .name
                        .as_str()
                })
                .collect::<Vec<_>>(),
        ),
        col(
            "request_id",
            s.iter().map(|x| id(x.request)).collect::<Vec<_>>(),
        ),
        col(
            "prefill_tokens",
            s.iter().map(|x| x.prefill_tokens).collect::<Vec<_>>(),
        ),
        col(
            "cached_tokens",
            s.iter().map(|x| x.cached_tokens).collect::<Vec<_>>(),
        ),
        col(
            "decode_tokens",
            s.iter().map(|x| x.decode_tokens).collect::<Vec<_>>(),
        ),
        col(
            "context_tokens",
            s.iter().map(|x| x.context_tokens).collect::<Vec<_>>(),
        ),
    ])
}

fn tokens(a: &Analysis) -> PolarsResult<DataFrame> {
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
    for r in 0..a.data.requests.len() as RequestIx {
        let req = &a.data.requests[r as usize];
        let p = &a.data.processes[req.process as usize];
        let detail = req.detail.as_ref();
        for t in a.timings(r) {
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

fn requests(a: &Analysis) -> PolarsResult<DataFrame> {
    let rows: Vec<_> = (0..a.data.requests.len() as RequestIx)
        .map(|r| a.request_row(r))
        .collect();
    macro_rules! column {
        ($name:literal, $field:ident) => {
            col(
                $name,
                rows.iter().map(|r| r.$field.clone()).collect::<Vec<_>>(),
            )
        };
    }
    DataFrame::new_infer_height(vec![
        column!("request_id", request_id),
        column!("internal_id", internal_id),
        column!("trace_id", trace_id),
        column!("arrival_unix_ns", arrival_unix_ns),
        column!("prompt_tokens", prompt_tokens),
        column!("cached_tokens", cached_tokens),
        col(
            "output_tokens",
            rows.iter()
                .map(|r| r.output_tokens as u64)
                .collect::<Vec<_>>(),
        ),
        column!("finish_reason", finish_reason),
        column!("ttft_ms", ttft_ms),
        column!("ttft_emit_ms", ttft_emit_ms),
        column!("tpot_ms", tpot_ms),
        column!("itl_p50_ms", itl_p50_ms),
        column!("itl_p90_ms", itl_p90_ms),
        column!("itl_p99_ms", itl_p99_ms),
        column!("max_itl_ms", max_itl_ms),
        column!("max_itl_index", max_itl_index),
        column!("emit_itl_p50_ms", emit_itl_p50_ms),
        column!("emit_itl_p99_ms", emit_itl_p99_ms),
        column!("queue_ms", queue_ms),
        column!("prefill_ms", prefill_ms),
        column!("decode_ms", decode_ms),
        column!("e2e_ms", e2e_ms),
        column!("fluidity_index", fluidity_index),
        column!("stalls", stalls),
        col(
            "preemptions",
            rows.iter()
                .map(|r| r.preemptions as u64)
                .collect::<Vec<_>>(),
        ),
        column!("interference_ms", interference_ms),
        col(
            "flags",
            rows.iter().map(|r| r.flags.join(",")).collect::<Vec<_>>(),
        ),
    ])
}
