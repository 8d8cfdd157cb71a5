//! Deterministic synthetic records, for tests, benchmarks and demos.
//!
//! Every value is a pure function of its arguments, so a test can regenerate
//! what a killed writer was asked to record and compare it byte for byte with
//! what the reader got back.

use crate::event::{
    BatchEntry, CaptureLevel, ProcessInfo, Record, RequestArrival, SamplingParams, SpecialTokens,
    Step, TokenRun,
};

/// Vocabulary size of the synthetic model (a realistic 3-byte token id).
pub const VOCAB: u32 = 151_936;

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: cheap, well spread, deterministic.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A decode step: `batch` requests, one sampled token each, `top_k` candidates
/// per token (`None`: no logprob data). Request keys are `0..batch`.
pub fn step(step_id: u64, batch: u32, top_k: Option<u8>) -> Step {
    let n = batch as usize;
    let k = top_k.map_or(0, usize::from);
    let mut s = Step {
        step_id,
        start_ns: 1_000_000 + step_id * 10_000,
        end_ns: 1_000_000 + step_id * 10_000 + 8_000,
        waiting: (step_id % 7) as u32,
        running: batch,
        kv_usage: Some((step_id % 100) as f32 / 100.0),
        batch: Vec::with_capacity(n),
        preempted: Vec::new(),
        finished: Vec::new(),
        tokens: Default::default(),
    };
    let t = &mut s.tokens;
    t.runs.reserve(n);
    t.ids.0.reserve(n);
    for r in 0..batch {
        s.batch.push(BatchEntry {
            req: r,
            prefill_tokens: 0,
            cached_tokens: 0,
            decode_tokens: 1,
        });
        t.runs.push(TokenRun {
            req: r,
            first_index: step_id as u32,
            count: 1,
            top_k,
        });
        let h = mix(step_id << 20 | u64::from(r));
        let id = (h % u64::from(VOCAB)) as u32;
        t.ids.0.push(id);
        if top_k.is_some() {
            t.logprobs.0.push(-((h >> 40) as f32) / 1e6);
            t.ranks.0.push(1 + (h % 3) as u32);
            for c in 0..k {
                let hc = mix(h ^ c as u64);
                t.top_ids.0.push((hc % u64::from(VOCAB)) as u32);
                t.top_logprobs
                    .0
                    .push(-(c as f32) - ((hc >> 44) as f32) / 1e6);
            }
        }
    }
    s
}

/// The process info of the synthetic engine.
pub fn process_info() -> ProcessInfo {
    ProcessInfo {
        engine: "synthetic".into(),
        engine_version: crate::PROBE_VERSION.into(),
        model_name: Some("synthetic-tiny".into()),
        model_path: None,
        special_tokens: SpecialTokens {
            bos: Some(1),
            eos: vec![2],
            pad: Some(0),
            all: vec![(0, "<pad>".into()), (1, "<s>".into()), (2, "</s>".into())],
        },
        capture: CaptureLevel::Tokens,
        top_k_cap: 20,
        role: "synthetic".into(),
        rank: None,
        extra: Vec::new(),
    }
}

/// Arrival of synthetic request `req`.
pub fn arrival(req: u32) -> Record {
    Record::Arrival(RequestArrival {
        req,
        arrival_ns: 1_000 * u64::from(req),
        internal_id: format!("cmpl-{req}-0a1b2c3d"),
        external_id: Some(format!("cmpl-{req}")),
        trace_id: Some([req as u8; 16]),
        parent_span_id: Some([7; 8]),
        prompt_tokens: 16 + req % 100,
        params: SamplingParams {
            temperature: Some(0.7),
            top_p: Some(0.9),
            top_k: Some(-1),
            max_tokens: Some(128),
            logprobs: Some(5),
            seed: None,
        },
        // Every tenth prompt is repeated: same-prompt requests for the analyzer.
        prompt_hash: Some(crate::prompt::prompt_hash(&[req / 10 * 10])),
        trace_top_k: None,
    })
}

/// The uid of a second local user, for tests of what toktrace does with
/// another user's files: `toktrace-other`, made with `useradd` when missing.
/// None when it is missing and this process cannot make it (not root). CI runs
/// as root, where a permission check proves nothing: ownership is what counts.
pub fn second_user() -> Option<u32> {
    use std::process::Command;
    const NAME: &str = "toktrace-other";
    let uid = || -> Option<u32> {
        let out = Command::new("id").args(["-u", NAME]).output().ok()?;
        out.status.success().then_some(())?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if let Some(u) = uid() {
        return Some(u);
    }
    if crate::files::effective_uid() != 0 {
        return None;
    }
    // Tests may race to make it: one succeeds, and every look-up follows.
    let _ = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            NAME,
        ])
        .status();
    uid()
}
