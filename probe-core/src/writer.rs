//! Segment files of one process: creation, rotation, disk budget, fsync.
//!
//! The writer owns one process directory (`ROOT/HOST-pPID-STARTNS/`, so
//! restarts never collide) of append-only segments `seg-000000.tts`, … Each
//! segment opens with a header, then the repeated process info, the running
//! drop counters and the arrivals of requests still in flight, so any suffix
//! of segments reads on its own. Directories are created 0700, files 0600.
//!
//! Frames are appended to an in-memory batch and handed to the kernel in one
//! `write` per batch: a killed process loses only its unwritten batch, and
//! what reached the kernel is always a prefix of whole frames plus at most one
//! torn frame, which the reader reports and stops at.

use crate::clock;
use crate::event::{
    AdapterErrors, DropCounts, ProcessInfo, Record, RequestArrival, SegmentHeader, SegmentsRemoved,
};
use crate::format::{segment_file_name, FORMAT_VERSION};
use crate::frame;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// When the writer calls `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Never: the page cache survives a killed process, only a host crash loses data.
    Never,
    /// When a segment is closed (rotation, shutdown). The default.
    OnClose,
    /// At most once per interval, and on close.
    Interval(Duration),
    /// After every batch written (slow; for power-loss paranoia).
    Always,
}

impl FsyncPolicy {
    /// Parse `never|close|always|<milliseconds>ms`.
    pub fn parse(s: &str) -> Option<FsyncPolicy> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "never" => Some(FsyncPolicy::Never),
            "close" | "on-close" => Some(FsyncPolicy::OnClose),
            "always" => Some(FsyncPolicy::Always),
            _ => s
                .strip_suffix("ms")
                .and_then(|n| n.parse::<u64>().ok())
                .map(|ms| FsyncPolicy::Interval(Duration::from_millis(ms))),
        }
    }
}

/// Where and how segments are written.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Trace root (`TOKTRACE_DIR`); the process directory is created inside.
    pub root: PathBuf,
    /// Role written in segment headers.
    pub role: String,
    /// Rotate when a segment reaches this many bytes.
    pub segment_bytes: u64,
    /// Delete the oldest segments of this process beyond this many bytes.
    pub disk_budget_bytes: u64,
    /// fsync policy.
    pub fsync: FsyncPolicy,
    /// Most in-flight requests remembered for repetition (oldest forgotten first).
    pub max_in_flight: usize,
}

impl WriterConfig {
    /// Defaults for a root directory: 64 MiB segments, 4 GiB budget, fsync on close.
    pub fn new(root: impl Into<PathBuf>) -> WriterConfig {
        WriterConfig {
            root: root.into(),
            role: "main".into(),
            segment_bytes: 64 << 20,
            disk_budget_bytes: 4 << 30,
            fsync: FsyncPolicy::OnClose,
            max_in_flight: 65_536,
        }
    }
}

/// Identity of the writing process, fixed at start.
#[derive(Debug, Clone)]
pub struct ProcessIdentity {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Unix start time of the writer.
    pub start_unix_ns: u64,
}

impl ProcessIdentity {
    /// The current process.
    pub fn current() -> ProcessIdentity {
        ProcessIdentity {
            host: hostname(),
            pid: std::process::id(),
            start_unix_ns: clock::unix_ns(),
        }
    }

    /// Directory name: host, pid and start time, so restarts never collide.
    pub fn dir_name(&self) -> String {
        let host: String = self
            .host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{host}-p{}-{}", self.pid, self.start_unix_ns)
    }
}

/// The machine's host name (best effort).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname writes at most
    // that many bytes and we only read up to the first NUL inside it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

struct OpenSegment {
    index: u32,
    file: File,
    bytes: u64,
    last_sync: Instant,
}

