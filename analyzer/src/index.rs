//! The on-disk index of a trace, so one request of a multi-GB trace opens by
//! reading its own stretch of time instead of the whole trace.
//!
//! One full pass (`toktrace index DIR`, or the viewer the first time it opens
//! a request of a large trace) records:
//! - per segment, checkpoints every [`CHECKPOINT_BYTES`]: the latest time of
//!   any record before the checkpoint and the earliest at or after it, which
//!   bound exactly which byte ranges can hold records of a time window (the
//!   probe writes records roughly, not strictly, in time order);
//! - per request, its identity and its *window*: from the earliest arrival to
//!   the latest finish (or emit) of every request it shared a step with. Read
//!   over that window, the loader sees the whole life of each of those
//!   requests, so the KV context of every step the request ran in, and with
//!   it the attribution of its tokens, comes out as in a full analysis;
//! - the whole trace's step models, so a window is judged by the same model.
//!
//! It lives in `DIR/.toktrace-index`, or under the user's cache directory
//! when the trace directory is read-only or another user's. It names every segment with its
//! length and modification time: a trace that changed makes it stale, and it
//! is rebuilt rather than trusted.

use crate::analysis::find_request;
use crate::attribution::ProcessModel;
use crate::data::{Request, TokenDetail, TraceData};
use crate::load::{load, Detail, LoadOptions, ProgressHook, ReadPlan};
use crate::{Analysis, AnalyzeOptions};
use probe_core::event::{Record, SamplingParams};
use probe_core::reader::{list_trace, ReadError, Segment};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// File name of the index inside the trace directory.
pub const INDEX_FILE: &str = ".toktrace-index";
/// Checkpoint spacing: a window read starts at most this many bytes early.
pub const CHECKPOINT_BYTES: u64 = 64 << 10;
/// Margin added on both sides of a request's window: frontend arrival and
/// emit times sit a little outside the engine's, on the same clock.
const WINDOW_MARGIN_NS: u64 = 100_000_000;
const MAGIC: &[u8; 8] = b"TTINDEX\0";
/// Bumped whenever the serialized layout changes: an older file is rebuilt.
const LAYOUT_VERSION: u32 = 3;

/// Why an index could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The trace itself could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The index could not be written anywhere.
    #[error("writing the index {path}: {source}")]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Encoding failed (a bug, not an input problem).
    #[error("encoding the index: {0}")]
    Encode(String),
}

/// A point in a segment where a window read may start or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// File offset of a frame.
    pub offset: u64,
    /// Latest time of any record before it (0 when none).
    pub max_before: u64,
    /// Earliest time of any record at or after it (`u64::MAX` when none).
    pub min_from: u64,
}

/// One segment file as the index saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentIndex {
    /// Process index (order of the trace's process directories).
    pub process: u32,
    /// Path relative to the trace directory.
    pub file: String,
    /// Length when indexed.
    pub len: u64,
    /// Modification time when indexed (ns since the epoch).
    pub mtime_ns: u64,
    /// End of the opening records (header, process info, counters, arrivals
    /// of requests in flight), which every window read of the segment needs.
    pub prologue_end: u64,
    /// Earliest and latest record time in the segment (None: no timed records).
    pub span: Option<(u64, u64)>,
    /// Ascending by offset.
    pub checkpoints: Vec<Checkpoint>,
}

/// A request's identity and the window that holds its story.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexedRequest {
    /// Engine process index.
    pub process: u32,
    /// Key inside that process.
    pub key: u32,
    /// Engine's internal id.
    pub internal_id: String,
    /// Client-visible id.
    pub external_id: Option<String>,
    /// `ID#k` when the client-visible id is shared (see [`Request::sequence_id`]).
    pub sequence_id: Option<String>,
    /// W3C trace id.
    pub trace_id: Option<[u8; 16]>,
    /// Caller's span id.
    pub parent_span_id: Option<[u8; 8]>,
    /// Arrival at the engine.
    pub engine_arrival_ns: Option<u64>,
    /// Arrival at the frontend.
    pub frontend_arrival_ns: Option<u64>,
    /// Prompt length.
    pub prompt_tokens: u32,
    /// Sampling parameters.
    pub params: SamplingParams,
    /// The prompt's identity.
    pub prompt_hash: Option<u64>,
    /// Top-K the trace asked for on its own.
    pub trace_top_k: Option<u32>,
    /// Monotonic time range to read for this request (margin included).
    pub window: (u64, u64),
    /// Generated tokens recorded.
    pub tokens: u32,
}

