//! The stable JSON shapes of `toktrace summary|requests|tokens|interference
//! --json`. Scripts and the incident workflow depend on these names: extend,
//! never rename. Units are in the key (`_ms`, `_unix_ns`); absent values are
//! null.
//!
//! A field is its JSON key, and what each key means is written once, in
//! docs/analysis.md ("JSON"), for the people who read the JSON; fields say
//! more here only where the code needs it.
#![allow(missing_docs)]

use crate::analysis::Analysis;
use crate::attribution::{Cause, TokenTiming};
use crate::data::RequestIx;
use serde::Serialize;

fn ms(ns: f64) -> f64 {
    // Microsecond resolution is plenty for people and keeps the JSON short.
    (ns / 1e3).round() / 1e3
}

fn ms_u(ns: u64) -> f64 {
    ms(ns as f64)
}

/// One row of `requests --json`.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRow {
    pub request_id: String,
    pub internal_id: String,
    pub trace_id: Option<String>,
    pub arrival_unix_ns: Option<u64>,
    pub prompt_tokens: u32,
    pub cached_tokens: u64,
    pub output_tokens: usize,
    pub finish_reason: Option<String>,
    pub ttft_ms: Option<f64>,
    pub ttft_emit_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p90_ms: Option<f64>,
    pub itl_p99_ms: Option<f64>,
    pub max_itl_ms: Option<f64>,
    pub max_itl_index: Option<u32>,
    pub emit_itl_p50_ms: Option<f64>,
    pub emit_itl_p99_ms: Option<f64>,
    pub emit_max_itl_ms: Option<f64>,
    pub queue_ms: Option<f64>,
    pub prefill_ms: Option<f64>,
    pub decode_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    pub fluidity_index: Option<f64>,
    pub stalls: u32,
    pub preemptions: usize,
    pub interference_ms: f64,
    pub top_culprits: Vec<CulpritTotal>,
    pub flags: Vec<&'static str>,
    /// It arrived before its engine's warm-up was over (left out of
    /// `summary`'s statistics unless `--include-warmup`).
    pub warmup: bool,
}

/// One engine process's warm-up in `summary --json`.
#[derive(Debug, Clone, Serialize)]
pub struct WarmupRow {
    pub process: String,
    pub steps: u32,
    pub duration_ms: f64,
    /// Requests that arrived before it was over.
    pub requests: usize,
}

/// A culprit's total delay of one request.
#[derive(Debug, Clone, Serialize)]
pub struct CulpritTotal {
    pub request_id: String,
    pub ms: f64,
}

/// One culprit's part of one token's excess.
#[derive(Debug, Clone, Serialize)]
pub struct CulpritShare {
    pub request_id: String,
    pub ms: f64,
    /// Fraction of the token's excess, 0..1.
    pub share: f64,
    pub cause: Cause,
}

/// One row of `interference --request ID --json`'s `slow_tokens`.
#[derive(Debug, Clone, Serialize)]
pub struct SlowToken {
    pub index: u32,
    pub step: u64,
    pub gap_ms: f64,
    pub scheduling_ms: f64,
    pub running_ms: f64,
    pub expected_ms: f64,
    pub excess_ms: f64,
    pub culprits: Vec<CulpritShare>,
}

/// `interference --request ID --json`.
#[derive(Debug, Clone, Serialize)]
pub struct RequestInterference {
    pub request_id: String,
    pub interference_ms: f64,
    pub slow_tokens: Vec<SlowToken>,
}

/// One candidate of a token.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub token_id: u32,
    pub logprob: f32,
}

/// One row of `tokens --json`.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    pub index: u32,
    pub token_id: Option<u32>,
    pub text: Option<String>,
    pub enter_unix_ns: u64,
    pub exit_unix_ns: u64,
    pub emit_unix_ns: Option<u64>,
    pub step: u64,
    pub batch_requests: u32,
    pub batch_tokens: u32,
    pub batch_prefill_tokens: u32,
    pub logprob: Option<f32>,
    pub rank: Option<u32>,
    pub top: Vec<Candidate>,
    pub special: bool,
    pub gap_ms: f64,
    pub emit_gap_ms: Option<f64>,
    pub expected_ms: f64,
    pub excess_ms: f64,
    pub culprits: Vec<CulpritShare>,
}

