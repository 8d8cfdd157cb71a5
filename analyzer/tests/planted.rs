//! Planted constructions with known answers, written through the real probe
//! and read back by the analyzer.
//!
//! The background engine's step time is deliberately not the analyzer's
//! linear form (a power law in the decode batch with multiplicative noise), so
//! a right answer is not right by construction.

use probe_core::event::{
    BatchEntry, ProcessInfo, Record, RequestArrival, RequestFinish, SamplingParams, SpecialTokens,
    Step, TokenRun,
};
use probe_core::{Probe, ProbeConfig};
use std::collections::BTreeMap;
use std::time::Duration;
use toktrace_analyzer::{load, Analysis, AnalyzeOptions, Detail, LoadOptions};

const BOS: u32 = 0;
const EOS: u32 = 1;

/// A tiny deterministic engine: requests with a prompt, decode one token per
/// step, and planted events.
struct Sim {
    probe: Probe,
    now: u64,
    step_id: u64,
    rng: u64,
    /// key -> (prompt left to prefill, tokens generated, tokens wanted)
    live: BTreeMap<u32, (u32, u32, u32)>,
    /// Planted token ids: (key, index) -> id.
    planted_ids: BTreeMap<(u32, u32), u32>,
    /// Planted: tokens whose id is outside their top-5.
    outside: Vec<(u32, u32)>,
    /// Planted: key -> the key whose prompt and answer it repeats.
    twin: BTreeMap<u32, u32>,
    /// Planted: (key, index) -> the sampled token's logprob (else -0.1).
    planted_logprobs: BTreeMap<(u32, u32), f32>,
    /// Planted: (key, first index, last index) whose top-1 candidate is unsure.
    unsure: Vec<(u32, u32, u32)>,
}

impl Sim {
    fn new(dir: &std::path::Path) -> Sim {
        let probe = Probe::start(ProbeConfig::new(dir)).expect("probe");
        probe.record(Record::Process(ProcessInfo {
            engine: "planted".into(),
            engine_version: "1".into(),
            special_tokens: SpecialTokens {
                bos: Some(BOS),
                eos: vec![EOS],
                pad: Some(2),
                all: vec![(0, "<s>".into()), (1, "</s>".into()), (2, "<pad>".into())],
            },
            role: "engine-core".into(),
            ..Default::default()
        }));
        Sim {
            probe,
            now: 1_000_000_000,
            step_id: 0,
            rng: 0x1234_5678,
            live: BTreeMap::new(),
            planted_ids: BTreeMap::new(),
            outside: Vec::new(),
            twin: BTreeMap::new(),
            planted_logprobs: BTreeMap::new(),
            unsure: Vec::new(),
        }
    }

    fn noise(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        // Uniform in [0.9, 1.1): multiplicative noise.
        0.9 + 0.2 * (self.rng % 10_000) as f64 / 10_000.0
    }

    fn arrive(&mut self, key: u32, prompt: u32, wanted: u32) {
        self.probe.record(Record::Arrival(RequestArrival {
            req: key,
            arrival_ns: self.now,
            internal_id: format!("req-{key}-internal"),
            external_id: Some(format!("R{key}")),
            trace_id: None,
            parent_span_id: None,
            prompt_tokens: prompt,
            params: SamplingParams {
                temperature: Some(0.0),
                logprobs: Some(5),
                ..Default::default()
            },
            prompt_hash: Some(probe_core::prompt::prompt_hash(&[self.answer_key(key)])),
            trace_top_k: None,
        }));
        self.live.insert(key, (prompt, 0, wanted));
    }

    /// The key whose answer request `key` gives (its own, unless a twin).
    fn answer_key(&self, key: u32) -> u32 {
        self.twin.get(&key).copied().unwrap_or(key)
    }

