//! Reading traces back: a trace directory, one process directory, or one segment.
//!
//! The reader is tolerant of everything a crash or a disk can do to a segment
//! and strict about what it cannot understand:
//! - a torn tail (the writer was killed mid-write) ends that segment with a
//!   [`ReadWarning::TornTail`];
//! - a corrupt frame in the middle is skipped to the next frame whose length
//!   and CRC agree, with a [`ReadWarning::Corrupt`];
//! - a frame whose CRC is right but whose record does not decode (a newer
//!   writer's record kind) is skipped with a [`ReadWarning::Undecodable`];
//! - an unknown format version is a [`ReadError::UnknownVersion`], a path that
//!   holds no segments a [`ReadError::NotATrace`].
//!
//! No input makes it panic: `tests/fuzz_reader.rs` feeds it arbitrary bytes.

use crate::event::{AdapterErrors, ClockAnchor, DropCounts, ProcessInfo, Record, SegmentHeader};
use crate::format::{parse_segment_file_name, FORMAT_VERSION};
use crate::frame::{self, FRAME_HEADER_LEN, MAX_FRAME_LEN, PREAMBLE_LEN};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// A trace that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The path does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    /// The path exists but holds no toktrace segments.
    #[error("{path}: not a toktrace trace ({why})")]
    NotATrace {
        /// The path.
        path: PathBuf,
        /// What was found instead.
        why: String,
    },
    /// Written by a format this reader does not know.
    #[error("{path}: trace format version {version} is not supported by this toktrace (reads versions {min}..={max}); upgrade toktrace")]
    UnknownVersion {
        /// The segment.
        path: PathBuf,
        /// Its version.
        version: u16,
        /// Oldest supported.
        min: u16,
        /// Newest supported.
        max: u16,
    },
    /// An I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Something wrong inside a segment that the reader worked around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadWarning {
    /// The segment ends inside a frame: the writer stopped mid-write.
    TornTail {
        /// The segment.
        path: PathBuf,
        /// Offset of the incomplete frame.
        offset: u64,
        /// Bytes ignored after it.
        bytes: u64,
    },
    /// Bytes that are not a valid frame were skipped.
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the bad bytes start.
        offset: u64,
        /// How many were skipped.
        bytes: u64,
    },
    /// A frame with a valid CRC held a record this reader cannot decode.
    Undecodable {
        /// The segment.
        path: PathBuf,
        /// Offset of the frame.
        offset: u64,
        /// Decoder's complaint.
        error: String,
    },
    /// A segment file that is empty or has no complete preamble.
    Empty {
        /// The segment.
        path: PathBuf,
    },
    /// A segment file in a process directory that is not a toktrace segment.
    Skipped {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

impl fmt::Display for ReadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadWarning::TornTail { path, offset, bytes } => write!(
                f,
                "{}: torn tail at byte {offset} ({bytes} bytes of an unfinished frame ignored; the writer was stopped mid-write)",
                path.display()
            ),
            ReadWarning::Corrupt { path, offset, bytes } => write!(
                f,
                "{}: {bytes} corrupt bytes skipped at byte {offset}",
                path.display()
            ),
            ReadWarning::Undecodable { path, offset, error } => write!(
                f,
                "{}: record at byte {offset} skipped, cannot decode it ({error})",
                path.display()
            ),
            ReadWarning::Empty { path } => write!(f, "{}: empty segment", path.display()),
            ReadWarning::Skipped { path, why } => {
                write!(f, "{}: skipped ({why})", path.display())
            }
        }
    }
}

/// A record and where it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRecord {
    /// Byte offset of its frame.
    pub offset: u64,
    /// The record.
    pub record: Record,
}

/// One segment, decoded.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Where it came from.
    pub path: PathBuf,
    /// Its format version.
    pub format_version: u16,
    /// Its records, in file order (the header included).
    pub records: Vec<ReadRecord>,
    /// What was worked around.
    pub warnings: Vec<ReadWarning>,
}

impl Segment {
    /// The segment header, when the first frame survived.
    pub fn header(&self) -> Option<&SegmentHeader> {
        self.records.iter().find_map(|r| match &r.record {
            Record::Header(h) => Some(h),
            _ => None,
        })
    }
}

