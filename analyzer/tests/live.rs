//! The live analysis against the offline one: real engine traces (and a
//! synthetic one long enough to trim) fed record by record, in the order of
//! the times they speak of, as a follower would read them while the engine
//! wrote. Exact figures must equal the offline analysis; stalls may differ
//! only as far as judging with what was known at the time allows.

use probe_core::event::Record;
use probe_core::read_trace;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use toktrace_analyzer::live::{LiveOptions, LiveStall, LiveTrace};
use toktrace_analyzer::{load, Analysis, AnalyzeOptions, LoadOptions};
use toktrace_workload::{generate, WorkloadConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/traces")
        .join(name)
        .join("trace")
}

/// Replay `dir` into a live trace in `chunk`-record pieces per process
/// (interleaved by time), ticking after each piece; then a final tick once
/// the processes have been quiet past the settle time.
fn replay(dir: &Path, chunk: usize, options: LiveOptions) -> (LiveTrace, Vec<LiveStall>) {
    let trace = read_trace(dir).expect("reads");
    let mut queues: Vec<(PathBuf, Vec<Record>)> = trace
        .processes
        .iter()
        .map(|p| (p.dir.clone(), p.records().cloned().collect()))
        .collect();
    let mut live = LiveTrace::new(options);
    let mut stalls = Vec::new();
    let start = Instant::now();
    let mut now = start;
    let mut cursors = vec![0usize; queues.len()];
    loop {
        // The process whose next record is earliest goes next.
        let next = (0..queues.len())
            .filter(|&i| cursors[i] < queues[i].1.len())
            .min_by_key(|&i| {
                queues[i].1[cursors[i]..]
                    .iter()
                    .find_map(|r| r.time_span())
                    .map_or(0, |(t, _)| t)
            });
        let Some(i) = next else { break };
        let to = (cursors[i] + chunk).min(queues[i].1.len());
        let records: Vec<Record> = queues[i].1[cursors[i]..to].to_vec();
        cursors[i] = to;
        now += Duration::from_millis(1);
        live.ingest(&queues[i].0, records, now);
        stalls.extend(live.tick(false, now).stalls);
    }
    queues.clear();
    live.close();
    stalls.extend(live.tick(false, now + Duration::from_secs(5)).stalls);
    (live, stalls)
}

fn offline(dir: &Path) -> Analysis {
    let data = load(dir, &LoadOptions::default()).expect("loads");
    Analysis::new(data, &AnalyzeOptions::default())
}

/// Exact figures: steps, tokens, TTFT count per process equal the offline ones.
fn check_exact(dir: &Path, live: &LiveTrace) {
    let a = offline(dir);
    for (i, p) in a.data.processes.iter().enumerate() {
        let f = live
            .figures()
            .find(|f| f.name == p.name)
            .unwrap_or_else(|| panic!("{} not followed", p.name));
        assert_eq!(f.steps, p.steps, "{}: steps", p.name);
        assert_eq!(f.tokens, p.tokens, "{}: tokens", p.name);
        assert_eq!(f.emitted, p.emitted, "{}: emitted", p.name);
        assert_eq!(f.drops, p.drops, "{}: drops", p.name);
        let ttfts = a
            .data
            .requests
            .iter()
            .enumerate()
            .filter(|(_, r)| r.process == i as u32)
            .filter(|(r, _)| a.reports[*r].latency.ttft_ns.is_some())
            .count() as u64;
        assert_eq!(f.ttft.count, ttfts, "{}: TTFTs", p.name);
        let gaps: u64 = a
            .data
            .requests
            .iter()
            .filter(|r| r.process == i as u32)
            .map(|r| r.token_step.len().saturating_sub(1) as u64)
            .sum();
        assert_eq!(f.itl.count, gaps, "{}: inter-token gaps", p.name);
    }
}

