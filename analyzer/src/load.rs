//! Fold a trace directory into [`TraceData`], one segment at a time.
//!
//! Engine processes give steps, tokens and request lifecycles; frontend
//! processes give the client-visible id, the trace id, the frontend arrival and
//! emit times, joined to the engine's requests by the internal request id
//! (both sides record it). Damaged input is worked around and reported in
//! [`TraceData::warnings`]; only a path that is not a readable trace is an error.

use crate::data::{Process, Request, RequestIx, Slice, StepIx, StepRow, TokenDetail, TraceData};
use probe_core::event::{ProcessInfo, Record, RequestArrival, SpecialTokens, Step};
use probe_core::reader::{list_trace, read_segment_into, read_segment_ranges, ReadError, Segment};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Request keys are small integers the probe interned: a multiplicative hash
/// is all they need, and the per-token lookup is the loader's hottest line.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u32(&mut self, k: u32) {
        self.0 = u64::from(k).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type KeyMap<V> = HashMap<u32, V, BuildHasherDefault<KeyHasher>>;

/// Request key -> request index. The probe hands out keys densely from 0, so
/// a vector serves; a key too large for one (corrupt or foreign data) goes to
/// a map instead of allocating without bound.
#[derive(Default)]
struct KeyIndex {
    dense: Vec<RequestIx>,
    sparse: KeyMap<RequestIx>,
}

const DENSE_KEYS: u32 = 1 << 22;

impl KeyIndex {
    fn get(&self, key: u32) -> Option<RequestIx> {
        match self.dense.get(key as usize) {
            Some(&ix) if ix != RequestIx::MAX => Some(ix),
            Some(_) => None,
            None => self.sparse.get(&key).copied(),
        }
    }

    fn insert(&mut self, key: u32, ix: RequestIx) {
        if key < DENSE_KEYS {
            if self.dense.len() <= key as usize {
                self.dense.resize(key as usize + 1, RequestIx::MAX);
            }
            self.dense[key as usize] = ix;
        } else {
            self.sparse.insert(key, ix);
        }
    }
}

/// Which requests keep their per-token detail (ids, logprobs, top-K, text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Detail {
    /// None: metrics, diagnostics and attribution only.
    #[default]
    None,
    /// Every request (small traces, exports).
    All,
    /// These (process index, request key) pairs.
    Only(HashSet<(u32, u32)>),
}

/// Called after each segment with (bytes read so far, bytes in all).
pub type ProgressHook = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Called with (process index, segment) for every segment read, before it is
/// folded: how the index sees the records and their offsets in the same pass.
pub type SegmentHook = std::sync::Arc<dyn Fn(u32, &Segment) + Send + Sync>;

/// Which byte ranges of which segment files to read (a window the index
/// planned); segments it does not name are skipped.
pub type ReadPlan = HashMap<PathBuf, Vec<Range<u64>>>;

/// What to keep while loading.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Per-token detail.
    pub detail: Detail,
    /// Keep decode-only step × request rows too (prefill rows are always kept).
    pub decode_slices: bool,
    /// Progress reports for long loads.
    pub progress: Option<ProgressHook>,
    /// Sees every segment read.
    pub on_segment: Option<SegmentHook>,
    /// Read only these parts of the trace (a time window); requests that
    /// arrived before it show by key until the caller names them.
    pub plan: Option<std::sync::Arc<ReadPlan>>,
    /// What counts as a token the model was unsure of.
    pub low_confidence: LowConfidence,
}

/// The `low_confidence` check's thresholds: a stretch of at least `tokens`
/// consecutive tokens whose most likely candidate had a probability below
/// `below` (only tokens with recorded candidates count; one without ends
/// the stretch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowConfidence {
    /// Top-1 probability under which a token is unsure.
    pub below: f32,
    /// Stretch length that makes the flag.
    pub tokens: u32,
}