/// One row of the offender ranking.
#[derive(Debug, Clone, Serialize)]
pub struct OffenderRow {
    pub request_id: String,
    pub delay_ms: f64,
    pub victims: u32,
    pub tokens: u64,
    pub prompt_tokens: u32,
}

/// A process's fitted step model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    pub process: String,
    pub base_ms: f64,
    pub per_decode_token_ms: f64,
    pub per_prefill_token_ms: f64,
    pub per_context_token_ms: f64,
    pub residual_scale_ms: f64,
    pub steps: usize,
    pub pause_ms: f64,
    pub tbt_deadline_ms: f64,
}

/// Trace-level `interference --json`.
#[derive(Debug, Clone, Serialize)]
pub struct TraceInterference {
    pub total_interference_ms: f64,
    pub offenders: Vec<OffenderRow>,
    pub step_models: Vec<ModelRow>,
}

/// Distribution of a per-request figure across requests.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Spread {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// One process in `summary --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRow {
    pub name: String,
    pub role: String,
    pub host: String,
    pub pid: u32,
    pub engine: Option<String>,
    pub engine_version: Option<String>,
    pub model: Option<String>,
    pub segments: usize,
    pub steps: u64,
    pub tokens: u64,
    pub emitted_tokens: u64,
    pub dropped_records: u64,
    pub dropped_tokens: u64,
    pub segments_removed: u32,
    /// Exceptions the adapter caught in its hooks (the engine went on each time).
    pub adapter_errors: u64,
    /// The adapter switched tracing off after too many errors.
    pub adapter_disabled: bool,
}

/// What an export carries about the trace (Parquet key-value metadata).
#[derive(Debug, Clone, Serialize)]
pub struct TraceMetadata {
    pub toktrace_version: &'static str,
    pub processes: Vec<ProcessMetadata>,
    pub step_models: Vec<ModelRow>,
}

/// One process in [`TraceMetadata`].
#[derive(Debug, Clone, Serialize)]
pub struct ProcessMetadata {
    pub name: String,
    pub role: String,
    pub host: String,
    pub pid: u32,
    pub engine: Option<String>,
    pub engine_version: Option<String>,
    pub model: Option<String>,
    pub model_path: Option<String>,
    /// The clock anchor: CLOCK_MONOTONIC and unix time read together.
    pub anchor_mono_ns: u64,
    pub anchor_unix_ns: u64,
}

/// `summary --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub processes: Vec<ProcessRow>,
    pub requests: usize,
    pub finished_requests: usize,
    pub steps: usize,
    pub tokens: u64,
    pub start_unix_ns: Option<u64>,
    pub duration_s: f64,
    pub output_tokens_per_s: f64,
    pub ttft_ms: Spread,
    pub tpot_ms: Spread,
    pub itl_p99_ms: Spread,
    pub max_itl_ms: Spread,
    pub stalls: u64,
    pub preemptions: u64,
    pub total_interference_ms: f64,
    pub top_offenders: Vec<OffenderRow>,
    pub flags: std::collections::BTreeMap<&'static str, usize>,
    pub step_models: Vec<ModelRow>,
    pub unmatched_frontend_requests: u64,
    pub warnings: Vec<String>,
    /// Each engine process's warm-up, when it had one.
    pub warmup: Vec<WarmupRow>,
    /// Whether the latency figures above count the requests that waited on it.
    pub warmup_included: bool,
}

impl Analysis {
    fn id(&self, r: RequestIx) -> String {
        self.data
            .requests
            .get(r as usize)
            .map(|r| r.display_id().to_string())
            .unwrap_or_default()
    }

    fn shares(&self, t: &TokenTiming) -> Vec<CulpritShare> {
        let mut shares: Vec<CulpritShare> = t
            .shares
            .iter()
            .map(|s| CulpritShare {
                request_id: self.id(s.culprit),
                ms: ms(s.ns),
                share: if t.excess_ns > 0.0 {
                    ((s.ns / t.excess_ns) * 1e4).round() / 1e4
                } else {
                    0.0
                },
                cause: s.cause,
            })
            .collect();
        shares.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        shares
    }

    /// The `requests --json` row of one request.
    pub fn request_row(&self, r: RequestIx) -> RequestRow {
        self.row_with(r, &self.reports[r as usize].latency)
    }

