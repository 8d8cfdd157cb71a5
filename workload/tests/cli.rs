//! The command line: help, exit codes, summary line.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_toktrace-workload"))
}

#[test]
fn help_teaches_the_law() {
    let out = bin().arg("--help").output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("P^1.08"), "{text}");
    assert!(text.contains("--chunked-prefill"));
}

#[test]
fn bad_command_lines_exit_2() {
    for args in [
        &["--tokens", "10"][..],
        &["--dir", "/tmp/x", "--no-such-flag"],
        &["--dir", "/tmp/x", "--topk", "many"],
        &["--dir", "/tmp/x", "--chunked-prefill", "maybe"],
        &["--dir", "/tmp/x", "--kv-blocks", "1"],
        &["--dir", "/tmp/x", "--rate", "0"],
    ] {
        let out = bin().args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn small_run_prints_its_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .arg("--dir")
        .arg(dir.path())
        .args([
            "--tokens",
            "3000",
            "--seed",
            "9",
            "--topk",
            "none",
            "--frontend",
        ])
        .args(["--chunked-prefill", "false"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ring_full=0") && text.contains("frontend_dir="),
        "{text}"
    );
    let trace = probe_core::read_trace(dir.path()).expect("read back");
    assert_eq!(trace.processes.len(), 2);
}