impl Default for LowConfidence {
    fn default() -> Self {
        LowConfidence {
            below: 0.25,
            tokens: 8,
        }
    }
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("detail", &self.detail)
            .field("decode_slices", &self.decode_slices)
            .field("progress", &self.progress.is_some())
            .field("on_segment", &self.on_segment.is_some())
            .field("planned_segments", &self.plan.as_ref().map(|p| p.len()))
            .field("low_confidence", &self.low_confidence)
            .finish()
    }
}

/// Load a trace directory, process directory or segment file.
pub fn load(path: &Path, options: &LoadOptions) -> Result<TraceData, ReadError> {
    let files = list_trace(path)?;
    let plan = options.plan.as_deref();
    // Bytes a segment costs to read: the whole file, or the planned ranges.
    let size = |p: &Path| match plan {
        None => std::fs::metadata(p).map_or(0, |m| m.len()),
        Some(plan) => plan.get(p).map_or(0, |ranges| {
            ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum()
        }),
    };
    let total: u64 = files
        .processes
        .iter()
        .flat_map(|p| p.segments.iter())
        .map(|p| size(p))
        .sum();
    let mut done = 0u64;
    let mut data = TraceData {
        low_confidence: options.low_confidence,
        ..Default::default()
    };
    data.warnings
        .extend(files.warnings.iter().map(|w| w.to_string()));
    let mut frontends = Vec::new();
    for (pix, pf) in files.processes.iter().enumerate() {
        let mut folder = ProcessFolder::for_dir(pix as u32, &pf.dir, &data, options);
        // Decoding the next segment on a second thread while this one is
        // folded roughly halves the load on two cores; one segment waits in
        // the channel, so memory stays at about two decoded segments.
        std::thread::scope(|scope| -> Result<(), ReadError> {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            scope.spawn(move || {
                // One file buffer for all segments: a fresh 64 MB buffer per
                // segment costs a map and an unmap (with a TLB shootdown on
                // the other core) each time.
                let mut buf = Vec::new();
                for seg_path in &pf.segments {
                    let decoded = match plan {
                        None => read_segment_into(seg_path, &mut buf),
                        Some(plan) => match plan.get(seg_path) {
                            Some(ranges) => read_segment_ranges(seg_path, ranges, &mut buf),
                            None => continue,
                        },
                    };
                    let decoded = decoded.map(|s| (s, size(seg_path)));
                    let failed = decoded.is_err();
                    if tx.send(decoded).is_err() || failed {
                        return;
                    }
                }
            });
            for decoded in rx {
                let (segment, bytes) = decoded?;
                data.warnings
                    .extend(segment.warnings.iter().map(|w| w.to_string()));
                folder.process.segments += 1;
                if let Some(hook) = &options.on_segment {
                    hook(pix as u32, &segment);
                }
                for rr in segment.records {
                    folder.record(rr.record, &mut data);
                }
                done += bytes;
                if let Some(progress) = &options.progress {
                    progress(done, total);
                }
            }
            Ok(())
        })?;
        folder.close(&mut data, &mut frontends);
    }
    finish_trace(&mut data, frontends);
    Ok(data)
}

/// Fold records already in memory — what `toktrace watch` keeps of a trace
/// being written — into [`TraceData`], exactly as [`load`] folds segments:
/// one (process directory, its records in file order) per process.
pub fn fold<I: IntoIterator<Item = Record>>(
    processes: impl IntoIterator<Item = (PathBuf, I)>,
    options: &LoadOptions,
) -> TraceData {
    let mut data = TraceData {
        low_confidence: options.low_confidence,
        ..Default::default()
    };
    let mut frontends = Vec::new();
    for (pix, (dir, records)) in processes.into_iter().enumerate() {
        let mut folder = ProcessFolder::for_dir(pix as u32, &dir, &data, options);
        for record in records {
            folder.record(record, &mut data);
        }
        folder.close(&mut data, &mut frontends);
    }
    finish_trace(&mut data, frontends);
    data
}

