//! A Perfetto trace (protobuf `Trace` of `TracePacket`s) of an analysed
//! trace, for ui.perfetto.dev and Perfetto's trace processor.
//!
//! Tracks:
//! - per engine process, a process track holding a `steps` track (one slice
//!   per iteration; a second lane when an engine overlaps iterations) and
//!   counter tracks: batch requests, prefill tokens, decode tokens, cached
//!   tokens, waiting requests, KV-cache usage;
//! - per engine process, a `requests` group with one track per request:
//!   `queued`, `prefill` and `decode` slices, a `preempted` instant per
//!   preemption and one instant per token at the end of the step that
//!   computed it, annotated with its gap, excess and top culprit.
//!
//! Times are unix nanoseconds. Packets are written one by one as they are
//! built, so memory stays flat however long the trace.
//!
//! Field numbers are those of Perfetto's public protos
//! (protos/perfetto/trace/trace_packet.proto, track_event/track_event.proto,
//! track_event/track_descriptor.proto, track_event/counter_descriptor.proto,
//! track_event/debug_annotation.proto, track_event/process_descriptor.proto).

use crate::protobuf::{put_varint, Message};
use crate::Progress;
use anyhow::{Context, Result};
use std::io::Write;
use toktrace_analyzer::data::{RequestIx, StepIx};
use toktrace_analyzer::select::Selection;
use toktrace_analyzer::Analysis;

// Trace
const TRACE_PACKET: u32 = 1;
// TracePacket
const PACKET_TIMESTAMP: u32 = 8;
const PACKET_SEQUENCE_ID: u32 = 10;
const PACKET_TRACK_EVENT: u32 = 11;
const PACKET_SEQUENCE_FLAGS: u32 = 13;
const PACKET_TRACK_DESCRIPTOR: u32 = 60;
const SEQ_INCREMENTAL_STATE_CLEARED: u64 = 1;
// TrackDescriptor
const TRACK_UUID: u32 = 1;
const TRACK_NAME: u32 = 2;
const TRACK_PROCESS: u32 = 3;
const TRACK_PARENT_UUID: u32 = 5;
const TRACK_COUNTER: u32 = 8;
const TRACK_CHILD_ORDERING: u32 = 11;
const TRACK_SIBLING_ORDER_RANK: u32 = 12;
const ORDERING_CHRONOLOGICAL: u64 = 2;
const ORDERING_EXPLICIT: u64 = 3;
// ProcessDescriptor
const PROCESS_PID: u32 = 1;
const PROCESS_NAME: u32 = 6;
// CounterDescriptor
const COUNTER_UNIT: u32 = 3;
const COUNTER_UNIT_NAME: u32 = 6;
const UNIT_COUNT: u64 = 2;
// TrackEvent
const EVENT_DEBUG_ANNOTATIONS: u32 = 4;
const EVENT_TYPE: u32 = 9;
const EVENT_TRACK_UUID: u32 = 11;
const EVENT_CATEGORIES: u32 = 22;
const EVENT_NAME: u32 = 23;
const EVENT_COUNTER_VALUE: u32 = 30;
const EVENT_DOUBLE_COUNTER_VALUE: u32 = 44;
const TYPE_SLICE_BEGIN: u64 = 1;
const TYPE_SLICE_END: u64 = 2;
const TYPE_INSTANT: u64 = 3;
const TYPE_COUNTER: u64 = 4;
// DebugAnnotation
const ANNOTATION_UINT: u32 = 3;
const ANNOTATION_DOUBLE: u32 = 5;
const ANNOTATION_STRING: u32 = 6;
const ANNOTATION_NAME: u32 = 10;

/// The counters of an engine process, in track order: (name, unit, value of a step).
type CounterValue = fn(&toktrace_analyzer::data::StepRow) -> Option<f64>;
const COUNTERS: [(&str, &str, CounterValue); 6] = [
    ("batch requests", "requests", |s| {
        Some(f64::from(s.requests))
    }),
    ("prefill tokens", "tokens", |s| {
        Some(f64::from(s.prefill_tokens))
    }),
    ("decode tokens", "tokens", |s| {
        Some(f64::from(s.decode_tokens))
    }),
    ("cached tokens", "tokens", |s| {
        Some(f64::from(s.cached_tokens))
    }),
    ("waiting requests", "requests", |s| {
        Some(f64::from(s.waiting))
    }),
    ("KV-cache usage", "%", |s| {
        s.kv_usage.map(|u| f64::from(u) * 100.0)
    }),
];

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerfettoStats {
    /// Packets in the file.
    pub packets: u64,
    /// Step slices.
    pub steps: u64,
    /// Request tracks.
    pub requests: u64,
    /// Token instants.
    pub tokens: u64,
}