    /// The row of request `r` with the latency the statistics count (as
    /// served, for a request that waited on a warm-up left out).
    pub fn statistics_row(&self, r: RequestIx) -> RequestRow {
        let rep = &self.reports[r as usize];
        self.row_with(r, self.statistics_latency(r).unwrap_or(&rep.latency))
    }

    fn row_with(&self, r: RequestIx, l: &crate::metrics::Latency) -> RequestRow {
        let req = &self.data.requests[r as usize];
        let rep = &self.reports[r as usize];
        let p = &self.data.processes[req.process as usize];
        RequestRow {
            request_id: req.display_id().to_string(),
            internal_id: req.internal_id.clone(),
            trace_id: req.trace_id_hex(),
            arrival_unix_ns: req.arrival_ns().map(|t| p.unix_ns(t)),
            prompt_tokens: req.prompt_tokens,
            cached_tokens: req.cached_tokens,
            output_tokens: req.token_step.len(),
            finish_reason: req.finish_reason.as_ref().map(|f| match f {
                probe_core::event::FinishReason::Stop => "stop".to_string(),
                probe_core::event::FinishReason::Length => "length".to_string(),
                probe_core::event::FinishReason::Abort => "abort".to_string(),
                probe_core::event::FinishReason::Error => "error".to_string(),
                probe_core::event::FinishReason::Other(s) => s.clone(),
            }),
            ttft_ms: l.ttft_ns.map(ms_u),
            ttft_emit_ms: l.ttft_emit_ns.map(ms_u),
            tpot_ms: l.tpot_ns.map(ms),
            itl_p50_ms: l.itl.map(|q| ms_u(q.p50)),
            itl_p90_ms: l.itl.map(|q| ms_u(q.p90)),
            itl_p99_ms: l.itl.map(|q| ms_u(q.p99)),
            max_itl_ms: l.max_itl.map(|m| ms_u(m.0)),
            max_itl_index: l.max_itl.map(|m| m.1),
            emit_itl_p50_ms: l.emit_itl.map(|q| ms_u(q.p50)),
            emit_itl_p99_ms: l.emit_itl.map(|q| ms_u(q.p99)),
            emit_max_itl_ms: l.emit_itl.map(|q| ms_u(q.max)),
            queue_ms: l.queue_ns.map(ms_u),
            prefill_ms: l.prefill_ns.map(ms_u),
            decode_ms: l.decode_ns.map(ms_u),
            e2e_ms: l.e2e_ns.map(ms_u),
            fluidity_index: l.fluidity_index.map(|f| (f * 1e4).round() / 1e4),
            stalls: rep.stalls,
            preemptions: rep.preemptions,
            interference_ms: ms(rep.interference_ns),
            top_culprits: rep
                .culprits
                .iter()
                .take(3)
                .map(|&(c, ns)| CulpritTotal {
                    request_id: self.id(c),
                    ms: ms(ns),
                })
                .collect(),
            flags: rep.flags.iter().map(|f| f.name).collect(),
            warmup: rep.warmup,
        }
    }

    /// `interference --request ID --json`.
    pub fn request_interference(&self, r: RequestIx) -> RequestInterference {
        RequestInterference {
            request_id: self.id(r),
            interference_ms: ms(self.reports[r as usize].interference_ns),
            slow_tokens: self
                .slow_tokens(r)
                .iter()
                .map(|t| SlowToken {
                    index: t.index,
                    step: self.data.steps[t.step as usize].step_id,
                    gap_ms: ms_u(t.gap_ns),
                    scheduling_ms: ms_u(t.scheduling_ns),
                    running_ms: ms_u(t.running_ns),
                    expected_ms: ms(t.expected_ns),
                    excess_ms: ms(t.excess_ns),
                    culprits: self.shares(t),
                })
                .collect(),
        }
    }

