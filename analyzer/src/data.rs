//! The loaded trace: compact tables the analyses read.
//!
//! A trace is folded into these once, one segment at a time, so memory grows
//! with the number of steps and requests plus about 8 bytes per generated
//! token (its index and its step) — never with the decoded trace. Per-token
//! detail (ids, logprobs, top-K, text) is kept only for the requests asked for.
//!
//! All times are `CLOCK_MONOTONIC` nanoseconds of the host that recorded them;
//! processes of one host share that clock, which is how the frontend and the
//! engine core merge. Each process carries the anchor that turns its times into
//! unix nanoseconds for display.

use probe_core::event::{
    AdapterErrors, ClockAnchor, DropCounts, FinishReason, ProcessInfo, SamplingParams,
    SegmentsRemoved,
};
use std::path::PathBuf;

/// Index of a step in [`TraceData::steps`].
pub type StepIx = u32;
/// Index of a request in [`TraceData::requests`].
pub type RequestIx = u32;

/// One traced process.
#[derive(Debug, Clone, Default)]
pub struct Process {
    /// Its directory.
    pub dir: PathBuf,
    /// Directory name (host, pid, start time).
    pub name: String,
    /// Host name from the segment header.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Role: from the process info when the adapter gave one, else the header's.
    pub role: String,
    /// The anchor that converts this process's times to unix time (shared by
    /// every process of one host, so merged times stay consistent).
    pub anchor: ClockAnchor,
    /// What the adapter recorded about the process (the latest).
    pub info: Option<ProcessInfo>,
    /// Segments read.
    pub segments: usize,
    /// Final loss counters.
    pub drops: DropCounts,
    /// Segments deleted by the disk budget.
    pub removed: Option<SegmentsRemoved>,
    /// Exceptions the adapter caught in its hooks (the latest, cumulative).
    pub adapter_errors: Option<AdapterErrors>,
    /// Steps recorded.
    pub steps: u64,
    /// Tokens sampled in those steps.
    pub tokens: u64,
    /// Tokens emitted to clients (frontend).
    pub emitted: u64,
}

impl Process {
    /// Unix nanoseconds of a monotonic timestamp of this process.
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        self.anchor.to_unix(mono_ns)
    }
}

/// One engine iteration.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepRow {
    /// Index into [`TraceData::processes`].
    pub process: u32,
    /// The engine's step number.
    pub step_id: u64,
    /// When the batch was launched.
    pub start_ns: u64,
    /// When its output was processed.
    pub end_ns: u64,
    /// Requests scheduled.
    pub requests: u32,
    /// Prompt tokens computed (chunked prefill counts per chunk).
    pub prefill_tokens: u32,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: u32,
    /// Decode tokens computed.
    pub decode_tokens: u32,
    /// Tokens already in the KV cache of the scheduled requests before the step
    /// (what attention reads).
    pub context_tokens: u64,
    /// Waiting queue length.
    pub waiting: u32,
    /// Running requests.
    pub running: u32,
    /// KV-cache usage 0..1 when the engine gives it.
    pub kv_usage: Option<f32>,
    /// Requests preempted in this step.
    pub preempted: u32,
    /// Requests finished in this step.
    pub finished: u32,
    /// Tokens sampled.
    pub sampled: u32,
}

impl StepRow {
    /// Duration in nanoseconds.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// One scheduled request's share of one step (step × request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slice {
    /// The step.
    pub step: StepIx,
    /// The request.
    pub request: RequestIx,
    /// Prompt tokens computed for it in this step.
    pub prefill_tokens: u32,
    /// Its prompt tokens found in the prefix cache.
    pub cached_tokens: u32,
    /// Decode tokens computed for it.
    pub decode_tokens: u32,
    /// Its tokens already in the KV cache before the step.
    pub context_tokens: u32,
}

