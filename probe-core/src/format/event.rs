//! The event model: every record a trace segment can hold.
//!
//! One [`Record`] is one frame on disk. A segment opens with a [`SegmentHeader`],
//! then repeats the [`ProcessInfo`], the running [`DropCounts`] and the
//! [`RequestArrival`] of every request still in flight, so a segment read on its
//! own (older ones may have been deleted by the disk budget) orphans nothing.
//!
//! Requests are named inside a process by a [`ReqKey`], a small integer the
//! binding interns once per request; the arrival record maps it to the engine's
//! internal id, the client-visible external id and the W3C trace id. Keys are
//! per process: readers join processes by the id strings, never by keys.
//!
//! Timestamps are `CLOCK_MONOTONIC` nanoseconds; the segment header carries the
//! anchor pair that converts them to unix nanoseconds.
//!
//! Compatibility: records are bincode-encoded with serde, which is positional.
//! Adding a variant at the end of [`Record`] is readable by older readers (they
//! report and skip it); any other change bumps [`crate::FORMAT_VERSION`].

use crate::columns::{F32Column, U32Column};
use serde::{Deserialize, Serialize};

/// A request's key within one traced process.
pub type ReqKey = u32;

/// One frame's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// First record of every segment.
    Header(SegmentHeader),
    /// What the adapter learned about the process; repeated in later segments.
    Process(ProcessInfo),
    /// A request entered the engine (or the frontend).
    Arrival(RequestArrival),
    /// One engine iteration with its batch and every token sampled in it.
    Step(Step),
    /// A request left the engine.
    Finish(RequestFinish),
    /// Tokens handed to the client stream by the frontend.
    Emit(EmitBatch),
    /// Cumulative loss counters, written as soon as the drain sees them move.
    Drops(DropCounts),
    /// Older segments deleted to honour the disk budget (cumulative).
    SegmentsRemoved(SegmentsRemoved),
    /// Exceptions the adapter caught in its hooks, by hook (cumulative).
    AdapterErrors(AdapterErrors),
}

impl Record {
    /// Number of generated tokens the record carries (for loss accounting).
    pub fn token_count(&self) -> u64 {
        match self {
            Record::Step(s) => s.tokens.len() as u64,
            Record::Emit(e) => e.emits.iter().map(|e| u64::from(e.count)).sum(),
            _ => 0,
        }
    }

    /// Short name of the record kind, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Header(_) => "header",
            Record::Process(_) => "process",
            Record::Arrival(_) => "arrival",
            Record::Step(_) => "step",
            Record::Finish(_) => "finish",
            Record::Emit(_) => "emit",
            Record::Drops(_) => "drops",
            Record::SegmentsRemoved(_) => "segments_removed",
            Record::AdapterErrors(_) => "adapter_errors",
        }
    }

    /// The earliest and latest monotonic times the record speaks of (None for
    /// records outside time: header, process info, counters). An index keyed
    /// on these can find every record of a time window.
    pub fn time_span(&self) -> Option<(u64, u64)> {
        match self {
            Record::Arrival(a) => Some((a.arrival_ns, a.arrival_ns)),
            Record::Step(s) => Some((s.start_ns.min(s.end_ns), s.end_ns.max(s.start_ns))),
            Record::Finish(f) => Some((f.time_ns, f.time_ns)),
            Record::Emit(e) => {
                let times = e.emits.iter().map(|e| e.time_ns);
                Some((times.clone().min()?, times.max()?))
            }
            Record::Header(_)
            | Record::Process(_)
            | Record::Drops(_)
            | Record::SegmentsRemoved(_)
            | Record::AdapterErrors(_) => None,
        }
    }
}

/// The pair of clock readings that converts monotonic to unix time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClockAnchor {
    /// `CLOCK_MONOTONIC` in nanoseconds.
    pub mono_ns: u64,
    /// Unix time in nanoseconds taken at the same instant.
    pub unix_ns: u64,
}

