//! The fleet dataset: each trace's frames added to one Hive-partitioned
//! Parquet dataset that DuckDB, Spark, polars and the like read as it is.
//!
//! ```text
//! ROOT/_toktrace/dataset.json                      the schema version
//! ROOT/_toktrace/captures/<capture>.json           what was exported of a capture
//! ROOT/_toktrace/processes/<process directory>     which capture a process is in
//! ROOT/<table>/day=YYYY-MM-DD/host=H/<capture>-<part>.parquet
//! ```
//!
//! A capture is one trace: its process directories. Its id is a hash of
//! their names (not of the path it was read from), kept once given, so a
//! process that joins a capture later lands in the same one. Day and host
//! are the capture's start, fixed at its first export: one capture never
//! spans partitions.
//!
//! Exports are incremental: each adds the steps (with their slices) past
//! the last step id exported from each process, and the requests (with their
//! tokens and interference) that finished since the last finish exported
//! from each process. A request still running waits for a later export. So a
//! re-run adds nothing twice, and segments the disk budget deleted never
//! take away rows already written. Every file is written aside and renamed;
//! the capture's record is updated last, under a lock, so a crash in between
//! is repaired by the next export, which writes the same part again.
//!
//! Nor does an export re-read what it has no use for: the capture's record
//! keeps, per process, the first segment a later export needs (where the
//! oldest request still running began), and [`read_plan`] reads from there.
//! A trace growing by a segment an hour is read a segment or two at a time.

use anyhow::{bail, Context, Result};
use probe_core::event::{ClockAnchor, Record};
use probe_core::files::{write_atomically, FileLock, PendingFile};
use probe_core::format::parse_segment_file_name;
use probe_core::reader::{Segment, TraceFiles};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use toktrace_analyzer::data::{RequestIx, StepIx};
use toktrace_analyzer::frames::frames;
use toktrace_analyzer::load::ReadPlan;
use toktrace_analyzer::polars::prelude::{
    Column, DataFrame, IntoColumn, KeyValueMetadata, NamedFrom, ParquetWriter, Series,
};
use toktrace_analyzer::select::{format_rfc3339, trace_start_unix_ns, Selection};
use toktrace_analyzer::Analysis;

/// The dataset's schema version. Changes are additive only (new columns,
/// new tables): a reader of version N reads every dataset of version <= N.
pub const SCHEMA_VERSION: u32 = 1;

/// The columns every table gains: where each row came from.
pub const PROVENANCE: [&str; 4] = ["capture_id", "engine", "engine_version", "model"];

/// What one export added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Added {
    /// The capture the trace is.
    pub capture_id: String,
    /// Its partition: `day=…/host=…`.
    pub partition: String,
    /// Rows added per table (tables with none are left out).
    pub rows: Vec<(&'static str, usize)>,
}

/// What has been exported of one capture (`_toktrace/captures/<id>.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CaptureRecord {
    schema: u32,
    capture_id: String,
    day: String,
    host: String,
    /// Parts written so far; the next one is `<capture>-<parts>`.
    parts: u32,
    /// Per process directory.
    processes: BTreeMap<String, ProcessMark>,
}

/// How far one process has been exported.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct ProcessMark {
    /// The last step id exported.
    last_step: Option<u64>,
    /// The latest finish exported (the process's monotonic clock, ns).
    finished_through_ns: Option<u64>,
    /// The first segment the next export must read: the one that holds the
    /// first step of the oldest request not yet exported (for a frontend,
    /// the first record of that time), else the newest. Segments before it
    /// hold nothing a later export needs and are never read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resume_segment: Option<u32>,
    /// The clock anchor its first export converted times with. Every
    /// segment carries its own, a few nanoseconds apart; an export that
    /// starts at a later segment converts with this one, so a step's unix
    /// time is the same in every part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anchor: Option<ClockAnchor>,
}

/// What one segment read holds, as far as the next export's plan goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpan {
    /// Its index in the process directory.
    pub index: u32,
    /// The first and last step ids in it, when it holds steps.
    pub steps: Option<(u64, u64)>,
    /// The latest time any record in it speaks of (the process's clock).
    pub last_ns: u64,
}

impl SegmentSpan {
    /// The span of a decoded segment (None for a file not named as a segment).
    pub fn of(segment: &Segment) -> Option<SegmentSpan> {
        let index = segment
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_segment_file_name)?;
        let mut span = SegmentSpan {
            index,
            steps: None,
            last_ns: 0,
        };
        for r in &segment.records {
            if let Record::Step(s) = &r.record {
                span.steps = Some(match span.steps {
                    None => (s.step_id, s.step_id),
                    Some((a, b)) => (a.min(s.step_id), b.max(s.step_id)),
                });
            }
            if let Some((_, to)) = r.record.time_span() {
                span.last_ns = span.last_ns.max(to);
            }
        }
        Some(span)
    }
}

