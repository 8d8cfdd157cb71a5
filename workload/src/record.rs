//! Writing the simulation through the real probe.
//!
//! The engine core records into one [`Probe`] (role `engine-core`); with a
//! frontend, a second probe (role `frontend`) records what an API server
//! would: the same requests arriving 0.3–1.5 ms earlier under the same
//! external ids, the tokens it streams (one emit batch per engine step,
//! 0.2–2 ms after the step's end, each later than the previous batch), and
//! each request's end. Both probes live in this process; each has its own
//! process directory (the name includes the writer's start time, and a clash
//! is detected and retried).
//!
//! Recording never blocks, and a full ring drops: to lose nothing, the
//! recorder waits for both drains every few thousand records
//! ([`Probe::flush`]), which bounds what is ever queued far below the ring's
//! capacity. Whatever was dropped anyway is reported by [`Recorder::finish`].

use crate::rng::Rng;
use crate::sim::Finished;
use crate::tokens::{BOS, EOS, PAD};
use crate::WorkloadConfig;
use anyhow::Context;
use probe_core::event::{
    CaptureLevel, DropCounts, Emit, EmitBatch, ProcessInfo, Record, ReqKey, RequestArrival,
    RequestFinish, SpecialTokens, Step,
};
use probe_core::{FsyncPolicy, Probe, ProbeConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Records queued between two waits for the drains.
const FLUSH_EVERY_RECORDS: u64 = 8_192;
/// Tokens queued between two waits for the drains.
const FLUSH_EVERY_TOKENS: u64 = 65_536;
/// Longest wait for a drain.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// What the probes reported when they were shut down.
#[derive(Debug, Clone)]
pub struct RecordReport {
    /// Loss counters, engine and frontend added up.
    pub drops: DropCounts,
    /// Records the probes refused (should equal `drops.records()`).
    pub refused: u64,
    /// Both drains finished in time.
    pub clean: bool,
    /// The engine's process directory.
    pub engine_dir: PathBuf,
    /// The frontend's process directory.
    pub frontend_dir: Option<PathBuf>,
    /// Bytes of segment files written.
    pub bytes: u64,
}

struct Frontend {
    probe: Probe,
    rng: Rng,
    last_emit_ns: u64,
    /// Requests in flight: last emit time and tokens emitted.
    streams: HashMap<ReqKey, (u64, u32)>,
}

/// The probes and the bookkeeping that keeps them from dropping.
pub struct Recorder {
    engine: Probe,
    frontend: Option<Frontend>,
    queued_records: u64,
    queued_tokens: u64,
    refused: u64,
    /// A small ring was asked for: records may drop, and are counted.
    lossy: bool,
}

fn probe_config(cfg: &WorkloadConfig, root: &Path, role: &str) -> ProbeConfig {
    let mut pc = ProbeConfig::new(root);
    pc.writer.role = role.into();
    pc.writer.segment_bytes = cfg.segment_bytes;
    pc.writer.disk_budget_bytes = u64::MAX;
    pc.writer.fsync = FsyncPolicy::Never;
    pc.on_error = std::sync::Arc::new(|msg| eprintln!("toktrace-workload: {msg}"));
    if role == "engine-core" {
        if let Some(slots) = cfg.ring_slots {
            pc.ring_slots = slots;
        }
    }
    pc
}

/// The process info of the synthetic engine (or its frontend).
pub fn process_info(cfg: &WorkloadConfig, role: &str) -> ProcessInfo {
    let on_off = |b: bool| if b { "true" } else { "false" }.to_string();
    ProcessInfo {
        engine: "synthetic".into(),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        model_name: Some("synthetic-model".into()),
        model_path: None,
        special_tokens: SpecialTokens {
            bos: Some(BOS),
            eos: vec![EOS],
            pad: Some(PAD),
            all: vec![
                (BOS, "<s>".into()),
                (EOS, "</s>".into()),
                (PAD, "<pad>".into()),
            ],
        },
        capture: CaptureLevel::Tokens,
        top_k_cap: cfg.top_k.map_or(0, u32::from),
        role: role.into(),
        rank: None,
        extra: vec![
            ("generator".into(), "toktrace-workload".into()),
            ("seed".into(), cfg.seed.to_string()),
            ("rate".into(), cfg.rate.to_string()),
            (
                "max_batched_tokens".into(),
                cfg.max_batched_tokens.to_string(),
            ),
            ("max_seqs".into(), cfg.max_seqs.to_string()),
            ("kv_blocks".into(), cfg.kv_blocks.to_string()),
            ("block_tokens".into(), crate::sim::BLOCK_TOKENS.to_string()),
            ("chunked_prefill".into(), on_off(cfg.chunked_prefill)),
            ("step_time_law".into(), crate::law::LAW_TEXT.into()),
        ],
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl Recorder {
    /// Start the probes under `root` and record the process info.
    pub fn start(cfg: &WorkloadConfig, root: &Path) -> anyhow::Result<Recorder> {
        let engine = Probe::start(probe_config(cfg, root, "engine-core"))
            .context("cannot start the engine probe")?;
        let frontend = if cfg.frontend {
            let mut tries = 0;
            let probe = loop {
                let p = Probe::start(probe_config(cfg, root, "frontend"))
                    .context("cannot start the frontend probe")?;
                if p.dir() != engine.dir() {
                    break p;
                }
                // Same start nanosecond as the engine's writer: try again.
                drop(p);
                tries += 1;
                anyhow::ensure!(tries < 1000, "cannot give the frontend its own directory");
                std::thread::sleep(Duration::from_micros(10));
            };
            Some(Frontend {
                probe,
                rng: Rng::new(cfg.seed, 4),
                last_emit_ns: 0,
                streams: HashMap::new(),
            })
        } else {
            None
        };
        let mut rec = Recorder {
            engine,
            frontend,
            queued_records: 0,
            queued_tokens: 0,
            refused: 0,
            lossy: cfg.ring_slots.is_some(),
        };
        rec.put_engine(Record::Process(process_info(cfg, "engine-core")));
        if rec.frontend.is_some() {
            rec.put_frontend(Record::Process(process_info(cfg, "frontend")));
        }
        Ok(rec)
    }

    fn put_engine(&mut self, r: Record) {
        if !self.engine.record(r) {
            self.refused += 1;
        }
        self.queued_records += 1;
    }

    fn put_frontend(&mut self, r: Record) {
        if let Some(f) = &self.frontend {
            if !f.probe.record(r) {
                self.refused += 1;
            }
            self.queued_records += 1;
        }
    }

    /// An empty, recycled step buffer from the engine probe.
    pub fn take_step(&self) -> Step {
        self.engine.take_step()
    }

    /// A request arrived at the engine (and, a little earlier, at the frontend).
    pub fn arrival(&mut self, arrival: RequestArrival) {
        if let Some(f) = &mut self.frontend {
            let delay = f.rng.range(300_000.0, 1_500_000.0) as u64;
            let external = arrival
                .external_id
                .clone()
                .unwrap_or_else(|| arrival.internal_id.clone());
            // Like vLLM's output processor, the frontend knows both ids; the
            // analyzer joins the two processes on the internal one.
            let fe = RequestArrival {
                arrival_ns: arrival.arrival_ns.saturating_sub(delay),
                internal_id: arrival.internal_id.clone(),
                external_id: Some(external),
                ..arrival.clone()
            };
            f.streams.insert(fe.req, (0, 0));
            self.put_frontend(Record::Arrival(fe));
        }
        self.put_engine(Record::Arrival(arrival));
    }

    /// Record a simulated step, the requests it finished and the frontend's
    /// emits of its tokens.
    pub fn step(&mut self, step: Step, finished: &[Finished]) -> anyhow::Result<()> {
        let end = step.end_ns;
        let tokens = step.tokens.len() as u64;
        let emits = self.frontend.as_mut().map(|f| {
            let base =
                (end + f.rng.range(200_000.0, 2_000_000.0) as u64).max(f.last_emit_ns + 1_000);
            let mut batch = EmitBatch {
                emits: Vec::with_capacity(step.tokens.runs.len()),
            };
            for (j, run) in step.tokens.runs.iter().enumerate() {
                let time_ns = base + 2_000 * j as u64;
                batch.emits.push(Emit {
                    req: run.req,
                    first_index: run.first_index,
                    count: run.count,
                    time_ns,
                });
                if let Some(s) = f.streams.get_mut(&run.req) {
                    *s = (time_ns, s.1 + run.count);
                }
                f.last_emit_ns = time_ns;
            }
            batch
        });
        self.put_engine(Record::Step(step));
        for fin in finished {
            self.put_engine(Record::Finish(RequestFinish {
                req: fin.req,
                time_ns: end,
                reason: Some(fin.reason.clone()),
                output_tokens: Some(fin.output_tokens),
            }));
        }
        if let Some(batch) = emits {
            if !batch.emits.is_empty() {
                self.put_frontend(Record::Emit(batch));
            }
            for fin in finished {
                let Some(f) = &mut self.frontend else { break };
                let Some((last, count)) = f.streams.remove(&fin.req) else {
                    continue;
                };
                self.put_frontend(Record::Finish(RequestFinish {
                    req: fin.req,
                    time_ns: last,
                    reason: Some(fin.reason.clone()),
                    output_tokens: Some(count),
                }));
            }
        }
        self.queued_tokens += tokens;
        // With a ring chosen small on purpose, losses are the point: never wait.
        if self.lossy {
            return Ok(());
        }
        if self.queued_records >= FLUSH_EVERY_RECORDS || self.queued_tokens >= FLUSH_EVERY_TOKENS {
            self.flush()?;
        }
        Ok(())
    }

    /// Wait until the drains have written everything queued.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.engine.flush(FLUSH_TIMEOUT),
            "the engine probe's drain did not catch up within {FLUSH_TIMEOUT:?}"
        );
        if let Some(f) = &self.frontend {
            anyhow::ensure!(
                f.probe.flush(FLUSH_TIMEOUT),
                "the frontend probe's drain did not catch up within {FLUSH_TIMEOUT:?}"
            );
        }
        self.queued_records = 0;
        self.queued_tokens = 0;
        Ok(())
    }

    /// Shut both probes down and report their losses and output.
    pub fn finish(mut self) -> RecordReport {
        let e = self.engine.shutdown(FLUSH_TIMEOUT);
        let mut drops = e.drops;
        let mut clean = e.clean;
        let engine_dir = self.engine.dir().to_path_buf();
        let mut bytes = dir_bytes(&engine_dir);
        let mut frontend_dir = None;
        if let Some(mut f) = self.frontend.take() {
            let r = f.probe.shutdown(FLUSH_TIMEOUT);
            clean &= r.clean;
            drops.ring_full += r.drops.ring_full;
            drops.too_big += r.drops.too_big;
            drops.write_failed += r.drops.write_failed;
            drops.tokens += r.drops.tokens;
            let dir = f.probe.dir().to_path_buf();
            bytes += dir_bytes(&dir);
            frontend_dir = Some(dir);
        }
        RecordReport {
            drops,
            refused: self.refused,
            clean,
            engine_dir,
            frontend_dir,
            bytes,
        }
    }
}
