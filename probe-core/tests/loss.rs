//! Loss is counted, never hidden: a stalled drain, an over-budget disk, an
//! unwritable directory and a full disk all leave the producer running and the
//! numbers right.

mod common;

use probe_core::event::Record;
use probe_core::reader::read_trace;
use probe_core::ring::Ring;
use probe_core::{synth, Probe};
use std::process::Command;
use std::time::Duration;

#[test]
fn a_stalled_drain_overflows_and_the_count_reaches_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = common::config(dir.path());
    // No drain exists yet: the ring can only fill, as behind a stalled drain.
    let ring = Ring::new(100, 1 << 30);
    let recorded = 1000u64;
    let mut accepted = 0;
    for i in 0..recorded {
        if ring
            .try_push(Record::Step(synth::step(i, 4, Some(5))))
            .is_ok()
        {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 100);
    let mut probe = Probe::start_with_ring(config, Some(ring)).unwrap();
    let report = probe.shutdown(Duration::from_secs(30));
    assert!(report.clean);

    let trace = read_trace(dir.path()).unwrap();
    let records = common::records(&trace);
    let written = common::step_ids(&records);
    let drops = trace.processes[0].drops();
    assert_eq!(written, (0..100).collect::<Vec<_>>());
    assert_eq!(drops.ring_full, recorded - written.len() as u64);
    assert_eq!(drops.tokens, 4 * drops.ring_full);
    // In-band: the counter precedes the first step written after the loss.
    let first_drop = records.iter().position(|r| matches!(r, Record::Drops(_)));
    let first_step = records.iter().position(|r| matches!(r, Record::Step(_)));
    assert!(first_drop < first_step);
}

#[test]
fn overflow_under_a_live_drain_is_counted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = common::config(dir.path());
    config.ring_slots = 8;
    let mut probe = Probe::start(config).unwrap();
    let recorded = 20_000u64;
    for i in 0..recorded {
        probe.record(Record::Step(synth::step(i, 2, None)));
    }
    let report = probe.shutdown(Duration::from_secs(30));
    let trace = read_trace(dir.path()).unwrap();
    let written = common::step_ids(&common::records(&trace)).len() as u64;
    assert_eq!(report.drops.ring_full + written, recorded);
    assert_eq!(trace.processes[0].drops(), report.drops);
}

#[test]
fn the_disk_budget_removes_old_segments_and_later_ones_stand_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = common::config(dir.path());
    config.writer.segment_bytes = 16 << 10;
    config.writer.disk_budget_bytes = 64 << 10;
    let mut probe = Probe::start(config).unwrap();
    probe.record(Record::Process(synth::process_info()));
    for r in 0..4 {
        probe.record(synth::arrival(r));
    }
    let errors = probe_core::event::AdapterErrors {
        hooks: vec![probe_core::event::HookErrors {
            hook: "record_step".into(),
            count: 1,
            first_error: "ValueError: bad".into(),
        }],
        disabled: false,
    };
    probe.record(Record::AdapterErrors(errors.clone()));
    probe.record(Record::Finish(probe_core::event::RequestFinish {
        req: 1,
        time_ns: 5,
        reason: None,
        output_tokens: None,
    }));
    for i in 0..2000 {
        probe.record(Record::Step(synth::step(i, 4, Some(5))));
    }
    assert!(probe.shutdown(Duration::from_secs(30)).clean);

    let total: u64 = std::fs::read_dir(probe.dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total <= (64 + 16) << 10, "{total} bytes on disk");

    let trace = read_trace(dir.path()).unwrap();
    let p = &trace.processes[0];
    assert!(p.segments.len() >= 3);
    assert_ne!(
        p.segments[0].header().unwrap().segment_index,
        0,
        "oldest kept"
    );
    let first_kept = p.segments[0].header().unwrap().segment_index;
    let removed_before = p
        .records()
        .filter_map(|r| match r {
            Record::SegmentsRemoved(s) => Some(s.before),
            _ => None,
        })
        .max();
    assert!(
        removed_before >= Some(first_kept),
        "removal recorded in-band"
    );
    assert_eq!(p.adapter_errors(), Some(&errors), "outlives its segment");
    for seg in &p.segments {
        let kinds: Vec<&Record> = seg.records.iter().map(|r| &r.record).collect();
        assert!(matches!(kinds[0], Record::Header(_)));
        assert!(
            matches!(kinds[1], Record::Process(_)),
            "process info repeated"
        );
        assert!(
            matches!(kinds[2], Record::SegmentsRemoved(_)),
            "removal repeated"
        );
        assert!(
            matches!(kinds[3], Record::AdapterErrors(e) if *e == errors),
            "adapter errors repeated"
        );
        let arrivals: Vec<u32> = kinds
            .iter()
            .filter_map(|r| match r {
                Record::Arrival(a) => Some(a.req),
                _ => None,
            })
            .collect();
        assert_eq!(
            arrivals,
            vec![0, 2, 3],
            "in-flight requests repeated, finished one not"
        );
    }
}

#[test]
fn an_unwritable_directory_counts_every_record_and_reports_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // A directory cannot be created under a regular file, even by root.
    let (config, reports) = common::config(&file.join("trace"));
    let mut probe = Probe::start(config).unwrap();
    let recorded = 3000u64;
    for i in 0..recorded {
        assert!(probe.record(Record::Step(synth::step(i, 2, None))));
        if i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let report = probe.shutdown(Duration::from_secs(30));
    assert!(report.clean);
    assert_eq!(report.drops.write_failed + report.drops.ring_full, recorded);
    assert_eq!(report.drops.tokens, 2 * recorded);
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].contains("cannot write trace"), "{}", reports[0]);
}

#[test]
fn a_full_disk_leaves_the_producer_running_with_counted_drops() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 5000u64;
    // A file-size rlimit makes writes past 100 kB fail with EFBIG, as a full disk would.
    let out = Command::new(common::synth_bin())
        .args(["--dir", dir.path().to_str().unwrap()])
        .args(["--steps", &steps.to_string(), "--batch", "4", "--topk", "5"])
        .args(["--fsize-limit", "100000", "--sleep-us", "10"])
        .output()
        .expect("run synth writer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "producer died: {stderr}");
    let field = |name: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
    };
    assert_eq!(field("recorded"), steps);
    let lost = field("write_failed") + field("ring_full");
    assert!(field("write_failed") > 0, "{stdout}");
    assert_eq!(stderr.matches("cannot write trace").count(), 1, "{stderr}");

    let trace = read_trace(dir.path()).expect("what reached the disk reads");
    let written = common::step_ids(&common::records(&trace));
    assert_eq!(
        written.len() as u64 + lost,
        steps,
        "every step written or counted"
    );
    let sizes: Vec<u64> = trace
        .processes
        .iter()
        .flat_map(|p| &p.segments)
        .map(|s| std::fs::metadata(&s.path).unwrap().len())
        .collect();
    assert!(sizes.iter().all(|&s| s <= 100_000), "{sizes:?}");
}
