//! The trace format, in one place: what a segment file is named, how it
//! opens, how records are framed in it, and what the records hold. The
//! writer and the reader both speak it from here; nothing else in the crate
//! decides a byte on disk.
//!
//! - [`frame`]: the segment preamble (magic, format version) and each
//!   record's frame (length, CRC32C, payload).
//! - [`event`]: the records themselves ([`event::Record`]), serialized with
//!   bincode; the per-token data of a step as columns.
//! - [`columns`]: how those columns are packed (LEB128, raw floats).
//! - `packed`: the compact encodings of a step's batch and token runs.
//! - `v1`: the records of format version 1, read into today's.
//!
//! A reader accepts segments of format versions [`MIN_READ_VERSION`] to
//! [`FORMAT_VERSION`]; docs/format.md describes the format for other readers.

pub mod columns;
pub mod event;
pub mod frame;
pub(crate) mod packed;
mod v1;

/// Version of the segment format this crate writes. Version 2 added the
/// prompt's hash and the trace's own top-K to the arrival record.
pub const FORMAT_VERSION: u16 = 2;
/// Oldest segment format version this crate reads.
pub const MIN_READ_VERSION: u16 = 1;

/// Name of segment `index` inside its process directory.
pub fn segment_file_name(index: u32) -> String {
    format!("seg-{index:06}.tts")
}

/// Parse a segment file name back to its index.
pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    name.strip_prefix("seg-")?
        .strip_suffix(".tts")?
        .parse()
        .ok()
}
