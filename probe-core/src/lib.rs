//! probe-core: the part of toktrace that lives inside the engine process, and
//! the reader that gets its data back out.
//!
//! An adapter hands the probe one [`event::Step`] per engine iteration (batch
//! composition and every sampled token, as columns) plus request lifecycle and
//! frontend emit records. [`Probe::record`] pushes the record into a bounded
//! lock-free [`ring::Ring`] and returns: it never blocks, and a full ring drops
//! and counts. A drain thread frames each record (length + CRC32C + bincode
//! payload) into append-only, size-rotated segment files under one directory per
//! process, within a disk budget, repeating what later segments need to stand
//! alone ([`writer`]). Every byte on disk is defined in
//! [`format`](mod@format) alone. [`reader`] reads a trace directory, a
//! process directory or a single segment back, surviving torn tails and
//! corrupt frames. [`files`] is how
//! every toktrace crate writes a file outside a process directory (the index,
//! exports): aside and renamed, never through a symlink or over another
//! user's file.
//!
//! This crate knows nothing of Python, engines or dataframes.
//!
//! # Recording a step and reading it back
//!
//! ```
//! use probe_core::event::{BatchEntry, Record, TokenRun};
//! use probe_core::{read_trace, Probe, ProbeConfig};
//! use std::time::Duration;
//!
//! let dir = tempfile::tempdir()?;
//! let mut probe = Probe::start(ProbeConfig::new(dir.path()))?;
//!
//! // One engine iteration: request 0 decoded one token, id 42.
//! let mut step = probe.take_step(); // a recycled step: no allocation in steady state
//! step.step_id = 1;
//! (step.start_ns, step.end_ns) = (1_000, 2_000);
//! step.batch.push(BatchEntry { req: 0, prefill_tokens: 0, cached_tokens: 0, decode_tokens: 1 });
//! step.tokens.runs.push(TokenRun { req: 0, first_index: 0, count: 1, top_k: None });
//! step.tokens.ids.0.push(42);
//! assert!(probe.record(Record::Step(step))); // false: dropped and counted, never blocked
//! assert!(probe.shutdown(Duration::from_secs(5)).clean);
//!
//! let trace = read_trace(dir.path())?;
//! let tokens: Vec<_> = trace.processes[0]
//!     .records()
//!     .filter_map(|r| match r {
//!         Record::Step(s) => Some(s.tokens.iter().map(|t| t.token_id).collect::<Vec<_>>()),
//!         _ => None,
//!     })
//!     .flatten()
//!     .collect();
//! assert_eq!(tokens, [Some(42)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod clock;
pub mod drain;
pub mod files;
pub mod follow;
pub mod format;
pub mod prompt;
pub mod reader;
pub mod ring;
pub mod synth;
pub mod writer;

// The format's modules, also at the crate's root where callers have always
// found them (`probe_core::event::Record`).
pub use format::{columns, event, frame};
pub use format::{FORMAT_VERSION, MIN_READ_VERSION};

pub use drain::{Probe, ProbeConfig, ShutdownReport};
pub use event::Record;
pub use reader::{read_trace, ReadError, ReadWarning, Trace};
pub use writer::{FsyncPolicy, WriterConfig};

/// Version of the probe (written into every segment header).
pub const PROBE_VERSION: &str = env!("CARGO_PKG_VERSION");