/// The index of one trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceIndex {
    /// Traced processes.
    pub processes: u32,
    /// Every segment, in read order.
    pub segments: Vec<SegmentIndex>,
    /// Every engine request, in the loader's order.
    pub requests: Vec<IndexedRequest>,
    /// Step model per process, fitted on the whole trace.
    pub models: Vec<ProcessModel>,
    /// Fluidity deadline per process.
    pub tbt_deadline_ns: Vec<f64>,
    /// Steps in the trace.
    pub steps: u64,
    /// Generated tokens in the trace.
    pub tokens: u64,
}

/// A window of a trace, loaded and analysed.
#[derive(Debug, Clone)]
pub struct Window {
    /// What the window holds, judged by the whole trace's models.
    pub analysis: Analysis,
    /// Its time range (monotonic ns).
    pub range: (u64, u64),
    /// Bytes read for it.
    pub bytes_read: u64,
}

impl TraceIndex {
    /// The requests answering to `id` (same rules as
    /// [`crate::Analysis::find`]), as indices into [`TraceIndex::requests`].
    pub fn find(&self, id: &str) -> Vec<usize> {
        let data = TraceData {
            requests: self.requests.iter().map(IndexedRequest::identity).collect(),
            ..Default::default()
        };
        find_request(&data, id)
            .into_iter()
            .map(|r| r as usize)
            .collect()
    }

    /// Byte ranges of `dir`'s segments that hold every record touching
    /// `from..=to`, each with the segment's opening records.
    pub fn plan(&self, dir: &Path, from: u64, to: u64) -> ReadPlan {
        let mut plan = ReadPlan::new();
        for seg in &self.segments {
            let Some((lo, hi)) = seg.span else { continue };
            if hi < from || lo > to {
                continue;
            }
            let cps = &seg.checkpoints;
            // Start at the last checkpoint everything before which ended
            // before the window; stop at the first after which everything
            // starts after it.
            let start = cps
                .iter()
                .rev()
                .find(|c| c.max_before < from)
                .map_or(seg.prologue_end, |c| c.offset);
            let end = cps
                .iter()
                .find(|c| c.offset >= start && c.min_from > to)
                .map_or(seg.len, |c| c.offset);
            // The opening records, and the window's frames (one range when
            // they touch).
            let ranges: Vec<Range<u64>> = if start <= seg.prologue_end {
                std::iter::once(0..end.max(seg.prologue_end)).collect()
            } else if end > start {
                [0..seg.prologue_end, start..end].into()
            } else {
                std::iter::once(0..seg.prologue_end).collect()
            };
            plan.insert(dir.join(&seg.file), ranges);
        }
        plan
    }

    /// Load and analyse the window of request `ix` (an index into
    /// [`TraceIndex::requests`]), with that request's per-token detail.
    pub fn load_window(&self, dir: &Path, ix: usize) -> Result<Window, ReadError> {
        let Some(req) = self.requests.get(ix) else {
            return Err(ReadError::NotATrace {
                path: dir.to_path_buf(),
                why: format!("the index has no request {ix}"),
            });
        };
        let (from, to) = req.window;
        let plan = self.plan(dir, from, to);
        let bytes_read = plan
            .values()
            .flatten()
            .map(|r| r.end.saturating_sub(r.start))
            .sum();
        let options = LoadOptions {
            detail: Detail::Only([(req.process, req.key)].into_iter().collect()),
            plan: Some(Arc::new(plan)),
            ..Default::default()
        };
        let mut data = load(dir, &options)?;
        self.name_requests(&mut data);
        let analysis =
            Analysis::with_models(data, self.models.clone(), self.tbt_deadline_ns.clone());
        Ok(Window {
            analysis,
            range: (from, to),
            bytes_read,
        })
    }