/// Decode a segment from bytes. Never panics; only the preamble can fail hard.
pub fn decode_segment(path: &Path, bytes: &[u8]) -> Result<Segment, ReadError> {
    let mut segment = Segment {
        path: path.to_path_buf(),
        format_version: 0,
        records: Vec::new(),
        warnings: Vec::new(),
    };
    if bytes.len() < PREAMBLE_LEN {
        if bytes.is_empty() || frame::MAGIC.starts_with(&bytes[..bytes.len().min(8)]) {
            segment.warnings.push(ReadWarning::Empty {
                path: path.to_path_buf(),
            });
            return Ok(segment);
        }
        return Err(ReadError::NotATrace {
            path: path.to_path_buf(),
            why: "file too short and no toktrace magic".into(),
        });
    }
    segment.format_version = format_version(path, bytes)?;
    decode_frames(bytes, PREAMBLE_LEN, 0, &mut segment);
    Ok(segment)
}

/// The format version the preamble at the start of `bytes` declares, when
/// this reader knows it.
pub(crate) fn format_version(path: &Path, bytes: &[u8]) -> Result<u16, ReadError> {
    let version = frame::parse_preamble(bytes).ok_or_else(|| ReadError::NotATrace {
        path: path.to_path_buf(),
        why: "no toktrace magic at the start of the file".into(),
    })?;
    if !(crate::MIN_READ_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(ReadError::UnknownVersion {
            path: path.to_path_buf(),
            version,
            min: crate::MIN_READ_VERSION,
            max: FORMAT_VERSION,
        });
    }
    Ok(version)
}

/// Decode the frames of `bytes[from..]`, where `bytes` starts at byte
/// `base` of the segment file (offsets in records and warnings are file
/// offsets). A frame cut by the end of `bytes` is a torn tail.
fn decode_frames(bytes: &[u8], from: usize, base: u64, segment: &mut Segment) {
    decode_frames_until(bytes, from, base, segment, Tail::Torn);
}

/// What a frame cut by the end of the bytes means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// The file is complete: the writer stopped mid-write.
    Torn,
    /// The file is still being written: the rest of the frame is on its way.
    Pending,
}

/// [`decode_frames`], telling what a cut last frame means; returns where
/// decoding stopped (the end of `bytes`, or the start of a pending frame).
pub(crate) fn decode_frames_until(
    bytes: &[u8],
    from: usize,
    base: u64,
    segment: &mut Segment,
    tail: Tail,
) -> usize {
    let path = segment.path.clone();
    let version = segment.format_version;
    let at = |pos: usize| base + pos as u64;
    let mut pos = from;
    while pos < bytes.len() {
        match frame_at(bytes, pos) {
            FrameAt::Valid(len) => {
                let payload = &bytes[pos + FRAME_HEADER_LEN..pos + FRAME_HEADER_LEN + len];
                match frame::decode_payload(payload, version) {
                    Ok(record) => {
                        if let Err(e) = check(&record) {
                            segment.warnings.push(ReadWarning::Undecodable {
                                path: path.clone(),
                                offset: at(pos),
                                error: e,
                            });
                        } else {
                            segment.records.push(ReadRecord {
                                offset: at(pos),
                                record,
                            });
                        }
                    }
                    Err(e) => segment.warnings.push(ReadWarning::Undecodable {
                        path: path.clone(),
                        offset: at(pos),
                        error: e.to_string(),
                    }),
                }
                pos += FRAME_HEADER_LEN + len;
            }
            FrameAt::Invalid => match resync(bytes, pos + 1) {
                Some(next) => {
                    segment.warnings.push(ReadWarning::Corrupt {
                        path: path.clone(),
                        offset: at(pos),
                        bytes: (next - pos) as u64,
                    });
                    pos = next;
                }
                None if tail == Tail::Pending => return pos,
                None => {
                    segment.warnings.push(ReadWarning::TornTail {
                        path: path.clone(),
                        offset: at(pos),
                        bytes: (bytes.len() - pos) as u64,
                    });
                    break;
                }
            },
        }
    }
    bytes.len()
}