/// What is done once every process is folded: clocks shared per host,
/// frontends joined to engine requests, `n > 1` sequences named, slices indexed.
fn finish_trace(data: &mut TraceData, frontends: Vec<Vec<FrontendRequest>>) {
    share_host_clocks(&mut data.processes);
    join_frontends(data, frontends);
    name_sequences(data);
    data.index_slices();
}

/// Requests that share a client-visible id — the sequences of an `n > 1`
/// request, which engines run as one request each — are shown as `ID#k`, in
/// the order of the engine's own index for them (vLLM names them `k_ID`),
/// else of arrival.
fn name_sequences(data: &mut TraceData) {
    let mut by_id: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in data.requests.iter().enumerate() {
        if let Some(e) = r.external_id.as_deref() {
            by_id.entry(e).or_default().push(i);
        }
    }
    let mut names: Vec<(usize, String)> = Vec::new();
    for (id, mut group) in by_id.into_iter().filter(|(_, g)| g.len() > 1) {
        let key = |r: &Request| {
            let own = r
                .internal_id
                .split_once('_')
                .and_then(|(k, _)| k.parse::<u32>().ok());
            (own, r.engine_arrival_ns, r.internal_id.clone())
        };
        group.sort_by_key(|&i| key(&data.requests[i]));
        names.extend(
            group
                .iter()
                .enumerate()
                .map(|(k, &i)| (i, format!("{id}#{k}"))),
        );
    }
    for (i, name) in names {
        data.requests[i].sequence_id = Some(name);
    }
}

/// Processes of one host share CLOCK_MONOTONIC: show them all through the
/// first process's anchor so merged times never disagree by the few
/// microseconds separate anchor readings would add.
fn share_host_clocks(processes: &mut [Process]) {
    let mut first: HashMap<String, probe_core::event::ClockAnchor> = HashMap::new();
    for p in processes.iter_mut() {
        let anchor = *first.entry(p.host.clone()).or_insert(p.anchor);
        p.anchor = anchor;
    }
}

/// What a frontend process recorded about one request.
struct FrontendRequest {
    host: String,
    arrival: RequestArrival,
    /// (first index, count, time) batches.
    emits: Vec<(u32, u32, u64)>,
}

fn join_frontends(data: &mut TraceData, frontends: Vec<Vec<FrontendRequest>>) {
    let mut by_internal: HashMap<(&str, &str), Vec<RequestIx>> = HashMap::new();
    for (ix, r) in data.requests.iter().enumerate() {
        let host = data.processes[r.process as usize].host.as_str();
        by_internal
            .entry((host, r.internal_id.as_str()))
            .or_default()
            .push(ix as RequestIx);
    }
    let mut joins: Vec<(RequestIx, FrontendRequest)> = Vec::new();
    let mut unmatched = 0;
    for f in frontends.into_iter().flatten() {
        let candidates = by_internal
            .get(&(f.host.as_str(), f.arrival.internal_id.as_str()))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        // Several runs in one directory may reuse ids: take the engine request
        // that arrived closest after the frontend saw it.
        let best = candidates.iter().copied().min_by_key(|&ix| {
            let engine = data.requests[ix as usize].engine_arrival_ns.unwrap_or(0);
            engine.abs_diff(f.arrival.arrival_ns)
        });
        match best {
            Some(ix) => joins.push((ix, f)),
            None => unmatched += 1,
        }
    }
    for (ix, f) in joins {
        let r = &mut data.requests[ix as usize];
        if f.arrival.external_id.is_some() {
            r.external_id = f.arrival.external_id;
        }
        if r.trace_id.is_none() {
            r.trace_id = f.arrival.trace_id;
            r.parent_span_id = f.arrival.parent_span_id;
        }
        r.frontend_arrival_ns = Some(f.arrival.arrival_ns);
        if f.emits.is_empty() {
            continue;
        }
        let mut by_index: HashMap<u32, u64> = HashMap::new();
        for (first, count, time) in f.emits {
            for i in first..first.saturating_add(count) {
                by_index.entry(i).or_insert(time);
            }
        }
        r.emit_ns = r
            .token_index
            .iter()
            .map(|i| by_index.get(i).copied().unwrap_or(0))
            .collect();
    }
    data.unmatched_frontend_requests = unmatched;
}

