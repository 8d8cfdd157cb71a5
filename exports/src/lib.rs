//! toktrace-exports: what an SRE attaches to an incident review, written from
//! an analysed trace ([`toktrace_analyzer::Analysis`]) narrowed by a
//! [`Selection`](toktrace_analyzer::select::Selection) (time window, requests).
//!
//! - [`tables`]: the analyzer's frames as Parquet, Arrow IPC or CSV;
//! - [`dataset`]: the frames added, incrementally, to a Hive-partitioned
//!   Parquet dataset of many traces (the fleet dataset);
//! - [`perfetto`]: a Perfetto timeline (engine steps with counters, one track
//!   per request with its tokens), written packet by packet through a small
//!   protobuf encoder ([`protobuf`]);
//! - [`html`]: a self-contained report with inline SVG charts ([`svg`]);
//! - [`otlp`]: one OpenTelemetry span per request, sent to a collector.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod dataset;
pub mod html;
pub mod otlp;
pub mod perfetto;
pub mod protobuf;
pub mod svg;
pub mod tables;

/// Told (done, total) now and then during long writes.
pub type Progress<'a> = Option<&'a dyn Fn(u64, u64)>;