    /// `tokens --request ID --json`: every recorded token of one request.
    pub fn token_rows(&self, r: RequestIx) -> Vec<TokenRow> {
        let req = &self.data.requests[r as usize];
        let p = &self.data.processes[req.process as usize];
        let special: std::collections::HashSet<u32> = p
            .info
            .as_ref()
            .map(|i| i.special_tokens.ids().collect())
            .unwrap_or_default();
        let detail = req.detail.as_ref();
        self.timings(r)
            .iter()
            .map(|t| {
                let i = t.position;
                let step = &self.data.steps[t.step as usize];
                let token_id = detail.and_then(|d| d.ids.get(i).copied().flatten());
                let emit = req.emit(i);
                let prev_emit = i.checked_sub(1).and_then(|j| req.emit(j));
                TokenRow {
                    index: t.index,
                    token_id,
                    text: detail.and_then(|d| d.texts.get(i).cloned().flatten()),
                    enter_unix_ns: p.unix_ns(t.enter_ns),
                    exit_unix_ns: p.unix_ns(t.exit_ns),
                    emit_unix_ns: emit.map(|e| p.unix_ns(e)),
                    step: step.step_id,
                    batch_requests: step.requests,
                    batch_tokens: step.prefill_tokens + step.decode_tokens,
                    batch_prefill_tokens: step.prefill_tokens,
                    logprob: detail.and_then(|d| d.logprobs.get(i).copied().flatten()),
                    rank: detail.and_then(|d| d.ranks.get(i).copied().flatten()),
                    top: detail
                        .map(|d| {
                            d.top(i)
                                .map(|(token_id, logprob)| Candidate { token_id, logprob })
                                .collect()
                        })
                        .unwrap_or_default(),
                    special: token_id.is_some_and(|id| special.contains(&id)),
                    gap_ms: ms_u(t.gap_ns),
                    emit_gap_ms: emit.zip(prev_emit).map(|(e, p)| ms_u(e.saturating_sub(p))),
                    expected_ms: ms(t.expected_ns),
                    excess_ms: ms(t.excess_ns),
                    culprits: self.shares(t),
                }
            })
            .collect()
    }

    fn offender_rows(&self, limit: usize) -> Vec<OffenderRow> {
        self.offenders
            .iter()
            .take(limit)
            .map(|o| OffenderRow {
                request_id: self.id(o.request),
                delay_ms: ms(o.ns),
                victims: o.victims,
                tokens: o.tokens,
                prompt_tokens: self.data.requests[o.request as usize].prompt_tokens,
            })
            .collect()
    }