/// Streaming state of the token checks of one request.
#[derive(Default)]
struct RepeatState {
    /// The last ids, newest at `(len - 1) % WINDOW`.
    recent: [u32; REPEAT_WINDOW],
    seen: u32,
    /// For each period p (index p - 1): how many consecutive tokens equalled
    /// the token p places before them.
    runs: [u16; REPEAT_MAX_PERIOD],
}

/// Longest loop period looked for, in tokens.
const REPEAT_MAX_PERIOD: usize = 16;
const REPEAT_WINDOW: usize = REPEAT_MAX_PERIOD + 1;
/// A loop is reported when a period-p pattern has repeated for
/// `max(REPEAT_MIN_TOKENS, REPEAT_MIN_CYCLES * p)` tokens.
const REPEAT_MIN_TOKENS: u16 = 16;
const REPEAT_MIN_CYCLES: u16 = 4;

impl RepeatState {
    /// Feed one id; returns the period of a loop it completes.
    fn push(&mut self, id: u32) -> Option<u32> {
        let mut found = None;
        for p in 1..=REPEAT_MAX_PERIOD {
            let run = &mut self.runs[p - 1];
            if self.seen as usize >= p
                && self.recent[(self.seen as usize - p) % REPEAT_WINDOW] == id
            {
                *run = run.saturating_add(1);
                let need = REPEAT_MIN_TOKENS.max(REPEAT_MIN_CYCLES * p as u16);
                if *run >= need && found.is_none() {
                    found = Some(p as u32);
                }
            } else {
                *run = 0;
            }
        }
        self.recent[self.seen as usize % REPEAT_WINDOW] = id;
        self.seen = self.seen.wrapping_add(1);
        found
    }
}

/// Per-request load state that is dropped once the process is read.
#[derive(Default)]
struct LiveRequest {
    /// Tokens in its KV cache now.
    context: u32,
    repeat: RepeatState,
}

/// Folds the records of one process.
struct ProcessFolder<'o> {
    ix: u32,
    options: &'o LoadOptions,
    process: Process,
    /// Request key -> index in `TraceData::requests` (engine side).
    requests: KeyIndex,
    /// This process's requests are `TraceData::requests[base..]`.
    base: RequestIx,
    /// Load state of each, by index - base.
    live: Vec<LiveRequest>,
    special: SpecialSet,
    /// Frontend side: key -> what the frontend saw.
    frontend: KeyMap<FrontendRequest>,
    frontend_order: Vec<u32>,
    /// Arrivals not yet known to be engine or frontend requests.
    arrivals: KeyMap<RequestArrival>,
    has_steps: bool,
    /// Requests seen in steps without an arrival record.
    orphans: u64,
}

/// The special ids of a process, split the way the checks need them.
#[derive(Default)]
struct SpecialSet {
    eos: HashSet<u32>,
    other: HashSet<u32>,
}

impl SpecialSet {
    fn from(tokens: &SpecialTokens) -> SpecialSet {
        let eos: HashSet<u32> = tokens.eos.iter().copied().collect();
        let other = tokens.ids().filter(|id| !eos.contains(id)).collect();
        SpecialSet { eos, other }
    }
}

impl<'o> ProcessFolder<'o> {
    /// A folder for the process directory `dir`, the `ix`-th of the trace.
    fn for_dir(ix: u32, dir: &Path, data: &TraceData, options: &'o LoadOptions) -> Self {
        let mut folder = ProcessFolder::new(ix, data.requests.len() as RequestIx, options);
        folder.process.dir = dir.to_path_buf();
        folder.process.name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        folder
    }