/// Track ids. Each engine process owns the ids with its index + 1 in the
/// high 32 bits; request tracks set the top bit.
fn process_track(p: u32) -> u64 {
    (u64::from(p) + 1) << 32
}
fn steps_track(p: u32, lane: usize) -> u64 {
    process_track(p) | (1 + lane as u64)
}
fn counter_track(p: u32, i: usize) -> u64 {
    process_track(p) | (16 + i as u64)
}
fn requests_group(p: u32) -> u64 {
    process_track(p) | 0xffff
}
fn request_track(r: RequestIx) -> u64 {
    (1 << 63) | u64::from(r)
}

/// Writes packets to the output, each as a `Trace.packet` field.
struct PacketWriter<W: Write> {
    out: W,
    packet: Message,
    event: Message,
    annotation: Message,
    frame: Vec<u8>,
    packets: u64,
}

impl<W: Write> PacketWriter<W> {
    fn new(out: W) -> Self {
        PacketWriter {
            out,
            packet: Message::new(),
            event: Message::new(),
            annotation: Message::new(),
            frame: Vec::new(),
            packets: 0,
        }
    }

    fn write(&mut self, timestamp: Option<u64>, field: u32, body: &Message) -> Result<()> {
        self.packet.clear();
        if let Some(ts) = timestamp {
            self.packet.uint(PACKET_TIMESTAMP, ts);
        }
        self.packet.uint(PACKET_SEQUENCE_ID, 1);
        if self.packets == 0 {
            self.packet
                .uint(PACKET_SEQUENCE_FLAGS, SEQ_INCREMENTAL_STATE_CLEARED);
        }
        self.packet.message(field, body);
        self.frame.clear();
        put_varint(&mut self.frame, u64::from(TRACE_PACKET) << 3 | 2);
        put_varint(&mut self.frame, self.packet.bytes().len() as u64);
        self.out.write_all(&self.frame)?;
        self.out.write_all(self.packet.bytes())?;
        self.packets += 1;
        Ok(())
    }

    fn track(&mut self, track: &Message) -> Result<()> {
        self.write(None, PACKET_TRACK_DESCRIPTOR, track)
    }

    /// Start an event; add annotations with `annotate`, then `emit` it.
    fn begin_event(&mut self, kind: u64, track: u64, name: Option<&str>) {
        self.event.clear();
        self.event
            .uint(EVENT_TYPE, kind)
            .uint(EVENT_TRACK_UUID, track);
        if let Some(name) = name {
            self.event.string(EVENT_NAME, name);
        }
        if kind != TYPE_COUNTER && kind != TYPE_SLICE_END {
            self.event.string(EVENT_CATEGORIES, "toktrace");
        }
    }

    fn annotate(&mut self, name: &str, value: Value<'_>) {
        self.annotation.clear();
        self.annotation.string(ANNOTATION_NAME, name);
        match value {
            Value::Uint(v) => self.annotation.uint(ANNOTATION_UINT, v),
            Value::Double(v) => self.annotation.double(ANNOTATION_DOUBLE, v),
            Value::Str(v) => self.annotation.string(ANNOTATION_STRING, v),
        };
        let annotation = std::mem::take(&mut self.annotation);
        self.event.message(EVENT_DEBUG_ANNOTATIONS, &annotation);
        self.annotation = annotation;
    }

    fn emit(&mut self, timestamp: u64) -> Result<()> {
        let event = std::mem::take(&mut self.event);
        let written = self.write(Some(timestamp), PACKET_TRACK_EVENT, &event);
        self.event = event;
        written
    }

    fn counter(&mut self, track: u64, timestamp: u64, value: f64) -> Result<()> {
        self.begin_event(TYPE_COUNTER, track, None);
        if value.fract() == 0.0 && value.abs() < 9e15 {
            self.event.int(EVENT_COUNTER_VALUE, value as i64);
        } else {
            self.event.double(EVENT_DOUBLE_COUNTER_VALUE, value);
        }
        self.emit(timestamp)
    }

    fn slice(&mut self, track: u64, name: &str, from: u64, to: u64) -> Result<()> {
        self.begin_event(TYPE_SLICE_BEGIN, track, Some(name));
        self.emit(from)?;
        self.begin_event(TYPE_SLICE_END, track, None);
        self.emit(to.max(from))
    }
}

enum Value<'a> {
    Uint(u64),
    Double(f64),
    Str(&'a str),
}