impl ClockAnchor {
    /// Convert a monotonic timestamp of this process to unix nanoseconds.
    pub fn to_unix(&self, mono_ns: u64) -> u64 {
        (i128::from(self.unix_ns) + i128::from(mono_ns) - i128::from(self.mono_ns))
            .clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// First record of every segment: who wrote it and how to read its clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// Version of the probe that wrote the segment (crate version).
    pub probe_version: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Role of the process as far as the probe knows at start (e.g. "engine-core",
    /// "frontend", "main"); [`ProcessInfo::role`] refines it.
    pub role: String,
    /// Unix time the writer started: with host and pid it names the run.
    pub process_start_unix_ns: u64,
    /// 0 for the first segment of the process, then +1 per rotation.
    pub segment_index: u32,
    /// Clock anchor read when the segment was opened.
    pub anchor: ClockAnchor,
}

/// How much the probe is allowed to keep (data-security level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CaptureLevel {
    /// Timings, counts and batch composition only.
    Metadata,
    /// Plus token ids and top-K logprobs.
    #[default]
    Tokens,
    /// Plus decoded text where the engine already has it.
    Text,
}

impl CaptureLevel {
    /// Parse the `TOKTRACE_CAPTURE` spelling.
    pub fn parse(s: &str) -> Option<CaptureLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "metadata" => Some(CaptureLevel::Metadata),
            "tokens" => Some(CaptureLevel::Tokens),
            "text" => Some(CaptureLevel::Text),
            _ => None,
        }
    }

    /// The `TOKTRACE_CAPTURE` spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            CaptureLevel::Metadata => "metadata",
            CaptureLevel::Tokens => "tokens",
            CaptureLevel::Text => "text",
        }
    }
}

/// The tokenizer's special token ids, so readers need no tokenizer to spot them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SpecialTokens {
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence ids (some models have several).
    pub eos: Vec<u32>,
    /// Padding id.
    pub pad: Option<u32>,
    /// Every special id the tokenizer declares, with its text.
    pub all: Vec<(u32, String)>,
}

impl SpecialTokens {
    /// Every special id: those listed, BOS, EOS and pad (an id may repeat).
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.all
            .iter()
            .map(|(id, _)| *id)
            .chain(self.bos)
            .chain(self.pad)
            .chain(self.eos.iter().copied())
    }
}

/// What the adapter knows of the process; written once known, repeated per segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProcessInfo {
    /// "vllm", "sglang", "tensorrt_llm", or what a custom integration says.
    pub engine: String,
    /// The engine's version string.
    pub engine_version: String,
    /// Model name as served.
    pub model_name: Option<String>,
    /// Local path of the model (where its tokenizer.json lives), when known.
    pub model_path: Option<String>,
    /// Special token ids.
    pub special_tokens: SpecialTokens,
    /// Capture level in force.
    pub capture: CaptureLevel,
    /// Cap on stored top-K candidates.
    pub top_k_cap: u32,
    /// Role of the process: "engine-core", "frontend", "scheduler", "worker", …
    pub role: String,
    /// Rank (data/tensor parallel) when the engine has one.
    pub rank: Option<u32>,
    /// Anything else worth keeping (engine config knobs), as key/value text.
    pub extra: Vec<(String, String)>,
}

/// Sampling parameters of a request; a field the engine does not give is `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SamplingParams {
    /// Temperature.
    pub temperature: Option<f32>,
    /// Nucleus threshold.
    pub top_p: Option<f32>,
    /// Top-k cut (engines use -1 or 0 for "off"; stored as given).
    pub top_k: Option<i32>,
    /// Maximum new tokens.
    pub max_tokens: Option<u32>,
    /// Number of logprobs the client asked for.
    pub logprobs: Option<u32>,
    /// Seed.
    pub seed: Option<u64>,
}

/// A request entered this process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RequestArrival {
    /// Key used by the other records of this process.
    pub req: ReqKey,
    /// Arrival time (monotonic ns).
    pub arrival_ns: u64,
    /// The id the engine uses internally.
    pub internal_id: String,
    /// The id the client sees, when it differs or is known.
    pub external_id: Option<String>,
    /// W3C trace id (16 bytes) from a `traceparent` header.
    pub trace_id: Option<[u8; 16]>,
    /// W3C parent span id (8 bytes).
    pub parent_span_id: Option<[u8; 8]>,
    /// Prompt length in tokens.
    pub prompt_tokens: u32,
    /// Sampling parameters.
    pub params: SamplingParams,
    /// The prompt's identity: FNV-1a 64 of its token ids (each as u32 little
    /// endian), so that requests with the same prompt can be compared
    /// (format 2 on; `None` in older traces or when the engine gave no ids).
    pub prompt_hash: Option<u64>,
    /// Top-K candidates toktrace asked the engine to compute for the trace
    /// alone (`TOKTRACE_TOPK_SAMPLE`), beyond what the client asked for;
    /// `None` when the request was not sampled (format 2 on).
    pub trace_top_k: Option<u32>,
}

