//! `toktrace export`: load and analyse the trace, narrow it to the window and
//! requests asked for, and hand it to the writer of the chosen format
//! (toktrace-exports).

use crate::analyze::{analyze, resolve};
use crate::cli::{AnalysisArgs, ExportFormat, OtlpProtocol};
use anyhow::{Context, Result};
use probe_core::files::PendingFile;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use toktrace_analyzer::select::{Selection, TimeSpec};
use toktrace_analyzer::{Detail, LoadOptions};
use toktrace_exports::tables::TableFormat;

/// What `export` was asked for, besides the trace.
#[derive(Debug, Clone)]
pub struct ExportArgs {
    pub format: ExportFormat,
    pub out: Option<PathBuf>,
    pub dataset: Option<PathBuf>,
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    pub allow_remote_http: bool,
    pub from: Option<TimeSpec>,
    pub to: Option<TimeSpec>,
    pub requests: Vec<String>,
}

/// The destination does not fit the format (exit code 2, like other usage
/// errors).
#[derive(Debug)]
pub struct UsageError(pub &'static str);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for UsageError {}

/// `toktrace export`.
pub fn export(dirs: &[PathBuf], args: &ExportArgs, analysis: &AnalysisArgs) -> Result<()> {
    if let Some(root) = &args.dataset {
        if args.format != ExportFormat::Parquet {
            return Err(UsageError("--dataset takes --format parquet").into());
        }
        return add_to_dataset(dirs, root, analysis);
    }
    let [dir] = dirs else {
        return Err(UsageError("one trace at a time, except with --dataset").into());
    };
    // Refuse a bad destination before the (possibly long) analysis.
    let out = match (args.format, &args.out, &args.endpoint) {
        (ExportFormat::Otlp, _, Some(endpoint)) => {
            toktrace_exports::otlp::check_endpoint(endpoint, args.allow_remote_http)?;
            Path::new("")
        }
        (ExportFormat::Otlp, _, None) => {
            return Err(
                UsageError("--format otlp sends to a collector: give --endpoint URL").into(),
            )
        }
        (_, Some(out), None) => out.as_path(),
        (_, _, Some(_)) => {
            return Err(UsageError("--endpoint is for --format otlp; give --out PATH").into())
        }
        (ExportFormat::Parquet, None, None) => {
            return Err(UsageError("give --out DIR, or --dataset ROOT for a fleet dataset").into())
        }
        (_, None, None) => return Err(UsageError("give --out PATH for this format").into()),
    };
    let options = LoadOptions {
        detail: Detail::All,
        decode_slices: true,
        ..Default::default()
    };
    let a = analyze(dir, &options, analysis)?;
    let requests = if args.requests.is_empty() {
        None
    } else {
        let ids = args
            .requests
            .iter()
            .map(|id| resolve(&a.data, id).map_err(anyhow::Error::from))
            .collect::<Result<HashSet<_>>>()?;
        Some(ids)
    };
    let selection = Selection::new(&a, args.from, args.to, requests);
    let table = |format| -> Result<()> {
        for w in toktrace_exports::tables::write(&a, &selection, format, out)? {
            eprintln!("toktrace: wrote {} ({} rows)", w.path.display(), w.rows);
        }
        Ok(())
    };
    match args.format {
        ExportFormat::Parquet => table(TableFormat::Parquet),
        ExportFormat::Ipc => table(TableFormat::Ipc),
        ExportFormat::Csv => table(TableFormat::Csv),
        ExportFormat::Perfetto => {
            let path = out;
            let mut file = create_file(path)?;
            let progress = toktrace_viewer::progress::count("writing requests");
            let stats = toktrace_exports::perfetto::write(
                &a,
                &selection,
                std::io::BufWriter::new(&mut file),
                progress.as_ref().map(|p| p as &dyn Fn(u64, u64)),
            )
            .with_context(|| format!("writing {}", path.display()))?;
            file.commit()
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "toktrace: wrote {} ({} steps, {} requests, {} tokens; open it at ui.perfetto.dev)",
                path.display(),
                stats.steps,
                stats.requests,
                stats.tokens
            );
            Ok(())
        }
        ExportFormat::Html => {
            let path = out;
            let mut file = create_file(path)?;
            toktrace_exports::html::write(&a, &selection, std::io::BufWriter::new(&mut file))
                .with_context(|| format!("writing {}", path.display()))?;
            file.commit()
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("toktrace: wrote {}", path.display());
            Ok(())
        }
        ExportFormat::Otlp => {
            let endpoint = args
                .endpoint
                .as_deref()
                .context("--endpoint URL is required")?;
            let transport = match args.protocol {
                OtlpProtocol::Grpc => toktrace_exports::otlp::Transport::Grpc,
                OtlpProtocol::Http => toktrace_exports::otlp::Transport::Http,
            };
            let progress = toktrace_viewer::progress::count("writing spans");
            let stats = toktrace_exports::otlp::send(
                &a,
                &selection,
                endpoint,
                transport,
                progress.as_ref().map(|p| p as &dyn Fn(u64, u64)),
            )?;
            eprintln!(
                "toktrace: sent {} request spans to {endpoint} ({} joined to the caller's trace)",
                stats.spans, stats.joined
            );
            Ok(())
        }
    }
}

