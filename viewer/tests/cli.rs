//! The `toktrace` binary as scripts use it: exit codes, JSON, errors.

use probe_core::event::Record;
use probe_core::{synth, Probe, ProbeConfig};
use std::process::Command;
use std::time::Duration;

fn toktrace(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_toktrace"))
        .args(args)
        .output()
        .expect("run toktrace")
}

fn small_trace(dir: &std::path::Path) {
    let mut probe = Probe::start(ProbeConfig::new(dir)).unwrap();
    probe.record(Record::Process(synth::process_info()));
    for r in 0..3 {
        probe.record(synth::arrival(r));
    }
    for i in 0..10 {
        probe.record(Record::Step(synth::step(i, 3, Some(2))));
    }
    assert!(probe.shutdown(Duration::from_secs(30)).clean);
}

/// Cut the last bytes of the trace's only segment, as a killed writer leaves it.
fn tear_last_frame(dir: &std::path::Path) {
    let seg = std::fs::read_dir(dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("seg-000000.tts");
    let bytes = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &bytes[..bytes.len() - 7]).unwrap();
}

#[test]
fn info_json_counts_what_was_recorded() {
    let dir = tempfile::tempdir().unwrap();
    small_trace(dir.path());
    let out = toktrace(&["info", dir.path().to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["processes"][0];
    assert_eq!(p["steps"], 10);
    assert_eq!(p["tokens"], 30);
    assert_eq!(p["requests"], 3);
    assert_eq!(p["engine"], "synthetic");
    assert_eq!(v["warnings"].as_array().unwrap().len(), 0);
}

#[test]
fn dump_prints_one_json_line_per_record() {
    let dir = tempfile::tempdir().unwrap();
    small_trace(dir.path());
    let out = toktrace(&["dump", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // header + process + 3 arrivals + 10 steps
    assert_eq!(lines.len(), 15);
    assert!(lines[0]["record"]["Header"].is_object());
    assert_eq!(
        lines[14]["record"]["Step"]["tokens"]["ids"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

/// `dump` holds one segment at a time: its peak memory stays far below the
/// trace's size (a soak's trace is gigabytes; reading it whole ran out of memory).
#[test]
fn dump_streams_a_trace_larger_than_its_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ProbeConfig::new(dir.path());
    config.writer.segment_bytes = 1 << 20;
    let mut probe = Probe::start(config).unwrap();
    probe.record(Record::Process(synth::process_info()));
    for r in 0..64 {
        probe.record(synth::arrival(r));
    }
    let mut written = 0u64;
    let mut i = 0;
    while written < 96 << 20 {
        probe.record(Record::Step(synth::step(i, 64, Some(5))));
        i += 1;
        if i % 1000 == 0 {
            probe.flush(Duration::from_secs(30));
            written = trace_bytes(dir.path());
        }
    }
    assert!(probe.shutdown(Duration::from_secs(60)).clean);
    let written = trace_bytes(dir.path());

    let child = Command::new(env!("CARGO_BIN_EXE_toktrace"))
        .args(["dump", dir.path().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (status, peak_rss) = wait_with_peak_rss(child);
    assert!(status.success());
    assert!(peak_rss > 0, "never saw the dump run");
    // Decoded records take more than their bytes: the whole trace held at
    // once needs more than the file; one 1 MiB segment at a time, a few MiB.
    assert!(
        peak_rss < written / 2,
        "dump peaked at {peak_rss} bytes for a {written}-byte trace"
    );
}

fn trace_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for process in std::fs::read_dir(dir).unwrap() {
        for seg in std::fs::read_dir(process.unwrap().path()).unwrap() {
            total += seg.unwrap().metadata().unwrap().len();
        }
    }
    total
}

/// The child's exit status and the peak resident set of the program it runs,
/// in bytes: its `VmHWM`, read while it runs (the last reading before it
/// exits is at most the true peak, so a miss can only let the test pass).
/// Not `wait4`'s `ru_maxrss`: a child spawned from this process carries the
/// test process's own peak across `exec`.
fn wait_with_peak_rss(mut child: std::process::Child) -> (std::process::ExitStatus, u64) {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak_kib * 1024);
        }
        // Before its exec the child still shares this process's memory:
        // only readings from `toktrace` itself count.
        let hwm = std::fs::read_to_string(&status_file)
            .ok()
            .filter(|s| {
                s.lines()
                    .any(|l| l.split_whitespace().eq(["Name:", "toktrace"]))
            })
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            });
        peak_kib = peak_kib.max(hwm.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn bad_input_exits_1_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = toktrace(&["info", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file or directory"));

    let junk = dir.path().join("junk.tts");
    std::fs::write(&junk, b"definitely not a trace").unwrap();
    let out = toktrace(&["info", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a toktrace trace"));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    assert_eq!(toktrace(&["info"]).status.code(), Some(2));
    assert_eq!(toktrace(&["frobnicate"]).status.code(), Some(2));
    let help = toktrace(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("TOKTRACE_DIR"));
}

#[test]
fn a_torn_trace_reads_with_a_warning_and_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    small_trace(dir.path());
    tear_last_frame(dir.path());
    let out = toktrace(&["info", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("torn tail"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["processes"][0]["steps"], 9);
}

#[test]
fn committed_real_vllm_fixture_traces_still_read() {
    // Readers keep reading every format version the fixtures use.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/traces");
    for scenario in ["vllm-mixed", "vllm-interference", "vllm-preempt"] {
        let dir = root.join(scenario).join("trace");
        let out = toktrace(&["info", dir.to_str().unwrap(), "--json"]);
        assert!(
            out.status.success(),
            "{scenario}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["warnings"].as_array().unwrap().len(), 0, "{scenario}");
        let steps: u64 = v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["steps"].as_u64().unwrap())
            .sum();
        assert!(steps > 10, "{scenario}: {steps} steps");
    }
}

#[test]
fn analysis_commands_on_bad_input_and_unknown_ids() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    for cmd in ["summary", "requests", "interference"] {
        let out = toktrace(&[cmd, missing.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
        assert!(out.stdout.is_empty(), "{cmd}: nothing on stdout");
    }
    small_trace(dir.path());
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["tokens", d, "--request", "no-such-request"],
        vec!["interference", d, "--request", "no-such-request"],
    ] {
        let out = toktrace(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no request with id"));
    }
    // The synthetic requests are found by external id, internal id and trace id.
    for id in [
        "cmpl-1",
        "cmpl-1-0a1b2c3d",
        "01010101010101010101010101010101",
    ] {
        let out = toktrace(&["tokens", d, "--request", id, "--json"]);
        assert!(
            out.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 10, "{id}");
    }
    let out = toktrace(&["tokens", d, "--request", "x", "--tbt-deadline-ms", "abc"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn analysis_json_is_valid_on_a_torn_trace_with_warnings_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    small_trace(dir.path());
    tear_last_frame(dir.path());
    let d = dir.path().to_str().unwrap();
    let out = toktrace(&["requests", d, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("torn tail"));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert_eq!(rows[0]["output_tokens"], 9);
    let out = toktrace(&["summary", d, "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["warnings"].as_array().unwrap().len(), 1);
    assert_eq!(s["tokens"], 27);
}

#[test]
fn export_writes_arrow_files() {
    let dir = tempfile::tempdir().unwrap();
    small_trace(dir.path());
    let out_dir = dir.path().join("frames");
    let out = toktrace(&[
        "export",
        dir.path().to_str().unwrap(),
        "--format",
        "ipc",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["steps", "slices", "tokens", "requests"] {
        let bytes = std::fs::read(out_dir.join(format!("{name}.arrow"))).unwrap();
        assert!(bytes.starts_with(b"ARROW1"), "{name}");
    }
}
