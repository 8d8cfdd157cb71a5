//! Live analysis of a trace being written: what `toktrace watch` computes
//! beside a running engine.
//!
//! Records come in as a [`probe_core::follow::Follower`] reads them
//! ([`LiveTrace::ingest`]). Two kinds of figures come out:
//! - **exact counts**, kept as records arrive and never forgotten: steps,
//!   tokens, drops, arrivals, finishes, and the histograms of step times and
//!   inter-token gaps — over a finished trace they equal `toktrace summary`;
//! - **judgements** ([`LiveTrace::tick`]): stalls with their culprits, TTFTs,
//!   interference by cause. They come from the analyzer's own code run on
//!   what is kept of the trace (its records folded by [`crate::load::fold`],
//!   step models fitted on them), so a live verdict is the offline one as it
//!   could be made at the time: the step model is the recent steps' and a
//!   request's usual gap is its gaps so far.
//!
//! Memory is bounded by what is kept, per engine process: the records of the
//! last [`LiveOptions::window_steps`] steps, extended back to the first step
//! of the oldest request not yet handed out — running and seen in those
//! steps, or finished and not yet settled — so its context and its whole
//! answer are there, never beyond [`LiveOptions::max_steps`]; the arrivals of
//! requests in flight or in those steps; a few numbers per request in flight.
//! A frontend keeps its records as far back as the engines on its host do.

mod figures;
mod kept;

pub use figures::{Histogram, ProcessFigures, GAP_BOUNDS, TTFT_BOUNDS};

use crate::analysis::{Analysis, SLOW_FLOOR_NS};
use crate::attribution::{fit_steps, request_timings_into, Cause, ProcessModel};
use crate::data::{RequestIx, StepRow, TraceData};
use crate::load::{fold, LoadOptions};
use crate::warmup::WARMUP_WINDOW;
use kept::{record_time, LiveProcess, STALE_NS};
use probe_core::event::Record;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How much of the trace is kept.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Steps per engine process always kept: what the step model is fitted on.
    pub window_steps: usize,
    /// Steps per engine process kept at most, however old the oldest request
    /// in flight: past this, the oldest steps go and that request's early
    /// tokens with them.
    pub max_steps: usize,
    /// A TTFT is judged, and a finished request handed out, once the
    /// process's newest step ended this long after the token or finish:
    /// the frontend's records (its arrival, its emits) have been written by then.
    pub settle_ns: u64,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            window_steps: 2048,
            max_steps: 32_768,
            settle_ns: 1_000_000_000,
        }
    }
}

/// One culprit of a live stall.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LiveCulprit {
    /// Its id, as `toktrace` shows ids.
    pub request: String,
    /// Delay laid at its door, milliseconds.
    pub delay_ms: f64,
    /// How.
    pub cause: Cause,
}

/// A token judged a stall as the trace was written.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LiveStall {
    /// The engine process (directory name).
    pub process: String,
    /// The stalled request, as `toktrace` shows ids.
    pub request: String,
    /// The token's index in its answer.
    pub token_index: u32,
    /// The engine's number for the step that ended the gap.
    pub step_id: u64,
    /// When that step ended, the process's monotonic nanoseconds.
    pub step_end_ns: u64,
    /// And in unix nanoseconds.
    pub step_end_unix_ns: u64,
    /// The gap, milliseconds.
    pub gap_ms: f64,
    /// What the step model expected of it.
    pub expected_ms: f64,
    /// Gap minus expected.
    pub excess_ms: f64,
    /// The request's usual gap so far (the stall threshold is the larger of
    /// it and 1 ms).
    pub threshold_ms: f64,
    /// Who caused the excess, largest share first.
    pub culprits: Vec<LiveCulprit>,
}

/// What one tick found.
#[derive(Default)]
pub struct Tick {
    /// Stalls among the tokens of steps new since the last tick.
    pub stalls: Vec<LiveStall>,
    /// Requests that finished and settled since the last tick, in the
    /// analysis of what is kept (when [`LiveTrace::tick`] was asked for them).
    pub finished: Option<(Analysis, Vec<RequestIx>)>,
}

