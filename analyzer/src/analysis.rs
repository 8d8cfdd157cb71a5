//! One pass over a loaded trace: step models, per-request metrics,
//! interference totals, offender ranking and accuracy flags.

use crate::attribution::{
    fit_processes, request_timings, request_timings_into, ProcessModel, TokenTiming,
};
use crate::data::{Request, RequestIx, TokenDetail, TraceData};
use crate::metrics::{latency, Latency, Scratch};
use std::collections::HashMap;

/// Knobs of the analysis.
#[derive(Debug, Clone, Default)]
pub struct AnalyzeOptions {
    /// The fluidity-index decode deadline D_d; default 5 × the engine's median
    /// decode-only step.
    pub tbt_deadline_ns: Option<f64>,
}

/// Smallest excess that makes a token "slow", whatever the request's pace.
pub const SLOW_FLOOR_NS: f64 = 1e6;

/// An accuracy or health finding about one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    /// Stable name (`special_token_in_output`, `sampled_outside_top_k`,
    /// `low_confidence`, `batch_variance`, `nan_logprobs`, `repetition`,
    /// `preempted`, `missing_tokens`).
    pub name: &'static str,
    /// What was seen, for people.
    pub detail: String,
}

/// What the analysis says about one request.
#[derive(Debug, Clone, Default)]
pub struct RequestReport {
    /// Latency figures.
    pub latency: Latency,
    /// Times preempted.
    pub preemptions: usize,
    /// Delay laid at other requests' doors, over all its tokens.
    pub interference_ns: f64,
    /// Tokens whose excess exceeded max(the median gap, 1 ms): stalls.
    pub stalls: u32,
    /// Culprits by total delay, largest first.
    pub culprits: Vec<(RequestIx, f64)>,
    /// Findings.
    pub flags: Vec<Flag>,
    /// It arrived before its engine's warm-up was over.
    pub warmup: bool,
    /// For such a request, its latency as served: from the warm-up's end on
    /// (its wait for the engine's start and the gaps across the warm-up left
    /// out; no TTFT when its first token came out of a warm-up step). What
    /// the statistics count unless `include_warmup`.
    pub served: Option<Latency>,
}

/// A request that delayed others, with what it cost them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offender {
    /// The request.
    pub request: RequestIx,
    /// Delay it caused, summed over every token it delayed.
    pub ns: f64,
    /// Requests it delayed.
    pub victims: u32,
    /// Tokens it delayed.
    pub tokens: u64,
}

/// A trace with everything computed.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The loaded trace.
    pub data: TraceData,
    /// Step model per process.
    pub models: Vec<ProcessModel>,
    /// Fluidity deadline per process.
    pub tbt_deadline_ns: Vec<f64>,
    /// One report per request, aligned with `data.requests`.
    pub reports: Vec<RequestReport>,
    /// Requests that delayed others, most harmful first.
    pub offenders: Vec<Offender>,
    /// Whether statistics and charts count requests that waited on an
    /// engine's warm-up (`--include-warmup`); they are always in the lists.
    pub include_warmup: bool,
}

impl Analysis {
    /// Analyse a loaded trace. Requests are independent once the step
    /// models are fitted, so they are split across the machine's cores.
    pub fn new(data: TraceData, options: &AnalyzeOptions) -> Analysis {
        let models = fit_processes(&data);
        let tbt_deadline_ns: Vec<f64> = models
            .iter()
            .map(|m| options.tbt_deadline_ns.unwrap_or(5.0 * m.decode_step_ns))
            .collect();
        Analysis::with_models(data, models, tbt_deadline_ns)
    }