    /// One step. `prefill_time_ms` adds a planted prefill cost on top of the
    /// background law; `hold` keeps a request out of the batch (preempted,
    /// waiting).
    fn step(&mut self, prefill_ms: &BTreeMap<u32, f64>, hold: &[u32], preempt: &[u32]) {
        let mut s = Step {
            step_id: self.step_id,
            start_ns: self.now,
            ..Default::default()
        };
        let mut decode = 0u32;
        let mut extra_ms = 0.0;
        let keys: Vec<u32> = self.live.keys().copied().collect();
        for key in keys {
            if hold.contains(&key) {
                continue;
            }
            let (prompt_left, done, wanted) = self.live[&key];
            let entry = if prompt_left > 0 {
                extra_ms += prefill_ms
                    .get(&key)
                    .copied()
                    .unwrap_or(0.02 * f64::from(prompt_left));
                BatchEntry {
                    req: key,
                    prefill_tokens: prompt_left,
                    cached_tokens: 0,
                    decode_tokens: 0,
                }
            } else {
                decode += 1;
                BatchEntry {
                    req: key,
                    prefill_tokens: 0,
                    cached_tokens: 0,
                    decode_tokens: 1,
                }
            };
            s.batch.push(entry);
            // Every scheduled request samples one token (the first one after
            // its prefill, or its next decode token).
            let index = done;
            let id = self
                .planted_ids
                .get(&(key, index))
                .copied()
                .unwrap_or(10 + (index * 7 + self.answer_key(key)) % 500);
            s.tokens.runs.push(TokenRun {
                req: key,
                first_index: index,
                count: 1,
                top_k: Some(5),
            });
            s.tokens.ids.0.push(id);
            let unsure = self
                .unsure
                .iter()
                .any(|&(k, a, b)| k == key && (a..=b).contains(&index));
            // Unsure: the best candidate (the one sampled) at 10 %.
            let logprob = match self.planted_logprobs.get(&(key, index)) {
                Some(&l) => l,
                None if unsure => 0.1f32.ln(),
                None => -0.1,
            };
            s.tokens.logprobs.0.push(logprob);
            s.tokens.ranks.0.push(1);
            let outside = self.outside.contains(&(key, index));
            let top1 = logprob;
            for c in 0..5u32 {
                let cand = if c == 0 && !outside { id } else { 600 + c };
                s.tokens.top_ids.0.push(cand);
                s.tokens.top_logprobs.0.push(top1 - c as f32);
            }
            let e = self.live.get_mut(&key).expect("live");
            e.0 = 0;
            e.1 += 1;
            if e.1 >= wanted {
                s.finished.push(key);
            }
        }
        s.preempted.extend_from_slice(preempt);
        for key in preempt {
            // Recompute: the prompt and what was generated are prefilled again.
            if let Some(e) = self.live.get_mut(key) {
                e.0 = 64 + e.1;
            }
        }
        // Background law: 8 ms · decode^0.6, noisy; planted prefill on top.
        let ms = (8.0 * f64::from(decode.max(1)).powf(0.6) + extra_ms) * self.noise();
        self.now += (ms * 1e6) as u64;
        s.end_ns = self.now;
        s.running = self.live.len() as u32;
        for key in &s.finished {
            let done = self.live.remove(key).map_or(0, |e| e.1);
            self.probe.record(Record::Finish(RequestFinish {
                req: *key,
                time_ns: self.now,
                reason: Some(probe_core::event::FinishReason::Length),
                output_tokens: Some(done),
            }));
        }
        self.probe.record(Record::Step(s));
        self.step_id += 1;
        self.now += 200_000; // the engine's pause between steps
    }

    fn finish(mut self) {
        assert!(self.probe.shutdown(Duration::from_secs(30)).clean);
    }
}

fn analyze(dir: &std::path::Path) -> Analysis {
    let data = load(
        dir,
        &LoadOptions {
            detail: Detail::All,
            decode_slices: true,
            ..Default::default()
        },
    )
    .expect("load");
    Analysis::new(data, &AnalyzeOptions::default())
}

fn id_of(a: &Analysis, name: &str) -> u32 {
    let found = a.find(name);
    assert_eq!(found.len(), 1, "{name}: {found:?}");
    found[0]
}