/// Writes records of one process into rotating segments.
pub struct SegmentWriter {
    config: WriterConfig,
    identity: ProcessIdentity,
    dir: PathBuf,
    current: Option<OpenSegment>,
    next_index: u32,
    /// Closed segments still on disk: (index, bytes).
    closed: Vec<(u32, u64)>,
    process_info: Option<ProcessInfo>,
    in_flight: BTreeMap<u32, RequestArrival>,
    drops: DropCounts,
    removed: SegmentsRemoved,
    adapter_errors: Option<AdapterErrors>,
    batch: Vec<u8>,
    marks: Vec<FrameMark>,
    /// The process directory was made by this writer (it only writes into one it made).
    dir_made: bool,
    /// A warning for the drain to report once (a trace root others can write to).
    notice: Option<String>,
}

/// Where a frame ends in the batch, and what losing it would cost.
struct FrameMark {
    end: usize,
    tokens: u64,
    counted: bool,
}

fn lost_in(marks: &[FrameMark]) -> (u64, u64) {
    marks
        .iter()
        .filter(|m| m.counted)
        .fold((0, 0), |(r, t), m| (r + 1, t + m.tokens))
}

impl SegmentWriter {
    /// A writer for this process. Nothing touches the disk until the first write.
    pub fn new(config: WriterConfig, identity: ProcessIdentity) -> SegmentWriter {
        let dir = config.root.join(identity.dir_name());
        SegmentWriter {
            config,
            identity,
            dir,
            current: None,
            next_index: 0,
            closed: Vec::new(),
            process_info: None,
            in_flight: BTreeMap::new(),
            drops: DropCounts::default(),
            removed: SegmentsRemoved::default(),
            adapter_errors: None,
            batch: Vec::with_capacity(1 << 20),
            marks: Vec::new(),
            dir_made: false,
            notice: None,
        }
    }

    /// A warning to report once, if the writer has one.
    pub fn take_notice(&mut self) -> Option<String> {
        self.notice.take()
    }

    /// The process directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes waiting in the batch.
    pub fn pending_bytes(&self) -> usize {
        self.batch.len()
    }

    /// Update the drop counters the writer repeats in new segments.
    pub fn set_drops(&mut self, drops: DropCounts) {
        self.drops = drops;
    }

    /// Encode a record into the batch, remembering what later segments repeat.
    /// Rotation happens here, at a frame boundary: the frames before this one
    /// are written to the current segment, which is closed, and the next one is
    /// opened. An error names the records lost with it.
    pub fn append(&mut self, record: &Record) -> Result<(), WriteFailure> {
        let before = self.batch.len();
        if let Err(e) = frame::encode_frame(record, &mut self.batch) {
            return Err(WriteFailure {
                records: 1,
                tokens: record.token_count(),
                error: io::Error::new(io::ErrorKind::InvalidData, format!("encode: {e}")),
            });
        }
        self.marks.push(FrameMark {
            end: self.batch.len(),
            tokens: record.token_count(),
            // The writer's own counter records are bookkeeping, not losses.
            counted: !matches!(record, Record::Drops(_)),
        });
        let frame_len = (self.batch.len() - before) as u64;
        if let Some(seg) = &self.current {
            if seg.bytes + before as u64 + frame_len > self.config.segment_bytes {
                self.write_prefix(before)?;
                self.close_current().map_err(|error| WriteFailure {
                    records: 0,
                    tokens: 0,
                    error,
                })?;
            }
        }
        // A new segment's opening block repeats the state *before* this record.
        if self.current.is_none() {
            if let Err(error) = self.open_next() {
                let (records, tokens) = self.discard_batch();
                return Err(WriteFailure {
                    records,
                    tokens,
                    error,
                });
            }
        }
        self.remember(record);
        Ok(())
    }

    fn remember(&mut self, record: &Record) {
        match record {
            Record::Process(p) => self.process_info = Some(p.clone()),
            Record::Arrival(a) => {
                self.in_flight.insert(a.req, a.clone());
                while self.in_flight.len() > self.config.max_in_flight {
                    self.in_flight.pop_first();
                }
            }
            Record::Finish(f) => {
                self.in_flight.remove(&f.req);
            }
            Record::Drops(d) => self.drops = *d,
            Record::AdapterErrors(e) => self.adapter_errors = Some(e.clone()),
            _ => {}
        }
    }

