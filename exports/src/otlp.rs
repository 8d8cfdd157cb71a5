//! Requests as OpenTelemetry spans, sent over OTLP (gRPC or HTTP/protobuf)
//! to a collector, so token-level facts join the user's distributed trace.
//!
//! One span per request, from its arrival to its finish, with:
//! - the OpenTelemetry GenAI semantic conventions: `gen_ai.operation.name`,
//!   `gen_ai.provider.name`, `gen_ai.request.model`, the sampling parameters,
//!   `gen_ai.usage.input_tokens` / `output_tokens`,
//!   `gen_ai.response.finish_reasons`, `gen_ai.response.id`;
//! - LoongSuite's token-level attributes (Development status; see
//!   shared/research/seeds.md, appendix B): `gen_ai.response.time_to_first_token`
//!   (µs), `gen_ai.response.per_token_time_to_generate` and
//!   `…per_token_time_to_schedule` (s from span start),
//!   `gen_ai.iteration.per_token_batch_size`, `…per_token_waiting_requests`,
//!   `…per_token_cumulative_count`, and the candidates per position
//!   (`gen_ai.response.candidate.per_position_token_ids` / `…_logprobs`, JSON,
//!   the emitted token first, then by rank);
//! - toktrace's own findings under `toktrace.*` (interference, slowest token,
//!   culprits, flags), and one `toktrace.stall` event per stalled token.
//!
//! A request that carried a W3C `traceparent` keeps its trace id and has the
//! caller's span as remote parent; others get ids derived from the request
//! (stable across re-exports, so a second export does not invent new traces).

use anyhow::{bail, Context, Result};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use toktrace_analyzer::data::RequestIx;
use toktrace_analyzer::select::Selection;
use toktrace_analyzer::Analysis;

use crate::Progress;

/// Spans per export call.
const BATCH: usize = 256;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// gRPC (collector port 4317).
    Grpc,
    /// HTTP with protobuf bodies (collector port 4318, path /v1/traces).
    Http,
}

/// What was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtlpStats {
    /// Request spans.
    pub spans: u64,
    /// Of which parented under a caller's trace.
    pub joined: u64,
}

/// Send the spans of what `sel` covers to `endpoint`.
pub fn send(
    a: &Analysis,
    sel: &Selection,
    endpoint: &str,
    transport: Transport,
    progress: Progress,
) -> Result<OtlpStats> {
    let requests: Vec<RequestIx> = (0..a.data.requests.len() as RequestIx)
        .filter(|&r| sel.request(a, r))
        .collect();
    let mut stats = OtlpStats::default();
    let cumulative = cumulative_tokens(a);
    let scope = InstrumentationScope::builder("toktrace")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut batches = requests.chunks(BATCH).map(|chunk| {
        chunk
            .iter()
            .map(|&r| span(a, r, &cumulative, &scope))
            .collect::<Vec<SpanData>>()
    });
    let resource = resource(a);
    match transport {
        Transport::Grpc => {
            // tonic needs a tokio runtime; one thread is plenty.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the gRPC runtime")?;
            runtime.block_on(async {
                let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_timeout(Duration::from_secs(30))
                    .build()
                    .with_context(|| format!("building the OTLP gRPC exporter for {endpoint}"))?;
                exporter.set_resource(&resource);
                for batch in batches.by_ref() {
                    count(&mut stats, &batch);
                    exporter
                        .export(batch)
                        .await
                        .with_context(|| format!("sending spans to {endpoint} (gRPC)"))?;
                    report(progress, &stats, requests.len());
                }
                anyhow::Ok(())
            })?;
        }
        Transport::Http => {
            let url = http_traces_url(endpoint);
            // The blocking HTTP client runs its own runtime, so it must not
            // be called from inside one: export futures are driven here.
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url.clone())
                .with_timeout(Duration::from_secs(30))
                .build()
                .with_context(|| format!("building the OTLP HTTP exporter for {url}"))?;
            exporter.set_resource(&resource);
            for batch in batches {
                count(&mut stats, &batch);
                block_on(exporter.export(batch))
                    .with_context(|| format!("sending spans to {url} (HTTP)"))?;
                report(progress, &stats, requests.len());
            }
        }
    }
    Ok(stats)
}

fn count(stats: &mut OtlpStats, batch: &[SpanData]) {
    stats.spans += batch.len() as u64;
    stats.joined += batch
        .iter()
        .filter(|s| s.parent_span_id != SpanId::INVALID)
        .count() as u64;
}

fn report(progress: Progress, stats: &OtlpStats, total: usize) {
    if let Some(p) = progress {
        p(stats.spans, total as u64);
    }
}

