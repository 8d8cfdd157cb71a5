//! Generate small workloads through the real probe, read them back with the
//! real reader, and check what an analyzer relies on.

use probe_core::event::{FinishReason, Record, RequestArrival};
use probe_core::reader::{read_trace, ProcessTrace, Trace};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use toktrace_workload::tokens::{BOS, EOS};
use toktrace_workload::{generate, Summary, WorkloadConfig};

fn small(tokens: u64) -> WorkloadConfig {
    WorkloadConfig {
        seed: 42,
        tokens: Some(tokens),
        rate: 40.0,
        prompt_median: 300,
        output_median: 120,
        max_prompt: 4096,
        max_output: 512,
        ..WorkloadConfig::default()
    }
}

fn run(cfg: &WorkloadConfig, dir: &Path) -> (Summary, Trace) {
    let summary = generate(cfg, dir).expect("generate");
    assert!(summary.ok(), "losses or unclean shutdown: {summary}");
    assert_eq!(summary.drops.records(), 0);
    let trace = read_trace(dir).expect("read back");
    assert!(
        trace.all_warnings().is_empty(),
        "{:?}",
        trace.all_warnings()
    );
    (summary, trace)
}

fn process<'a>(trace: &'a Trace, role: &str) -> &'a ProcessTrace {
    trace
        .processes
        .iter()
        .find(|p| p.process_info().is_some_and(|i| i.role == role))
        .unwrap_or_else(|| panic!("no {role} process"))
}

#[derive(Default)]
struct ReqState {
    arrival_ns: u64,
    prompt: u32,
    max_tokens: u32,
    next_index: u32,
    /// Prefill + cached tokens since the last (re)admission.
    episode: u64,
    /// Sequence length to recompute after the last preemption.
    episode_target: u64,
    preemptions: u32,
    finished: bool,
    last_id: Option<u32>,
    first_id: Option<u32>,
    eos_before_last: bool,
}

#[derive(Default, Debug)]
struct Stats {
    steps: u64,
    tokens: u64,
    preemptions: u64,
    finished: u64,
    requests: u64,
    over_budget_steps: u64,
    prefill_entries: u64,
    cached_entries: u64,
    bos_first: u64,
    eos_mid: u64,
    /// Exit time of every token, for the frontend check.
    exits: HashMap<(u32, u32), u64>,
    arrivals: HashMap<u32, RequestArrival>,
    outputs: HashMap<u32, u32>,
}