/// The segments an export read, per process directory name.
pub type SegmentsRead = BTreeMap<String, Vec<SegmentSpan>>;

/// What an export of `files` into `root` needs to read: None for the whole
/// trace (its first export), else each process's segments from its resume
/// point on. The ranges are the files' lengths now: what is written after
/// waits for the next export.
pub fn read_plan(root: &Path, files: &TraceFiles) -> Result<Option<ReadPlan>> {
    let meta = root.join("_toktrace");
    if !meta.is_dir() {
        return Ok(None);
    }
    let names: Vec<String> = files
        .processes
        .iter()
        .filter_map(|p| p.dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let capture_id = capture_id_of(&meta, &refs)?;
    let record_path = meta.join("captures").join(format!("{capture_id}.json"));
    let Some(record) = read_record(&record_path)? else {
        return Ok(None);
    };
    let mut plan = ReadPlan::new();
    let mut skipped = false;
    for (pf, name) in files.processes.iter().zip(&names) {
        let resume = record.processes.get(name).and_then(|m| m.resume_segment);
        for path in &pf.segments {
            let index = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_segment_file_name);
            if let (Some(resume), Some(index)) = (resume, index) {
                if index < resume {
                    skipped = true;
                    continue;
                }
            }
            // Deleted since it was listed: nothing to read.
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            // One range: the whole file as long as it is now.
            let whole = std::iter::once(0..meta.len()).collect();
            plan.insert(path.clone(), whole);
        }
    }
    Ok(skipped.then_some(plan))
}

/// Add what is new in the analysed trace `a` to the dataset at `root`
/// (created if missing); `read` is what the load read of it (see
/// [`read_plan`]), from which the next export's resume points are set.
pub fn add(a: &mut Analysis, root: &Path, read: &SegmentsRead) -> Result<Added> {
    let meta = root.join("_toktrace");
    for dir in [meta.join("captures"), meta.join("processes")] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    check_schema(&meta)?;
    let owned: Vec<String> = a.data.processes.iter().map(|p| p.name.clone()).collect();
    let names: Vec<&str> = owned.iter().map(String::as_str).collect();
    if names.is_empty() {
        bail!("the trace has no processes to export");
    }
    let capture_id = capture_id_of(&meta, &names)?;
    // One export of a capture at a time; others wait here.
    let lock_path = meta.join("captures").join(format!("{capture_id}.lock"));
    let lock = FileLock::acquire(&lock_path)
        .with_context(|| format!("locking {}", lock_path.display()))?;

    let record_path = meta.join("captures").join(format!("{capture_id}.json"));
    let mut record = read_record(&record_path)?.unwrap_or_else(|| {
        let start = trace_start_unix_ns(a);
        CaptureRecord {
            schema: SCHEMA_VERSION,
            capture_id: capture_id.clone(),
            day: format_rfc3339(start).chars().take(10).collect(),
            host: partition_value(&first_host(a)),
            parts: 0,
            processes: BTreeMap::new(),
        }
    });
    for p in &mut a.data.processes {
        match record.processes.get(&p.name).and_then(|m| m.anchor) {
            Some(anchor) => p.anchor = anchor,
            None => {
                let anchor = p.anchor;
                record.processes.entry(p.name.clone()).or_default().anchor = Some(anchor);
            }
        }
    }
    let a = &*a;
    let partition = format!("day={}/host={}", record.day, record.host);
    let mut added = Added {
        capture_id: capture_id.clone(),
        partition: partition.clone(),
        ..Default::default()
    };

    let (selection, mut marks) = new_since(a, &record.processes);
    resume_points(a, read, &mut marks);
    if selection.steps.as_ref().is_some_and(|s| s.is_empty())
        && selection.requests.as_ref().is_some_and(|r| r.is_empty())
    {
        record.processes = marks;
        write_json(&record_path, &record)?;
        return Ok(added);
    }

    let mut frames = frames(a, &selection).context("building the frames")?;
    let provenance = provenance_of(a, &capture_id);
    let metadata = serde_json::to_string(&a.metadata()).context("encoding the trace metadata")?;
    let part = format!("{capture_id}-{:06}", record.parts);
    for (table, frame) in frames.named() {
        if frame.height() == 0 {
            continue;
        }
        let mut frame = with_provenance(frame, &provenance)?;
        let dir = root.join(table).join(&partition);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{part}.parquet"));
        let mut file = PendingFile::create(&path, 0o666)
            .with_context(|| format!("creating {}", path.display()))?;
        ParquetWriter::new(&mut file)
            .with_key_value_metadata(Some(KeyValueMetadata::from_static(vec![
                ("toktrace".to_string(), metadata.clone()),
                (
                    "toktrace_dataset_schema".to_string(),
                    SCHEMA_VERSION.to_string(),
                ),
            ])))
            .finish(&mut frame)
            .with_context(|| format!("writing {}", path.display()))?;
        file.commit()
            .with_context(|| format!("writing {}", path.display()))?;
        added.rows.push((table, frame.height()));
    }
    record.parts += 1;
    record.processes = marks;
    write_json(&record_path, &record)?;
    for name in names {
        remember_process(&meta, name, &capture_id)?;
    }
    drop(lock);
    Ok(added)
}

