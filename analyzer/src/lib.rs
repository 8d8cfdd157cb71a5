//! toktrace-analyzer: turns a trace into answers — which tokens of a request
//! were slow, and whose work made them slow.
//!
//! [`load`](mod@load) folds a trace directory (every process, merged on one
//! clock, frontend emits joined to engine tokens) into compact tables
//! ([`data`]); [`Analysis`] fits the trace's own step-time model
//! ([`step_model`]), computes per-request latency metrics ([`metrics`]),
//! splits every token's gap into expected work and excess laid at the
//! culprits' doors ([`attribution`]), recognises each engine's warm-up
//! ([`warmup`]) and flags accuracy problems (same-prompt requests that
//! answered differently: [`variance`]). [`report`] gives the stable JSON
//! shapes of the CLI,
//! [`frames`] the same as polars DataFrames. [`index`] keeps, next to a large
//! trace, what it takes to load one request's stretch of time alone, and
//! [`open`] is how every command opens a trace: whole, or one request's
//! window through the index, with one request's token detail on demand.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod analysis;
pub mod attribution;
pub mod data;
pub mod frames;
pub mod index;
pub mod live;
pub mod load;
pub mod metrics;
pub mod open;
pub mod report;
pub mod select;
pub mod step_model;
pub mod variance;
pub mod warmup;

pub use analysis::{Analysis, AnalyzeOptions};
pub use load::{load, Detail, LoadOptions};
/// The polars this crate builds its frames with, for callers that write them.
pub use polars;

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
