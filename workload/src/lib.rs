//! toktrace-workload: a synthetic continuous-batching LLM engine that records
//! a realistic trace through the real probe.
//!
//! It exists to feed the analyzer traces of any size — fixtures of a few
//! thousand tokens, scale benchmarks of 1 M, 10 M or 100 M — with the
//! structure a real engine produces: Poisson arrivals, long-tailed prompt and
//! output lengths, a vLLM-like scheduler (token budget, running-sequence cap,
//! chunked prefill, prefix-cache hits, a paged KV cache with recompute
//! preemption), top-K logprobs, finishes, and optionally a frontend process
//! streaming the tokens. Time is simulated, not waited for: a step's duration
//! comes from a known, deliberately non-linear law ([`law`]), so the trace has
//! a ground truth the analyzer's fitted model can be compared with. The same
//! [`WorkloadConfig`] (seed included) always produces the same records.
//!
//! What lives where:
//! - [`rng`]: the deterministic generator and its samplers (exponential,
//!   lognormal, Pareto);
//! - [`law`]: the step-time law;
//! - [`tokens`]: sampled ids, logprobs and top-K candidates;
//! - [`sim`]: arrivals and the scheduler, one engine iteration per call;
//! - [`record`]: the probes the simulation writes through;
//! - this file: [`WorkloadConfig`], [`generate`] and its [`Summary`].
//!
//! The binary `toktrace-workload` is a command-line front for [`generate`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod law;
pub mod record;
pub mod rng;
pub mod sim;
pub mod tokens;

use probe_core::event::DropCounts;
use sim::{Outcome, Sim, BLOCK_TOKENS};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything that shapes a workload. [`Default`] is a moderately loaded
/// engine producing 1 M tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadConfig {
    /// Seed: the same config and seed give the same records.
    pub seed: u64,
    /// Stop once this many tokens have been sampled (`None`: no token limit).
    pub tokens: Option<u64>,
    /// Let this many requests arrive, then run until all have finished
    /// (`None`: arrivals never stop). At least one limit must be set.
    pub requests: Option<u64>,
    /// Mean arrival rate, requests per simulated second (Poisson process).
    pub rate: f64,
    /// Median prompt length in tokens (lognormal).
    pub prompt_median: u32,
    /// Log-space sigma of the prompt length.
    pub prompt_sigma: f64,
    /// Median output length in tokens (lognormal).
    pub output_median: u32,
    /// Log-space sigma of the output length.
    pub output_sigma: f64,
    /// Longest prompt (longer draws are clamped).
    pub max_prompt: u32,
    /// Longest output, also every request's `max_tokens` (a request reaching
    /// it finishes with reason `Length`).
    pub max_output: u32,
    /// Token budget of one step (prefill chunks plus decodes).
    pub max_batched_tokens: u32,
    /// Most requests running at once.
    pub max_seqs: u32,
    /// KV-cache blocks of [`BLOCK_TOKENS`] tokens each.
    pub kv_blocks: u32,
    /// Split prompts larger than the remaining budget across steps.
    pub chunked_prefill: bool,
    /// Fraction of requests whose prompt partly hits the prefix cache.
    pub prefix_cache_rate: f64,
    /// Candidates recorded per token (`None`: ids only, no logprobs).
    pub top_k: Option<u8>,
    /// Also record a frontend process that streams the tokens.
    pub frontend: bool,
    /// Fraction of requests given an accuracy anomaly: a BOS as first token
    /// or an EOS in the middle of the answer.
    pub special_rate: f64,
    /// Simulated monotonic time of the start, ns.
    pub start_ns: u64,
    /// Segment size of the probes, bytes.
    pub segment_bytes: u64,
    /// Write in real time, this many simulated seconds per wall second
    /// (None: as fast as possible). Paced, the simulated clock starts at the
    /// machine's monotonic clock, so the trace reads like a live engine's.
    pub pace: Option<f64>,
    /// The engine probe's ring, records (None: the probe's default). A small
    /// ring with `pace` drops records the way an overloaded probe does; they
    /// are counted, and the run is not waited on to avoid them.
    pub ring_slots: Option<usize>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 0,
            tokens: Some(1_000_000),
            requests: None,
            rate: 20.0,
            prompt_median: 512,
            prompt_sigma: 1.0,
            output_median: 160,
            output_sigma: 0.9,
            max_prompt: 8192,
            max_output: 2048,
            max_batched_tokens: 2048,
            max_seqs: 64,
            kv_blocks: 5120,
            chunked_prefill: true,
            prefix_cache_rate: 0.3,
            top_k: Some(5),
            frontend: false,
            special_rate: 0.0,
            start_ns: 1_000_000_000,
            segment_bytes: 64 << 20,
            pace: None,
            ring_slots: None,
        }
    }
}