/// Set each process's resume segment: the segment of the first step of its
/// oldest request not finished (so every token of it is read again), or for
/// a frontend the first segment reaching the oldest such request's arrival;
/// with none running, the newest segment read (it may still grow).
fn resume_points(a: &Analysis, read: &SegmentsRead, marks: &mut BTreeMap<String, ProcessMark>) {
    let d = &a.data;
    let running = || d.requests.iter().filter(|r| r.finish_ns.is_none());
    let oldest_arrival = running().filter_map(|r| r.arrival_ns()).min();
    for (pix, p) in d.processes.iter().enumerate() {
        let Some(spans) = read.get(&p.name).filter(|s| !s.is_empty()) else {
            continue; // nothing read: the old resume point stands
        };
        let newest = spans.iter().map(|s| s.index).max();
        let resume = if p.steps > 0 {
            let oldest_step = running()
                .filter(|r| r.process == pix as u32)
                .filter_map(|r| r.first_scheduled)
                .map(|s| d.steps[s as usize].step_id)
                .min();
            match oldest_step {
                Some(id) => spans
                    .iter()
                    .filter(|s| s.steps.is_some_and(|(first, _)| first <= id))
                    .map(|s| s.index)
                    .max()
                    .or_else(|| spans.iter().map(|s| s.index).min()),
                None => newest,
            }
        } else {
            match oldest_arrival {
                Some(t) => spans
                    .iter()
                    .filter(|s| s.last_ns >= t)
                    .map(|s| s.index)
                    .min()
                    .or(newest),
                None => newest,
            }
        };
        if let Some(resume) = resume {
            marks.entry(p.name.clone()).or_default().resume_segment = Some(resume);
        }
    }
}

/// The steps and the finished requests past each process's mark, and the
/// marks after them.
fn new_since(
    a: &Analysis,
    marks: &BTreeMap<String, ProcessMark>,
) -> (Selection, BTreeMap<String, ProcessMark>) {
    let d = &a.data;
    let mut next = marks.clone();
    let mut steps: HashSet<StepIx> = HashSet::new();
    for (i, s) in d.steps.iter().enumerate() {
        let name = &d.processes[s.process as usize].name;
        let before = marks.get(name).and_then(|m| m.last_step);
        if before.map_or(true, |last| s.step_id > last) {
            steps.insert(i as StepIx);
        }
        let m = next.entry(name.clone()).or_default();
        m.last_step = m.last_step.max(Some(s.step_id));
    }
    let mut requests: HashSet<RequestIx> = HashSet::new();
    for (i, r) in d.requests.iter().enumerate() {
        let Some(finish) = r.finish_ns else {
            continue; // still running: a later export takes it
        };
        let name = &d.processes[r.process as usize].name;
        let before = marks.get(name).and_then(|m| m.finished_through_ns);
        if before.map_or(true, |t| finish > t) {
            requests.insert(i as RequestIx);
        }
        let m = next.entry(name.clone()).or_default();
        m.finished_through_ns = m.finished_through_ns.max(Some(finish));
    }
    let selection = Selection {
        steps: Some(steps),
        requests: Some(requests),
        ..Selection::all()
    };
    (selection, next)
}