/// Read only some byte ranges of a segment: what an index says holds the
/// records wanted. Each range must start at a frame (an offset a previous
/// read reported); the preamble is checked as by [`read_segment`]. Records
/// come in range order with their file offsets.
pub fn read_segment_ranges(
    path: &Path,
    ranges: &[std::ops::Range<u64>],
    buf: &mut Vec<u8>,
) -> Result<Segment, ReadError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut preamble = [0u8; PREAMBLE_LEN];
    file.read_exact(&mut preamble)
        .map_err(|e| io_error(path, e))?;
    let mut segment = Segment {
        path: path.to_path_buf(),
        format_version: format_version(path, &preamble)?,
        records: Vec::new(),
        warnings: Vec::new(),
    };
    for range in ranges {
        let start = range.start.max(PREAMBLE_LEN as u64);
        if range.end <= start {
            continue;
        }
        buf.clear();
        file.seek(SeekFrom::Start(start))
            .and_then(|_| (&mut file).take(range.end - start).read_to_end(buf))
            .map_err(|e| io_error(path, e))?;
        decode_frames(buf, 0, start, &mut segment);
    }
    Ok(segment)
}

/// Semantic checks a CRC cannot make (column lengths agree).
fn check(record: &Record) -> Result<(), String> {
    match record {
        Record::Step(s) => s.tokens.check().map_err(|e| e.to_string()),
        _ => Ok(()),
    }
}

enum FrameAt {
    Valid(usize),
    Invalid,
}

fn frame_at(bytes: &[u8], pos: usize) -> FrameAt {
    let Some(head) = bytes.get(pos..pos + FRAME_HEADER_LEN) else {
        return FrameAt::Invalid;
    };
    let len_bytes = [head[0], head[1], head[2], head[3]];
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > MAX_FRAME_LEN {
        return FrameAt::Invalid;
    }
    let Some(payload) = bytes.get(pos + FRAME_HEADER_LEN..pos + FRAME_HEADER_LEN + len) else {
        return FrameAt::Invalid;
    };
    if frame::frame_crc(len_bytes, payload) == crc {
        FrameAt::Valid(len)
    } else {
        FrameAt::Invalid
    }
}

/// The next offset at or after `from` where a valid frame starts.
fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(FRAME_HEADER_LEN)).find(|&p| {
        // Cheap filter before the CRC: the payload's first byte is a record tag.
        bytes.get(p + FRAME_HEADER_LEN).is_some_and(|&tag| tag < 16)
            && matches!(frame_at(bytes, p), FrameAt::Valid(_))
    })
}

/// Read one segment file.
pub fn read_segment(path: &Path) -> Result<Segment, ReadError> {
    read_segment_into(path, &mut Vec::new())
}

/// [`read_segment`] through a buffer the caller keeps: a reader going through
/// many segments spares a fresh file-sized allocation (and its unmap) per file.
pub fn read_segment_into(path: &Path, buf: &mut Vec<u8>) -> Result<Segment, ReadError> {
    use std::io::Read;
    buf.clear();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(buf))
        .map_err(|e| io_error(path, e))?;
    decode_segment(path, buf)
}

pub(crate) fn io_error(path: &Path, e: std::io::Error) -> ReadError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ReadError::NotFound(path.to_path_buf())
    } else {
        ReadError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// All segments of one traced process, oldest first.
#[derive(Debug, Clone)]
pub struct ProcessTrace {
    /// The process directory (or the segment's parent for a single file).
    pub dir: PathBuf,
    /// Its segments.
    pub segments: Vec<Segment>,
}

impl ProcessTrace {
    /// Every record, in order, with the segment headers left out.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.segments
            .iter()
            .flat_map(|s| s.records.iter().map(|r| &r.record))
            .filter(|r| !matches!(r, Record::Header(_)))
    }

    /// The first segment header.
    pub fn header(&self) -> Option<&SegmentHeader> {
        self.segments.iter().find_map(|s| s.header())
    }

    /// Clock anchor of the process (from its first header).
    pub fn anchor(&self) -> Option<ClockAnchor> {
        self.header().map(|h| h.anchor)
    }

    /// The latest process info.
    pub fn process_info(&self) -> Option<&ProcessInfo> {
        self.records().fold(None, |last, r| match r {
            Record::Process(p) => Some(p),
            _ => last,
        })
    }

    /// Final loss counters (the largest cumulative record seen).
    pub fn drops(&self) -> DropCounts {
        self.records()
            .fold(DropCounts::default(), |acc, r| match r {
                Record::Drops(d) if d.records() >= acc.records() => *d,
                _ => acc,
            })
    }

    /// Errors the adapter caught in its hooks (the largest cumulative record
    /// seen), if it reported any.
    pub fn adapter_errors(&self) -> Option<&AdapterErrors> {
        self.records()
            .fold(None, |acc: Option<&AdapterErrors>, r| match (r, acc) {
                (Record::AdapterErrors(e), Some(a)) if e.total() < a.total() => Some(a),
                (Record::AdapterErrors(e), _) => Some(e),
                _ => acc,
            })
    }

    /// Warnings of all segments.
    pub fn warnings(&self) -> impl Iterator<Item = &ReadWarning> {
        self.segments.iter().flat_map(|s| s.warnings.iter())
    }
}

