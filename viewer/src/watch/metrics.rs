//! The live figures in Prometheus's text exposition format (version 0.0.4):
//! one family per figure, one series per traced process.

use std::fmt::Write as _;
use toktrace_analyzer::attribution::Cause;
use toktrace_analyzer::live::{Histogram, LiveTrace, ProcessFigures};

/// What the watcher itself counts, beside the trace's figures.
#[derive(Debug, Default, Clone, Copy)]
pub struct WatcherFigures {
    /// Bytes of segments read.
    pub bytes_read: u64,
    /// Segments the disk budget deleted before they were read.
    pub segments_missed: u64,
    /// Torn tails, corrupt frames and other read problems worked around.
    pub read_warnings: u64,
    /// Finished requests' spans sent over OTLP, and those given up.
    pub spans_sent: u64,
    /// Spans not sent (the collector was down or slow).
    pub spans_failed: u64,
}

/// Escape a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(p: &ProcessFigures) -> String {
    format!(
        "process=\"{}\",host=\"{}\",role=\"{}\",engine=\"{}\",engine_version=\"{}\"",
        label(&p.name),
        label(&p.host),
        label(&p.role),
        label(&p.engine),
        label(&p.engine_version)
    )
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(
    out: &mut String,
    live: &LiveTrace,
    name: &str,
    help: &str,
    value: impl Fn(&ProcessFigures) -> f64,
) {
    family(out, name, "counter", help);
    for p in live.figures() {
        let _ = writeln!(out, "{name}{{{}}} {}", labels(p), value(p));
    }
}

fn histogram(
    out: &mut String,
    live: &LiveTrace,
    name: &str,
    help: &str,
    value: impl Fn(&ProcessFigures) -> &Histogram,
) {
    family(out, name, "histogram", help);
    for p in live.figures() {
        let l = labels(p);
        let h = value(p);
        for (bound, count) in h.cumulative() {
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count);
    }
}

/// The per-process counters: name, help, value.
type Counter = (&'static str, &'static str, fn(&ProcessFigures) -> f64);

const COUNTERS: [Counter; 9] = [
    (
        "toktrace_steps_total",
        "Engine iterations recorded.",
        |p| p.steps as f64,
    ),
    (
        "toktrace_tokens_total",
        "Tokens sampled in recorded steps.",
        |p| p.tokens as f64,
    ),
    (
        "toktrace_emitted_tokens_total",
        "Tokens a frontend handed to clients.",
        |p| p.emitted as f64,
    ),
    (
        "toktrace_requests_arrived_total",
        "Requests that arrived.",
        |p| p.arrived as f64,
    ),
    (
        "toktrace_requests_finished_total",
        "Requests that finished.",
        |p| p.finished as f64,
    ),
    (
        "toktrace_dropped_records_total",
        "Records the probe dropped (ring full, too big, write failed).",
        |p| p.drops.records() as f64,
    ),
    (
        "toktrace_dropped_tokens_total",
        "Tokens inside the records the probe dropped.",
        |p| p.drops.tokens as f64,
    ),
    (
        "toktrace_segments_removed_total",
        "Segments the probe's disk budget deleted.",
        |p| p.segments_removed as f64,
    ),
    (
        "toktrace_stalls_total",
        "Tokens whose gap exceeded the step model's expectation by more than max(the request's usual gap, 1 ms).",
        |p| p.stalls as f64,
    ),
];

/// The whole exposition.
pub fn render(live: &LiveTrace, watcher: &WatcherFigures) -> String {
    let mut out = String::new();
    for (name, help, value) in COUNTERS {
        counter(&mut out, live, name, help, value);
    }
    family(
        &mut out,
        "toktrace_interference_seconds_total",
        "counter",
        "Delay laid on other requests' prefill, by cause.",
    );
    for p in live.figures() {
        let l = labels(p);
        for cause in Cause::ALL {
            let ns = p.interference_ns.get(&cause).copied().unwrap_or(0.0);
            let _ = writeln!(
                out,
                "toktrace_interference_seconds_total{{{l},cause=\"{}\"}} {}",
                cause.name(),
                ns / 1e9
            );
        }
    }
    family(
        &mut out,
        "toktrace_requests_running",
        "gauge",
        "Requests in flight.",
    );
    for p in live.figures() {
        let _ = writeln!(
            out,
            "toktrace_requests_running{{{}}} {}",
            labels(p),
            p.running
        );
    }
    histogram(
        &mut out,
        live,
        "toktrace_ttft_seconds",
        "Arrival (at the frontend when traced) to the first token's exit.",
        |p| &p.ttft,
    );
    histogram(
        &mut out,
        live,
        "toktrace_itl_seconds",
        "Gaps between a request's consecutive tokens (exit to exit).",
        |p| &p.itl,
    );
    histogram(
        &mut out,
        live,
        "toktrace_step_seconds",
        "Duration of each engine iteration.",
        |p| &p.step_time,
    );
    let w = |out: &mut String, name: &str, kind: &str, help: &str, v: f64| {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    };
    w(
        &mut out,
        "toktrace_watch_bytes_read_total",
        "counter",
        "Bytes of segments read.",
        watcher.bytes_read as f64,
    );
    w(
        &mut out,
        "toktrace_watch_segments_missed_total",
        "counter",
        "Segments deleted by the disk budget before watch read them.",
        watcher.segments_missed as f64,
    );
    w(
        &mut out,
        "toktrace_watch_read_warnings_total",
        "counter",
        "Torn tails, corrupt frames and other read problems worked around.",
        watcher.read_warnings as f64,
    );
    w(
        &mut out,
        "toktrace_watch_kept_steps",
        "gauge",
        "Steps held in memory for judging.",
        live.kept_steps() as f64,
    );
    w(
        &mut out,
        "toktrace_watch_evicted_steps_total",
        "counter",
        "Steps dropped past --max-steps while a request that spans them ran.",
        live.evicted_steps() as f64,
    );
    w(
        &mut out,
        "toktrace_watch_spans_sent_total",
        "counter",
        "Finished requests' spans sent over OTLP.",
        watcher.spans_sent as f64,
    );
    w(
        &mut out,
        "toktrace_watch_spans_failed_total",
        "counter",
        "Spans not sent (collector unreachable or behind).",
        watcher.spans_failed as f64,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn an_empty_trace_still_exposes_the_watcher() {
        let live = LiveTrace::new(Default::default());
        let text = render(&live, &WatcherFigures::default());
        assert!(text.contains("# TYPE toktrace_steps_total counter"));
        assert!(text.contains("toktrace_watch_bytes_read_total 0"));
    }
}