/// The capture a process of this trace was exported in before, else a new
/// id: FNV-1a (64 bits) of the sorted process-directory names. An
/// identifier, not a secret.
fn capture_id_of(meta: &Path, names: &[&str]) -> Result<String> {
    for name in names {
        let path = meta.join("processes").join(file_name(name)?);
        match std::fs::read_to_string(&path) {
            Ok(id) if is_capture_id(id.trim()) => return Ok(id.trim().to_string()),
            Ok(_) => bail!("{}: not a capture id", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    let mut sorted = names.to_vec();
    sorted.sort_unstable();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sorted.join("\n").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(format!("{hash:016x}"))
}

fn is_capture_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn remember_process(meta: &Path, name: &str, capture_id: &str) -> Result<()> {
    let path = meta.join("processes").join(file_name(name)?);
    if path.exists() {
        return Ok(());
    }
    write_atomically(&path, capture_id.as_bytes(), 0o666)
        .with_context(|| format!("writing {}", path.display()))
}

/// A process-directory name as a file name (they are `host-pid-start`;
/// anything else is refused rather than turned into a path).
fn file_name(name: &str) -> Result<&str> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        bail!("process directory name {name:?} cannot name a dataset file");
    }
    Ok(name)
}

/// A Hive partition value: the characters that mean something in a path or
/// a partition spec (`/`, `=`, …) become `_`.
fn partition_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if v.is_empty() || v.starts_with('.') {
        format!("_{v}")
    } else {
        v
    }
}

/// The host of the process that started first.
fn first_host(a: &Analysis) -> String {
    a.data
        .processes
        .iter()
        .min_by_key(|p| p.anchor.unix_ns)
        .map(|p| p.host.clone())
        .unwrap_or_default()
}

/// The capture's id and its engine, release and model: those of its first
/// process that recorded them (every process of a capture serves one model);
/// `unknown` where none did, so that fleet queries group on values, never
/// on NULL.
fn provenance_of(a: &Analysis, capture_id: &str) -> [String; 4] {
    let info = a.data.processes.iter().find_map(|p| p.info.as_ref());
    let known = |v: Option<String>| v.unwrap_or_else(|| "unknown".to_string());
    [
        capture_id.to_string(),
        known(info.map(|i| i.engine.clone())),
        known(info.map(|i| i.engine_version.clone())),
        known(info.and_then(|i| i.model_name.clone().or_else(|| i.model_path.clone()))),
    ]
}

fn with_provenance(frame: &DataFrame, values: &[String; 4]) -> Result<DataFrame> {
    let height = frame.height();
    let mut columns: Vec<Column> = PROVENANCE
        .iter()
        .zip(values)
        .map(|(name, v)| Series::new((*name).into(), vec![v.as_str(); height]).into_column())
        .collect();
    columns.extend(frame.columns().iter().cloned());
    DataFrame::new(height, columns).context("adding the provenance columns")
}

fn check_schema(meta: &Path) -> Result<()> {
    #[derive(Serialize, Deserialize)]
    struct DatasetFile {
        schema: u32,
        written_by: String,
    }
    let path = meta.join("dataset.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let found: DatasetFile = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a toktrace dataset file", path.display()))?;
            if found.schema > SCHEMA_VERSION {
                bail!(
                    "{}: dataset schema {} was written by toktrace {}; this toktrace writes schema {}: upgrade it",
                    path.display(),
                    found.schema,
                    found.written_by,
                    SCHEMA_VERSION
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let file = DatasetFile {
                schema: SCHEMA_VERSION,
                written_by: env!("CARGO_PKG_VERSION").to_string(),
            };
            write_json(&path, &file)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn read_record(path: &Path) -> Result<Option<CaptureRecord>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{}: not a capture record", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).context("encoding the dataset's record")?;
    write_atomically(path, &bytes, 0o666).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_are_safe_path_parts() {
        assert_eq!(partition_value("gpu-node-7.example"), "gpu-node-7.example");
        assert_eq!(partition_value("a/b=c"), "a_b_c");
        assert_eq!(partition_value(""), "_");
        assert_eq!(partition_value(".."), "_..");
    }

    #[test]
    fn capture_ids_do_not_depend_on_order() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("processes"))?;
        let a = capture_id_of(dir.path(), &["h-p1-1", "h-p2-2"])?;
        let b = capture_id_of(dir.path(), &["h-p2-2", "h-p1-1"])?;
        assert_eq!(a, b);
        assert!(is_capture_id(&a));
        assert_ne!(a, capture_id_of(dir.path(), &["h-p1-1"])?);
        Ok(())
    }

    #[test]
    fn a_process_seen_before_keeps_its_capture() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("processes"))?;
        remember_process(dir.path(), "h-p1-1", "00000000000000aa")?;
        assert_eq!(
            capture_id_of(dir.path(), &["h-p9-9", "h-p1-1"])?,
            "00000000000000aa"
        );
        Ok(())
    }

    #[test]
    fn odd_process_names_are_refused() {
        assert!(file_name("../x").is_err());
        assert!(file_name("").is_err());
        assert!(file_name("vm-p17201-1795459353994590141").is_ok());
    }
}