/// Per-token detail kept for the requests a caller asked about.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenDetail {
    /// Sampled token ids (None: not captured).
    pub ids: Vec<Option<u32>>,
    /// Sampled token's logprob.
    pub logprobs: Vec<Option<f32>>,
    /// Sampled token's rank (1-based), when the engine gives it.
    pub ranks: Vec<Option<u32>>,
    /// Start of each token's candidates in `top_ids` / `top_logprobs`
    /// (`len + 1` entries).
    pub top_offsets: Vec<u32>,
    /// Candidate ids, best first, token after token.
    pub top_ids: Vec<u32>,
    /// Candidate logprobs.
    pub top_logprobs: Vec<f32>,
    /// Text, when the capture level kept it.
    pub texts: Vec<Option<String>>,
}

impl TokenDetail {
    /// Candidates of token `i` (position in the request's token list).
    pub fn top(&self, i: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let from = self.top_offsets.get(i).copied().unwrap_or(0) as usize;
        let to = self.top_offsets.get(i + 1).copied().unwrap_or(0) as usize;
        let to = to.max(from);
        self.top_ids
            .get(from..to)
            .unwrap_or(&[])
            .iter()
            .copied()
            .zip(
                self.top_logprobs
                    .get(from..to)
                    .unwrap_or(&[])
                    .iter()
                    .copied(),
            )
    }
}

/// What the per-token checks found while loading (kept for every request).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenChecks {
    /// Special tokens in the answer (a final EOS excluded): (token index, id).
    /// The first few only; `special_count` has them all.
    pub special: Vec<(u32, u32)>,
    /// How many special tokens the answer holds.
    pub special_count: u32,
    /// Tokens whose sampled id is not among the recorded candidates.
    pub outside_top_k: u32,
    /// The first of those.
    pub first_outside_top_k: Option<u32>,
    /// Tokens that had a candidate list (so the check could run).
    pub with_top_k: u32,
    /// A repetition loop: (index where it was detected, period in tokens).
    pub repetition: Option<(u32, u32)>,
    /// The last sampled id (to tell a final EOS from one inside the answer).
    pub last_id: Option<u32>,
    /// Index of the last sampled token.
    pub last_index: Option<u32>,
    /// Digest of the sampled ids and their logprobs' bits, token after
    /// token: requests that got the same prompt and greedy sampling and
    /// produced the same answer have the same one (see `variance`).
    pub output_digest: u64,
    /// Tokens folded into `output_digest`.
    pub digested: u32,
    /// The longest stretch of tokens whose most likely candidate stayed
    /// below the low-confidence probability.
    pub low_confidence: Option<LowStretch>,
    /// The stretch being counted.
    pub(crate) low_run: Option<LowStretch>,
    /// Tokens whose logprob or candidates' logprobs are NaN: the model's
    /// output was corrupt (vLLM warns of positions past the trained context).
    pub nan_logprobs: u32,
    /// The first of those.
    pub first_nan: Option<u32>,
}

/// A stretch of consecutive tokens whose top-1 probability stayed below
/// [`crate::load::LowConfidence::below`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LowStretch {
    /// Index of its first token.
    pub first: u32,
    /// Its length in tokens.
    pub tokens: u32,
    /// The lowest top-1 probability in it.
    pub lowest: f32,
    /// The sum of its top-1 probabilities.
    pub sum: f32,
}

impl LowStretch {
    /// The mean top-1 probability over the stretch.
    pub fn mean(&self) -> f32 {
        if self.tokens == 0 {
            0.0
        } else {
            self.sum / self.tokens as f32
        }
    }
}

