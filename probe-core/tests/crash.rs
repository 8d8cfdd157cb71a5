//! A writer killed with SIGKILL mid-stream leaves a trace that reads without
//! error: what comes back is a prefix of what was recorded (no partial record,
//! no duplicate), and a torn tail is reported.

mod common;

use probe_core::event::Record;
use probe_core::frame::PREAMBLE_LEN;
use probe_core::reader::{decode_segment, read_trace, ReadWarning};
use probe_core::synth;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Check that the steps read are exactly synth steps 0..k, in order.
fn assert_prefix(records: &[Record], batch: u32) -> usize {
    let steps: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Step(s) => Some(s),
            _ => None,
        })
        .collect();
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(
            s.step_id, i as u64,
            "steps are not a prefix (gap or duplicate)"
        );
        assert_eq!(
            **s,
            synth::step(i as u64, batch, Some(5)),
            "step {i} differs"
        );
    }
    steps.len()
}

#[test]
fn sigkill_mid_stream_leaves_a_readable_prefix() {
    let runs = 24;
    let mut total_steps = 0;
    let mut torn = 0;
    for run in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(common::synth_bin())
            .args(["--dir", dir.path().to_str().unwrap()])
            .args(["--steps", "0", "--batch", "16", "--topk", "5"])
            // Small segments so kills also land around rotations.
            .args(["--segment-bytes", "65536", "--sleep-us", "20"])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn synth writer");
        std::thread::sleep(Duration::from_millis(15 + (run * 37) % 120));
        child.kill().expect("SIGKILL");
        child.wait().unwrap();

        let trace = match read_trace(dir.path()) {
            Ok(t) => t,
            // Killed before the first segment existed: nothing to read is fine.
            Err(probe_core::ReadError::NotATrace { .. }) => continue,
            Err(e) => panic!("run {run}: trace unreadable after SIGKILL: {e}"),
        };
        let records = common::records(&trace);
        let drops = trace.processes[0].drops();
        assert_eq!(drops.records(), 0, "ring sized to never overflow here");
        total_steps += assert_prefix(&records, 16);
        for w in trace.all_warnings() {
            match w {
                ReadWarning::TornTail { .. } | ReadWarning::Empty { .. } => torn += 1,
                other => panic!("run {run}: unexpected warning {other}"),
            }
        }
        // Arrivals are repeated per segment, but every one names a known request.
        for r in &records {
            if let Record::Arrival(a) = r {
                assert!(a.req < 16);
            }
        }
    }
    assert!(total_steps > 0, "the writer never got anything to disk");
    eprintln!("{runs} kills: {total_steps} steps read back, {torn} torn tails reported");
}

fn sample_segment(dir: &Path) -> Vec<u8> {
    let (config, _) = common::config(dir);
    let mut records = vec![Record::Process(synth::process_info())];
    records.extend((0..20).map(|i| Record::Step(synth::step(i, 4, Some(5)))));
    let probe = common::record_all(config, &records);
    std::fs::read(probe.dir().join("seg-000000.tts")).unwrap()
}

#[test]
fn every_truncation_point_reads_as_a_prefix_with_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample_segment(dir.path());
    let full = decode_segment(Path::new("s"), &bytes).unwrap();
    let ends: Vec<u64> = full
        .records
        .iter()
        .map(|r| r.offset)
        .chain([bytes.len() as u64])
        .collect();
    for cut in PREAMBLE_LEN..bytes.len() {
        let seg = decode_segment(Path::new("s"), &bytes[..cut]).expect("truncated segment reads");
        let on_boundary = ends.contains(&(cut as u64));
        let torn = seg
            .warnings
            .iter()
            .any(|w| matches!(w, ReadWarning::TornTail { .. }));
        assert_eq!(torn, !on_boundary, "cut at {cut}: torn-tail report wrong");
        assert_eq!(seg.warnings.len(), usize::from(!on_boundary));
        let expected: Vec<_> = full
            .records
            .iter()
            .take_while(|r| r.offset < cut as u64)
            .collect();
        let complete = expected.len() - usize::from(!on_boundary);
        assert_eq!(seg.records.len(), complete, "cut at {cut}");
        assert!(seg.records.iter().zip(&full.records).all(|(a, b)| a == b));
    }
}

#[test]
fn a_corrupt_frame_in_the_middle_is_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = sample_segment(dir.path());
    let full = decode_segment(Path::new("s"), &bytes).unwrap();
    let victim = &full.records[5];
    bytes[victim.offset as usize + 12] ^= 0x55;
    let seg = decode_segment(Path::new("s"), &bytes).unwrap();
    assert_eq!(seg.records.len(), full.records.len() - 1);
    assert!(!seg.records.contains(victim));
    assert!(matches!(
        seg.warnings.as_slice(),
        [ReadWarning::Corrupt { offset, .. }] if *offset == victim.offset
    ));
}

#[test]
fn unknown_version_and_foreign_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = sample_segment(dir.path());
    bytes[8] = 99;
    let path = dir.path().join("future.tts");
    std::fs::write(&path, &bytes).unwrap();
    let err = read_trace(&path).unwrap_err().to_string();
    assert!(err.contains("version 99"), "{err}");

    std::fs::write(&path, b"hello, I am not a trace at all").unwrap();
    let err = read_trace(&path).unwrap_err().to_string();
    assert!(err.contains("not a toktrace trace"), "{err}");

    let err = read_trace(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such file"), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let err = read_trace(empty.path()).unwrap_err().to_string();
    assert!(err.contains("not a toktrace trace"), "{err}");
}