/// A process's tokens are judged once its step model stands on this many
/// steps (after its warm-up): a model of three steps calls anything a stall.
/// Until then its stalls wait, and are judged late rather than wrongly.
pub const MIN_STEPS_TO_JUDGE: usize = 64;

/// A request's usual gap (its median) is its own once it has this many
/// gaps; before, a stall would set its own threshold.
const MIN_GAPS_FOR_USUAL: usize = 8;

/// A request's usual gap is taken as at most this many times the engine's
/// usual decode gap (see `LiveTrace::judge`).
const USUAL_CAP: f64 = 4.0;

/// A trace being written, as far as it has been read.
pub struct LiveTrace {
    options: LiveOptions,
    /// Nothing more will be written: judge whatever the models say now.
    closing: bool,
    processes: Vec<LiveProcess>,
    by_dir: HashMap<PathBuf, usize>,
}

impl LiveTrace {
    /// Nothing read yet.
    pub fn new(options: LiveOptions) -> LiveTrace {
        LiveTrace {
            options,
            closing: false,
            processes: Vec::new(),
            by_dir: HashMap::new(),
        }
    }

    /// Take in the records a follower read from one process directory at
    /// `now` (the watcher's clock).
    pub fn ingest(&mut self, dir: &Path, records: impl IntoIterator<Item = Record>, now: Instant) {
        let ix = match self.by_dir.get(dir) {
            Some(&ix) => ix,
            None => {
                self.processes.push(LiveProcess::new(dir));
                self.by_dir
                    .insert(dir.to_path_buf(), self.processes.len() - 1);
                self.processes.len() - 1
            }
        };
        let p = &mut self.processes[ix];
        for r in records {
            p.ingest(r, now);
        }
    }

    /// The exact figures of every process, in the order first read.
    pub fn figures(&self) -> impl Iterator<Item = &ProcessFigures> {
        self.processes.iter().map(|p| &p.figures)
    }

    /// Steps kept, over all processes (what the memory bound is about).
    pub fn kept_steps(&self) -> usize {
        self.processes.iter().map(|p| p.window_steps).sum()
    }

    /// Steps dropped past the cap, over all processes.
    pub fn evicted_steps(&self) -> u64 {
        self.processes.iter().map(|p| p.evicted_steps).sum()
    }

    /// Nothing more is coming (the watch stops): the next ticks judge every
    /// process, however few steps its model stands on, and settle everything.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// Judge what is new: stalls in steps read since the last tick, TTFTs
    /// and finished requests that settled; then forget what is no longer
    /// needed. With `want_finished`, the settled finished requests come
    /// back with the analysis they were judged in (for their spans).
    pub fn tick(&mut self, want_finished: bool, now: Instant) -> Tick {
        let mut tick = Tick::default();
        let news = self.processes.iter().filter(|p| p.is_engine()).any(|p| {
            p.newest_ns > p.judged_until_ns
                || p.requests.values().any(|r| {
                    (!r.ttft_done && r.last_exit_ns > 0) || (r.finish_ns.is_some() && !r.handed_out)
                })
        });
        if !news {
            return tick;
        }
        let data = fold(
            self.processes
                .iter()
                .map(|p| (p.dir.clone(), p.records().collect::<Vec<_>>())),
            &LoadOptions::default(),
        );
        let models = self.models(&data);
        let ready: Vec<bool> = models
            .iter()
            .map(|m| self.closing || m.model.is_some_and(|x| x.steps >= MIN_STEPS_TO_JUDGE))
            .collect();
        self.judge(&data, &models, &ready, &mut tick);
        let finished = self.settle(&data, now);
        // The full analysis (every request's report) only when spans want it.
        if want_finished && !finished.is_empty() {
            let deadlines = models.iter().map(|m| 5.0 * m.decode_step_ns).collect();
            tick.finished = Some((Analysis::with_models(data, models, deadlines), finished));
        }
        for (p, ready) in self.processes.iter_mut().zip(ready) {
            if p.is_engine() && ready {
                p.judged_until_ns = p.newest_ns;
            }
        }
        self.trim();
        tick
    }