    fn model_rows(&self) -> Vec<ModelRow> {
        self.models
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let model = m.model?;
                Some(ModelRow {
                    process: self.data.processes[i].name.clone(),
                    base_ms: ms(model.base_ns),
                    per_decode_token_ms: model.per_decode_token_ns / 1e6,
                    per_prefill_token_ms: model.per_prefill_token_ns / 1e6,
                    per_context_token_ms: model.per_context_token_ns / 1e6,
                    residual_scale_ms: ms(model.residual_scale_ns),
                    steps: model.steps,
                    pause_ms: ms(m.pause_ns),
                    tbt_deadline_ms: ms(self.tbt_deadline_ns.get(i).copied().unwrap_or(0.0)),
                })
            })
            .collect()
    }

    /// Trace-level `interference --json`.
    pub fn trace_interference(&self, limit: usize) -> TraceInterference {
        TraceInterference {
            total_interference_ms: ms(self.reports.iter().map(|r| r.interference_ns).sum()),
            offenders: self.offender_rows(limit),
            step_models: self.model_rows(),
        }
    }

    /// Metadata for exports.
    pub fn metadata(&self) -> TraceMetadata {
        TraceMetadata {
            toktrace_version: env!("CARGO_PKG_VERSION"),
            processes: self
                .data
                .processes
                .iter()
                .map(|p| ProcessMetadata {
                    name: p.name.clone(),
                    role: p.role.clone(),
                    host: p.host.clone(),
                    pid: p.pid,
                    engine: p.info.as_ref().map(|i| i.engine.clone()),
                    engine_version: p.info.as_ref().map(|i| i.engine_version.clone()),
                    model: p.info.as_ref().and_then(|i| i.model_name.clone()),
                    model_path: p.info.as_ref().and_then(|i| i.model_path.clone()),
                    anchor_mono_ns: p.anchor.mono_ns,
                    anchor_unix_ns: p.anchor.unix_ns,
                })
                .collect(),
            step_models: self.model_rows(),
        }
    }

    /// `summary --json`.
    pub fn summary(&self) -> Summary {
        let d = &self.data;
        let processes = d
            .processes
            .iter()
            .map(|p| ProcessRow {
                name: p.name.clone(),
                role: p.role.clone(),
                host: p.host.clone(),
                pid: p.pid,
                engine: p.info.as_ref().map(|i| i.engine.clone()),
                engine_version: p.info.as_ref().map(|i| i.engine_version.clone()),
                model: p.info.as_ref().and_then(|i| i.model_name.clone()),
                segments: p.segments,
                steps: p.steps,
                tokens: p.tokens,
                emitted_tokens: p.emitted,
                dropped_records: p.drops.records(),
                dropped_tokens: p.drops.tokens,
                segments_removed: p.removed.as_ref().map_or(0, |r| r.before),
                adapter_errors: p.adapter_errors.as_ref().map_or(0, |e| e.total()),
                adapter_disabled: p.adapter_errors.as_ref().is_some_and(|e| e.disabled),
            })
            .collect();
        // Duration and throughput of serving: from the end of the warm-up on
        // (unless it is included).
        let counted = |s: &&crate::data::StepRow| {
            self.include_warmup
                || !self
                    .models
                    .get(s.process as usize)
                    .is_some_and(|m| m.in_warmup(s.end_ns))
        };
        let start = d.steps.iter().filter(counted).map(|s| s.start_ns).min();
        let end = d.steps.iter().filter(counted).map(|s| s.end_ns).max();
        let duration_ns = start.zip(end).map_or(0, |(s, e)| e.saturating_sub(s));
        let tokens = d.tokens();
        let served: u64 = d
            .steps
            .iter()
            .filter(counted)
            .map(|s| u64::from(s.sampled))
            .sum();
        let mut flags = std::collections::BTreeMap::new();
        for rep in &self.reports {
            for f in &rep.flags {
                *flags.entry(f.name).or_insert(0) += 1;
            }
        }
        let lat = |f: &dyn Fn(&crate::metrics::Latency) -> Option<f64>| {
            spread(
                (0..self.reports.len() as RequestIx)
                    .filter_map(|r| self.statistics_latency(r).and_then(f))
                    .collect(),
            )
        };
        let warmup = self
            .models
            .iter()
            .enumerate()
            .filter_map(|(p, m)| {
                let w = m.warmup?;
                Some(WarmupRow {
                    process: d.processes.get(p)?.name.clone(),
                    steps: w.steps,
                    duration_ms: ms_u(w.duration_ns()),
                    requests: d
                        .requests
                        .iter()
                        .zip(&self.reports)
                        .filter(|(r, rep)| r.process as usize == p && rep.warmup)
                        .count(),
                })
            })
            .collect();
        let first_process = d.steps.first().map(|s| &d.processes[s.process as usize]);
        Summary {
            processes,
            requests: d.requests.len(),
            finished_requests: d.requests.iter().filter(|r| r.finish_ns.is_some()).count(),
            steps: d.steps.len(),
            tokens,
            start_unix_ns: start.zip(first_process).map(|(s, p)| p.unix_ns(s)),
            duration_s: duration_ns as f64 / 1e9,
            output_tokens_per_s: if duration_ns > 0 {
                (served as f64 / (duration_ns as f64 / 1e9) * 10.0).round() / 10.0
            } else {
                0.0
            },
            ttft_ms: lat(&|l| l.ttft_ns.map(ms_u)),
            tpot_ms: lat(&|l| l.tpot_ns.map(ms)),
            itl_p99_ms: lat(&|l| l.itl.map(|q| ms_u(q.p99))),
            max_itl_ms: lat(&|l| l.max_itl.map(|m| ms_u(m.0))),
            stalls: self.reports.iter().map(|r| u64::from(r.stalls)).sum(),
            preemptions: self.reports.iter().map(|r| r.preemptions as u64).sum(),
            total_interference_ms: ms(self.reports.iter().map(|r| r.interference_ns).sum()),
            top_offenders: self.offender_rows(5),
            flags,
            step_models: self.model_rows(),
            unmatched_frontend_requests: d.unmatched_frontend_requests,
            warnings: d.warnings.clone(),
            warmup,
            warmup_included: self.include_warmup,
        }
    }
}

/// p50/p90/p99/max of a list (nearest rank).
pub fn spread(mut v: Vec<f64>) -> Spread {
    if v.is_empty() {
        return Spread::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Spread {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}
