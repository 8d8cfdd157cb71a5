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
//! alone ([`writer`]). Every byte on disk is defined in [`format`] alone. [`reader`] reads a trace directory, a process directory or a single
//! segment back, surviving torn tails and corrupt frames. [`files`] is how
//! every toktrace crate writes a file outside a process directory (the index,
//! exports): aside and renamed, never through a symlink or over another
//! user's file.
//!
//! This crate knows nothing of Python, engines or dataframes.

#![deny(missing_docs)]

pub mod clock;
pub mod drain;
pub mod files;
pub mod format;
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