#[test]
fn real_engine_traces_give_the_offline_counts_and_stalls() {
    for name in [
        "vllm-interference",
        "vllm-preempt",
        "vllm-mixed",
        "sglang-interference",
        "sglang-retract",
        "sglang-mixed",
    ] {
        let dir = fixture(name);
        for chunk in [1, 7, 1000] {
            let (live, stalls) = replay(&dir, chunk, LiveOptions::default());
            check_exact(&dir, &live);
            check_stalls(name, chunk, &dir, &stalls);
        }
    }
}

/// Stalls judged live against the offline ones: every large stall (100 ms
/// over the model or more) is found, on the same token, with the same main
/// culprit; the count differs by at most half the offline count or 5 (what
/// was known at the time: on a short trace the first steps' model is poor).
fn check_stalls(name: &str, chunk: usize, dir: &Path, stalls: &[LiveStall]) {
    let a = offline(dir);
    let mut offline_count = 0usize;
    for (r, req) in a.data.requests.iter().enumerate() {
        let ids = [req.display_id(), req.internal_id.as_str()];
        for t in a.slow_tokens(r as u32) {
            offline_count += 1;
            if t.excess_ns < 100e6 {
                continue;
            }
            let found = stalls
                .iter()
                .find(|s| ids.contains(&s.request.as_str()) && s.token_index == t.index);
            let Some(found) = found else {
                let same: Vec<_> = stalls
                    .iter()
                    .filter(|s| ids.contains(&s.request.as_str()))
                    .map(|s| (s.token_index, s.excess_ms, s.threshold_ms))
                    .collect();
                panic!("{name} chunk {chunk}: {} token {} ({:.0} ms over, gap {:.0}, expected {:.0}) not found live; live has {same:?}", ids[0], t.index, t.excess_ns / 1e6, t.gap_ns as f64 / 1e6, t.expected_ns / 1e6);
            };
            let culprit = t
                .shares
                .iter()
                .max_by(|x, y| x.ns.total_cmp(&y.ns))
                .map(|s| &a.data.requests[s.culprit as usize]);
            if let Some(c) = culprit {
                let top = found.culprits.first().map(|c| c.request.as_str());
                assert!(
                    top == Some(c.display_id()) || top == Some(c.internal_id.as_str()),
                    "{name} chunk {chunk}: {} token {}: live blames {top:?}, offline {}",
                    ids[0],
                    t.index,
                    c.display_id()
                );
            }
        }
    }
    let (live, off) = (stalls.len() as f64, offline_count as f64);
    eprintln!("{name} chunk {chunk}: live {live} stalls, offline {off}");
    assert!(
        (live - off).abs() <= (0.5 * off).max(5.0),
        "{name} chunk {chunk}: live {live} stalls, offline {off}"
    );
}

#[test]
fn the_interference_fixture_names_the_long_prompt_live() {
    let (_, stalls) = replay(&fixture("vllm-interference"), 3, LiveOptions::default());
    let blamed: Vec<&str> = stalls
        .iter()
        .filter_map(|s| s.culprits.first())
        .map(|c| c.request.as_str())
        .collect();
    assert!(blamed.contains(&"long-prompt"), "{stalls:#?}");
}

#[test]
fn a_long_trace_is_trimmed_to_the_window_and_counts_stay_exact() {
    let keep = tempfile::tempdir().expect("tempdir");
    let config = WorkloadConfig {
        tokens: Some(60_000),
        output_median: 40,
        frontend: true,
        ..WorkloadConfig::default()
    };
    generate(&config, keep.path()).expect("generates");
    let options = LiveOptions {
        window_steps: 200,
        max_steps: 2_000,
        ..LiveOptions::default()
    };
    let (live, stalls) = replay(keep.path(), 50, options);
    check_exact(keep.path(), &live);
    assert!(live.kept_steps() <= 2_000, "kept {}", live.kept_steps());
    check_stalls("workload", 50, keep.path(), &stalls);
}