    /// Analyse with step models fitted elsewhere: a window of a large trace
    /// is judged by the whole trace's models (kept in its index), so its
    /// verdicts match those of a full analysis.
    pub fn with_models(
        data: TraceData,
        models: Vec<ProcessModel>,
        tbt_deadline_ns: Vec<f64>,
    ) -> Analysis {
        let n = data.requests.len();
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .clamp(1, 8)
            .min(n.max(1));
        let per_thread = n.div_ceil(threads).max(1);
        let parts: Vec<(Vec<RequestReport>, OffenderTotals)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let range = (t * per_thread).min(n)..((t + 1) * per_thread).min(n);
                    let (data, models, deadlines) = (&data, &models, &tbt_deadline_ns);
                    scope.spawn(move || report_range(data, models, deadlines, range))
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        let mut reports = Vec::with_capacity(n);
        let mut offenders = OffenderTotals::new();
        for (part, totals) in parts {
            reports.extend(part);
            for (culprit, (ns, victims, tokens)) in totals {
                let o = offenders.entry(culprit).or_default();
                o.0 += ns;
                o.1.extend(victims);
                o.2 += tokens;
            }
        }
        let mut offenders: Vec<Offender> = offenders
            .into_iter()
            .map(|(request, (ns, victims, tokens))| Offender {
                request,
                ns,
                victims: victims.len() as u32,
                tokens,
            })
            .collect();
        offenders.sort_by(|a, b| b.ns.total_cmp(&a.ns).then(a.request.cmp(&b.request)));
        let mut analysis = Analysis {
            data,
            models,
            tbt_deadline_ns,
            reports,
            offenders,
            include_warmup: false,
        };
        let suspects = crate::variance::suspects(&analysis.data);
        analysis.flag_variance(&suspects, |_| None);
        analysis
    }

    /// Put the `batch_variance` flags of these same-prompt groups
    /// ([`crate::variance::suspects`]) on their members' reports, replacing
    /// any before. A member's tokens come from the load's detail or from
    /// `tokens`; a group whose tokens are not all at hand is flagged by its
    /// digests alone, without the place it parted.
    pub fn flag_variance<'a>(
        &mut self,
        groups: &[Vec<RequestIx>],
        tokens: impl Fn(RequestIx) -> Option<&'a TokenDetail>,
    ) {
        let data = &self.data;
        let detail = |r: RequestIx| {
            data.requests[r as usize]
                .detail
                .as_ref()
                .or_else(|| tokens(r))
        };
        let mut found: Vec<(RequestIx, Flag)> = Vec::new();
        for g in groups {
            if g.iter().all(|&r| detail(r).is_some()) {
                for d in crate::variance::locate(data, g, detail) {
                    let flag = Flag {
                        name: "batch_variance",
                        detail: crate::variance::describe(data, &d),
                    };
                    found.push((d.request, flag));
                }
                continue;
            }
            let first = &data.requests[g[0] as usize];
            for &r in &g[1..] {
                let c = &data.requests[r as usize].checks;
                if (c.output_digest, c.digested)
                    != (first.checks.output_digest, first.checks.digested)
                {
                    let detail = format!(
                        "same prompt and greedy sampling as {}, but another answer (its tokens were not read to say where it parted)",
                        first.display_id()
                    );
                    found.push((
                        r,
                        Flag {
                            name: "batch_variance",
                            detail,
                        },
                    ));
                }
            }
        }
        for rep in &mut self.reports {
            rep.flags.retain(|f| f.name != "batch_variance");
        }
        for (r, flag) in found {
            if let Some(rep) = self.reports.get_mut(r as usize) {
                rep.flags.push(flag);
            }
        }
    }

    /// The latency of request `r` the statistics count: as served, unless
    /// the warm-up is included (see [`RequestReport::served`]).
    pub fn statistics_latency(&self, r: RequestIx) -> Option<&Latency> {
        let rep = self.reports.get(r as usize)?;
        Some(match (&rep.served, self.include_warmup) {
            (Some(served), false) => served,
            _ => &rep.latency,
        })
    }

    /// Whether a step was part of its engine's warm-up, and is left out of
    /// statistics and charts (never when the warm-up is included).
    pub fn left_out_as_warmup(&self, s: crate::data::StepIx) -> bool {
        !self.include_warmup
            && self.data.steps.get(s as usize).is_some_and(|step| {
                self.models
                    .get(step.process as usize)
                    .is_some_and(|m| m.in_warmup(step.end_ns))
            })
    }

    /// Every token of a request with its gap broken down.
    pub fn timings(&self, r: RequestIx) -> Vec<TokenTiming> {
        request_timings(&self.data, &self.models, r)
    }

    /// The tokens of a request that count as slow, slowest (by excess) first.
    pub fn slow_tokens(&self, r: RequestIx) -> Vec<TokenTiming> {
        let threshold = self
            .reports
            .get(r as usize)
            .map(|rep| slow_threshold_ns(&rep.latency))
            .unwrap_or(SLOW_FLOOR_NS);
        let mut slow: Vec<TokenTiming> = self
            .timings(r)
            .into_iter()
            .filter(|t| t.position > 0 && t.excess_ns > threshold)
            .collect();
        slow.sort_by(|a, b| b.excess_ns.total_cmp(&a.excess_ns));
        slow
    }

    /// Find requests by id: the client-visible id, the engine's internal id or
    /// the trace id, exactly; failing that, a unique id that starts with it
    /// (the completions API answers `cmpl-X` for the engine's `cmpl-X-0`).
    pub fn find(&self, id: &str) -> Vec<RequestIx> {
        find_request(&self.data, id)
    }
}