/// `http://host:4318` → `http://host:4318/v1/traces`; a URL that already
/// names a path is used as given.
pub fn http_traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// Check an endpoint before any work: a URL with a scheme and a host, and a
/// loopback host unless `allow_remote`. Spans carry what the model answered
/// (token ids, and their text at capture level `text`) and this build sends
/// plain http: off this machine, anyone on the path could read it, so sending
/// there is the user's explicit choice (or goes through a local collector that
/// forwards over TLS).
pub fn check_endpoint(endpoint: &str, allow_remote: bool) -> Result<()> {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        bail!("--endpoint {endpoint:?} is not a URL: give e.g. http://localhost:4317 (gRPC) or http://localhost:4318 (HTTP)");
    };
    if scheme != "http" && scheme != "https" {
        bail!("--endpoint {endpoint:?}: the scheme must be http or https");
    }
    if scheme == "https" {
        bail!("--endpoint {endpoint:?}: this build sends plain http only; use a local collector or a TLS-terminating proxy");
    }
    let host = endpoint_host(rest);
    if host.is_empty() {
        bail!("--endpoint {endpoint:?} names no host");
    }
    if !allow_remote && !is_loopback(host) {
        bail!(
            "--endpoint {endpoint:?} is not on this machine: spans hold what the model answered, \
             and plain http would show it to the network. Send to a local collector that forwards \
             over TLS, or pass --allow-remote-http to send anyway"
        );
    }
    Ok(())
}