/// A whole trace: one entry per traced process.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Processes, in directory-name order.
    pub processes: Vec<ProcessTrace>,
    /// Files skipped at the directory level.
    pub warnings: Vec<ReadWarning>,
}

impl Trace {
    /// Every warning, directory-level first.
    pub fn all_warnings(&self) -> Vec<&ReadWarning> {
        self.warnings
            .iter()
            .chain(self.processes.iter().flat_map(|p| p.warnings()))
            .collect()
    }
}

/// Segment files directly inside `dir`, by index.
pub(crate) fn segment_files(dir: &Path) -> Result<Vec<(u32, PathBuf)>, ReadError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        if let Some(index) = name.to_str().and_then(parse_segment_file_name) {
            out.push((index, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The segment files of one traced process, oldest first, not yet read.
#[derive(Debug, Clone)]
pub struct ProcessFiles {
    /// The process directory (or the segment's parent for a single file).
    pub dir: PathBuf,
    /// Its segment files.
    pub segments: Vec<PathBuf>,
}

impl ProcessFiles {
    /// Read every segment.
    pub fn read(&self) -> Result<ProcessTrace, ReadError> {
        let segments = self
            .segments
            .iter()
            .map(|p| read_segment(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ProcessTrace {
            dir: self.dir.clone(),
            segments,
        })
    }
}

/// Where a trace's segments are: what [`list_trace`] finds before anything is
/// decoded, so a large trace can be read one segment at a time.
#[derive(Debug, Clone)]
pub struct TraceFiles {
    /// Processes, in directory-name order.
    pub processes: Vec<ProcessFiles>,
    /// Directories skipped.
    pub warnings: Vec<ReadWarning>,
}

/// Find the segments of a trace directory, a process directory or one segment file.
pub fn list_trace(path: &Path) -> Result<TraceFiles, ReadError> {
    let meta = fs::metadata(path).map_err(|e| io_error(path, e))?;
    if meta.is_file() {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        return Ok(TraceFiles {
            processes: vec![ProcessFiles {
                dir,
                segments: vec![path.to_path_buf()],
            }],
            warnings: Vec::new(),
        });
    }
    let own = segment_files(path)?;
    if !own.is_empty() {
        return Ok(TraceFiles {
            processes: vec![ProcessFiles {
                dir: path.to_path_buf(),
                segments: own.into_iter().map(|(_, p)| p).collect(),
            }],
            warnings: Vec::new(),
        });
    }
    let mut subdirs: Vec<PathBuf> = fs::read_dir(path)
        .map_err(|e| io_error(path, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    let mut trace = TraceFiles {
        processes: Vec::new(),
        warnings: Vec::new(),
    };
    for dir in subdirs {
        let files = match segment_files(&dir) {
            Ok(f) => f,
            Err(e) => {
                trace.warnings.push(ReadWarning::Skipped {
                    path: dir,
                    why: e.to_string(),
                });
                continue;
            }
        };
        if files.is_empty() {
            continue;
        }
        trace.processes.push(ProcessFiles {
            dir,
            segments: files.into_iter().map(|(_, p)| p).collect(),
        });
    }
    if trace.processes.is_empty() {
        return Err(ReadError::NotATrace {
            path: path.to_path_buf(),
            why: "no seg-*.tts files in it or in its subdirectories".into(),
        });
    }
    Ok(trace)
}

/// Open a trace: a trace directory, a process directory, or one segment file.
pub fn read_trace(path: &Path) -> Result<Trace, ReadError> {
    let files = list_trace(path)?;
    Ok(Trace {
        processes: files
            .processes
            .iter()
            .map(ProcessFiles::read)
            .collect::<Result<Vec<_>, _>>()?,
        warnings: files.warnings,
    })
}