/// One request as the engine saw it, joined with what its frontend saw.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Engine process (index into [`TraceData::processes`]).
    pub process: u32,
    /// The request's key inside that process.
    pub key: u32,
    /// The engine's internal request id.
    pub internal_id: String,
    /// The client-visible id, when the engine or the frontend recorded one.
    pub external_id: Option<String>,
    /// `ID#k` when several requests share the client-visible id (the
    /// sequences of one `n > 1` request: `k` is the choice's index).
    pub sequence_id: Option<String>,
    /// The W3C trace id from a `traceparent` header.
    pub trace_id: Option<[u8; 16]>,
    /// The caller's span in that trace (the header's parent id).
    pub parent_span_id: Option<[u8; 8]>,
    /// Arrival at the engine.
    pub engine_arrival_ns: Option<u64>,
    /// Arrival at the frontend.
    pub frontend_arrival_ns: Option<u64>,
    /// Prompt length.
    pub prompt_tokens: u32,
    /// Sampling parameters.
    pub params: SamplingParams,
    /// The prompt's identity (FNV-1a of its token ids; format 2 on).
    pub prompt_hash: Option<u64>,
    /// Top-K the trace asked for on its own (`TOKTRACE_TOPK_SAMPLE`): the
    /// client did not ask for these candidates.
    pub trace_top_k: Option<u32>,
    /// When the engine let it go.
    pub finish_ns: Option<u64>,
    /// Why.
    pub finish_reason: Option<FinishReason>,
    /// Output tokens the engine reported at finish.
    pub reported_output_tokens: Option<u32>,
    /// Index of each recorded token (0-based position in the answer).
    pub token_index: Vec<u32>,
    /// Step of each recorded token.
    pub token_step: Vec<StepIx>,
    /// When each token was handed to the client (frontend), 0 when unknown;
    /// empty when no frontend recorded the request.
    pub emit_ns: Vec<u64>,
    /// Steps in which it was preempted.
    pub preempted_at: Vec<StepIx>,
    /// First step it was scheduled in.
    pub first_scheduled: Option<StepIx>,
    /// Prompt tokens computed (recomputation after preemption included).
    pub prefilled_tokens: u64,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: u64,
    /// What the token checks found.
    pub checks: TokenChecks,
    /// Per-token detail, when asked for.
    pub detail: Option<TokenDetail>,
}

impl Request {
    /// The id to show: the client-visible one when known, told apart from
    /// its siblings' (`ID#k`) when it is shared.
    pub fn display_id(&self) -> &str {
        self.sequence_id
            .as_deref()
            .or(self.external_id.as_deref())
            .unwrap_or(&self.internal_id)
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> Option<String> {
        self.trace_id
            .map(|t| t.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Arrival as the client saw it: at the frontend when traced, else the engine.
    pub fn arrival_ns(&self) -> Option<u64> {
        self.frontend_arrival_ns.or(self.engine_arrival_ns)
    }

    /// Emit time of the token at position `i`, when known.
    pub fn emit(&self, i: usize) -> Option<u64> {
        self.emit_ns.get(i).copied().filter(|&t| t != 0)
    }
}

/// A loaded trace.
#[derive(Debug, Clone, Default)]
pub struct TraceData {
    /// Every traced process, in directory order.
    pub processes: Vec<Process>,
    /// Every step of every engine process, by process then time.
    pub steps: Vec<StepRow>,
    /// Step × request rows: always those with prefill work; decode rows too
    /// when the load asked for them. Ordered by step.
    pub slices: Vec<Slice>,
    /// `slices[slice_start[s]..slice_start[s + 1]]` are the slices of step s.
    pub slice_start: Vec<u32>,
    /// Engine requests (frontend records joined in).
    pub requests: Vec<Request>,
    /// Frontend requests no engine process recorded.
    pub unmatched_frontend_requests: u64,
    /// Read problems worked around (torn tails, corrupt frames, …), one line each.
    pub warnings: Vec<String>,
    /// The thresholds the load's `low_confidence` check used.
    pub low_confidence: crate::load::LowConfidence,
}

impl TraceData {
    /// Slices of one step.
    pub fn slices_of(&self, step: StepIx) -> &[Slice] {
        let at = |s: usize| self.slice_start.get(s).map_or(0, |&v| v as usize);
        let (from, to) = (at(step as usize), at(step as usize + 1));
        self.slices.get(from..to).unwrap_or(&[])
    }

    /// Order the slices by step and index them (after loading).
    pub fn index_slices(&mut self) {
        self.slices.sort_by_key(|s| s.step);
        self.slice_start = Vec::with_capacity(self.steps.len() + 1);
        let mut i = 0usize;
        for step in 0..=self.steps.len() as StepIx {
            while i < self.slices.len() && self.slices[i].step < step {
                i += 1;
            }
            self.slice_start.push(i as u32);
        }
    }

    /// Total generated tokens recorded.
    pub fn tokens(&self) -> u64 {
        self.requests
            .iter()
            .map(|r| r.token_step.len() as u64)
            .sum()
    }
}
