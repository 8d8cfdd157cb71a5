//! Every record kind goes through the probe, the files and the reader unchanged.

mod common;

use probe_core::event::*;
use probe_core::reader::read_trace;
use probe_core::synth;
use std::os::unix::fs::PermissionsExt;

fn every_kind() -> Vec<Record> {
    let mut with_text = synth::step(7, 3, Some(2));
    with_text.tokens.texts = vec!["a".into(), " b".into(), "\u{fffd}".into()];
    with_text.preempted = vec![9];
    with_text.finished = vec![1];
    with_text.batch.push(BatchEntry {
        req: 9,
        prefill_tokens: 1300,
        cached_tokens: 64,
        decode_tokens: 0,
    });
    let mut mixed = synth::step(8, 2, None);
    // A run with logprobs but no candidates next to one with none at all.
    mixed.tokens.runs[1].top_k = Some(0);
    mixed.tokens.logprobs.0 = vec![-0.25];
    mixed.tokens.ranks.0 = vec![1];
    let mut metadata_only = synth::step(9, 4, None);
    metadata_only.tokens.ids.0.clear();
    metadata_only.kv_usage = None;
    vec![
        Record::Process(synth::process_info()),
        synth::arrival(0),
        Record::Arrival(RequestArrival {
            req: 1,
            internal_id: "r1".into(),
            ..Default::default()
        }),
        Record::Step(synth::step(0, 4, Some(5))),
        Record::Step(with_text),
        Record::Step(mixed),
        Record::Step(metadata_only),
        Record::Emit(EmitBatch {
            emits: vec![
                Emit {
                    req: 0,
                    first_index: 0,
                    count: 1,
                    time_ns: 5,
                },
                Emit {
                    req: 1,
                    first_index: 3,
                    count: 2,
                    time_ns: u64::MAX,
                },
            ],
        }),
        Record::Finish(RequestFinish {
            req: 0,
            time_ns: 99,
            reason: Some(FinishReason::Stop),
            output_tokens: Some(12),
        }),
        Record::Finish(RequestFinish {
            req: 1,
            time_ns: 100,
            reason: Some(FinishReason::Other("repetition".into())),
            output_tokens: None,
        }),
        Record::Drops(DropCounts {
            ring_full: 1,
            too_big: 2,
            write_failed: 3,
            tokens: 4,
        }),
        Record::SegmentsRemoved(SegmentsRemoved {
            before: 2,
            bytes: 1234,
        }),
        Record::AdapterErrors(AdapterErrors {
            hooks: vec![HookErrors {
                hook: "vllm Scheduler.schedule".into(),
                count: 3,
                first_error: "KeyError: 'req-9'".into(),
            }],
            disabled: true,
        }),
    ]
}

#[test]
fn every_record_kind_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let written = every_kind();
    for r in &written {
        if let Record::Step(s) = r {
            s.tokens.check().expect("test data is consistent");
        }
    }
    let (config, reports) = common::config(dir.path());
    common::record_all(config, &written);
    let trace = read_trace(dir.path()).expect("read back");
    assert!(
        trace.all_warnings().is_empty(),
        "{:?}",
        trace.all_warnings()
    );
    assert_eq!(common::records(&trace), written);
    assert!(
        reports.lock().unwrap().is_empty(),
        "{:?}",
        reports.lock().unwrap()
    );

    let header = trace.processes[0].header().expect("header");
    assert_eq!(header.pid, std::process::id());
    assert_eq!(header.segment_index, 0);
    assert!(header.anchor.unix_ns > 1_600_000_000_000_000_000);
}

#[test]
fn token_views_follow_the_runs() {
    let s = synth::step(3, 3, Some(2));
    let views: Vec<_> = s.tokens.iter().collect();
    assert_eq!(views.len(), 3);
    for (i, v) in views.iter().enumerate() {
        assert_eq!(v.req, i as u32);
        assert_eq!(v.index, 3);
        assert_eq!(v.token_id, Some(s.tokens.ids.0[i]));
        assert_eq!(v.top_ids, &s.tokens.top_ids.0[2 * i..2 * i + 2]);
    }
    let mut bad = s.clone();
    bad.tokens.top_ids.0.pop();
    assert!(bad.tokens.check().is_err());
    // Unchecked inconsistent columns end the iteration early, never panic.
    assert!(bad.tokens.iter().count() < 3);
}

#[test]
fn files_are_owner_only_and_reader_accepts_every_level() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = common::config(dir.path());
    let probe = common::record_all(config, &[Record::Step(synth::step(0, 2, Some(1)))]);
    let proc_dir = probe.dir().to_path_buf();
    let seg = proc_dir.join("seg-000000.tts");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&proc_dir), 0o700);
    assert_eq!(mode(&seg), 0o600);
    for path in [dir.path(), proc_dir.as_path(), seg.as_path()] {
        let trace = read_trace(path).expect("readable at every level");
        assert_eq!(common::step_ids(&common::records(&trace)), vec![0]);
    }
}

