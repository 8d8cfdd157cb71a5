//! The simulated engine: arrivals, a vLLM-like continuous-batching scheduler
//! with chunked prefill, prefix caching and a paged KV cache with
//! recompute-style preemption.
//!
//! One call to [`Sim::step`] is one engine iteration:
//!
//! 1. Requests that arrived up to the step's start join the waiting queue
//!    (their arrival records go out before the step's).
//! 2. Running requests are scheduled first, in admission order: a decoding
//!    request computes one token, a request still in its prefill computes the
//!    next chunk of its prompt (as much as the token budget leaves). Each needs
//!    KV blocks for what it computes; when none is free the most recently
//!    admitted running request is preempted — its blocks are freed and it goes
//!    back to the front of the waiting queue, to recompute its prompt and the
//!    tokens it already generated as a new prefill. A request may preempt
//!    itself (it is then the most recent), which ends scheduling of the
//!    running set.
//! 3. If nothing was preempted, waiting requests are admitted first come,
//!    first served while the token budget, the running-sequence cap and free
//!    KV blocks allow. On first admission a request may hit the prefix cache:
//!    those prompt tokens are reported as `cached_tokens` and not computed.
//!    With chunked prefill a prompt larger than the remaining budget is split
//!    across steps; without it, a prompt that does not fit waits, except that
//!    the first prefill of a step is admitted whole even beyond the budget.
//! 4. Every request whose sequence is fully computed after the step samples
//!    one token: its first (or, after a recompute, its next) token when its
//!    prefill completes, the next one when it decodes. A request that reaches
//!    its output length finishes (`Length` when that is `max_tokens`, else
//!    `Stop` with EOS as its last token).
//!
//! The step's duration comes from [`crate::law`].

use crate::law::{self, StepLoad};
use crate::rng::Rng;
use crate::tokens::{TokenSampler, BOS, EOS};
use crate::WorkloadConfig;
use probe_core::event::{
    BatchEntry, FinishReason, ReqKey, RequestArrival, SamplingParams, Step, TokenRun,
};
use std::collections::VecDeque;

/// Tokens per KV-cache block.
pub const BLOCK_TOKENS: u32 = 16;

/// A request that left the engine in a step (finish time is the step's end).
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Request key.
    pub req: ReqKey,
    /// Why.
    pub reason: FinishReason,
    /// Tokens it generated.
    pub output_tokens: u32,
}

/// What one call to [`Sim::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A step was simulated into the buffer.
    Stepped,
    /// No request is left and none will arrive: the workload is over.
    Done,
}

#[derive(Debug, Clone)]
struct Req {
    key: ReqKey,
    prompt: u32,
    /// Output tokens it will generate before finishing.
    target: u32,
    generated: u32,
    /// Tokens whose KV is in the cache.
    computed: u32,
    /// Sequence length when the current prefill episode started.
    need: u32,
    blocks: u32,
    /// Prefix-cache hit used at the first admission.
    cached: u32,
    /// Cached tokens to report on the next batch entry.
    report_cached: u32,
    admitted_before: bool,
    /// A special token forced at an output index: (index, id).
    special: Option<(u32, u32)>,
    stop: bool,
}

/// One scheduled request's work in the step being built.
#[derive(Debug, Clone, Copy)]
struct Work {
    slot: usize,
    tokens: u32,
    prefill: bool,
}

/// The simulation state.
pub struct Sim {
    cfg: WorkloadConfig,
    arrivals_rng: Rng,
    sched_rng: Rng,
    sampler: TokenSampler,
    now: u64,
    next_arrival: u64,
    mean_gap_ns: f64,
    slab: Vec<Req>,
    free_slots: Vec<usize>,
    waiting: VecDeque<usize>,
    running: Vec<usize>,
    free_blocks: u32,
    work: Vec<Work>,
    step_id: u64,
    /// Requests arrived so far.
    pub requests: u64,
    /// Requests finished so far.
    pub finished: u64,
    /// Steps simulated so far.
    pub steps: u64,
    /// Tokens sampled so far.
    pub tokens: u64,
    /// Preemptions so far.
    pub preemptions: u64,
}