/// Walk the engine's records in order and check every invariant.
fn check_engine(p: &ProcessTrace, cfg: &WorkloadConfig) -> Stats {
    let mut st = Stats::default();
    let mut reqs: HashMap<u32, ReqState> = HashMap::new();
    let mut pending_finish: HashSet<u32> = HashSet::new();
    let mut last_end = 0u64;
    let mut next_step_id = 0u64;
    let info = p.process_info().expect("process info");
    assert_eq!(info.engine, "synthetic");
    assert_eq!(info.model_name.as_deref(), Some("synthetic-model"));
    assert_eq!(info.special_tokens.eos, vec![EOS]);
    assert_eq!(info.special_tokens.bos, Some(BOS));
    for record in p.records() {
        match record {
            Record::Arrival(a) => {
                if let Some(prev) = st.arrivals.get(&a.req) {
                    assert_eq!(prev, a, "a repeated arrival must be identical");
                    continue;
                }
                assert!(a.arrival_ns >= cfg.start_ns);
                assert_eq!(
                    a.external_id.as_deref(),
                    Some(format!("req-{}", a.req).as_str())
                );
                assert!(a.internal_id.starts_with(&format!("req-{}-", a.req)));
                assert_eq!(a.params.logprobs, cfg.top_k.map(u32::from));
                assert!(a.prompt_tokens >= 1 && a.prompt_tokens <= cfg.max_prompt);
                reqs.insert(
                    a.req,
                    ReqState {
                        arrival_ns: a.arrival_ns,
                        prompt: a.prompt_tokens,
                        max_tokens: a.params.max_tokens.expect("max_tokens"),
                        episode_target: u64::from(a.prompt_tokens),
                        ..Default::default()
                    },
                );
                st.arrivals.insert(a.req, a.clone());
                st.requests += 1;
            }
            Record::Step(s) => {
                assert!(
                    pending_finish.is_empty(),
                    "finish records follow their step"
                );
                assert_eq!(s.step_id, next_step_id);
                next_step_id += 1;
                assert!(s.start_ns < s.end_ns, "step {} has no duration", s.step_id);
                assert!(
                    s.start_ns > last_end,
                    "step {} overlaps the previous one",
                    s.step_id
                );
                last_end = s.end_ns;
                st.steps += 1;
                s.tokens.check().expect("token columns agree");
                let kv = s.kv_usage.expect("kv usage");
                assert!((0.0..=1.0).contains(&kv));
                assert!(s.running <= cfg.max_seqs);
                for k in &s.preempted {
                    let r = reqs.get_mut(k).expect("preempted request arrived");
                    assert!(!r.finished);
                    r.episode = 0;
                    r.episode_target = u64::from(r.prompt) + u64::from(r.next_index);
                    r.preemptions += 1;
                    st.preemptions += 1;
                }
                let mut in_batch = HashSet::new();
                let mut expect_token = HashSet::new();
                let mut budget_used = 0u64;
                let mut prefill_in_step = 0u64;
                for e in &s.batch {
                    assert!(in_batch.insert(e.req), "request twice in a batch");
                    assert!(!s.preempted.contains(&e.req), "preempted request scheduled");
                    let r = reqs.get_mut(&e.req).expect("scheduled request arrived");
                    assert!(r.arrival_ns <= s.start_ns, "scheduled before arrival");
                    assert!(!r.finished);
                    assert!(
                        (e.prefill_tokens > 0) != (e.decode_tokens > 0),
                        "an entry is prefill or decode: {e:?}"
                    );
                    if e.decode_tokens > 0 {
                        assert_eq!(e.decode_tokens, 1);
                        assert_eq!(e.cached_tokens, 0);
                        assert_eq!(r.episode, r.episode_target, "decode before prefill done");
                        expect_token.insert(e.req);
                    } else {
                        st.prefill_entries += 1;
                        st.cached_entries += u64::from(e.cached_tokens > 0);
                        if e.cached_tokens > 0 {
                            assert_eq!(r.episode, 0, "cached tokens only on the first chunk");
                            assert_eq!(r.preemptions, 0, "recompute does not hit the cache");
                            assert_eq!(e.cached_tokens % 16, 0);
                        }
                        r.episode += u64::from(e.prefill_tokens) + u64::from(e.cached_tokens);
                        assert!(r.episode <= r.episode_target, "prefill beyond the prompt");
                        if r.episode == r.episode_target {
                            expect_token.insert(e.req);
                        }
                        prefill_in_step += u64::from(e.prefill_tokens);
                    }
                    budget_used += u64::from(e.prefill_tokens + e.decode_tokens);
                }
                if cfg.chunked_prefill {
                    assert!(budget_used <= u64::from(cfg.max_batched_tokens));
                } else if budget_used > u64::from(cfg.max_batched_tokens) {
                    st.over_budget_steps += 1;
                    assert!(prefill_in_step > 0);
                }
                let mut got_token = HashSet::new();
                for v in s.tokens.iter() {
                    assert!(got_token.insert(v.req), "one token per request per step");
                    let r = reqs.get_mut(&v.req).expect("token of an arrived request");
                    assert_eq!(v.index, r.next_index, "token indices are contiguous");
                    let id = v.token_id.expect("ids recorded");
                    if r.next_index == 0 {
                        r.first_id = Some(id);
                        st.bos_first += u64::from(id == BOS);
                    }
                    if r.last_id == Some(EOS) {
                        r.eos_before_last = true;
                    }
                    r.last_id = Some(id);
                    r.next_index += 1;
                    st.tokens += 1;
                    st.exits.insert((v.req, v.index), s.end_ns);
                    match cfg.top_k {
                        None => {
                            assert!(v.logprob.is_none() && v.top_ids.is_empty());
                        }
                        Some(k) => {
                            let (lp, rank) = (v.logprob.expect("logprob"), v.rank.expect("rank"));
                            assert!(lp < 0.0);
                            assert_eq!(v.top_ids.len(), usize::from(k));
                            assert!(v.top_logprobs.windows(2).all(|w| w[0] > w[1]));
                            let distinct: HashSet<_> = v.top_ids.iter().collect();
                            assert_eq!(distinct.len(), v.top_ids.len());
                            if rank as usize <= v.top_ids.len() {
                                assert_eq!(v.top_ids[rank as usize - 1], id);
                                assert_eq!(v.top_logprobs[rank as usize - 1], lp);
                            } else {
                                assert!(!v.top_ids.contains(&id));
                            }
                        }
                    }
                }
                assert_eq!(got_token, expect_token, "step {}: who sampled", s.step_id);
                for k in &s.finished {
                    assert!(got_token.contains(k), "a request finishes on a token");
                    pending_finish.insert(*k);
                }
            }
            Record::Finish(f) => {
                assert!(pending_finish.remove(&f.req), "finish listed in its step");
                assert_eq!(f.time_ns, last_end);
                let r = reqs.get_mut(&f.req).expect("finish of an arrived request");
                assert_eq!(f.output_tokens, Some(r.next_index));
                assert_eq!(
                    r.episode, r.episode_target,
                    "prefill + cached = prompt (+ recompute after preemption)"
                );
                assert!(r.next_index <= r.max_tokens);
                match f.reason {
                    Some(FinishReason::Length) => assert_eq!(r.next_index, r.max_tokens),
                    Some(FinishReason::Stop) => {
                        assert!(r.next_index < r.max_tokens);
                        assert_eq!(r.last_id, Some(EOS), "stop ends with EOS");
                    }
                    ref other => panic!("unexpected reason {other:?}"),
                }
                st.eos_mid += u64::from(r.eos_before_last);
                r.finished = true;
                st.finished += 1;
                st.outputs.insert(f.req, r.next_index);
            }
            Record::Drops(d) => assert_eq!(d.records(), 0),
            Record::Process(_) | Record::Header(_) => {}
            other => panic!("unexpected engine record {}", other.kind()),
        }
    }
    assert!(pending_finish.is_empty());
    st
}