    /// Close the process into `data`, its frontend requests into `frontends`.
    fn close(self, data: &mut TraceData, frontends: &mut Vec<Vec<FrontendRequest>>) {
        let (process, frontend) = self.finish(data);
        data.processes.push(process);
        frontends.extend(frontend);
    }

    fn new(ix: u32, base: RequestIx, options: &'o LoadOptions) -> Self {
        ProcessFolder {
            ix,
            options,
            process: Process::default(),
            requests: KeyIndex::default(),
            base,
            live: Vec::new(),
            special: SpecialSet::default(),
            frontend: KeyMap::default(),
            frontend_order: Vec::new(),
            arrivals: KeyMap::default(),
            has_steps: false,
            orphans: 0,
        }
    }

    fn record(&mut self, record: Record, data: &mut TraceData) {
        match record {
            Record::Header(h) => {
                if self.process.host.is_empty() {
                    self.process.host = h.host;
                    self.process.pid = h.pid;
                    self.process.anchor = h.anchor;
                    if self.process.role.is_empty() {
                        self.process.role = h.role;
                    }
                }
            }
            Record::Process(info) => self.process_info(info),
            Record::Arrival(a) => self.arrival(a, data),
            Record::Step(s) => self.step(s, data),
            Record::Finish(f) => {
                if let Some(ix) = self.requests.get(f.req) {
                    let r = &mut data.requests[ix as usize];
                    r.finish_ns = Some(f.time_ns);
                    r.finish_reason = f.reason;
                    r.reported_output_tokens = f.output_tokens;
                }
            }
            Record::Emit(batch) => {
                for e in batch.emits {
                    self.process.emitted += u64::from(e.count);
                    if let Some(fr) = self.frontend_request(e.req) {
                        fr.emits.push((e.first_index, e.count, e.time_ns));
                    }
                }
            }
            Record::Drops(d) => {
                if d.records() >= self.process.drops.records() {
                    self.process.drops = d;
                }
            }
            Record::SegmentsRemoved(s) => self.process.removed = Some(s),
            Record::AdapterErrors(e) => {
                let newer = match &self.process.adapter_errors {
                    Some(known) => e.total() >= known.total(),
                    None => true,
                };
                if newer {
                    self.process.adapter_errors = Some(e);
                }
            }
        }
    }

    fn process_info(&mut self, info: ProcessInfo) {
        self.special = SpecialSet::from(&info.special_tokens);
        if !info.role.is_empty() {
            self.process.role = info.role.clone();
        }
        self.process.info = Some(info);
    }

    /// An arrival is held until the process shows whether it is an engine
    /// (steps) or a frontend (emits); repeated arrivals (every segment repeats
    /// those in flight) are ignored.
    fn arrival(&mut self, a: RequestArrival, data: &mut TraceData) {
        if self.requests.get(a.req).is_some()
            || self.frontend.contains_key(&a.req)
            || self.arrivals.contains_key(&a.req)
        {
            return;
        }
        if self.has_steps {
            self.engine_request(a.req, Some(a), data);
        } else {
            self.arrivals.insert(a.req, a);
        }
    }

    fn frontend_request(&mut self, key: u32) -> Option<&mut FrontendRequest> {
        if !self.frontend.contains_key(&key) {
            let arrival = self.arrivals.remove(&key)?;
            self.frontend_order.push(key);
            self.frontend.insert(
                key,
                FrontendRequest {
                    host: self.process.host.clone(),
                    arrival,
                    emits: Vec::new(),
                },
            );
        }
        self.frontend.get_mut(&key)
    }