impl Sim {
    /// A fresh engine: empty queues, all KV blocks free, first arrival drawn.
    pub fn new(cfg: &WorkloadConfig) -> Sim {
        let mut arrivals_rng = Rng::new(cfg.seed, 1);
        let mean_gap_ns = 1e9 / cfg.rate;
        let next_arrival = cfg.start_ns + arrivals_rng.exponential(mean_gap_ns) as u64;
        Sim {
            cfg: cfg.clone(),
            arrivals_rng,
            sched_rng: Rng::new(cfg.seed, 2),
            sampler: TokenSampler::new(Rng::new(cfg.seed, 3), cfg.top_k),
            now: cfg.start_ns,
            next_arrival,
            mean_gap_ns,
            slab: Vec::new(),
            free_slots: Vec::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            free_blocks: cfg.kv_blocks,
            work: Vec::new(),
            step_id: 0,
            requests: 0,
            finished: 0,
            steps: 0,
            tokens: 0,
            preemptions: 0,
        }
    }

    /// Simulated time: the end of the last step (plus its gap), in ns.
    pub fn now_ns(&self) -> u64 {
        self.now
    }

    /// Requests waiting or running.
    pub fn in_flight(&self) -> usize {
        self.waiting.len() + self.running.len()
    }

    fn arrivals_open(&self) -> bool {
        self.cfg.requests.map_or(true, |n| self.requests < n)
    }

    fn draw_len(&mut self, median: u32, sigma: f64, max: u32) -> u32 {
        let x = self
            .arrivals_rng
            .lognormal(f64::from(median), sigma)
            .round();
        (x.clamp(1.0, f64::from(max))) as u32
    }

    /// Admit every request that arrived up to `upto` into the waiting queue.
    fn pull_arrivals(&mut self, upto: u64, out: &mut Vec<RequestArrival>) {
        while self.arrivals_open() && self.next_arrival <= upto {
            let arrival_ns = self.next_arrival;
            self.next_arrival += (self.arrivals_rng.exponential(self.mean_gap_ns) as u64).max(1);
            out.push(self.new_request(arrival_ns));
        }
    }