/// Why a request finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// A stop token or string.
    Stop,
    /// Hit max tokens / context length.
    Length,
    /// Aborted by the client or the engine.
    Abort,
    /// The engine reported an error.
    Error,
    /// Something else, as the engine named it.
    Other(String),
}

/// A request left this process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFinish {
    /// Request key.
    pub req: ReqKey,
    /// When (monotonic ns).
    pub time_ns: u64,
    /// Why, when known.
    pub reason: Option<FinishReason>,
    /// Output tokens generated in total, when known.
    pub output_tokens: Option<u32>,
}

/// One scheduled request's share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BatchEntry {
    /// Request key.
    pub req: ReqKey,
    /// Prompt tokens computed in this step (one chunk under chunked prefill).
    pub prefill_tokens: u32,
    /// Prompt tokens served from the prefix cache when this prefill started.
    pub cached_tokens: u32,
    /// Decode tokens computed in this step (more than one with speculation).
    pub decode_tokens: u32,
}

/// A run of consecutive tokens sampled for one request in one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TokenRun {
    /// Request key.
    pub req: ReqKey,
    /// Output index of the first token of the run (0 = first generated token).
    pub first_index: u32,
    /// Number of tokens in the run.
    pub count: u32,
    /// `None`: no logprob data for this run. `Some(k)`: each token has its
    /// logprob and rank, plus `k` candidates (k may be 0).
    pub top_k: Option<u8>,
}

/// Every token sampled in a step, as columns.
///
/// `ids` holds one id per token (empty at capture level metadata). `logprobs`
/// and `ranks` hold one value per token of the runs that have logprob data, in
/// run order; `top_ids`/`top_logprobs` hold `k` candidates per such token,
/// best first. `texts` holds one string per token at capture level text, else
/// it is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SampledTokens {
    /// Runs, one per request that got tokens.
    #[serde(with = "crate::format::packed::runs")]
    pub runs: Vec<TokenRun>,
    /// Sampled token ids.
    pub ids: U32Column,
    /// Logprob of each sampled token.
    pub logprobs: F32Column,
    /// Rank of each sampled token among the candidates (1 = best; 0 = the
    /// engine does not report ranks, read back as `None`).
    pub ranks: U32Column,
    /// Candidate ids.
    pub top_ids: U32Column,
    /// Candidate logprobs.
    pub top_logprobs: F32Column,
    /// Decoded text per token (capture level text only).
    pub texts: Vec<String>,
}

/// Why [`SampledTokens::check`] refused a token block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inconsistent token columns: {0}")]
pub struct ColumnMismatch(pub String);

/// One token of a step, borrowed from its columns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenView<'a> {
    /// Request key.
    pub req: ReqKey,
    /// Output index within the request.
    pub index: u32,
    /// Token id, unless capture level is metadata.
    pub token_id: Option<u32>,
    /// Logprob of the sampled token.
    pub logprob: Option<f32>,
    /// Rank of the sampled token.
    pub rank: Option<u32>,
    /// Candidate ids, best first.
    pub top_ids: &'a [u32],
    /// Candidate logprobs, best first.
    pub top_logprobs: &'a [f32],
    /// Decoded text.
    pub text: Option<&'a str>,
}

impl SampledTokens {
    /// Empty every column, keeping the allocations.
    pub fn clear(&mut self) {
        let SampledTokens {
            runs,
            ids,
            logprobs,
            ranks,
            top_ids,
            top_logprobs,
            texts,
        } = self;
        runs.clear();
        ids.0.clear();
        logprobs.0.clear();
        ranks.0.clear();
        top_ids.0.clear();
        top_logprobs.0.clear();
        texts.clear();
    }