fn check_summary(s: &Summary, st: &Stats) {
    assert_eq!(s.steps, st.steps);
    assert_eq!(s.tokens, st.tokens);
    assert_eq!(s.preemptions, st.preemptions);
    assert_eq!(s.finished, st.finished);
    assert_eq!(s.requests, st.requests);
}

#[test]
fn default_shape_holds_every_invariant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small(20_000);
    let (summary, trace) = run(&cfg, dir.path());
    assert_eq!(trace.processes.len(), 1);
    let st = check_engine(process(&trace, "engine-core"), &cfg);
    check_summary(&summary, &st);
    assert!(st.tokens >= 20_000 && st.tokens < 20_000 + 2048);
    assert!(st.finished > 20, "{st:?}");
    assert!(st.cached_entries > 0, "some prefix-cache hits");
    assert_eq!(st.bos_first + st.eos_mid, 0, "no anomalies by default");
    assert!(summary.trace_bytes > 0);
}

#[test]
fn small_kv_cache_preempts_and_recomputes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = WorkloadConfig {
        kv_blocks: 80,
        max_prompt: 512,
        max_output: 512,
        prompt_median: 150,
        rate: 60.0,
        ..small(20_000)
    };
    let (summary, trace) = run(&cfg, dir.path());
    let st = check_engine(process(&trace, "engine-core"), &cfg);
    check_summary(&summary, &st);
    assert!(st.preemptions > 10, "{st:?}");
}

#[test]
fn without_chunked_prefill_prompts_go_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = WorkloadConfig {
        chunked_prefill: false,
        max_batched_tokens: 512,
        prompt_median: 400,
        ..small(20_000)
    };
    let (_, trace) = run(&cfg, dir.path());
    let p = process(&trace, "engine-core");
    let st = check_engine(p, &cfg);
    assert!(st.over_budget_steps > 0, "{st:?}");
    // Every prefill is one entry: a prefill entry completes its prompt, so it samples.
    for r in p.records() {
        if let Record::Step(s) = r {
            let sampled: HashSet<u32> = s.tokens.runs.iter().map(|r| r.req).collect();
            for e in s.batch.iter().filter(|e| e.prefill_tokens > 0) {
                assert!(sampled.contains(&e.req), "prefill split across steps");
            }
        }
    }
}

#[test]
fn same_seed_same_records() {
    let cfg = WorkloadConfig {
        frontend: true,
        special_rate: 0.1,
        ..small(8_000)
    };
    let records = |cfg: &WorkloadConfig| {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, trace) = run(cfg, dir.path());
        let mut by_role: Vec<(String, Vec<Record>)> = trace
            .processes
            .iter()
            .map(|p| {
                let role = p.process_info().map(|i| i.role.clone()).unwrap_or_default();
                (role, p.records().cloned().collect())
            })
            .collect();
        by_role.sort_by(|a, b| a.0.cmp(&b.0));
        by_role
    };
    let a = records(&cfg);
    let b = records(&cfg);
    assert_eq!(a.len(), 2);
    assert_eq!(a, b, "same seed, same records");
    let c = records(&WorkloadConfig { seed: 43, ..cfg });
    assert_ne!(a, c, "another seed, other records");
}