    /// The engine request of `key`, created from its arrival (or as an
    /// orphan when the arrival was lost).
    fn engine_request(
        &mut self,
        key: u32,
        arrival: Option<RequestArrival>,
        data: &mut TraceData,
    ) -> RequestIx {
        if let Some(ix) = self.requests.get(key) {
            return ix;
        }
        let arrival = arrival.or_else(|| self.arrivals.remove(&key));
        let mut r = Request {
            process: self.ix,
            key,
            ..Default::default()
        };
        match arrival {
            Some(a) => {
                r.internal_id = a.internal_id;
                r.external_id = a.external_id;
                r.trace_id = a.trace_id;
                r.parent_span_id = a.parent_span_id;
                r.engine_arrival_ns = Some(a.arrival_ns);
                r.prompt_tokens = a.prompt_tokens;
                r.params = a.params;
                r.prompt_hash = a.prompt_hash;
                r.trace_top_k = a.trace_top_k;
            }
            None => {
                self.orphans += 1;
                r.internal_id = format!("{}#{key}", self.process.name);
            }
        }
        let wants_detail = match &self.options.detail {
            crate::load::Detail::None => false,
            crate::load::Detail::All => true,
            crate::load::Detail::Only(set) => set.contains(&(self.ix, key)),
        };
        if wants_detail {
            r.detail = Some(TokenDetail {
                top_offsets: vec![0],
                ..Default::default()
            });
        }
        let ix = data.requests.len() as RequestIx;
        data.requests.push(r);
        self.requests.insert(key, ix);
        self.live.push(LiveRequest::default());
        ix
    }

    fn step(&mut self, s: Step, data: &mut TraceData) {
        if !self.has_steps {
            // Arrivals seen so far belong to this engine process.
            self.has_steps = true;
            let mut held: Vec<RequestArrival> = self.arrivals.drain().map(|(_, a)| a).collect();
            held.sort_by_key(|a| (a.arrival_ns, a.req));
            for a in held {
                self.engine_request(a.req, Some(a), data);
            }
        }
        let step_ix = data.steps.len() as StepIx;
        let mut row = StepRow {
            process: self.ix,
            step_id: s.step_id,
            start_ns: s.start_ns,
            end_ns: s.end_ns,
            requests: s.batch.len() as u32,
            waiting: s.waiting,
            running: s.running,
            kv_usage: s.kv_usage,
            preempted: s.preempted.len() as u32,
            finished: s.finished.len() as u32,
            ..Default::default()
        };
        for b in &s.batch {
            let ix = self.engine_request(b.req, None, data);
            let live = &mut self.live[(ix - self.base) as usize];
            let context = live.context.saturating_add(b.cached_tokens);
            live.context = context
                .saturating_add(b.prefill_tokens)
                .saturating_add(b.decode_tokens);
            row.prefill_tokens += b.prefill_tokens;
            row.cached_tokens += b.cached_tokens;
            row.decode_tokens += b.decode_tokens;
            row.context_tokens += u64::from(context);
            let r = &mut data.requests[ix as usize];
            r.first_scheduled.get_or_insert(step_ix);
            r.prefilled_tokens += u64::from(b.prefill_tokens);
            r.cached_tokens += u64::from(b.cached_tokens);
            if b.prefill_tokens > 0 || self.options.decode_slices {
                data.slices.push(Slice {
                    step: step_ix,
                    request: ix,
                    prefill_tokens: b.prefill_tokens,
                    cached_tokens: b.cached_tokens,
                    decode_tokens: b.decode_tokens,
                    context_tokens: context,
                });
            }
        }
        for key in &s.preempted {
            let ix = self.engine_request(*key, None, data);
            data.requests[ix as usize].preempted_at.push(step_ix);
            // Recompute-style preemption frees the request's KV cache.
            self.live[(ix - self.base) as usize].context = 0;
        }
        if let Err(e) = s.tokens.check() {
            data.warnings.push(format!(
                "{}: step {}: tokens skipped ({})",
                self.process.name, s.step_id, e.0
            ));
        } else {
            for t in s.tokens.iter() {
                row.sampled += 1;
                let ix = self.engine_request(t.req, None, data);
                self.token(ix, t, step_ix, data);
            }
        }
        self.process.steps += 1;
        self.process.tokens += u64::from(row.sampled);
        data.steps.push(row);
    }