    /// Requests that arrived before the window show by key: give them back
    /// the identity the full pass saw.
    fn name_requests(&self, data: &mut TraceData) {
        let known: std::collections::HashMap<(u32, u32), &IndexedRequest> = self
            .requests
            .iter()
            .map(|r| ((r.process, r.key), r))
            .collect();
        for r in &mut data.requests {
            let Some(k) = known.get(&(r.process, r.key)) else {
                continue;
            };
            if r.engine_arrival_ns.is_none() {
                r.internal_id.clone_from(&k.internal_id);
                r.engine_arrival_ns = k.engine_arrival_ns;
                r.prompt_tokens = k.prompt_tokens;
                r.params = k.params.clone();
                r.prompt_hash = k.prompt_hash;
                r.trace_top_k = k.trace_top_k;
            }
            if r.external_id.is_none() {
                r.external_id.clone_from(&k.external_id);
            }
            // Named over the whole trace: a window may hold one sibling only.
            r.sequence_id.clone_from(&k.sequence_id);
            if r.trace_id.is_none() {
                r.trace_id = k.trace_id;
                r.parent_span_id = k.parent_span_id;
            }
            if r.frontend_arrival_ns.is_none() {
                r.frontend_arrival_ns = k.frontend_arrival_ns;
            }
        }
    }

    /// The detail of request `(process, key)`, read from its own window and
    /// lined up with `tokens` (the token indices the caller holds, which may
    /// be fewer when the caller's window cut the request).
    pub fn detail(
        &self,
        dir: &Path,
        process: u32,
        key: u32,
        tokens: &[u32],
    ) -> Result<Option<TokenDetail>, ReadError> {
        let Some(ix) = self
            .requests
            .iter()
            .position(|r| r.process == process && r.key == key)
        else {
            return Ok(None);
        };
        let window = self.load_window(dir, ix)?;
        let Some(found) = window
            .analysis
            .data
            .requests
            .into_iter()
            .find(|r| r.process == process && r.key == key)
        else {
            return Ok(None);
        };
        let Some(detail) = found.detail else {
            return Ok(None);
        };
        if found.token_index == tokens {
            return Ok(Some(detail));
        }
        Ok(Some(select_tokens(&detail, &found.token_index, tokens)))
    }

    /// Is this index a true picture of `dir` as it is now?
    pub fn is_current(&self, dir: &Path) -> bool {
        match stamp_segments(dir) {
            Ok(now) => {
                now.len() == self.segments.len()
                    && now.iter().zip(&self.segments).all(|(n, s)| {
                        n.0 == s.process && n.1 == s.file && n.2 == s.len && n.3 == s.mtime_ns
                    })
            }
            Err(_) => false,
        }
    }
}

impl IndexedRequest {
    /// A request row carrying only the identity (what id lookup reads).
    fn identity(&self) -> Request {
        Request {
            process: self.process,
            key: self.key,
            internal_id: self.internal_id.clone(),
            external_id: self.external_id.clone(),
            sequence_id: self.sequence_id.clone(),
            trace_id: self.trace_id,
            parent_span_id: self.parent_span_id,
            ..Default::default()
        }
    }
}

/// The tokens of `detail` (laid out as `have`) at the indices in `want`.
fn select_tokens(detail: &TokenDetail, have: &[u32], want: &[u32]) -> TokenDetail {
    let position: std::collections::HashMap<u32, usize> =
        have.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let mut out = TokenDetail {
        top_offsets: vec![0],
        ..Default::default()
    };
    for i in want {
        let p = position.get(i).copied();
        let get = |v: &Vec<Option<u32>>| p.and_then(|p| v.get(p).copied().flatten());
        out.ids.push(get(&detail.ids));
        out.ranks.push(get(&detail.ranks));
        out.logprobs
            .push(p.and_then(|p| detail.logprobs.get(p).copied().flatten()));
        out.texts
            .push(p.and_then(|p| detail.texts.get(p).cloned().flatten()));
        if let Some(p) = p {
            for (id, lp) in detail.top(p) {
                out.top_ids.push(id);
                out.top_logprobs.push(lp);
            }
        }
        out.top_offsets.push(out.top_ids.len() as u32);
    }
    out
}