    /// Hand the whole batch to the kernel (opening a segment if needed).
    pub fn flush(&mut self) -> Result<(), WriteFailure> {
        // Opening a segment may queue a budget record behind the batch: loop.
        for _ in 0..2 {
            if self.batch.is_empty() {
                break;
            }
            self.write_prefix(self.batch.len())?;
        }
        Ok(())
    }

    /// Drop the batch unwritten; returns the (records, tokens) it held, not
    /// counting the writer's own drop-counter records.
    pub fn discard_batch(&mut self) -> (u64, u64) {
        let lost = lost_in(&self.marks);
        self.batch.clear();
        self.marks.clear();
        lost
    }

    /// Write `batch[..upto]` (a frame boundary) and remove it from the batch.
    /// On failure the frames that did not reach the kernel whole are lost and
    /// counted; the segment is abandoned (its tail may be torn, which readers
    /// report) and the next write opens a new one.
    fn write_prefix(&mut self, upto: usize) -> Result<(), WriteFailure> {
        if upto == 0 {
            return Ok(());
        }
        let mut written = 0usize;
        let result = self.write_bytes(upto, &mut written);
        let split = self.marks.partition_point(|m| m.end <= upto);
        let lost = if result.is_err() {
            let first_lost = self.marks[..split].partition_point(|m| m.end <= written);
            lost_in(&self.marks[first_lost..split])
        } else {
            (0, 0)
        };
        self.batch.drain(..upto);
        self.marks.drain(..split);
        for m in &mut self.marks {
            m.end -= upto;
        }
        result.map_err(|error| {
            self.current = None;
            WriteFailure {
                records: lost.0,
                tokens: lost.1,
                error,
            }
        })
    }

