//! `toktrace-synth`: record a synthetic workload through the real probe.
//!
//! Used by the crash tests (killed mid-stream), the full-disk test (under a
//! file-size rlimit) and as a quick way to make a trace without an engine.
//! Prints `recorded=N` and the final drop counters when it exits normally.

use probe_core::event::Record;
use probe_core::{synth, FsyncPolicy, Probe, ProbeConfig};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str =
    "usage: toktrace-synth --dir DIR [--steps N (0 = until killed)] [--batch B] [--topk K|none]
                      [--segment-bytes N] [--budget-bytes N] [--ring-slots N] [--sleep-us N]
                      [--fsync never|close|always|<N>ms] [--fsize-limit BYTES]";

struct Args {
    dir: String,
    steps: u64,
    batch: u32,
    top_k: Option<u8>,
    segment_bytes: u64,
    budget_bytes: u64,
    ring_slots: usize,
    sleep_us: u64,
    fsync: FsyncPolicy,
    fsize_limit: Option<u64>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        dir: String::new(),
        steps: 1000,
        batch: 8,
        top_k: Some(5),
        segment_bytes: 64 << 20,
        budget_bytes: 4 << 30,
        ring_slots: 65_536,
        sleep_us: 0,
        fsync: FsyncPolicy::OnClose,
        fsize_limit: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--dir" => a.dir = value,
            "--steps" => a.steps = num(&value)?,
            "--batch" => a.batch = num(&value)? as u32,
            "--topk" if value == "none" => a.top_k = None,
            "--topk" => a.top_k = Some(num(&value)?.min(255) as u8),
            "--segment-bytes" => a.segment_bytes = num(&value)?,
            "--budget-bytes" => a.budget_bytes = num(&value)?,
            "--ring-slots" => a.ring_slots = num(&value)? as usize,
            "--sleep-us" => a.sleep_us = num(&value)?,
            "--fsync" => {
                a.fsync = FsyncPolicy::parse(&value).ok_or_else(|| format!("--fsync: {value}?"))?
            }
            "--fsize-limit" => a.fsize_limit = Some(num(&value)?),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if a.dir.is_empty() {
        return Err(format!("--dir is required\n{USAGE}"));
    }
    Ok(a)
}

fn limit_file_size(bytes: u64) -> Result<(), String> {
    // SAFETY: plain libc calls with valid arguments. SIGXFSZ is ignored so that
    // writing past the limit fails with EFBIG instead of killing the process,
    // which is what a full disk looks like to the writer.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: bytes as libc::rlim_t,
        };
        if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
            return Err("setrlimit(RLIMIT_FSIZE) failed".into());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    if let Some(limit) = args.fsize_limit {
        if let Err(e) = limit_file_size(limit) {
            eprintln!("toktrace-synth: {e}");
            return ExitCode::from(1);
        }
    }
    let mut config = ProbeConfig::new(&args.dir);
    config.writer.role = "synthetic".into();
    config.writer.segment_bytes = args.segment_bytes;
    config.writer.disk_budget_bytes = args.budget_bytes;
    config.writer.fsync = args.fsync;
    config.ring_slots = args.ring_slots;
    let mut probe = match Probe::start(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("toktrace-synth: cannot start the probe: {e}");
            return ExitCode::from(1);
        }
    };
    probe.record(Record::Process(synth::process_info()));
    for r in 0..args.batch {
        probe.record(synth::arrival(r));
    }
    let mut recorded = 0u64;
    let mut id = 0u64;
    while args.steps == 0 || id < args.steps {
        probe.record(Record::Step(synth::step(id, args.batch, args.top_k)));
        recorded += 1;
        id += 1;
        if args.sleep_us > 0 {
            std::thread::sleep(Duration::from_micros(args.sleep_us));
        }
    }
    let report = probe.shutdown(Duration::from_secs(30));
    let d = report.drops;
    println!(
        "recorded={recorded} ring_full={} too_big={} write_failed={} tokens_lost={} clean={} dir={}",
        d.ring_full,
        d.too_big,
        d.write_failed,
        d.tokens,
        report.clean,
        probe.dir().display()
    );
    ExitCode::SUCCESS
}