    /// Step models of the kept steps; each process's warm-up as its first
    /// steps showed it (a window that starts mid-trace would see none).
    fn models(&mut self, data: &TraceData) -> Vec<ProcessModel> {
        self.processes
            .iter_mut()
            .enumerate()
            .map(|(i, p)| {
                let steps: Vec<&StepRow> = data
                    .steps
                    .iter()
                    .filter(|s| s.process == i as u32)
                    .collect();
                if !p.warmup_settled
                    && p.evicted_steps == 0
                    && p.figures.steps as usize == steps.len()
                {
                    p.warmup = crate::warmup::detect(&steps);
                    p.warmup_settled = steps.len() >= WARMUP_WINDOW + 8;
                }
                // The first step carries some warm-up even when short.
                let warm = p.warmup.map_or(0, |w| w.steps as usize);
                let skip = if p.figures.steps as usize == steps.len() {
                    warm.max(1)
                } else {
                    0
                };
                fit_steps(&steps, skip.min(steps.len()), p.warmup)
            })
            .collect()
    }

    /// Stalls among the tokens of steps that ended after the last judgement.
    fn judge(
        &mut self,
        data: &TraceData,
        models: &[ProcessModel],
        ready: &[bool],
        tick: &mut Tick,
    ) {
        let mut timings = Vec::new();
        let mut gaps = Vec::new();
        for (r, req) in data.requests.iter().enumerate() {
            if !ready.get(req.process as usize).copied().unwrap_or(false) {
                continue;
            }
            let Some(p) = self.processes.get_mut(req.process as usize) else {
                continue;
            };
            let judged = p.judged_until_ns;
            let newest = req
                .token_step
                .last()
                .map_or(0, |&s| data.steps[s as usize].end_ns);
            if newest <= judged {
                continue;
            }
            request_timings_into(data, models, r as RequestIx, &mut timings);
            // The request's usual gap: the median of its gaps so far, as
            // offline over its whole answer; with too few gaps yet (a stall
            // would set its own threshold), the engine's usual decode gap.
            // Nor more than USUAL_CAP times that: a request that has only
            // been slow so far would call its stalls usual, where offline
            // its later gaps settle it.
            gaps.clear();
            gaps.extend(timings.iter().skip(1).map(|t| t.gap_ns));
            let m = &models[req.process as usize];
            let engine_usual = m.decode_step_ns + m.pause_ns;
            let usual = if m.decode_step_ns <= 0.0 {
                median(&mut gaps)
            } else if gaps.len() >= MIN_GAPS_FOR_USUAL {
                median(&mut gaps).min(USUAL_CAP * engine_usual)
            } else {
                engine_usual
            };
            let threshold = usual.max(SLOW_FLOOR_NS);
            for t in &timings {
                if t.exit_ns <= judged || t.position == 0 {
                    continue;
                }
                for s in &t.shares {
                    *p.figures.interference_ns.entry(s.cause).or_default() += s.ns;
                }
                if t.excess_ns <= threshold {
                    continue;
                }
                p.figures.stalls += 1;
                let step = &data.steps[t.step as usize];
                let mut culprits: Vec<LiveCulprit> = Vec::new();
                for s in &t.shares {
                    let name = data.requests[s.culprit as usize].display_id();
                    match culprits
                        .iter_mut()
                        .find(|c| c.request == name && c.cause == s.cause)
                    {
                        Some(c) => c.delay_ms += s.ns / 1e6,
                        None => culprits.push(LiveCulprit {
                            request: name.to_string(),
                            delay_ms: s.ns / 1e6,
                            cause: s.cause,
                        }),
                    }
                }
                culprits.sort_by(|x, y| y.delay_ms.total_cmp(&x.delay_ms));
                tick.stalls.push(LiveStall {
                    process: p.figures.name.clone(),
                    request: req.display_id().to_string(),
                    token_index: t.index,
                    step_id: step.step_id,
                    step_end_ns: step.end_ns,
                    step_end_unix_ns: data.processes[req.process as usize].unix_ns(step.end_ns),
                    gap_ms: t.gap_ns as f64 / 1e6,
                    expected_ms: t.expected_ns / 1e6,
                    excess_ms: t.excess_ns / 1e6,
                    threshold_ms: threshold / 1e6,
                    culprits,
                });
            }
        }
        tick.stalls.sort_by_key(|s| s.step_end_unix_ns);
    }