/// The host of `authority[/path]`: `[v6]:port`, `host:port` or `host`.
fn endpoint_host(rest: &str) -> &str {
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Drive a future to completion on this thread.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context as TaskContext, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

fn resource(a: &Analysis) -> Resource {
    let engine = a
        .data
        .processes
        .iter()
        .find_map(|p| p.info.as_ref().map(|i| i.engine.clone()))
        .unwrap_or_else(|| "llm-engine".to_string());
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or(engine);
    let mut attributes = vec![KeyValue::new("service.name", service)];
    if let Some(p) = a.data.processes.first() {
        attributes.push(KeyValue::new("host.name", p.host.clone()));
    }
    attributes.push(KeyValue::new("telemetry.source", "toktrace export"));
    Resource::builder_empty()
        .with_attributes(attributes)
        .build()
}

/// Tokens the engine process had sampled by the end of each step (LoongSuite's
/// per-token cumulative count).
fn cumulative_tokens(a: &Analysis) -> Vec<u64> {
    let mut per_process: Vec<u64> = vec![0; a.data.processes.len()];
    a.data
        .steps
        .iter()
        .map(|s| {
            let c = &mut per_process[s.process as usize];
            *c += u64::from(s.sampled);
            *c
        })
        .collect()
}

/// 16 or 8 bytes derived from a request, for spans without a caller's trace.
fn derived_id<const N: usize>(a: &Analysis, r: RequestIx, salt: u8) -> [u8; N] {
    let req = &a.data.requests[r as usize];
    let process = &a.data.processes[req.process as usize];
    let mut out = [0u8; N];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = DefaultHasher::new();
        (salt, i, &process.name, &req.internal_id).hash(&mut h);
        let bytes = h.finish().to_be_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    out
}

fn unix_time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn strings(v: Vec<String>) -> Value {
    Value::Array(Array::String(
        v.into_iter().map(StringValue::from).collect(),
    ))
}

/// The span of one request.
fn span(a: &Analysis, r: RequestIx, cumulative: &[u64], scope: &InstrumentationScope) -> SpanData {
    let d = &a.data;
    let req = &d.requests[r as usize];
    let p = &d.processes[req.process as usize];
    let row = a.request_row(r);
    let timings = a.timings(r);
    let info = p.info.as_ref();

    let first_step = req.first_scheduled.map(|s| d.steps[s as usize].start_ns);
    let start_ns = req
        .arrival_ns()
        .or(first_step)
        .or(timings.first().map(|t| t.enter_ns))
        .unwrap_or(0);
    let last_emit = req.emit_ns.iter().copied().filter(|&t| t != 0).max();
    let end_ns = [req.finish_ns, timings.last().map(|t| t.exit_ns), last_emit]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(start_ns)
        .max(start_ns);

    let (trace_id, parent) = match req.trace_id {
        Some(t) => (
            TraceId::from_bytes(t),
            req.parent_span_id
                .map_or(SpanId::INVALID, SpanId::from_bytes),
        ),
        None => (
            TraceId::from_bytes(derived_id::<16>(a, r, 1)),
            SpanId::INVALID,
        ),
    };
    let span_id = SpanId::from_bytes(derived_id::<8>(a, r, 2));

    let model = info.and_then(|i| i.model_name.clone());
    let operation = "text_completion";
    let mut attrs = vec![
        KeyValue::new("gen_ai.operation.name", operation),
        KeyValue::new("gen_ai.response.id", row.request_id.clone()),
        KeyValue::new("gen_ai.usage.input_tokens", i64::from(req.prompt_tokens)),
        KeyValue::new("gen_ai.usage.output_tokens", timings.len() as i64),
    ];
    if let Some(i) = info {
        attrs.push(KeyValue::new("gen_ai.provider.name", i.engine.clone()));
        attrs.push(KeyValue::new("gen_ai.system", i.engine.clone()));
    }
    if let Some(m) = &model {
        attrs.push(KeyValue::new("gen_ai.request.model", m.clone()));
        attrs.push(KeyValue::new("gen_ai.response.model", m.clone()));
    }
    let sp = &req.params;
    if let Some(v) = sp.max_tokens {
        attrs.push(KeyValue::new("gen_ai.request.max_tokens", i64::from(v)));
    }
    if let Some(v) = sp.temperature {
        attrs.push(KeyValue::new("gen_ai.request.temperature", f64::from(v)));
    }
    if let Some(v) = sp.top_p {
        attrs.push(KeyValue::new("gen_ai.request.top_p", f64::from(v)));
    }
    if let Some(v) = sp.top_k {
        attrs.push(KeyValue::new("gen_ai.request.top_k", f64::from(v)));
    }
    if let Some(v) = sp.seed {
        attrs.push(KeyValue::new("gen_ai.request.seed", v as i64));
    }
    if let Some(reason) = &row.finish_reason {
        attrs.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            strings(vec![reason.clone()]),
        ));
    }
    if let Some(ttft) = row.ttft_ms {
        attrs.push(KeyValue::new(
            "gen_ai.response.time_to_first_token",
            (ttft * 1000.0).round() as i64,
        ));
    }

    // Token-level arrays, one value per output token.
    let since_start = |t: u64| t.saturating_sub(start_ns) as f64 / 1e9;
    let step = |t: &toktrace_analyzer::attribution::TokenTiming| &d.steps[t.step as usize];
    attrs.push(KeyValue::new(
        "gen_ai.response.per_token_time_to_generate",
        Value::Array(Array::F64(
            timings.iter().map(|t| since_start(t.exit_ns)).collect(),
        )),
    ));
    attrs.push(KeyValue::new(
        "gen_ai.response.per_token_time_to_schedule",
        Value::Array(Array::F64(
            timings.iter().map(|t| since_start(t.enter_ns)).collect(),
        )),
    ));
    attrs.push(KeyValue::new(
        "gen_ai.iteration.per_token_batch_size",
        Value::Array(Array::I64(
            timings
                .iter()
                .map(|t| i64::from(step(t).requests))
                .collect(),
        )),
    ));
    attrs.push(KeyValue::new(
        "gen_ai.iteration.per_token_waiting_requests",
        Value::Array(Array::I64(
            timings.iter().map(|t| i64::from(step(t).waiting)).collect(),
        )),
    ));
    attrs.push(KeyValue::new(
        "gen_ai.iteration.per_token_cumulative_count",
        Value::Array(Array::I64(
            timings
                .iter()
                .map(|t| cumulative.get(t.step as usize).map_or(0, |&c| c as i64))
                .collect(),
        )),
    ));
    if let Some(detail) = &req.detail {
        let mut ids = Vec::with_capacity(timings.len());
        let mut logprobs = Vec::with_capacity(timings.len());
        for t in &timings {
            let sampled = detail.ids.get(t.position).copied().flatten();
            let sampled_lp = detail.logprobs.get(t.position).copied().flatten();
            let mut pos_ids: Vec<u32> = Vec::new();
            let mut pos_lps: Vec<f32> = Vec::new();
            if let Some(id) = sampled {
                pos_ids.push(id);
                pos_lps.push(sampled_lp.unwrap_or(f32::NAN));
            }
            for (id, lp) in detail.top(t.position) {
                if Some(id) != sampled {
                    pos_ids.push(id);
                    pos_lps.push(lp);
                }
            }
            ids.push(pos_ids);
            logprobs.push(
                pos_lps
                    .into_iter()
                    .map(|v| v.is_finite().then_some(f64::from(v)))
                    .collect::<Vec<_>>(),
            );
        }
        if ids.iter().any(|v| !v.is_empty()) {
            attrs.push(KeyValue::new(
                "gen_ai.response.candidate.per_position_token_ids",
                serde_json::to_string(&ids).unwrap_or_default(),
            ));
            attrs.push(KeyValue::new(
                "gen_ai.response.candidate.per_position_logprobs",
                serde_json::to_string(&logprobs).unwrap_or_default(),
            ));
        }
    }

    // What toktrace found.
    attrs.push(KeyValue::new(
        "toktrace.request.internal_id",
        req.internal_id.clone(),
    ));
    attrs.push(KeyValue::new(
        "toktrace.interference_ms",
        row.interference_ms,
    ));
    attrs.push(KeyValue::new("toktrace.stalls", i64::from(row.stalls)));
    attrs.push(KeyValue::new(
        "toktrace.preemptions",
        row.preemptions as i64,
    ));
    if let (Some(ms), Some(index)) = (row.max_itl_ms, row.max_itl_index) {
        attrs.push(KeyValue::new("toktrace.max_itl_ms", ms));
        attrs.push(KeyValue::new("toktrace.max_itl_index", i64::from(index)));
    }
    if let Some(p99) = row.itl_p99_ms {
        attrs.push(KeyValue::new("toktrace.itl_p99_ms", p99));
    }
    if !row.top_culprits.is_empty() {
        attrs.push(KeyValue::new(
            "toktrace.top_culprits",
            strings(
                row.top_culprits
                    .iter()
                    .map(|c| format!("{} ({:.1} ms)", c.request_id, c.ms))
                    .collect(),
            ),
        ));
    }
    if !row.flags.is_empty() {
        attrs.push(KeyValue::new(
            "toktrace.flags",
            strings(row.flags.iter().map(|f| f.to_string()).collect()),
        ));
    }

    let mut events = SpanEvents::default();
    for t in a.slow_tokens(r) {
        let mut e_attrs = vec![
            KeyValue::new("toktrace.token.index", i64::from(t.index)),
            KeyValue::new("toktrace.token.gap_ms", t.gap_ns as f64 / 1e6),
            KeyValue::new("toktrace.token.excess_ms", t.excess_ns / 1e6),
            KeyValue::new("gen_ai.iteration.batch_size", i64::from(step(&t).requests)),
        ];
        if let Some(top) = t.shares.iter().max_by(|x, y| x.ns.total_cmp(&y.ns)) {
            e_attrs.push(KeyValue::new(
                "toktrace.culprit.request_id",
                d.requests[top.culprit as usize].display_id().to_string(),
            ));
            e_attrs.push(KeyValue::new("toktrace.culprit.cause", top.cause.name()));
            e_attrs.push(KeyValue::new("toktrace.culprit.ms", top.ns / 1e6));
        }
        events.events.push(Event::new(
            "toktrace.stall",
            unix_time(p.unix_ns(t.exit_ns)),
            e_attrs,
            0,
        ));
    }

    let name = match &model {
        Some(m) => format!("{operation} {m}"),
        None => operation.to_string(),
    };
    SpanData {
        span_context: SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: parent,
        parent_span_is_remote: parent != SpanId::INVALID,
        span_kind: SpanKind::Server,
        name: Cow::Owned(name),
        start_time: unix_time(p.unix_ns(start_ns)),
        end_time: unix_time(p.unix_ns(end_ns)),
        attributes: attrs,
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status: match req.finish_reason {
            Some(probe_core::event::FinishReason::Error) => {
                Status::error("the engine finished the request with an error")
            }
            _ => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_get_the_traces_path() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("http://c:4318/custom"),
            "http://c:4318/custom"
        );
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(check_endpoint("http://localhost:4317", false).is_ok());
        assert!(check_endpoint("localhost:4317", false).is_err());
        assert!(check_endpoint("ftp://x", false).is_err());
        assert!(check_endpoint("http://", false).is_err());
        assert!(check_endpoint("http://:4317", true).is_err());
    }

    #[test]
    fn plain_http_leaves_the_machine_only_when_asked() {
        for local in [
            "http://localhost:4317",
            "http://127.0.0.1:4318/v1/traces",
            "http://127.8.9.10",
            "http://[::1]:4317",
        ] {
            assert!(check_endpoint(local, false).is_ok(), "{local}");
        }
        for remote in [
            "http://collector:4317",
            "http://10.0.0.5:4318",
            "http://[2001:db8::1]:4317",
            "http://localhost.evil.example:4317",
            "http://user@collector:4317",
        ] {
            let err = check_endpoint(remote, false).unwrap_err().to_string();
            assert!(err.contains("--allow-remote-http"), "{remote}: {err}");
            assert!(check_endpoint(remote, true).is_ok(), "{remote}");
        }
    }
}