#[test]
fn frontend_streams_every_token_after_its_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = WorkloadConfig {
        frontend: true,
        ..small(20_000)
    };
    let (summary, trace) = run(&cfg, dir.path());
    assert_eq!(trace.processes.len(), 2);
    assert!(summary.frontend_dir.is_some());
    let st = check_engine(process(&trace, "engine-core"), &cfg);
    let fe = process(&trace, "frontend");
    let by_external: HashMap<&str, &RequestArrival> = st
        .arrivals
        .values()
        .map(|a| (a.external_id.as_deref().unwrap_or_default(), a))
        .collect();
    let mut fe_arrivals: HashMap<u32, &RequestArrival> = HashMap::new();
    let mut next: HashMap<u32, u32> = HashMap::new();
    let mut last_emit: HashMap<u32, u64> = HashMap::new();
    let mut emitted = 0u64;
    let mut finishes = 0u64;
    for r in fe.records() {
        match r {
            Record::Arrival(a) => {
                let ext = a.external_id.as_deref().expect("external id");
                let engine = by_external.get(ext).expect("engine saw the request");
                assert!(a.arrival_ns < engine.arrival_ns, "frontend first");
                assert!(engine.arrival_ns - a.arrival_ns <= 1_500_000);
                assert_eq!(a.trace_id, engine.trace_id);
                fe_arrivals.insert(a.req, a);
            }
            Record::Emit(b) => {
                for e in &b.emits {
                    let a = fe_arrivals.get(&e.req).expect("emit after arrival");
                    let engine = by_external[a.external_id.as_deref().unwrap_or_default()];
                    let n = next.entry(e.req).or_default();
                    assert_eq!(e.first_index, *n);
                    assert_eq!(e.count, 1);
                    *n += 1;
                    let exit = st.exits[&(engine.req, e.first_index)];
                    assert!(e.time_ns >= exit + 200_000, "emit after exit + delay");
                    let last = last_emit.insert(e.req, e.time_ns).unwrap_or(0);
                    assert!(e.time_ns > last, "emits of a request in order");
                    emitted += 1;
                }
            }
            Record::Finish(f) => {
                let a = fe_arrivals[&f.req];
                let engine = by_external[a.external_id.as_deref().unwrap_or_default()];
                assert_eq!(f.output_tokens, Some(st.outputs[&engine.req]));
                assert_eq!(f.time_ns, last_emit[&f.req]);
                finishes += 1;
            }
            Record::Process(_) | Record::Header(_) => {}
            other => panic!("unexpected frontend record {}", other.kind()),
        }
    }
    assert_eq!(emitted, st.tokens);
    assert_eq!(finishes, st.finished);
}

#[test]
fn ids_only_without_top_k() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = WorkloadConfig {
        top_k: None,
        ..small(5_000)
    };
    let (_, trace) = run(&cfg, dir.path());
    check_engine(process(&trace, "engine-core"), &cfg);
}

#[test]
fn special_rate_plants_anomalies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = WorkloadConfig {
        special_rate: 0.3,
        ..small(20_000)
    };
    let (_, trace) = run(&cfg, dir.path());
    let st = check_engine(process(&trace, "engine-core"), &cfg);
    assert!(st.bos_first > 0 && st.eos_mid > 0, "{st:?}");
}

#[test]
fn request_limit_runs_every_request_to_completion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = WorkloadConfig {
        tokens: None,
        requests: Some(40),
        ..small(0)
    };
    let (summary, trace) = run(&cfg, dir.path());
    let st = check_engine(process(&trace, "engine-core"), &cfg);
    assert_eq!(summary.requests, 40);
    assert_eq!(st.finished, 40);
    assert_eq!(
        st.outputs.values().map(|&n| u64::from(n)).sum::<u64>(),
        st.tokens
    );
}

#[test]
fn impossible_configs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let too_small = WorkloadConfig {
        kv_blocks: 10,
        ..small(100)
    };
    assert!(too_small.validate().is_err());
    assert!(generate(&too_small, dir.path()).is_err());
    let endless = WorkloadConfig {
        tokens: None,
        requests: None,
        ..small(100)
    };
    assert!(endless.validate().is_err());
    assert!(WorkloadConfig::default().validate().is_ok());
}

#[test]
fn invariants_hold_across_segment_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = WorkloadConfig {
        segment_bytes: 1 << 20,
        ..small(40_000)
    };
    let (summary, trace) = run(&cfg, dir.path());
    let p = process(&trace, "engine-core");
    assert!(p.segments.len() >= 2, "{} segments", p.segments.len());
    let st = check_engine(p, &cfg);
    check_summary(&summary, &st);
}