    /// TTFTs of requests whose first token settled; finished requests that
    /// settled (returned, and marked handed out).
    fn settle(&mut self, data: &TraceData, now: Instant) -> Vec<RequestIx> {
        let mut finished = Vec::new();
        let settle = self.options.settle_ns;
        for (r, req) in data.requests.iter().enumerate() {
            let Some(p) = self.processes.get_mut(req.process as usize) else {
                continue;
            };
            let newest = p.newest_ns;
            let quiet = p
                .advanced_at
                .is_some_and(|t| now.saturating_duration_since(t).as_nanos() >= u128::from(settle));
            let settled = |t: u64| quiet || t.saturating_add(settle) <= newest;
            let Some(state) = p.requests.get_mut(&req.key) else {
                continue;
            };
            // As the analyzer does: from the arrival to the first token recorded.
            if !state.ttft_done {
                if let Some(&first) = req.token_step.first() {
                    let exit = data.steps[first as usize].end_ns;
                    if settled(exit) {
                        state.ttft_done = true;
                        if let Some(arrival) = req.arrival_ns() {
                            p.figures.ttft.observe_ns(exit.saturating_sub(arrival));
                        }
                    }
                }
            }
            if let Some(f) = state.finish_ns {
                if !state.handed_out && settled(f) {
                    state.handed_out = true;
                    state.ttft_done = true;
                    finished.push(r as RequestIx);
                }
            }
        }
        finished
    }

    fn trim(&mut self) {
        // A frontend keeps its records as far back as the engines on its
        // host keep theirs (one host's processes share a clock).
        let mut horizon: HashMap<String, u64> = HashMap::new();
        for p in self.processes.iter().filter(|p| p.is_engine()) {
            let from = p.window.front().map_or(p.newest_ns, record_time);
            let h = horizon.entry(p.figures.host.clone()).or_insert(u64::MAX);
            *h = (*h).min(from);
        }
        let running: HashSet<String> = self
            .processes
            .iter()
            .flat_map(|p| {
                p.requests
                    .iter()
                    .filter(|(_, r)| r.running())
                    .filter_map(|(k, _)| p.arrivals.get(k).map(|a| a.internal_id.clone()))
            })
            .collect();
        for p in &mut self.processes {
            // A frontend with no engine on its host keeps ten minutes.
            let own = p.newest_ns.saturating_sub(STALE_NS);
            let h = if p.is_engine() {
                None
            } else {
                Some(horizon.get(&p.figures.host).copied().unwrap_or(own))
            };
            p.trim(&self.options, h);
            if !p.is_engine() {
                // A frontend's requests: kept while their engine runs them,
                // else as far back as the engines keep.
                let h = h.unwrap_or(0);
                let arrivals = &p.arrivals;
                p.requests.retain(|k, _| {
                    arrivals
                        .get(k)
                        .is_some_and(|a| running.contains(&a.internal_id) || a.arrival_ns >= h)
                });
                let requests = &p.requests;
                p.arrivals.retain(|k, _| requests.contains_key(k));
            }
        }
    }
}

/// The median of `v` (0 for none), as a float.
fn median(v: &mut [u64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable(mid);
    *m as f64
}
