//! The trace index: one request's window, read alone, answers exactly as the
//! whole trace does, while reading a fraction of it; a changed, damaged or
//! foreign index is never trusted.

use std::collections::HashMap;
use std::path::Path;
use toktrace_analyzer::data::RequestIx;
use toktrace_analyzer::index::{self, INDEX_FILE};
use toktrace_analyzer::{load, Analysis, AnalyzeOptions, Detail, LoadOptions};
use toktrace_workload::{generate, WorkloadConfig};

/// A busy synthetic trace (preemptions, chunked prefill, a frontend) cut in
/// many small segments, so windows start and stop mid-segment and span several.
fn workload(dir: &Path) {
    let config = WorkloadConfig {
        seed: 11,
        tokens: Some(200_000),
        requests: None,
        rate: 25.0,
        prompt_median: 300,
        output_median: 80,
        kv_blocks: 900,
        frontend: true,
        segment_bytes: 1 << 20,
        ..Default::default()
    };
    let summary = generate(&config, dir).expect("generate");
    assert!(summary.ok(), "{summary}");
    assert!(summary.preemptions > 0, "{summary}");
}

fn full(dir: &Path) -> Analysis {
    let options = LoadOptions {
        detail: Detail::All,
        ..Default::default()
    };
    Analysis::new(
        load(dir, &options).expect("load"),
        &AnalyzeOptions::default(),
    )
}

/// (process, key) of a request, which both analyses share.
fn ident(a: &Analysis, r: RequestIx) -> (u32, u32) {
    let q = &a.data.requests[r as usize];
    (q.process, q.key)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn a_window_answers_as_the_whole_trace() {
    let dir = tempfile::tempdir().unwrap();
    workload(dir.path());
    let whole = full(dir.path());
    let total = index::trace_bytes(dir.path()).unwrap();
    let (ix, built) = index::build(dir.path(), None).expect("build");
    assert_eq!(ix.requests.len(), whole.data.requests.len());
    assert_eq!(built.data.tokens(), whole.data.tokens());
    assert!(ix.segments.len() > 4, "{} segments", ix.segments.len());

    let by_ident: HashMap<(u32, u32), RequestIx> = (0..whole.data.requests.len() as RequestIx)
        .map(|r| (ident(&whole, r), r))
        .collect();
    let mut checked_tokens = 0usize;
    let mut shares = 0usize;
    let mut smallest_read = u64::MAX;
    let n = ix.requests.len();
    for i in (0..n).step_by(n / 25).chain([n - 1]) {
        let entry = &ix.requests[i];
        let r_whole = by_ident[&(entry.process, entry.key)];
        let w = ix.load_window(dir.path(), i).expect("window");
        smallest_read = smallest_read.min(w.bytes_read);
        let a = &w.analysis;
        let r = a
            .data
            .requests
            .iter()
            .position(|q| (q.process, q.key) == (entry.process, entry.key))
            .expect("the request is in its window") as RequestIx;
        let (got, want) = (
            &a.data.requests[r as usize],
            &whole.data.requests[r_whole as usize],
        );
        assert_eq!(got.internal_id, want.internal_id);
        assert_eq!(got.external_id, want.external_id);
        assert_eq!(got.token_index, want.token_index, "{}", want.internal_id);
        assert_eq!(got.emit_ns, want.emit_ns, "{}", want.internal_id);
        assert_eq!(got.detail, want.detail, "{}", want.internal_id);
        assert_eq!(got.preempted_at.len(), want.preempted_at.len());

        let (rep, rep_whole) = (&a.reports[r as usize], &whole.reports[r_whole as usize]);
        assert_eq!(rep.latency, rep_whole.latency, "{}", want.internal_id);
        assert_eq!(rep.stalls, rep_whole.stalls, "{}", want.internal_id);
        let flags =
            |f: &[toktrace_analyzer::analysis::Flag]| f.iter().map(|f| f.name).collect::<Vec<_>>();
        assert_eq!(flags(&rep.flags), flags(&rep_whole.flags));

        let (t, t_whole) = (a.timings(r), whole.timings(r_whole));
        assert_eq!(t.len(), t_whole.len());
        for (x, y) in t.iter().zip(&t_whole) {
            assert_eq!(
                (x.index, x.gap_ns, x.enter_ns, x.exit_ns),
                (y.index, y.gap_ns, y.enter_ns, y.exit_ns)
            );
            assert!(
                close(x.expected_ns, y.expected_ns),
                "{} token {}: {} vs {}",
                want.internal_id,
                x.index,
                x.expected_ns,
                y.expected_ns
            );
            assert!(close(x.excess_ns, y.excess_ns));
            let named = |a: &Analysis, s: &[toktrace_analyzer::attribution::Share]| {
                s.iter()
                    .map(|s| (ident(a, s.culprit), s.ns, s.cause))
                    .collect::<Vec<_>>()
            };
            let (sx, sy) = (named(a, &x.shares), named(&whole, &y.shares));
            assert_eq!(sx.len(), sy.len(), "{} token {}", want.internal_id, x.index);
            for (p, q) in sx.iter().zip(&sy) {
                assert_eq!((p.0, p.2), (q.0, q.2));
                assert!(close(p.1, q.1));
            }
            shares += sx.len();
            checked_tokens += 1;
        }
    }
    assert!(checked_tokens > 1000, "{checked_tokens} tokens compared");
    assert!(shares > 0, "no culprit was compared");
    assert!(
        smallest_read * 4 < total,
        "a window should read a small part of the trace: {smallest_read} of {total} bytes"
    );
}

#[test]
fn ids_resolve_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    workload(dir.path());
    let (ix, whole) = index::build(dir.path(), None).expect("build");
    let q = &whole.data.requests[3];
    let external = q
        .external_id
        .clone()
        .expect("the frontend gives client ids");
    assert_eq!(ix.find(&external), vec![3]);
    assert_eq!(ix.find(&q.internal_id), vec![3]);
    assert!(ix.find("no-such-request").is_empty());
}

#[test]
fn saved_index_is_used_until_the_trace_changes() {
    let dir = tempfile::tempdir().unwrap();
    workload(dir.path());
    assert!(index::open(dir.path()).is_none());
    let (ix, _) = index::build(dir.path(), None).expect("build");
    assert_eq!(
        index::save(dir.path(), &ix).expect("save"),
        dir.path().join(INDEX_FILE)
    );
    let opened = index::open(dir.path()).expect("the saved index is current");
    assert_eq!(opened.requests, ix.requests);
    assert_eq!(opened.segments, ix.segments);
    // The trace grows (a probe still writing): the index is stale.
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .and_then(|p| {
            let mut segs: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .collect();
            segs.sort();
            segs.pop()
        })
        .expect("a segment");
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &[0u8; 16]).unwrap();
    drop(f);
    assert!(
        index::open(dir.path()).is_none(),
        "a grown trace must not trust the index"
    );
}

#[test]
fn damaged_or_foreign_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    workload(dir.path());
    let (ix, _) = index::build(dir.path(), None).expect("build");
    let path = index::save(dir.path(), &ix).expect("save");
    let bytes = std::fs::read(&path).unwrap();
    for damaged in [
        bytes[..bytes.len() / 2].to_vec(),
        b"not an index at all".to_vec(),
        Vec::new(),
    ] {
        std::fs::write(&path, &damaged).unwrap();
        assert!(index::open(dir.path()).is_none());
        let (again, _) = index::build(dir.path(), None).expect("rebuild");
        index::save(dir.path(), &again).expect("save");
        assert!(index::open(dir.path()).is_some());
    }
}