    /// Heap bytes of the columns: what they hold (`Held::Used`, texts by
    /// their length), or what they keep reserved (`Held::Reserved`). Every
    /// field is named here, so a new column cannot be left out of the count.
    pub fn heap_bytes(&self, held: Held) -> usize {
        let SampledTokens {
            runs,
            ids,
            logprobs,
            ranks,
            top_ids,
            top_logprobs,
            texts,
        } = self;
        let n = |len: usize, cap: usize| if held == Held::Used { len } else { cap };
        let words = n(ids.0.len(), ids.0.capacity())
            + n(logprobs.0.len(), logprobs.0.capacity())
            + n(ranks.0.len(), ranks.0.capacity())
            + n(top_ids.0.len(), top_ids.0.capacity())
            + n(top_logprobs.0.len(), top_logprobs.0.capacity());
        let texts = match held {
            Held::Used => texts.iter().map(|s| s.len() + 24).sum::<usize>(),
            Held::Reserved => texts.capacity() * std::mem::size_of::<String>(),
        };
        n(runs.len(), runs.capacity()) * std::mem::size_of::<TokenRun>() + words * 4 + texts
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.count as usize).sum()
    }

    /// True when no token was sampled.
    pub fn is_empty(&self) -> bool {
        self.runs.iter().all(|r| r.count == 0)
    }

    /// Verify that the columns agree with the runs. Readers call this before
    /// [`SampledTokens::iter`], so data from disk can never index out of range.
    pub fn check(&self) -> Result<(), ColumnMismatch> {
        let n: u64 = self.runs.iter().map(|r| u64::from(r.count)).sum();
        let with_lp: u64 = self
            .runs
            .iter()
            .filter(|r| r.top_k.is_some())
            .map(|r| u64::from(r.count))
            .sum();
        let cand: u64 = self
            .runs
            .iter()
            .map(|r| u64::from(r.count) * u64::from(r.top_k.unwrap_or(0)))
            .sum();
        let len = |v: usize| v as u64;
        if !(self.ids.is_empty() || len(self.ids.len()) == n) {
            return Err(ColumnMismatch(format!(
                "{} ids for {n} tokens",
                self.ids.len()
            )));
        }
        if len(self.logprobs.len()) != with_lp || len(self.ranks.len()) != with_lp {
            return Err(ColumnMismatch(format!(
                "{} logprobs / {} ranks for {with_lp} tokens with logprobs",
                self.logprobs.len(),
                self.ranks.len()
            )));
        }
        if len(self.top_ids.len()) != cand || len(self.top_logprobs.len()) != cand {
            return Err(ColumnMismatch(format!(
                "{} candidate ids / {} logprobs, expected {cand}",
                self.top_ids.len(),
                self.top_logprobs.len()
            )));
        }
        if !(self.texts.is_empty() || len(self.texts.len()) == n) {
            return Err(ColumnMismatch(format!(
                "{} texts for {n} tokens",
                self.texts.len()
            )));
        }
        Ok(())
    }

    /// Iterate over the tokens. The block must have passed [`SampledTokens::check`];
    /// on an unchecked inconsistent block the iterator stops early instead of panicking.
    pub fn iter(&self) -> impl Iterator<Item = TokenView<'_>> + '_ {
        let mut tok = 0usize;
        let mut lp = 0usize;
        let mut cand = 0usize;
        self.runs.iter().flat_map(move |run| {
            let k = run.top_k.map(usize::from);
            let start_tok = tok;
            let start_lp = lp;
            let start_cand = cand;
            tok += run.count as usize;
            if let Some(k) = k {
                lp += run.count as usize;
                cand += run.count as usize * k;
            }
            (0..run.count as usize).map_while(move |j| {
                let t = start_tok + j;
                let token_id = if self.ids.is_empty() {
                    None
                } else {
                    Some(*self.ids.0.get(t)?)
                };
                let text = if self.texts.is_empty() {
                    None
                } else {
                    Some(self.texts.get(t)?.as_str())
                };
                let (logprob, rank, top_ids, top_logprobs) = match k {
                    Some(k) => {
                        let c = start_cand + j * k;
                        (
                            Some(*self.logprobs.0.get(start_lp + j)?),
                            // 0: the engine gives no rank (SGLang).
                            Some(*self.ranks.0.get(start_lp + j)?).filter(|&r| r != 0),
                            self.top_ids.0.get(c..c + k)?,
                            self.top_logprobs.0.get(c..c + k)?,
                        )
                    }
                    None => (None, None, &[][..], &[][..]),
                };
                Some(TokenView {
                    req: run.req,
                    index: run.first_index.saturating_add(j as u32),
                    token_id,
                    logprob,
                    rank,
                    top_ids,
                    top_logprobs,
                    text,
                })
            })
        })
    }
}

/// One engine iteration: the unit the adapter hands over once per step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Step {
    /// Step number within the process (engine's own counter when it has one).
    pub step_id: u64,
    /// When the step's batch was launched (monotonic ns): tokens' `enter`.
    pub start_ns: u64,
    /// When the step's output was processed (monotonic ns): tokens' `exit`.
    pub end_ns: u64,
    /// Requests waiting in the queue after scheduling.
    pub waiting: u32,
    /// Requests running after scheduling.
    pub running: u32,
    /// KV-cache usage in 0..1, when the engine exposes it.
    pub kv_usage: Option<f32>,
    /// Scheduled requests and their work.
    #[serde(with = "crate::format::packed::batch")]
    pub batch: Vec<BatchEntry>,
    /// Requests preempted when this step was scheduled.
    pub preempted: Vec<ReqKey>,
    /// Requests that finished in this step.
    pub finished: Vec<ReqKey>,
    /// Tokens sampled in this step.
    pub tokens: SampledTokens,
}