    fn write_bytes(&mut self, upto: usize, written: &mut usize) -> io::Result<()> {
        if self.current.is_none() {
            self.open_next()?;
        }
        let Some(seg) = self.current.as_mut() else {
            return Err(io::Error::other("no open segment"));
        };
        while *written < upto {
            match seg.file.write(&self.batch[*written..upto]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes")),
                Ok(n) => {
                    *written += n;
                    seg.bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        match self.config.fsync {
            FsyncPolicy::Always => seg.file.sync_data()?,
            FsyncPolicy::Interval(every) if seg.last_sync.elapsed() >= every => {
                seg.file.sync_data()?;
                seg.last_sync = Instant::now();
            }
            _ => {}
        }
        Ok(())
    }

    /// Close the current segment (fsync per policy). The next write opens a new one.
    pub fn close_current(&mut self) -> io::Result<()> {
        if let Some(seg) = self.current.take() {
            if self.config.fsync != FsyncPolicy::Never {
                seg.file.sync_all()?;
            }
            self.closed.push((seg.index, seg.bytes));
        }
        Ok(())
    }

    /// Write everything and close: used at shutdown.
    pub fn finish(&mut self) -> Result<(), WriteFailure> {
        self.flush()?;
        self.close_current().map_err(|error| WriteFailure {
            records: 0,
            tokens: 0,
            error,
        })
    }

    /// Make the process directory, 0700, and refuse one that exists already:
    /// its name is predictable, and a directory (or symlink) planted there by
    /// someone else must not receive prompts and outputs. Missing parents are
    /// made 0700; an existing root is left as it is, with one warning when
    /// other users may write into it.
    fn make_dir(&mut self) -> io::Result<()> {
        if self.dir_made {
            if self.dir.is_dir() {
                return Ok(());
            }
            // Removed while recording: made again below, by this writer.
        } else if let Some(root) = self.dir.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)?;
            // Writable by others (a shared /var/tmp, say) is where a planted
            // directory could wait; readable only is the usual 0755.
            let mode = fs::metadata(root)?.permissions().mode() & 0o7777;
            if mode & 0o022 != 0 {
                self.notice = Some(format!(
                    "trace directory {} is writable by other users (mode {mode:o}); it is left as it is, \
                     and this process writes into its own 0700 directory inside",
                    root.display()
                ));
            }
        }
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => {
                self.dir_made = true;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists already and toktrace did not make it; not writing into it",
                    self.dir.display()
                ),
            )),
            Err(e) => Err(e),
        }
    }

    fn open_next(&mut self) -> io::Result<()> {
        self.make_dir()?;
        let index = self.next_index;
        self.next_index += 1;
        let path = self.dir.join(segment_file_name(index));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let mut opening = Vec::with_capacity(4096);
        opening.extend_from_slice(&frame::preamble(FORMAT_VERSION));
        let header = Record::Header(SegmentHeader {
            probe_version: crate::PROBE_VERSION.into(),
            host: self.identity.host.clone(),
            pid: self.identity.pid,
            role: self.config.role.clone(),
            process_start_unix_ns: self.identity.start_unix_ns,
            segment_index: index,
            anchor: clock::anchor(),
        });
        let mut repeated = vec![header];
        if let Some(p) = &self.process_info {
            repeated.push(Record::Process(p.clone()));
        }
        if self.drops != DropCounts::default() {
            repeated.push(Record::Drops(self.drops));
        }
        if self.removed.before > 0 {
            repeated.push(Record::SegmentsRemoved(self.removed.clone()));
        }
        if let Some(e) = &self.adapter_errors {
            repeated.push(Record::AdapterErrors(e.clone()));
        }
        for r in &repeated {
            frame::encode_frame(r, &mut opening)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("encode: {e}")))?;
        }
        self.repeat_in_flight(&mut opening)?;
        file.write_all(&opening)?;
        self.current = Some(OpenSegment {
            index,
            file,
            bytes: opening.len() as u64,
            last_sync: Instant::now(),
        });
        self.enforce_budget();
        Ok(())
    }

    /// Repeat the arrivals of requests still running, newest first, in at
    /// most a quarter of a segment; older ones are forgotten. Their finishes
    /// may never come (a finish dropped by a full ring leaves its arrival
    /// here for good), and repeating more than a segment holds made every
    /// segment all repetition: a 30-minute soak with a 20-record ring wrote
    /// 57,000 segments of 1 MB each.
    fn repeat_in_flight(&mut self, opening: &mut Vec<u8>) -> io::Result<()> {
        let budget = (self.config.segment_bytes / 4) as usize;
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0usize;
        for a in self.in_flight.values().rev() {
            let mut f = Vec::new();
            frame::encode_frame(&Record::Arrival(a.clone()), &mut f)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("encode: {e}")))?;
            if bytes + f.len() > budget {
                break;
            }
            bytes += f.len();
            frames.push(f);
        }
        while self.in_flight.len() > frames.len() {
            self.in_flight.pop_first();
        }
        // Oldest first, as they arrived.
        for f in frames.iter().rev() {
            opening.extend_from_slice(f);
        }
        Ok(())
    }

    /// Delete the oldest closed segments while the process is over budget, and
    /// record the removal in the current segment.
    fn enforce_budget(&mut self) {
        let current = self.current.as_ref().map_or(0, |s| s.bytes);
        let mut total: u64 = current + self.closed.iter().map(|(_, b)| b).sum::<u64>();
        let mut changed = false;
        while total > self.config.disk_budget_bytes && !self.closed.is_empty() {
            let (index, bytes) = self.closed.remove(0);
            let path = self.dir.join(segment_file_name(index));
            // A file already gone (an operator cleaned up) counts as removed.
            if fs::remove_file(&path).is_ok() || !path.exists() {
                self.removed.before = index + 1;
                self.removed.bytes += bytes;
                changed = true;
            }
            total = total.saturating_sub(bytes);
        }
        if changed {
            // Goes out with the next batch, into the segment just opened.
            let record = Record::SegmentsRemoved(self.removed.clone());
            if frame::encode_frame(&record, &mut self.batch).is_ok() {
                self.marks.push(FrameMark {
                    end: self.batch.len(),
                    tokens: 0,
                    counted: false,
                });
            }
        }
    }
}

/// A batch the writer could not write.
#[derive(Debug)]
pub struct WriteFailure {
    /// Records lost with it.
    pub records: u64,
    /// Tokens inside those records.
    pub tokens: u64,
    /// The I/O error.
    pub error: io::Error,
}