    fn token(
        &mut self,
        ix: RequestIx,
        t: probe_core::event::TokenView<'_>,
        step_ix: StepIx,
        data: &mut TraceData,
    ) {
        let r = &mut data.requests[ix as usize];
        r.token_index.push(t.index);
        r.token_step.push(step_ix);
        let checks = &mut r.checks;
        if let Some(id) = t.token_id {
            // An EOS is special only when the answer goes on after it.
            if let Some(last) = checks.last_id {
                if self.special.eos.contains(&last) {
                    note_special(checks, checks.last_index.unwrap_or(0), last);
                }
            }
            if self.special.other.contains(&id) {
                note_special(checks, t.index, id);
            }
            if !t.top_ids.is_empty() {
                checks.with_top_k += 1;
                if !t.top_ids.contains(&id) {
                    checks.outside_top_k += 1;
                    checks.first_outside_top_k.get_or_insert(t.index);
                }
            }
            if checks.repetition.is_none() {
                let live = &mut self.live[(ix - self.base) as usize];
                if let Some(period) = live.repeat.push(id) {
                    checks.repetition = Some((t.index, period));
                }
            }
            checks.last_id = Some(id);
            checks.last_index = Some(t.index);
            checks.output_digest = digest_token(checks.output_digest, id, t.logprob);
            checks.digested += 1;
        }
        note_confidence(checks, &t, self.options.low_confidence.below);
        if let Some(d) = r.detail.as_mut() {
            d.ids.push(t.token_id);
            d.logprobs.push(t.logprob);
            d.ranks.push(t.rank);
            d.top_ids.extend_from_slice(t.top_ids);
            d.top_logprobs.extend_from_slice(t.top_logprobs);
            d.top_offsets.push(d.top_ids.len() as u32);
            d.texts.push(t.text.map(str::to_owned));
        }
    }

    /// Close the process: its summary row, and its frontend requests if it
    /// recorded no steps.
    fn finish(mut self, data: &mut TraceData) -> (Process, Option<Vec<FrontendRequest>>) {
        if let Some(errors) = self
            .process
            .adapter_errors
            .as_ref()
            .filter(|e| e.total() > 0)
        {
            data.warnings
                .push(adapter_errors_warning(&self.process.name, errors));
        }
        if let Some(info) = &self.process.info {
            if info
                .extra
                .iter()
                .any(|(k, v)| k == "engine_version_tested" && v == "no")
            {
                data.warnings.push(format!(
                    "{}: engine version not tested: {} {} was traced with the newest layout because TOKTRACE_ALLOW_UNTESTED=1; its hook points checked out, but a change of meaning would not show",
                    self.process.name, info.engine, info.engine_version
                ));
            }
        }
        // A window starts mid-trace: requests that arrived before it are
        // expected to lack their arrival here.
        if self.orphans > 0 && self.options.plan.is_none() {
            data.warnings.push(format!(
                "{}: {} requests have tokens but no arrival record (dropped, or in deleted segments); shown by key",
                self.process.name, self.orphans
            ));
        }
        if self.has_steps {
            return (self.process, None);
        }
        // A process without steps is a frontend: requests that emitted nothing
        // still give their ids and arrival.
        let mut out: Vec<FrontendRequest> = self
            .frontend_order
            .iter()
            .filter_map(|k| self.frontend.remove(k))
            .collect();
        let mut rest: Vec<RequestArrival> = self.arrivals.drain().map(|(_, a)| a).collect();
        rest.sort_by_key(|a| (a.arrival_ns, a.req));
        out.extend(rest.into_iter().map(|arrival| FrontendRequest {
            host: self.process.host.clone(),
            arrival,
            emits: Vec::new(),
        }));
        (self.process, Some(out))
    }
}