/// Per culprit: delay caused, requests delayed, tokens delayed.
type OffenderTotals = HashMap<RequestIx, (f64, std::collections::HashSet<RequestIx>, u64)>;

/// Reports of the requests in `range`, and what their culprits cost them.
fn report_range(
    data: &TraceData,
    models: &[ProcessModel],
    deadlines: &[f64],
    range: std::ops::Range<usize>,
) -> (Vec<RequestReport>, OffenderTotals) {
    let mut offenders = OffenderTotals::new();
    let mut reports = Vec::with_capacity(range.len());
    let mut scratch = Scratch::default();
    let mut timings = Vec::new();
    let mut exits = Vec::new();
    for ix in range {
        let r = &data.requests[ix];
        let ix = ix as RequestIx;
        request_timings_into(data, models, ix, &mut timings);
        exits.clear();
        exits.extend(timings.iter().map(|t| t.exit_ns));
        let first_scheduled = r.first_scheduled.map(|s| data.steps[s as usize].start_ns);
        let deadline = deadlines.get(r.process as usize).copied().unwrap_or(0.0);
        let latency = latency(&mut scratch, r, &exits, first_scheduled, deadline);
        let slow = slow_threshold_ns(&latency);
        let mut culprits: HashMap<RequestIx, f64> = HashMap::new();
        let mut report = RequestReport {
            preemptions: r.preempted_at.len(),
            ..Default::default()
        };
        for t in &timings {
            if t.position > 0 && t.excess_ns > slow {
                report.stalls += 1;
            }
            let mut counted: Vec<RequestIx> = Vec::new();
            for s in &t.shares {
                *culprits.entry(s.culprit).or_default() += s.ns;
                report.interference_ns += s.ns;
                let o = offenders.entry(s.culprit).or_default();
                o.0 += s.ns;
                o.1.insert(ix);
                if !counted.contains(&s.culprit) {
                    o.2 += 1;
                    counted.push(s.culprit);
                }
            }
        }
        let mut culprits: Vec<(RequestIx, f64)> = culprits.into_iter().collect();
        culprits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        report.culprits = culprits;
        report.flags = flags(data, r);
        report.latency = latency;
        let warmup = models.get(r.process as usize).and_then(|m| m.warmup);
        let arrival = r.arrival_ns().or(first_scheduled);
        if let Some(w) = warmup.filter(|w| arrival.is_some_and(|a| a <= w.end_ns)) {
            report.warmup = true;
            report.served = Some(served_latency(
                &mut scratch,
                r,
                &exits,
                first_scheduled,
                deadline,
                w.end_ns,
            ));
        }
        reports.push(report);
    }
    (reports, offenders)
}

/// The latency of a request that arrived during its engine's warm-up, as
/// if it had arrived when the warm-up ended: tokens that came out of warm-up
/// steps are left out (and with the first of them, the TTFT).
fn served_latency(
    scratch: &mut Scratch,
    r: &Request,
    exits: &[u64],
    first_scheduled: Option<u64>,
    deadline: f64,
    warmup_end: u64,
) -> Latency {
    let kept = exits.partition_point(|&e| e <= warmup_end);
    let mut after = r.clone();
    after.detail = None;
    after.token_index.drain(..kept);
    after.token_step.drain(..kept);
    after.emit_ns.drain(..kept.min(after.emit_ns.len()));
    after.frontend_arrival_ns = after.frontend_arrival_ns.map(|a| a.max(warmup_end));
    after.engine_arrival_ns = after.engine_arrival_ns.map(|a| a.max(warmup_end));
    let scheduled = first_scheduled.map(|s| s.max(warmup_end));
    let mut l = latency(scratch, &after, &exits[kept..], scheduled, deadline);
    if kept > 0 {
        l.ttft_ns = None;
        l.ttft_emit_ns = None;
        l.queue_ns = None;
        l.prefill_ns = None;
    }
    l
}