    fn new_request(&mut self, arrival_ns: u64) -> RequestArrival {
        let n = self.requests;
        self.requests += 1;
        let key = n as ReqKey;
        let prompt = self.draw_len(
            self.cfg.prompt_median,
            self.cfg.prompt_sigma,
            self.cfg.max_prompt,
        );
        let target = self.draw_len(
            self.cfg.output_median,
            self.cfg.output_sigma,
            self.cfg.max_output,
        );
        let rng = &mut self.arrivals_rng;
        let cached = if rng.chance(self.cfg.prefix_cache_rate) {
            let c = (f64::from(prompt) * rng.range(0.2, 0.9)) as u32 / BLOCK_TOKENS * BLOCK_TOKENS;
            c.min((prompt - 1) / BLOCK_TOKENS * BLOCK_TOKENS)
        } else {
            0
        };
        let special = if rng.chance(self.cfg.special_rate) {
            if target >= 2 && rng.chance(0.5) {
                Some((rng.below(u64::from(target - 1)) as u32, EOS))
            } else {
                Some((0, BOS))
            }
        } else {
            None
        };
        let hex = rng.next_u64() as u32;
        let (trace_id, parent_span_id) = if rng.chance(0.5) {
            let a = rng.next_u64().to_be_bytes();
            let b = rng.next_u64().to_be_bytes();
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&a);
            t[8..].copy_from_slice(&b);
            (Some(t), Some(rng.next_u64().to_be_bytes()))
        } else {
            (None, None)
        };
        let temperature = [0.0f32, 0.7, 1.0][rng.below(3) as usize];
        let req = Req {
            key,
            prompt,
            target,
            generated: 0,
            computed: 0,
            need: prompt,
            blocks: 0,
            cached,
            report_cached: 0,
            admitted_before: false,
            special,
            stop: target < self.cfg.max_output,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.slab[s] = req;
                s
            }
            None => {
                self.slab.push(req);
                self.slab.len() - 1
            }
        };
        self.waiting.push_back(slot);
        RequestArrival {
            req: key,
            arrival_ns,
            internal_id: format!("req-{n}-{hex:08x}"),
            external_id: Some(format!("req-{n}")),
            trace_id,
            parent_span_id,
            prompt_tokens: prompt,
            params: SamplingParams {
                temperature: Some(temperature),
                top_p: Some(if temperature == 0.0 { 1.0 } else { 0.95 }),
                top_k: Some(-1),
                max_tokens: Some(self.cfg.max_output),
                logprobs: self.cfg.top_k.map(u32::from),
                seed: None,
            },
            // No prompt ids here: one identity per request, the size a real one takes.
            prompt_hash: Some(probe_core::prompt::prompt_hash(&[n as u32, prompt])),
            trace_top_k: None,
        }
    }

    fn blocks_for(tokens: u32) -> u32 {
        tokens.div_ceil(BLOCK_TOKENS)
    }

    /// Preempt the most recently admitted running request (the last one).
    fn preempt_last(&mut self, step: &mut Step) -> Option<usize> {
        let slot = self.running.pop()?;
        let r = &mut self.slab[slot];
        self.free_blocks += r.blocks;
        r.blocks = 0;
        r.computed = 0;
        r.report_cached = 0;
        step.preempted.push(r.key);
        self.waiting.push_front(slot);
        self.preemptions += 1;
        Some(slot)
    }

    /// Simulate one engine iteration into `step` (a cleared buffer). Arrivals
    /// admitted before it go to `arrivals`, requests it finished to `finished`
    /// (both cleared first).
    pub fn step(
        &mut self,
        step: &mut Step,
        arrivals: &mut Vec<RequestArrival>,
        finished: &mut Vec<Finished>,
    ) -> anyhow::Result<Outcome> {
        arrivals.clear();
        finished.clear();
        self.pull_arrivals(self.now, arrivals);
        if self.in_flight() == 0 {
            if !self.arrivals_open() {
                return Ok(Outcome::Done);
            }
            // Idle: jump to the next arrival.
            self.now = self.now.max(self.next_arrival);
            self.pull_arrivals(self.now, arrivals);
        }
        self.schedule(step);
        if self.work.is_empty() {
            anyhow::bail!(
                "scheduler stuck at step {}: {} waiting, {} running, {} free KV blocks",
                self.step_id,
                self.waiting.len(),
                self.running.len(),
                self.free_blocks
            );
        }
        step.step_id = self.step_id;
        step.waiting = self.waiting.len() as u32;
        step.running = self.running.len() as u32;
        let total_blocks = self.cfg.kv_blocks;
        step.kv_usage = Some((total_blocks - self.free_blocks) as f32 / total_blocks as f32);
        let load = self.execute(step, finished);
        let start = self.now;
        let end = start + law::step_ns(&load, &mut self.sched_rng);
        step.start_ns = start;
        step.end_ns = end;
        self.now = end + law::gap_ns(&mut self.sched_rng);
        self.step_id += 1;
        self.steps += 1;
        Ok(Outcome::Stepped)
    }

    /// Decide the step's work: running requests first, then admissions.
    fn schedule(&mut self, step: &mut Step) {
        self.work.clear();
        let mut budget = self.cfg.max_batched_tokens;
        let mut preempted = false;
        let mut i = 0;
        'running: while i < self.running.len() && budget > 0 {
            let slot = self.running[i];
            let (computed, seq_len, prefill, blocks) = {
                let r = &self.slab[slot];
                (
                    r.computed,
                    r.prompt + r.generated,
                    r.computed < r.need,
                    r.blocks,
                )
            };
            let chunk = (seq_len - computed).min(budget);
            let extra = Self::blocks_for(computed + chunk).saturating_sub(blocks);
            while extra > self.free_blocks {
                preempted = true;
                if self.preempt_last(step) == Some(slot) {
                    break 'running;
                }
            }
            self.free_blocks -= extra;
            self.slab[slot].blocks += extra;
            self.work.push(Work {
                slot,
                tokens: chunk,
                prefill,
            });
            budget -= chunk;
            i += 1;
        }
        if preempted {
            return;
        }
        let mut prefill_admitted = false;
        while budget > 0 && self.running.len() < self.cfg.max_seqs as usize {
            let Some(&slot) = self.waiting.front() else {
                break;
            };
            let r = &self.slab[slot];
            let seq_len = r.prompt + r.generated;
            let cached = if r.admitted_before { 0 } else { r.cached };
            let to_compute = seq_len - cached;
            let chunk = if self.cfg.chunked_prefill {
                to_compute.min(budget)
            } else if to_compute <= budget || !prefill_admitted {
                to_compute
            } else {
                break;
            };
            let blocks = Self::blocks_for(cached + chunk);
            if blocks > self.free_blocks {
                break;
            }
            self.waiting.pop_front();
            self.free_blocks -= blocks;
            let r = &mut self.slab[slot];
            r.blocks = blocks;
            r.computed = cached;
            r.need = seq_len;
            r.report_cached = cached;
            r.admitted_before = true;
            self.running.push(slot);
            self.work.push(Work {
                slot,
                tokens: chunk,
                prefill: true,
            });
            prefill_admitted = true;
            budget = budget.saturating_sub(chunk);
        }
    }

    /// Run the step's work: batch entries, sampled tokens, finishes.
    fn execute(&mut self, step: &mut Step, finished: &mut Vec<Finished>) -> StepLoad {
        let mut load = StepLoad::default();
        let top_k = self.sampler.top_k();
        for w in &self.work {
            let r = &mut self.slab[w.slot];
            r.computed += w.tokens;
            let mut entry = BatchEntry {
                req: r.key,
                ..Default::default()
            };
            if w.prefill {
                entry.prefill_tokens = w.tokens;
                entry.cached_tokens = std::mem::take(&mut r.report_cached);
                load.prefill += w.tokens;
            } else {
                entry.decode_tokens = w.tokens;
                load.decode += w.tokens;
            }
            step.batch.push(entry);
            load.ctx_total += u64::from(r.computed);
            if r.computed < r.prompt + r.generated {
                continue; // a prefill chunk that did not finish the prompt
            }
            let index = r.generated;
            let forced = match r.special {
                Some((at, id)) if at == index => Some(id),
                _ if r.stop && index + 1 == r.target => Some(EOS),
                _ => None,
            };
            step.tokens.runs.push(TokenRun {
                req: r.key,
                first_index: index,
                count: 1,
                top_k,
            });
            self.sampler.push(&mut step.tokens, forced);
            r.generated += 1;
            self.tokens += 1;
            if r.generated == r.target {
                step.finished.push(r.key);
                finished.push(Finished {
                    req: r.key,
                    reason: if r.stop {
                        FinishReason::Stop
                    } else {
                        FinishReason::Length
                    },
                    output_tokens: r.generated,
                });
                self.free_blocks += r.blocks;
                r.blocks = 0;
                self.finished += 1;
                self.free_slots.push(w.slot);
            }
        }
        if !self.work.is_empty() {
            load.ctx_mean = load.ctx_total as f64 / self.work.len() as f64;
        }
        if !finished.is_empty() {
            let slab = &self.slab;
            self.running.retain(|&s| slab[s].generated < slab[s].target);
        }
        load
    }
}
