//! Helpers shared by the probe-core integration tests.
#![allow(dead_code)]

use probe_core::event::Record;
use probe_core::reader::Trace;
use probe_core::{Probe, ProbeConfig};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A probe config for `dir` whose error reports are collected.
pub fn config(dir: &Path) -> (ProbeConfig, Arc<Mutex<Vec<String>>>) {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&reports);
    let mut c = ProbeConfig::new(dir);
    c.on_error = Arc::new(move |m| sink.lock().unwrap().push(m.to_string()));
    (c, reports)
}

/// Record everything, shut down cleanly, and return the probe.
pub fn record_all(config: ProbeConfig, records: &[Record]) -> Probe {
    let mut probe = Probe::start(config).expect("start probe");
    for r in records {
        assert!(probe.record(r.clone()), "ring unexpectedly full");
    }
    let report = probe.shutdown(Duration::from_secs(30));
    assert!(report.clean, "drain did not finish");
    probe
}

/// Records of a trace's single process, headers left out.
pub fn records(trace: &Trace) -> Vec<Record> {
    assert_eq!(trace.processes.len(), 1, "expected one process");
    trace.processes[0].records().cloned().collect()
}

/// Step ids in file order.
pub fn step_ids(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Step(s) => Some(s.step_id),
            _ => None,
        })
        .collect()
}

/// Path of the synthetic writer binary.
pub fn synth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_toktrace-synth")
}