/// `export --dataset`: each trace in turn, analysed whole, what is new in it
/// added. A trace that fails is reported and the others still go in; the
/// exit status says one failed.
fn add_to_dataset(dirs: &[PathBuf], root: &Path, analysis: &AnalysisArgs) -> Result<()> {
    let mut failed = 0;
    for dir in dirs {
        let added = add_one(dir, root, analysis);
        match added {
            Ok(added) if added.rows.is_empty() => eprintln!(
                "toktrace: {}: nothing new for capture {}",
                dir.display(),
                added.capture_id
            ),
            Ok(added) => {
                let rows: Vec<String> = added
                    .rows
                    .iter()
                    .map(|(table, n)| format!("{n} {table}"))
                    .collect();
                eprintln!(
                    "toktrace: {}: capture {} ({}): added {}",
                    dir.display(),
                    added.capture_id,
                    added.partition,
                    rows.join(", ")
                );
            }
            Err(e) if dirs.len() == 1 => return Err(e),
            Err(e) => {
                failed += 1;
                eprintln!("toktrace: error: {}: {e:#}", dir.display());
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} traces were not added", dirs.len());
    }
    Ok(())
}

/// Add one trace: read what the dataset's record says is still needed
/// (everything, the first time), analyse it, add what is new.
fn add_one(
    dir: &Path,
    root: &Path,
    analysis: &AnalysisArgs,
) -> Result<toktrace_exports::dataset::Added> {
    use toktrace_exports::dataset::{read_plan, SegmentSpan, SegmentsRead};
    let files = probe_core::reader::list_trace(dir)?;
    let plan = read_plan(root, &files)?;
    if let Some(plan) = &plan {
        let all: usize = files.processes.iter().map(|p| p.segments.len()).sum();
        eprintln!(
            "toktrace: {}: reading {} of {} segments (the rest were exported and hold nothing still needed)",
            dir.display(),
            plan.len(),
            all
        );
    }
    let names: Vec<String> = files
        .processes
        .iter()
        .map(|p| {
            p.dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let read: std::sync::Arc<std::sync::Mutex<SegmentsRead>> = Default::default();
    let sink = read.clone();
    let options = LoadOptions {
        detail: Detail::All,
        decode_slices: true,
        plan: plan.map(std::sync::Arc::new),
        on_segment: Some(std::sync::Arc::new(move |pix, segment| {
            let (Some(name), Some(span)) = (names.get(pix as usize), SegmentSpan::of(segment))
            else {
                return;
            };
            if let Ok(mut read) = sink.lock() {
                read.entry(name.clone()).or_default().push(span);
            }
        })),
        ..Default::default()
    };
    let mut a = analyze(dir, &options, analysis)?;
    let read = read.lock().map(|r| r.clone()).unwrap_or_default();
    toktrace_exports::dataset::add(&mut a, root, &read)
}

/// Start an output file (written aside, renamed into place by `commit`), its
/// directory too; refuse a directory.
fn create_file(path: &Path) -> Result<PendingFile> {
    if path.is_dir() {
        anyhow::bail!("{} is a directory; give a file name", path.display());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    PendingFile::create(path, 0o666).with_context(|| format!("creating {}", path.display()))
}