impl Step {
    /// Empty every field, keeping the allocations (steps are recycled so the
    /// engine thread does not allocate in steady state).
    pub fn clear(&mut self) {
        let Step {
            step_id,
            start_ns,
            end_ns,
            waiting,
            running,
            kv_usage,
            batch,
            preempted,
            finished,
            tokens,
        } = self;
        (*step_id, *start_ns, *end_ns, *waiting, *running, *kv_usage) = (0, 0, 0, 0, 0, None);
        batch.clear();
        preempted.clear();
        finished.clear();
        tokens.clear();
    }

    /// Heap bytes of the step's buffers: what they hold (`Held::Used`: the
    /// ring's byte budget) or keep reserved (`Held::Reserved`: what a
    /// recycled step costs). Every field is named, so none is left out.
    pub fn heap_bytes(&self, held: Held) -> usize {
        let Step {
            step_id: _,
            start_ns: _,
            end_ns: _,
            waiting: _,
            running: _,
            kv_usage: _,
            batch,
            preempted,
            finished,
            tokens,
        } = self;
        let n = |len: usize, cap: usize| if held == Held::Used { len } else { cap };
        n(batch.len(), batch.capacity()) * std::mem::size_of::<BatchEntry>()
            + (n(preempted.len(), preempted.capacity()) + n(finished.len(), finished.capacity()))
                * std::mem::size_of::<ReqKey>()
            + tokens.heap_bytes(held)
    }
}

/// Which heap bytes [`Step::heap_bytes`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The bytes in use (lengths).
    Used,
    /// The bytes reserved (capacities).
    Reserved,
}

/// One chunk of tokens handed to a client stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Emit {
    /// Request key (of the frontend process).
    pub req: ReqKey,
    /// Output index of the first token in the chunk.
    pub first_index: u32,
    /// Tokens in the chunk.
    pub count: u32,
    /// When it was handed over (monotonic ns).
    pub time_ns: u64,
}

/// A batch of emits recorded in one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EmitBatch {
    /// The emits.
    pub emits: Vec<Emit>,
}

/// Loss counters of a process since it started, by cause. Always cumulative,
/// so the last one read is the total even if earlier segments were deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DropCounts {
    /// Records dropped because the ring was full.
    pub ring_full: u64,
    /// Records dropped because they alone exceed the ring's byte capacity.
    pub too_big: u64,
    /// Records the writer could not write (disk full, unwritable directory).
    pub write_failed: u64,
    /// Generated tokens inside all dropped records.
    pub tokens: u64,
}

impl DropCounts {
    /// All dropped records.
    pub fn records(&self) -> u64 {
        self.ring_full + self.too_big + self.write_failed
    }
}

/// Exceptions an adapter caught in its own code since the process started —
/// each time the engine went on as if toktrace were absent. Cumulative, and
/// repeated in every new segment like [`DropCounts`], so the last one read is
/// the total. A trace with errors may miss what the failing hooks would have
/// recorded: readers report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AdapterErrors {
    /// One entry per hook that raised, in the order they first did.
    pub hooks: Vec<HookErrors>,
    /// Set when the adapter switched tracing off after too many errors; the
    /// trace ends there for this process.
    pub disabled: bool,
}

impl AdapterErrors {
    /// All errors, every hook.
    pub fn total(&self) -> u64 {
        self.hooks.iter().map(|h| h.count).sum()
    }
}

/// How often one hook raised, and its first error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HookErrors {
    /// Where: "Scheduler.schedule", "record_step", ….
    pub hook: String,
    /// How many times.
    pub count: u64,
    /// The first error, as "Type: message".
    pub first_error: String,
}

/// Segments deleted by the disk budget, cumulative since the process started
/// (deletion is oldest first, so the removed segments are `0..before`). Every
/// later segment repeats it, so the record survives its own segment's removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SegmentsRemoved {
    /// Every segment with a smaller index was removed.
    pub before: u32,
    /// Bytes freed in all.
    pub bytes: u64,
}