/// Fold one sampled token (id and logprob bits) into a request's output
/// digest; the chain keeps the order.
fn digest_token(digest: u64, id: u32, logprob: Option<f32>) -> u64 {
    let word = u64::from(id) | (u64::from(logprob.map_or(u32::MAX, f32::to_bits)) << 32);
    (digest ^ word)
        .wrapping_mul(0x0000_0100_0000_01b3)
        .rotate_left(29)
}

/// Extend or end the request's run of unsure tokens with token `t`.
fn note_confidence(
    checks: &mut crate::data::TokenChecks,
    t: &probe_core::event::TokenView<'_>,
    below: f32,
) {
    if t.logprob.is_some_and(f32::is_nan) || t.top_logprobs.iter().any(|l| l.is_nan()) {
        // Not unsure: corrupt. Flagged apart, and it ends the stretch.
        checks.nan_logprobs += 1;
        checks.first_nan.get_or_insert(t.index);
        checks.low_run = None;
        return;
    }
    if t.top_logprobs.is_empty() {
        checks.low_run = None;
        return;
    }
    let top1 = t
        .top_logprobs
        .iter()
        .copied()
        .chain(t.logprob)
        .fold(f32::NEG_INFINITY, f32::max)
        .exp();
    if top1.is_nan() || top1 >= below {
        checks.low_run = None;
        return;
    }
    let run = checks.low_run.get_or_insert(crate::data::LowStretch {
        first: t.index,
        tokens: 0,
        lowest: top1,
        sum: 0.0,
    });
    run.tokens += 1;
    run.lowest = run.lowest.min(top1);
    run.sum += top1;
    let run = *run;
    if checks
        .low_confidence
        .is_none_or(|best| run.tokens > best.tokens)
    {
        checks.low_confidence = Some(run);
    }
}

/// How many special tokens are listed individually per request.
const SPECIAL_LISTED: usize = 8;

fn note_special(checks: &mut crate::data::TokenChecks, index: u32, id: u32) {
    checks.special_count += 1;
    if checks.special.len() < SPECIAL_LISTED {
        checks.special.push((index, id));
    }
}

/// The read warning for a process whose adapter caught errors in its hooks.
fn adapter_errors_warning(process: &str, errors: &probe_core::event::AdapterErrors) -> String {
    let hooks: Vec<String> = errors
        .hooks
        .iter()
        .map(|h| format!("{} ×{}", h.hook, h.count))
        .collect();
    let first = errors
        .hooks
        .first()
        .map_or(String::new(), |h| format!("; first: {}", h.first_error));
    format!(
        "{process}: the adapter caught {} error(s) in its hooks ({}{first}){}; what those hooks would have recorded may be missing",
        errors.total(),
        hooks.join(", "),
        if errors.disabled {
            "; it switched tracing off after them"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_needs_several_cycles() {
        let mut s = RepeatState::default();
        let ids = [5, 6, 7, 8];
        let mut found = None;
        for i in 0..64 {
            if let Some(p) = s.push(ids[i % 4]) {
                found = Some((i, p));
                break;
            }
        }
        // Period 4 needs 16 equal-to-4-back tokens after the first cycle.
        assert_eq!(found, Some((19, 4)));
    }

    #[test]
    fn varied_text_is_not_a_loop() {
        let mut s = RepeatState::default();
        for i in 0..10_000u32 {
            assert_eq!(s.push(i.wrapping_mul(2_654_435_761) % 977), None, "at {i}");
        }
    }

    #[test]
    fn a_single_token_loop_is_found() {
        let mut s = RepeatState::default();
        let hits: Vec<_> = (0..40)
            .filter_map(|i| s.push(if i < 3 { i } else { 9 }))
            .collect();
        assert_eq!(hits.first(), Some(&1));
    }
}