impl WorkloadConfig {
    /// Check that the config describes a workload that can run and end.
    pub fn validate(&self) -> Result<(), String> {
        let fraction = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be between 0 and 1, not {v}"))
            }
        };
        if self.tokens.is_none() && self.requests.is_none() {
            return Err("set a token limit or a request limit, or the workload never ends".into());
        }
        if let Some(pace) = self.pace {
            if !(pace.is_finite() && pace > 0.0) {
                return Err(format!("pace must be a positive number, not {pace}"));
            }
        }
        if self.ring_slots == Some(0) {
            return Err("the ring needs at least 1 slot".into());
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!("rate must be a positive number, not {}", self.rate));
        }
        for (name, v) in [
            ("prompt median", self.prompt_median),
            ("output median", self.output_median),
            ("max prompt", self.max_prompt),
            ("max output", self.max_output),
            ("max batched tokens", self.max_batched_tokens),
            ("max seqs", self.max_seqs),
            ("kv blocks", self.kv_blocks),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        for (name, v) in [
            ("prompt sigma", self.prompt_sigma),
            ("output sigma", self.output_sigma),
        ] {
            if !(v.is_finite() && (0.0..=4.0).contains(&v)) {
                return Err(format!("{name} must be between 0 and 4, not {v}"));
            }
        }
        fraction("prefix cache rate", self.prefix_cache_rate)?;
        fraction("special rate", self.special_rate)?;
        let longest = u64::from(self.max_prompt) + u64::from(self.max_output);
        let capacity = u64::from(self.kv_blocks) * u64::from(BLOCK_TOKENS);
        if capacity < longest {
            return Err(format!(
                "{} KV blocks hold {capacity} tokens, less than the longest request \
                 (max prompt {} + max output {} = {longest}); raise the blocks or lower the maxima",
                self.kv_blocks, self.max_prompt, self.max_output
            ));
        }
        if self.requests.is_some_and(|n| n > u64::from(u32::MAX)) {
            return Err("at most 2^32 - 1 requests".into());
        }
        if self.segment_bytes < 1 << 20 {
            return Err("segments must be at least 1 MiB".into());
        }
        Ok(())
    }
}

/// What [`generate`] produced.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Requests that arrived.
    pub requests: u64,
    /// Requests that finished.
    pub finished: u64,
    /// Engine steps.
    pub steps: u64,
    /// Tokens sampled.
    pub tokens: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Simulated time from the start to the end of the last step, ns.
    pub simulated_ns: u64,
    /// Wall-clock time the generation took.
    pub wall: Duration,
    /// Loss counters of the probes (engine and frontend added up): all zero
    /// unless something went wrong.
    pub drops: DropCounts,
    /// Both probes shut down cleanly.
    pub clean: bool,
    /// Bytes of segment files written.
    pub trace_bytes: u64,
    /// The engine's process directory.
    pub engine_dir: PathBuf,
    /// The frontend's process directory, when there is one.
    pub frontend_dir: Option<PathBuf>,
}

impl Summary {
    /// True when nothing was lost and the probes shut down cleanly.
    pub fn ok(&self) -> bool {
        self.clean && self.drops.records() == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wall = self.wall.as_secs_f64();
        write!(
            f,
            "requests={} finished={} steps={} tokens={} preemptions={} simulated_s={:.3} \
             wall_s={:.3} tokens_per_s={:.0} bytes={} bytes_per_token={:.2} ring_full={} \
             too_big={} write_failed={} tokens_lost={} clean={} dir={}",
            self.requests,
            self.finished,
            self.steps,
            self.tokens,
            self.preemptions,
            self.simulated_ns as f64 / 1e9,
            wall,
            self.tokens as f64 / wall.max(1e-9),
            self.trace_bytes,
            self.trace_bytes as f64 / (self.tokens.max(1)) as f64,
            self.drops.ring_full,
            self.drops.too_big,
            self.drops.write_failed,
            self.drops.tokens,
            self.clean,
            self.engine_dir.display()
        )?;
        if let Some(d) = &self.frontend_dir {
            write!(f, " frontend_dir={}", d.display())?;
        }
        Ok(())
    }
}

/// Simulate the workload and record it under the trace root `dir` (one
/// process directory per probe is created inside). Returns what was
/// produced; check [`Summary::ok`] for losses.
pub fn generate(config: &WorkloadConfig, dir: &Path) -> anyhow::Result<Summary> {
    config.validate().map_err(anyhow::Error::msg)?;
    let wall = Instant::now();
    let paced;
    let config = match config.pace {
        Some(_) => {
            paced = WorkloadConfig {
                start_ns: probe_core::clock::monotonic_ns(),
                ..config.clone()
            };
            &paced
        }
        None => config,
    };
    let mut recorder = record::Recorder::start(config, dir)?;
    let mut sim = Sim::new(config);
    let mut arrivals = Vec::new();
    let mut finished = Vec::new();
    let mut last_end = config.start_ns;
    let run = (|| -> anyhow::Result<()> {
        while config.tokens.map_or(true, |n| sim.tokens < n) {
            let mut step = recorder.take_step();
            let outcome = sim.step(&mut step, &mut arrivals, &mut finished)?;
            for a in arrivals.drain(..) {
                recorder.arrival(a);
            }
            if outcome == Outcome::Done {
                break;
            }
            last_end = step.end_ns;
            if let Some(speed) = config.pace {
                // Hand the step over when it would have ended.
                let due = wall
                    + Duration::from_secs_f64((step.end_ns - config.start_ns) as f64 / 1e9 / speed);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            recorder.step(step, &finished)?;
        }
        Ok(())
    })();
    let report = recorder.finish();
    run?;
    Ok(Summary {
        requests: sim.requests,
        finished: sim.finished,
        steps: sim.steps,
        tokens: sim.tokens,
        preemptions: sim.preemptions,
        simulated_ns: last_end - config.start_ns,
        wall: wall.elapsed(),
        drops: report.drops,
        clean: report.clean && report.refused == 0,
        trace_bytes: report.bytes,
        engine_dir: report.engine_dir,
        frontend_dir: report.frontend_dir,
    })
}