/// Find requests by id (see [`Analysis::find`]).
pub fn find_request(data: &TraceData, id: &str) -> Vec<RequestIx> {
    let id_lower = id.to_ascii_lowercase();
    let exact: Vec<RequestIx> = data
        .requests
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.internal_id == id
                || r.external_id.as_deref() == Some(id)
                || r.sequence_id.as_deref() == Some(id)
                || r.trace_id_hex().as_deref() == Some(id_lower.as_str())
        })
        .map(|(i, _)| i as RequestIx)
        .collect();
    if !exact.is_empty() {
        return exact;
    }
    data.requests
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.external_id
                .as_deref()
                .is_some_and(|e| e.starts_with(id) && e[id.len()..].starts_with('-'))
                || (r.internal_id.starts_with(id) && r.internal_id[id.len()..].starts_with('-'))
        })
        .map(|(i, _)| i as RequestIx)
        .collect()
}

/// A token is slow when its excess over the model exceeds the request's own
/// median gap (and 1 ms): its gap was at least about twice what it should be.
pub(crate) fn slow_threshold_ns(l: &Latency) -> f64 {
    l.itl
        .map(|q| q.p50 as f64)
        .unwrap_or(0.0)
        .max(SLOW_FLOOR_NS)
}

fn flags(data: &TraceData, r: &Request) -> Vec<Flag> {
    let mut out = Vec::new();
    let c = &r.checks;
    if c.special_count > 0 {
        let names = special_names(data, r);
        let listed: Vec<String> = c
            .special
            .iter()
            .map(|(i, id)| match names.get(id) {
                Some(n) => format!("{n} (id {id}) at token {i}"),
                None => format!("id {id} at token {i}"),
            })
            .collect();
        out.push(Flag {
            name: "special_token_in_output",
            detail: format!(
                "{} special token(s) inside the answer: {}",
                c.special_count,
                listed.join(", ")
            ),
        });
    }
    if c.outside_top_k > 0 {
        let p = &r.params;
        out.push(Flag {
            name: "sampled_outside_top_k",
            detail: format!(
                "{} of {} tokens were sampled outside the recorded top-K (first at token {}); check the sampling parameters: temperature {}, top_p {}, top_k {}",
                c.outside_top_k,
                c.with_top_k,
                c.first_outside_top_k.unwrap_or(0),
                opt(p.temperature),
                opt(p.top_p),
                opt(p.top_k)
            ),
        });
    }
    if let Some(s) = c
        .low_confidence
        .filter(|s| s.tokens >= data.low_confidence.tokens)
    {
        out.push(Flag {
            name: "low_confidence",
            detail: format!(
                "{} tokens in a row from token {} had a most likely candidate under {:.0} % (mean {:.1} %, lowest {:.1} %){}",
                s.tokens,
                s.first,
                data.low_confidence.below * 100.0,
                s.mean() * 100.0,
                s.lowest * 100.0,
                if r.trace_top_k.is_some() { "; candidates captured by TOKTRACE_TOPK_SAMPLE" } else { "" }
            ),
        });
    }
    if c.nan_logprobs > 0 {
        out.push(Flag {
            name: "nan_logprobs",
            detail: format!(
                "{} tokens had NaN logprobs (first at token {}): the model's output was corrupt, e.g. positions past its trained context, or overflow",
                c.nan_logprobs,
                c.first_nan.unwrap_or(0)
            ),
        });
    }
    if let Some((index, period)) = c.repetition {
        out.push(Flag {
            name: "repetition",
            detail: format!("a {period}-token pattern repeats, detected at token {index}"),
        });
    }
    if !r.preempted_at.is_empty() {
        out.push(Flag {
            name: "preempted",
            detail: format!("preempted {} time(s)", r.preempted_at.len()),
        });
    }
    if let Some(n) = r.reported_output_tokens {
        let seen = r.token_step.len() as u32;
        if n > seen {
            out.push(Flag {
                name: "missing_tokens",
                detail: format!(
                    "the engine reported {n} output tokens, the trace holds {seen} (records dropped or segments deleted)"
                ),
            });
        }
    }
    out
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "default".to_string(), |v| v.to_string())
}

fn special_names(data: &TraceData, r: &Request) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    if let Some(info) = data
        .processes
        .get(r.process as usize)
        .and_then(|p| p.info.as_ref())
    {
        let s = &info.special_tokens;
        for (id, text) in &s.all {
            names.insert(*id, text.clone());
        }
        if let Some(b) = s.bos {
            names.entry(b).or_insert_with(|| "BOS".into());
        }
        for e in &s.eos {
            names.entry(*e).or_insert_with(|| "EOS".into());
        }
        if let Some(p) = s.pad {
            names.entry(p).or_insert_with(|| "PAD".into());
        }
    }
    names
}