/// A 6-second prefill of R1 co-scheduled with token 125 of R2 (and of three
/// other decoders): R2's token 125 is its slowest, and R1 carries ≥ 90 % of
/// its excess.
#[test]
fn a_long_prefill_is_named_as_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::new(dir.path());
    let none = BTreeMap::new();
    for key in 2..=5 {
        sim.arrive(key, 40 + key * 10, 300);
    }
    // Small prefills now and then keep the model honest about prefill cost.
    let mut step = 0;
    while sim.live.get(&2).map_or(0, |e| e.1) < 125 {
        if step % 30 == 10 {
            sim.arrive(100 + step, 200, 5);
        }
        sim.step(&none, &[], &[]);
        step += 1;
    }
    sim.arrive(1, 6000, 3);
    sim.step(&[(1, 6000.0)].into_iter().collect(), &[], &[]);
    for _ in 0..40 {
        sim.step(&none, &[], &[]);
    }
    sim.finish();

    let a = analyze(dir.path());
    let r2 = id_of(&a, "R2");
    let r1 = id_of(&a, "R1");
    let row = a.request_row(r2);
    assert_eq!(row.max_itl_index, Some(125), "{row:?}");
    assert!(row.max_itl_ms.unwrap() > 5000.0, "{row:?}");
    let report = a.request_interference(r2);
    let slowest = &report.slow_tokens[0];
    assert_eq!(slowest.index, 125, "{report:?}");
    let culprit = &slowest.culprits[0];
    assert_eq!(culprit.request_id, "R1");
    assert!(culprit.share >= 0.9, "{report:?}");
    assert_eq!(row.top_culprits[0].request_id, "R1");
    // The trace-level ranking puts R1 first, having delayed all four decoders.
    assert_eq!(a.offenders[0].request, r1);
    assert_eq!(a.offenders[0].victims, 4);
    // Only that token is a stall of R2.
    assert_eq!(row.stalls, 1, "{report:?}");
}

/// R3 is preempted while R9's long prompt runs, and resumes later: it is
/// counted, flagged, and the wait is laid at R9's door as a preemption.
#[test]
fn a_preemption_and_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::new(dir.path());
    let none = BTreeMap::new();
    for key in 3..=6 {
        sim.arrive(key, 32, 200);
    }
    for _ in 0..30 {
        sim.step(&none, &[], &[]);
    }
    sim.arrive(9, 3000, 20);
    // The step that admits R9 preempts R3 for the KV blocks.
    sim.step(&[(9, 900.0)].into_iter().collect(), &[3], &[3]);
    for _ in 0..10 {
        sim.step(&none, &[3], &[]);
    }
    for _ in 0..20 {
        sim.step(&none, &[], &[]);
    }
    sim.finish();

    let a = analyze(dir.path());
    let r3 = id_of(&a, "R3");
    let row = a.request_row(r3);
    assert_eq!(row.preemptions, 1);
    assert!(row.flags.contains(&"preempted"), "{row:?}");
    assert_eq!(row.max_itl_index, Some(30), "{row:?}");
    let report = a.request_interference(r3);
    let slowest = &report.slow_tokens[0];
    assert_eq!(slowest.index, 30);
    let c = &slowest.culprits[0];
    assert_eq!(c.request_id, "R9", "{report:?}");
    assert_eq!(
        serde_json::to_value(c.cause).unwrap(),
        serde_json::json!("preemption")
    );
    assert!(c.share >= 0.9, "{report:?}");
}

/// A BOS as the first output token and a token sampled outside its top-K are
/// flagged; a final EOS is not.
#[test]
fn accuracy_flags() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::new(dir.path());
    let none = BTreeMap::new();
    sim.planted_ids.insert((7, 0), BOS);
    sim.planted_ids.insert((8, 4), 77);
    sim.outside.push((8, 4));
    sim.planted_ids.insert((10, 5), EOS); // final token of R10: its stop
    sim.arrive(7, 20, 6);
    sim.arrive(8, 20, 6);
    sim.arrive(10, 20, 6);
    for _ in 0..8 {
        sim.step(&none, &[], &[]);
    }
    sim.finish();

    let a = analyze(dir.path());
    let r7 = a.request_row(id_of(&a, "R7"));
    assert_eq!(r7.flags, vec!["special_token_in_output"], "{r7:?}");
    let tokens = a.token_rows(id_of(&a, "R7"));
    assert!(tokens[0].special);
    assert_eq!(tokens[0].token_id, Some(BOS));
    let r8 = a.request_row(id_of(&a, "R8"));
    assert_eq!(r8.flags, vec!["sampled_outside_top_k"], "{r8:?}");
    let r10 = a.request_row(id_of(&a, "R10"));
    assert!(r10.flags.is_empty(), "{r10:?}");
}