#[test]
fn two_runs_in_one_root_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..2 {
        let (config, _) = common::config(dir.path());
        common::record_all(config, &[Record::Step(synth::step(i, 1, None))]);
    }
    let trace = read_trace(dir.path()).unwrap();
    assert_eq!(trace.processes.len(), 2);
    let mut starts: Vec<u64> = trace
        .processes
        .iter()
        .map(|p| p.header().unwrap().process_start_unix_ns)
        .collect();
    starts.dedup();
    assert_eq!(starts.len(), 2);
}

#[test]
fn byte_ranges_read_exactly_their_frames() {
    use probe_core::reader::{list_trace, read_segment, read_segment_ranges};
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = common::config(dir.path());
    let records: Vec<Record> = (0..40u64)
        .map(|i| Record::Step(synth::step(i, 3, Some(2))))
        .collect();
    common::record_all(config, &records);
    let files = list_trace(dir.path()).unwrap();
    let seg = &files.processes[0].segments[0];
    let whole = read_segment(seg).unwrap();
    let len = std::fs::metadata(seg).unwrap().len();
    let offsets: Vec<u64> = whole.records.iter().map(|r| r.offset).collect();
    // Two disjoint runs of frames, as an index would plan them.
    let (a, b, c, d) = (offsets[3], offsets[10], offsets[20], offsets[25]);
    let mut buf = Vec::new();
    let part = read_segment_ranges(seg, &[a..b, c..d], &mut buf).unwrap();
    let want: Vec<_> = whole
        .records
        .iter()
        .filter(|r| (a..b).contains(&r.offset) || (c..d).contains(&r.offset))
        .cloned()
        .collect();
    assert_eq!(part.records, want);
    assert!(part.warnings.is_empty(), "{:?}", part.warnings);
    // To the end of the file, and a range that starts inside the preamble.
    let tail = read_segment_ranges(seg, &[0..offsets[2], offsets[38]..len], &mut buf).unwrap();
    let want: Vec<_> = whole
        .records
        .iter()
        .filter(|r| r.offset < offsets[2] || r.offset >= offsets[38])
        .cloned()
        .collect();
    assert_eq!(tail.records, want);
    // A range cut inside a frame reports a torn tail, never a panic.
    let one_range = std::iter::once(a..a + 5).collect::<Vec<_>>();
    let cut = read_segment_ranges(seg, &one_range, &mut buf).unwrap();
    assert!(cut.records.is_empty());
    assert_eq!(cut.warnings.len(), 1);
}

#[test]
fn arrivals_that_never_finish_cannot_make_every_segment_repetition() {
    // 20,000 requests whose finishes never come (dropped by a full ring, or
    // still running), then steps: each new segment repeats running
    // requests' arrivals, but in at most a quarter of its size.
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = common::config(dir.path());
    config.writer.segment_bytes = 64 << 10;
    let mut records: Vec<Record> = (0..20_000).map(synth::arrival).collect();
    records.extend((0..3_000).map(|i| Record::Step(synth::step(i, 8, Some(2)))));
    let mut payload = Vec::new();
    for r in &records {
        probe_core::frame::encode_frame(r, &mut payload).unwrap();
    }
    let probe = common::record_all(config, &records);
    let written: u64 = std::fs::read_dir(probe.dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        written < payload.len() as u64 * 3 / 2,
        "wrote {written} bytes for {} bytes of records",
        payload.len()
    );
    // The newest running requests are still named in the last segment.
    let trace = read_trace(dir.path()).unwrap();
    let steps = common::step_ids(&common::records(&trace));
    assert_eq!(steps, (0..3_000).collect::<Vec<_>>());
}

/// A trace written in format version 1 (a real vLLM run committed under
/// fixtures/) still reads: its arrivals come without the fields version 2
/// added, and everything else is as it was.
#[test]
fn format_1_traces_still_read() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/traces/vllm-mixed/trace");
    let trace = probe_core::read_trace(&dir).expect("fixture trace");
    let mut arrivals = 0;
    let mut steps = 0;
    for p in &trace.processes {
        for s in &p.segments {
            assert_eq!(s.format_version, 1, "{}", s.path.display());
            assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        }
        for r in p.records() {
            match r {
                Record::Arrival(a) => {
                    arrivals += 1;
                    assert_eq!((a.prompt_hash, a.trace_top_k), (None, None));
                    assert!(!a.internal_id.is_empty());
                }
                Record::Step(_) => steps += 1,
                _ => {}
            }
        }
    }
    assert!(
        arrivals >= 18 && steps > 0,
        "{arrivals} arrivals, {steps} steps"
    );
}