/// (process, relative path, length, mtime ns) of every segment of `dir`.
fn stamp_segments(dir: &Path) -> Result<Vec<(u32, String, u64, u64)>, ReadError> {
    let files = list_trace(dir)?;
    let mut out = Vec::new();
    for (pix, p) in files.processes.iter().enumerate() {
        for seg in &p.segments {
            let meta = std::fs::metadata(seg).map_err(|e| ReadError::Io {
                path: seg.clone(),
                source: e,
            })?;
            out.push((pix as u32, relative(dir, seg), meta.len(), mtime_ns(&meta)));
        }
    }
    Ok(out)
}

fn relative(dir: &Path, seg: &Path) -> String {
    seg.strip_prefix(dir)
        .unwrap_or(seg)
        .to_string_lossy()
        .into_owned()
}

fn mtime_ns(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The index entry of one segment, from its decoded records.
fn index_segment(
    process: u32,
    file: String,
    len: u64,
    mtime_ns: u64,
    seg: &Segment,
) -> SegmentIndex {
    let records = &seg.records;
    let opening = records
        .iter()
        .position(|r| {
            !matches!(
                r.record,
                Record::Header(_)
                    | Record::Process(_)
                    | Record::Drops(_)
                    | Record::SegmentsRemoved(_)
                    | Record::AdapterErrors(_)
                    | Record::Arrival(_)
            )
        })
        .unwrap_or(records.len());
    let prologue_end = records.get(opening).map_or(len, |r| r.offset);
    let mut checkpoints = Vec::new();
    let mut latest = 0u64;
    let mut span: Option<(u64, u64)> = None;
    let mut next_at = 0u64;
    for (i, r) in records.iter().enumerate() {
        if i >= opening && r.offset >= next_at {
            checkpoints.push(Checkpoint {
                offset: r.offset,
                max_before: latest,
                min_from: u64::MAX,
            });
            next_at = r.offset + CHECKPOINT_BYTES;
        }
        if let Some((lo, hi)) = r.record.time_span() {
            latest = latest.max(hi);
            span = Some(span.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
    }
    // Earliest time from each checkpoint on: a suffix minimum.
    let mut earliest = u64::MAX;
    let mut c = checkpoints.len();
    for r in records.iter().rev() {
        if let Some((lo, _)) = r.record.time_span() {
            earliest = earliest.min(lo);
        }
        while c > 0 && checkpoints[c - 1].offset >= r.offset {
            checkpoints[c - 1].min_from = earliest;
            c -= 1;
        }
    }
    SegmentIndex {
        process,
        file,
        len,
        mtime_ns,
        prologue_end,
        span,
        checkpoints,
    }
}

/// Read the whole trace once: the index and the full analysis.
pub fn build(
    dir: &Path,
    progress: Option<ProgressHook>,
) -> Result<(TraceIndex, Analysis), ReadError> {
    let stamps = stamp_segments(dir)?;
    let seen: Arc<Mutex<Vec<SegmentIndex>>> = Arc::default();
    let hook_seen = Arc::clone(&seen);
    let hook_dir = dir.to_path_buf();
    let options = LoadOptions {
        progress,
        on_segment: Some(Arc::new(move |process: u32, seg: &Segment| {
            let meta = std::fs::metadata(&seg.path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let mtime = meta.as_ref().map_or(0, mtime_ns);
            let entry = index_segment(process, relative(&hook_dir, &seg.path), len, mtime, seg);
            if let Ok(mut v) = hook_seen.lock() {
                v.push(entry);
            }
        })),
        ..Default::default()
    };
    let data = load(dir, &options)?;
    let mut analysis = Analysis::new(data, &AnalyzeOptions::default());
    crate::variance::locate_in_dir(&mut analysis, dir)?;
    let mut segments = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    // A segment that changed while it was read is stamped as listed before
    // the read, so the index is found stale next time rather than trusted.
    for s in &mut segments {
        if let Some(st) = stamps.iter().find(|t| t.0 == s.process && t.1 == s.file) {
            if (st.2, st.3) != (s.len, s.mtime_ns) {
                s.mtime_ns = 0;
            }
        }
    }
    let index = TraceIndex {
        processes: analysis.data.processes.len() as u32,
        segments,
        requests: request_windows(&analysis.data),
        models: analysis.models.clone(),
        tbt_deadline_ns: analysis.tbt_deadline_ns.clone(),
        steps: analysis.data.steps.len() as u64,
        tokens: analysis.data.tokens(),
    };
    Ok((index, analysis))
}

/// Every request's identity and window (see the module docs).
fn request_windows(data: &TraceData) -> Vec<IndexedRequest> {
    let life: Vec<(u64, u64)> = data.requests.iter().map(|r| own_life(data, r)).collect();
    // The earliest start and latest end among the requests of each step.
    let mut step_span = vec![(u64::MAX, 0u64); data.steps.len()];
    let mut widen = |step: u32, (lo, hi): (u64, u64)| {
        if let Some(s) = step_span.get_mut(step as usize) {
            *s = (s.0.min(lo), s.1.max(hi));
        }
    };
    // The first and last step each request ran in.
    let mut ran: Vec<Option<(u32, u32)>> = vec![None; data.requests.len()];
    let mut ran_in = |r: usize, step: u32| {
        if let Some(x) = ran.get_mut(r) {
            *x = Some(x.map_or((step, step), |(a, b)| (a.min(step), b.max(step))));
        }
    };
    for (ix, (r, l)) in data.requests.iter().zip(&life).enumerate() {
        for &s in &r.token_step {
            widen(s, *l);
            ran_in(ix, s);
        }
    }
    for s in &data.slices {
        if let Some(l) = life.get(s.request as usize) {
            widen(s.step, *l);
            ran_in(s.request as usize, s.step);
        }
    }
    // Every step from a request's first to its last (those it sat out too:
    // their prefills are blamed for its gaps) must be read with the whole
    // lives of the requests in them.
    let tree = SpanTree::new(&step_span);
    data.requests
        .iter()
        .enumerate()
        .map(|(ix, r)| {
            let (mut lo, mut hi) = life[ix];
            if let Some((first, last)) = ran[ix] {
                let (a, b) = tree.query(first as usize, last as usize);
                lo = lo.min(a);
                hi = hi.max(b);
            }
            IndexedRequest {
                process: r.process,
                key: r.key,
                internal_id: r.internal_id.clone(),
                external_id: r.external_id.clone(),
                sequence_id: r.sequence_id.clone(),
                trace_id: r.trace_id,
                parent_span_id: r.parent_span_id,
                engine_arrival_ns: r.engine_arrival_ns,
                frontend_arrival_ns: r.frontend_arrival_ns,
                prompt_tokens: r.prompt_tokens,
                params: r.params.clone(),
                prompt_hash: r.prompt_hash,
                trace_top_k: r.trace_top_k,
                window: (
                    lo.saturating_sub(WINDOW_MARGIN_NS),
                    hi.saturating_add(WINDOW_MARGIN_NS),
                ),
                tokens: r.token_step.len() as u32,
            }
        })
        .collect()
}

/// (earliest, latest) over any range of steps, in O(log n) per query.
struct SpanTree {
    n: usize,
    node: Vec<(u64, u64)>,
}

impl SpanTree {
    fn new(leaves: &[(u64, u64)]) -> SpanTree {
        let n = leaves.len();
        let mut node = vec![(u64::MAX, 0u64); 2 * n];
        node[n..].copy_from_slice(leaves);
        for i in (1..n).rev() {
            let (l, r) = (node[2 * i], node[2 * i + 1]);
            node[i] = (l.0.min(r.0), l.1.max(r.1));
        }
        SpanTree { n, node }
    }

    /// Over steps `from..=to` (clamped to the steps there are).
    fn query(&self, from: usize, to: usize) -> (u64, u64) {
        let mut out = (u64::MAX, 0u64);
        let (mut l, mut r) = (from + self.n, to.min(self.n.saturating_sub(1)) + self.n + 1);
        while l < r {
            if l & 1 == 1 {
                out = (out.0.min(self.node[l].0), out.1.max(self.node[l].1));
                l += 1;
            }
            if r & 1 == 1 {
                r -= 1;
                out = (out.0.min(self.node[r].0), out.1.max(self.node[r].1));
            }
            l /= 2;
            r /= 2;
        }
        out
    }
}

/// First and last moment anything of request `r` was recorded.
fn own_life(data: &TraceData, r: &Request) -> (u64, u64) {
    let step = |s: u32| data.steps.get(s as usize);
    let starts = [
        r.frontend_arrival_ns,
        r.engine_arrival_ns,
        r.first_scheduled.and_then(step).map(|s| s.start_ns),
        r.token_step
            .first()
            .copied()
            .and_then(step)
            .map(|s| s.start_ns),
    ];
    let ends = [
        r.finish_ns,
        r.token_step
            .last()
            .copied()
            .and_then(step)
            .map(|s| s.end_ns),
        r.emit_ns.iter().copied().max().filter(|&t| t != 0),
    ];
    let lo = starts.iter().flatten().copied().min().unwrap_or(0);
    let hi = ends.iter().flatten().copied().max().unwrap_or(lo);
    (lo, hi.max(lo))
}

/// Where the index of `dir` is kept: in the directory, or in the cache when
/// the directory cannot be written or belongs to another user.
fn locations(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    // Another user's trace is read, never written: its index goes to our cache.
    if probe_core::files::foreign_owner(dir).is_none() {
        out.push(dir.join(INDEX_FILE));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(cache) = cache {
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let name = format!("{:016x}.idx", fnv1a(canonical.to_string_lossy().as_bytes()));
        out.push(cache.join("toktrace").join("index").join(name));
    }
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The saved index of `dir`, when one is there, readable and current.
pub fn open(dir: &Path) -> Option<TraceIndex> {
    locations(dir).into_iter().find_map(|path| {
        let bytes = std::fs::read(path).ok()?;
        let index = decode(&bytes)?;
        index.is_current(dir).then_some(index)
    })
}

/// Save `index` for `dir`; returns where it went.
pub fn save(dir: &Path, index: &TraceIndex) -> Result<PathBuf, IndexError> {
    let bytes = encode(index)?;
    let mut last = None;
    for path in locations(dir) {
        match write_atomically(&path, &bytes) {
            Ok(()) => return Ok(path),
            Err(e) => last = Some((path, e)),
        }
    }
    let (path, source) = last.unwrap_or_else(|| {
        (
            dir.join(INDEX_FILE),
            std::io::Error::other("no place to write"),
        )
    });
    Err(IndexError::Write { path, source })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    // It names the trace's requests: readable by its owner only, like the segments.
    probe_core::files::write_atomically(path, bytes, 0o600)
}

fn encode(index: &TraceIndex) -> Result<Vec<u8>, IndexError> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&LAYOUT_VERSION.to_le_bytes());
    let body = bincode::serde::encode_to_vec(index, bincode::config::standard())
        .map_err(|e| IndexError::Encode(e.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// None for anything but a whole index of this layout (a foreign, older or
/// damaged file is rebuilt, never trusted).
fn decode(bytes: &[u8]) -> Option<TraceIndex> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (version, body) = rest.split_at_checked(4)?;
    if u32::from_le_bytes(version.try_into().ok()?) != LAYOUT_VERSION {
        return None;
    }
    // A damaged or planted file can hold any length prefix, and bincode
    // allocates what a prefix claims: cap what decoding may claim in memory
    // at a multiple of the file's size (varints grow up to 8× when decoded),
    // so a bad index is refused and rebuilt instead of aborting the process.
    match body.len() {
        n if n <= 1 << 20 => decode_within::<{ 32 << 20 }>(body),
        n if n <= 64 << 20 => decode_within::<{ 2 << 30 }>(body),
        _ => decode_within::<{ 64 << 30 }>(body),
    }
}

fn decode_within<const LIMIT: usize>(body: &[u8]) -> Option<TraceIndex> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (index, used): (TraceIndex, usize) =
        bincode::serde::decode_from_slice(body, config).ok()?;
    (used == body.len()).then_some(index)
}

/// How big a trace (bytes of segments) must be before the viewer builds an
/// index on its own: below it, reading the whole trace is quick anyway.
pub const AUTO_INDEX_BYTES: u64 = 64 << 20;

/// Bytes of segments in `dir`.
pub fn trace_bytes(dir: &Path) -> Result<u64, ReadError> {
    Ok(stamp_segments(dir)?.iter().map(|s| s.2).sum())
}