/// Same prompt, greedy: the twin that answers alike is not flagged; the one
/// that takes another token at 5, and the one whose logprob moves at 3, are,
/// with the step, its batch and who was in it.
#[test]
fn batch_variance_names_where_same_prompt_answers_parted() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::new(dir.path());
    let none = BTreeMap::new();
    for twin in [21, 22, 23] {
        sim.twin.insert(twin, 20);
    }
    sim.planted_ids.insert((22, 5), 499);
    sim.planted_logprobs.insert((23, 3), -0.1 + 1e-3);
    // Within the tolerance: not a parting.
    sim.planted_logprobs.insert((21, 2), -0.1 + 1e-6);
    sim.arrive(20, 20, 8);
    for _ in 0..2 {
        sim.step(&none, &[], &[]);
    }
    sim.arrive(21, 20, 8);
    sim.arrive(22, 20, 8);
    sim.arrive(23, 20, 8);
    sim.arrive(30, 20, 12);
    for _ in 0..14 {
        sim.step(&none, &[], &[]);
    }
    sim.finish();

    let a = analyze(dir.path());
    let variance = |id: &str| -> Vec<String> {
        a.reports[id_of(&a, id) as usize]
            .flags
            .iter()
            .filter(|f| f.name == "batch_variance")
            .map(|f| f.detail.clone())
            .collect()
    };
    assert!(variance("R20").is_empty() && variance("R21").is_empty());
    assert!(variance("R30").is_empty(), "another prompt");
    let [r22] = variance("R22").try_into().expect("one flag on R22");
    assert!(
        r22.contains("parted at token 5: token 499 where R20 has"),
        "{r22}"
    );
    // R22's token 5 came out of step 7 (arrived before step 2; prefill first),
    // in a batch of 5 with R20, R21, R23 and R30.
    assert!(
        r22.contains("this request in step 7 (batch of 5, with R20, R21, R23, R30)"),
        "{r22}"
    );
    assert!(r22.contains("R20 in step 5 (batch of 5,"), "{r22}");
    let [r23] = variance("R23").try_into().expect("one flag on R23");
    assert!(r23.contains("parted at token 3: the same token"), "{r23}");

    // Without the tokens kept by the load, the flag still comes (from the
    // digests), and the trace read again says where.
    let light = load(dir.path(), &LoadOptions::default()).expect("load");
    let mut b = Analysis::new(light, &AnalyzeOptions::default());
    let r22_light = &b.reports[id_of(&b, "R22") as usize].flags;
    assert!(r22_light
        .iter()
        .any(|f| f.name == "batch_variance" && f.detail.contains("not read")));
    toktrace_analyzer::variance::locate_in_dir(&mut b, dir.path()).expect("locate");
    let located: Vec<&str> = b.reports[id_of(&b, "R22") as usize]
        .flags
        .iter()
        .filter(|f| f.name == "batch_variance")
        .map(|f| f.detail.as_str())
        .collect();
    assert_eq!(located, [r22.as_str()]);
}

/// Eight unsure tokens in a row make `low_confidence`; seven do not, and
/// the thresholds are the load's to set.
#[test]
fn low_confidence_needs_a_stretch() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::new(dir.path());
    let none = BTreeMap::new();
    sim.unsure.push((40, 2, 9));
    sim.unsure.push((41, 2, 8));
    // NaN logprobs are corrupt output, not doubt: their own flag.
    for i in 2..12 {
        sim.planted_logprobs.insert((42, i), f32::NAN);
    }
    sim.arrive(40, 20, 14);
    sim.arrive(41, 20, 14);
    sim.arrive(42, 20, 14);
    for _ in 0..16 {
        sim.step(&none, &[], &[]);
    }
    sim.finish();

    let a = analyze(dir.path());
    let flags = |a: &Analysis, id: &str| -> Vec<String> {
        a.reports[id_of(a, id) as usize]
            .flags
            .iter()
            .filter(|f| f.name == "low_confidence")
            .map(|f| f.detail.clone())
            .collect()
    };
    let [r40] = flags(&a, "R40").try_into().expect("R40 flagged");
    assert!(r40.starts_with("8 tokens in a row from token 2"), "{r40}");
    assert!(r40.contains("lowest 10.0 %"), "{r40}");
    assert!(flags(&a, "R41").is_empty());
    assert!(flags(&a, "R42").is_empty());
    let nan: Vec<&str> = a.reports[id_of(&a, "R42") as usize]
        .flags
        .iter()
        .filter(|f| f.name == "nan_logprobs")
        .map(|f| f.detail.as_str())
        .collect();
    assert!(
        nan.len() == 1 && nan[0].starts_with("10 tokens had NaN logprobs (first at token 2)"),
        "{nan:?}"
    );
    // A stricter probability: no token is that unsure.
    let strict = load(
        dir.path(),
        &LoadOptions {
            low_confidence: toktrace_analyzer::load::LowConfidence {
                below: 0.05,
                tokens: 8,
            },
            ..Default::default()
        },
    )
    .expect("load");
    let b = Analysis::new(strict, &AnalyzeOptions::default());
    assert!(flags(&b, "R40").is_empty());
}