/// Write the Perfetto trace of what `sel` covers.
pub fn write(
    a: &Analysis,
    sel: &Selection,
    out: impl Write,
    progress: Progress,
) -> Result<PerfettoStats> {
    let mut w = PacketWriter::new(out);
    let mut stats = PerfettoStats::default();
    let d = &a.data;
    let engines: Vec<u32> = {
        let mut p: Vec<u32> = d.steps.iter().map(|s| s.process).collect();
        p.extend(d.requests.iter().map(|r| r.process));
        p.sort_unstable();
        p.dedup();
        p
    };
    for &p in &engines {
        describe_process(&mut w, a, p)?;
    }
    for &p in &engines {
        stats.steps += write_steps(&mut w, a, sel, p)?;
    }
    let selected: Vec<RequestIx> = (0..d.requests.len() as RequestIx)
        .filter(|&r| sel.request(a, r))
        .collect();
    for (done, &r) in selected.iter().enumerate() {
        stats.tokens += write_request(&mut w, a, sel, r)?;
        stats.requests += 1;
        if let Some(progress) = progress {
            if done % 256 == 0 || done + 1 == selected.len() {
                progress(done as u64 + 1, selected.len() as u64);
            }
        }
    }
    w.out.flush().context("flushing the Perfetto trace")?;
    stats.packets = w.packets;
    Ok(stats)
}

fn describe_process<W: Write>(w: &mut PacketWriter<W>, a: &Analysis, p: u32) -> Result<()> {
    let process = &a.data.processes[p as usize];
    let model = process
        .info
        .as_ref()
        .and_then(|i| i.model_name.as_deref())
        .map(|m| format!(" · {m}"))
        .unwrap_or_default();
    let label = format!("{} {}{}", process.role, process.host, model);
    let mut pd = Message::new();
    pd.int(PROCESS_PID, i64::from(process.pid))
        .string(PROCESS_NAME, &label);
    let mut t = Message::new();
    t.uint(TRACK_UUID, process_track(p))
        .message(TRACK_PROCESS, &pd)
        .uint(TRACK_CHILD_ORDERING, ORDERING_EXPLICIT);
    w.track(&t)?;
    let mut rank = 0i64;
    let mut child = |w: &mut PacketWriter<W>, uuid: u64, name: &str, counter: Option<&str>| {
        let mut t = Message::new();
        t.uint(TRACK_UUID, uuid)
            .uint(TRACK_PARENT_UUID, process_track(p))
            .string(TRACK_NAME, name)
            .int(TRACK_SIBLING_ORDER_RANK, rank);
        rank += 1;
        if let Some(unit) = counter {
            let mut c = Message::new();
            c.uint(COUNTER_UNIT, UNIT_COUNT)
                .string(COUNTER_UNIT_NAME, unit);
            t.message(TRACK_COUNTER, &c);
        }
        w.track(&t)
    };
    child(w, steps_track(p, 0), "steps", None)?;
    child(w, steps_track(p, 1), "steps (overlapped)", None)?;
    for (i, (name, unit, _)) in COUNTERS.iter().enumerate() {
        child(w, counter_track(p, i), name, Some(unit))?;
    }
    let mut t = Message::new();
    t.uint(TRACK_UUID, requests_group(p))
        .uint(TRACK_PARENT_UUID, process_track(p))
        .string(TRACK_NAME, "requests")
        .int(TRACK_SIBLING_ORDER_RANK, rank)
        .uint(TRACK_CHILD_ORDERING, ORDERING_CHRONOLOGICAL);
    w.track(&t)
}

fn write_steps<W: Write>(
    w: &mut PacketWriter<W>,
    a: &Analysis,
    sel: &Selection,
    p: u32,
) -> Result<u64> {
    let d = &a.data;
    let process = &d.processes[p as usize];
    // Steps of one process may overlap when the engine launches the next
    // batch before the last one's output is processed; slices on one track
    // must nest, so such a step goes to the second lane.
    let mut lane_end = [0u64; 2];
    let mut written = 0;
    for s in 0..d.steps.len() as StepIx {
        let step = &d.steps[s as usize];
        if step.process != p || !sel.step(a, s) {
            continue;
        }
        let (start, end) = (process.unix_ns(step.start_ns), process.unix_ns(step.end_ns));
        let lane = usize::from(start < lane_end[0] && start >= lane_end[1]);
        lane_end[lane] = end;
        w.begin_event(
            TYPE_SLICE_BEGIN,
            steps_track(p, lane),
            Some(&format!("step {}", step.step_id)),
        );
        w.annotate("step", Value::Uint(step.step_id));
        w.annotate("requests", Value::Uint(u64::from(step.requests)));
        w.annotate(
            "prefill_tokens",
            Value::Uint(u64::from(step.prefill_tokens)),
        );
        w.annotate("decode_tokens", Value::Uint(u64::from(step.decode_tokens)));
        w.annotate("cached_tokens", Value::Uint(u64::from(step.cached_tokens)));
        w.annotate("context_tokens", Value::Uint(step.context_tokens));
        if step.preempted > 0 {
            w.annotate("preempted", Value::Uint(u64::from(step.preempted)));
        }
        let prefills: Vec<String> = d
            .slices_of(s)
            .iter()
            .filter(|x| x.prefill_tokens > 0)
            .take(8)
            .map(|x| {
                format!(
                    "{} ({} tokens)",
                    d.requests[x.request as usize].display_id(),
                    x.prefill_tokens
                )
            })
            .collect();
        if !prefills.is_empty() {
            w.annotate("prefill_of", Value::Str(&prefills.join(", ")));
        }
        w.emit(start)?;
        w.begin_event(TYPE_SLICE_END, steps_track(p, lane), None);
        w.emit(end.max(start))?;
        for (i, (_, _, value)) in COUNTERS.iter().enumerate() {
            if let Some(v) = value(step) {
                w.counter(counter_track(p, i), start, v)?;
            }
        }
        written += 1;
    }
    Ok(written)
}

