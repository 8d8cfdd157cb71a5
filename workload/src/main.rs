//! `toktrace-workload`: record a synthetic continuous-batching engine's trace
//! through the real probe. See `--help` for the model and the step-time law.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use toktrace_workload::{generate, WorkloadConfig};

const ABOUT: &str = "Record a synthetic LLM engine's trace through the real toktrace probe.";

const LONG_ABOUT: &str = "\
Record a synthetic LLM engine's trace through the real toktrace probe.

Simulated time, not wall-clock: a million tokens take well under a second.
Requests arrive by a Poisson process (--rate); prompt and output lengths are
lognormal around their medians, clamped to 1..max. Each iteration a vLLM-like
scheduler runs the running requests first (one decode token each, or the next
prefill chunk), preempting the most recently admitted request when the KV
cache (--kv-blocks of 16 tokens) is full -- it goes back to the front of the
queue and later recomputes prompt + generated tokens as a prefill -- then
admits waiting requests first come, first served within the token budget
(--max-batched-tokens) and the running cap (--max-seqs). Some prompts hit the
prefix cache. A request samples its first token when its prefill completes,
then one per step, and finishes with Length at max_tokens (--max-output) or
Stop with EOS as its last token.

Step-time law (D decode tokens, P prefill tokens, ctx_mean/ctx_total the mean
and total context of the scheduled requests):
  t = [2.5 ms + 0.04 ms*D^0.85 + 0.015 ms*P^1.08*(1 + ctx_mean/8192)
       + 0.002 ms*sqrt(ctx_total)] * LogNormal(1, sigma 0.08)
      + hiccup (0.5% of steps: Pareto(5 ms, 1.5) capped at 30 ms)
  gap between steps: 120 us + Exp(30 us)
It is deliberately not linear, so an analyzer fitting a + b*D + c*P + d*ctx is
tested against a mis-specified truth.

Output: one process directory (role engine-core) under --dir, plus one with
role frontend with --frontend. Prints one summary line. The same flags and
--seed give the same records.

Exit codes: 0 ok, 1 failure (including any record dropped by the probe,
unless --ring-slots asked for a small ring), 2 bad command line.";

/// `--topk`: a number of candidates, or none.
#[derive(Debug, Clone, Copy)]
struct TopK(Option<u8>);

fn parse_topk(s: &str) -> Result<TopK, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(TopK(None));
    }
    match s.parse::<u8>() {
        Ok(k) if k <= 64 => Ok(TopK(Some(k))),
        _ => Err(format!("expected 0..=64 or none, not {s:?}")),
    }
}

#[derive(Parser, Debug)]
#[command(name = "toktrace-workload", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    /// Trace root: process directories are created inside.
    #[arg(long)]
    dir: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many sampled tokens (default 1000000 unless --requests is given).
    #[arg(long)]
    tokens: Option<u64>,
    /// Let this many requests arrive and run them all to completion.
    #[arg(long)]
    requests: Option<u64>,
    /// Mean arrival rate, requests per simulated second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Median prompt length, tokens (lognormal).
    #[arg(long, default_value_t = 512)]
    prompt_median: u32,
    /// Log-space sigma of the prompt length.
    #[arg(long, default_value_t = 1.0)]
    prompt_sigma: f64,
    /// Median output length, tokens (lognormal).
    #[arg(long, default_value_t = 160)]
    output_median: u32,
    /// Log-space sigma of the output length.
    #[arg(long, default_value_t = 0.9)]
    output_sigma: f64,
    /// Longest prompt, tokens.
    #[arg(long, default_value_t = 8192)]
    max_prompt: u32,
    /// Longest output, tokens; every request's max_tokens.
    #[arg(long, default_value_t = 2048)]
    max_output: u32,
    /// Token budget of one step.
    #[arg(long, default_value_t = 2048)]
    max_batched_tokens: u32,
    /// Most requests running at once.
    #[arg(long, default_value_t = 64)]
    max_seqs: u32,
    /// KV-cache blocks (16 tokens each); must hold max prompt + max output.
    #[arg(long, default_value_t = 5120)]
    kv_blocks: u32,
    /// Split prompts across steps when they exceed the remaining budget.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    chunked_prefill: bool,
    /// Fraction of requests whose prompt partly hits the prefix cache.
    #[arg(long, default_value_t = 0.3)]
    prefix_cache_rate: f64,
    /// Top-K candidates recorded per token, or none (ids only, no logprobs).
    #[arg(long, default_value = "5", value_parser = parse_topk, value_name = "N|none")]
    topk: TopK,
    /// Also record a frontend process streaming the tokens (emit records).
    #[arg(long)]
    frontend: bool,
    /// Fraction of requests with a BOS as first token or an EOS mid-answer.
    #[arg(long, default_value_t = 0.0)]
    special_rate: f64,
    /// Segment size, MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Write in real time: SPEED simulated seconds per wall second (1: an
    /// engine's pace), timestamps on this machine's monotonic clock, so
    /// `toktrace watch` can follow the trace as it would a live engine's.
    #[arg(long, value_name = "SPEED")]
    pace: Option<f64>,
    /// The engine probe's ring, records. A small ring drops records as an
    /// overloaded probe does; with it, drops are expected and exit 0.
    #[arg(long, value_name = "N")]
    ring_slots: Option<usize>,
}

impl Cli {
    fn config(&self) -> WorkloadConfig {
        let tokens = match (self.tokens, self.requests) {
            (None, None) => Some(1_000_000),
            (t, _) => t,
        };
        WorkloadConfig {
            seed: self.seed,
            tokens,
            requests: self.requests,
            rate: self.rate,
            prompt_median: self.prompt_median,
            prompt_sigma: self.prompt_sigma,
            output_median: self.output_median,
            output_sigma: self.output_sigma,
            max_prompt: self.max_prompt,
            max_output: self.max_output,
            max_batched_tokens: self.max_batched_tokens,
            max_seqs: self.max_seqs,
            kv_blocks: self.kv_blocks,
            chunked_prefill: self.chunked_prefill,
            prefix_cache_rate: self.prefix_cache_rate,
            top_k: self.topk.0,
            frontend: self.frontend,
            special_rate: self.special_rate,
            segment_bytes: self.segment_mib.saturating_mul(1 << 20),
            pace: self.pace,
            ring_slots: self.ring_slots,
            ..WorkloadConfig::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config();
    if let Err(msg) = config.validate() {
        eprintln!("toktrace-workload: {msg}");
        return ExitCode::from(2);
    }
    match generate(&config, &cli.dir) {
        Ok(summary) => {
            println!("{summary}");
            if summary.ok() || config.ring_slots.is_some() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "toktrace-workload: the probe lost {} records ({} tokens){}",
                    summary.drops.records(),
                    summary.drops.tokens,
                    if summary.clean {
                        ""
                    } else {
                        "; shutdown was not clean"
                    }
                );
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("toktrace-workload: {e:#}");
            ExitCode::from(1)
        }
    }
}
