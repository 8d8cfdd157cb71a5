//! toktrace-analyzer: turns a trace into answers — per-token timelines, request
//! metrics (TTFT, TPOT, inter-token latency), interference attribution and the
//! exports an incident review needs.
//!
//! Today it holds the plain record counts the `toktrace` command prints; the
//! polars frames and metrics of the analyzer issue build on `probe_core::reader`.

use probe_core::event::Record;
use probe_core::reader::Trace;

/// Record counts of one traced process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessCounts {
    /// Segments read.
    pub segments: usize,
    /// Step records.
    pub steps: u64,
    /// Tokens inside step records.
    pub tokens: u64,
    /// Request arrivals (each request once, however often segments repeat it).
    pub requests: u64,
    /// Finished requests.
    pub finished: u64,
    /// Emitted tokens (frontend).
    pub emitted_tokens: u64,
}

/// Count what a process recorded, with repeated arrivals counted once.
pub fn count(process: &probe_core::reader::ProcessTrace) -> ProcessCounts {
    let mut seen = std::collections::HashSet::new();
    let mut c = ProcessCounts {
        segments: process.segments.len(),
        ..Default::default()
    };
    for r in process.records() {
        match r {
            Record::Step(s) => {
                c.steps += 1;
                c.tokens += s.tokens.len() as u64;
            }
            Record::Arrival(a) if seen.insert(a.req) => c.requests += 1,
            Record::Finish(_) => c.finished += 1,
            Record::Emit(e) => {
                c.emitted_tokens += e.emits.iter().map(|e| u64::from(e.count)).sum::<u64>()
            }
            _ => {}
        }
    }
    c
}

/// Counts for every process of a trace.
pub fn count_trace(trace: &Trace) -> Vec<ProcessCounts> {
    trace.processes.iter().map(count).collect()
}