fn write_request<W: Write>(
    w: &mut PacketWriter<W>,
    a: &Analysis,
    sel: &Selection,
    r: RequestIx,
) -> Result<u64> {
    let d = &a.data;
    let req = &d.requests[r as usize];
    let process = &d.processes[req.process as usize];
    let unix = |t: u64| process.unix_ns(t);
    let mut t = Message::new();
    t.uint(TRACK_UUID, request_track(r))
        .uint(TRACK_PARENT_UUID, requests_group(req.process))
        .string(TRACK_NAME, req.display_id());
    w.track(&t)?;

    let track = request_track(r);
    let timings = a.timings(r);
    let first_start = req.first_scheduled.map(|s| d.steps[s as usize].start_ns);
    let first_exit = timings.first().map(|t| t.exit_ns);
    let last_exit = timings.last().map(|t| t.exit_ns);
    if let (Some(arrival), Some(start)) = (req.arrival_ns(), first_start) {
        if start > arrival {
            w.slice(track, "queued", unix(arrival), unix(start))?;
        }
    }
    if let (Some(start), Some(exit)) = (first_start, first_exit) {
        w.slice(track, "prefill", unix(start), unix(exit))?;
    }
    if let (Some(first), Some(last)) = (first_exit, last_exit) {
        if last > first {
            w.slice(track, "decode", unix(first), unix(last))?;
        }
    }
    for &s in &req.preempted_at {
        let step = &d.steps[s as usize];
        w.begin_event(TYPE_INSTANT, track, Some("preempted"));
        w.annotate("step", Value::Uint(step.step_id));
        w.emit(unix(step.start_ns))?;
    }
    let detail = req.detail.as_ref();
    let mut tokens = 0;
    for t in &timings {
        let exit = unix(t.exit_ns);
        if !sel.contains(exit) {
            continue;
        }
        w.begin_event(TYPE_INSTANT, track, Some(&format!("token {}", t.index)));
        w.annotate("index", Value::Uint(u64::from(t.index)));
        w.annotate("step", Value::Uint(d.steps[t.step as usize].step_id));
        w.annotate("gap_ms", Value::Double(t.gap_ns as f64 / 1e6));
        w.annotate("excess_ms", Value::Double(t.excess_ns / 1e6));
        w.annotate("scheduling_ms", Value::Double(t.scheduling_ns as f64 / 1e6));
        if let Some(top) = t.shares.iter().max_by(|x, y| x.ns.total_cmp(&y.ns)) {
            w.annotate(
                "culprit",
                Value::Str(d.requests[top.culprit as usize].display_id()),
            );
            w.annotate("culprit_cause", Value::Str(top.cause.name()));
            w.annotate("culprit_ms", Value::Double(top.ns / 1e6));
        }
        if let Some(emit) = req.emit(t.position) {
            w.annotate(
                "emit_delay_ms",
                Value::Double(emit.saturating_sub(t.exit_ns) as f64 / 1e6),
            );
        }
        if let Some(id) = detail.and_then(|x| x.ids.get(t.position).copied().flatten()) {
            w.annotate("token_id", Value::Uint(u64::from(id)));
        }
        if let Some(lp) = detail.and_then(|x| x.logprobs.get(t.position).copied().flatten()) {
            w.annotate("logprob", Value::Double(f64::from(lp)));
        }
        if let Some(text) = detail.and_then(|x| x.texts.get(t.position).and_then(|t| t.as_deref()))
        {
            w.annotate("text", Value::Str(text));
        }
        w.emit(exit)?;
        tokens += 1;
    }
    Ok(tokens)
}
