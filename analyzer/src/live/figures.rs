//! What `watch` counts exactly, per process: the figures Prometheus
//! exposes, kept as records arrive and never forgotten.

use crate::attribution::Cause;
use probe_core::event::DropCounts;
use std::collections::HashMap;

/// Bucket bounds of a histogram, seconds.
pub const TTFT_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Inter-token gaps and step times, seconds.
pub const GAP_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A cumulative histogram of seconds, as Prometheus exposes one.
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Upper bounds, seconds.
    pub bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative).
    pub counts: Vec<u64>,
    /// Sum of all observations, seconds.
    pub sum: f64,
    /// All observations (those above the last bound included).
    pub count: u64,
}

impl Histogram {
    pub(super) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub(super) fn observe_ns(&mut self, ns: u64) {
        let s = ns as f64 / 1e9;
        if let Some(i) = self.bounds.iter().position(|&b| s <= b) {
            self.counts[i] += 1;
        }
        self.sum += s;
        self.count += 1;
    }

    /// Observations at or below each bound, cumulative.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut total = 0;
        self.bounds.iter().zip(&self.counts).map(move |(&b, &c)| {
            total += c;
            (b, total)
        })
    }
}

/// What is known of one traced process, exactly, over everything read.
#[derive(Debug, Clone)]
pub struct ProcessFigures {
    /// Directory name (host, pid, start time).
    pub name: String,
    /// Host, from the segment header ("" until read).
    pub host: String,
    /// Role: engine-core, frontend, scheduler, …
    pub role: String,
    /// Engine and its version, from the process record.
    pub engine: String,
    /// The engine's version.
    pub engine_version: String,
    /// Steps recorded.
    pub steps: u64,
    /// Tokens sampled in them.
    pub tokens: u64,
    /// Tokens handed to clients (a frontend).
    pub emitted: u64,
    /// Requests that arrived (each once, however many segments repeat it).
    pub arrived: u64,
    /// Requests that finished.
    pub finished: u64,
    /// The probe's loss counters, the latest.
    pub drops: DropCounts,
    /// Segments the disk budget deleted, as the probe counted them.
    pub segments_removed: u64,
    /// Step durations.
    pub step_time: Histogram,
    /// Inter-token gaps (exit to exit) of every request.
    pub itl: Histogram,
    /// Time to first token of requests whose arrival is known.
    pub ttft: Histogram,
    /// Tokens judged stalls.
    pub stalls: u64,
    /// Delay laid on other requests' work, nanoseconds, by cause.
    pub interference_ns: HashMap<Cause, f64>,
    /// Requests in flight now.
    pub running: usize,
}

impl ProcessFigures {
    pub(super) fn new(name: String) -> ProcessFigures {
        ProcessFigures {
            name,
            host: String::new(),
            role: String::new(),
            engine: String::new(),
            engine_version: String::new(),
            steps: 0,
            tokens: 0,
            emitted: 0,
            arrived: 0,
            finished: 0,
            drops: DropCounts::default(),
            segments_removed: 0,
            step_time: Histogram::new(GAP_BOUNDS),
            itl: Histogram::new(GAP_BOUNDS),
            ttft: Histogram::new(TTFT_BOUNDS),
            stalls: 0,
            interference_ns: HashMap::new(),
            running: 0,
        }
    }
}
