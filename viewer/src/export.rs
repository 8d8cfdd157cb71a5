//! `toktrace export`: load and analyse the trace, narrow it to the window and
//! requests asked for, and hand it to the writer of the chosen format
//! (toktrace-exports).

use crate::analyze::{analyze, resolve};
use crate::cli::{AnalysisArgs, ExportFormat};
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use toktrace_analyzer::select::{Selection, TimeSpec};
use toktrace_analyzer::{Detail, LoadOptions};
use toktrace_exports::tables::TableFormat;

/// What `export` was asked for, besides the trace.
#[derive(Debug, Clone)]
pub struct ExportArgs {
    pub format: ExportFormat,
    pub out: PathBuf,
    pub from: Option<TimeSpec>,
    pub to: Option<TimeSpec>,
    pub requests: Vec<String>,
}

/// `toktrace export`.
pub fn export(dir: &Path, args: &ExportArgs, analysis: &AnalysisArgs) -> Result<()> {
    let options = LoadOptions {
        detail: Detail::All,
        decode_slices: true,
        progress: None,
    };
    let a = analyze(dir, &options, analysis)?;
    let requests = if args.requests.is_empty() {
        None
    } else {
        let ids = args
            .requests
            .iter()
            .map(|id| resolve(&a.data, id))
            .collect::<Result<HashSet<_>>>()?;
        Some(ids)
    };
    let selection = Selection::new(&a, args.from, args.to, requests);
    let table = |format| -> Result<()> {
        for w in toktrace_exports::tables::write(&a, &selection, format, &args.out)? {
            eprintln!("toktrace: wrote {} ({} rows)", w.path.display(), w.rows);
        }
        Ok(())
    };
    match args.format {
        ExportFormat::Parquet => table(TableFormat::Parquet),
        ExportFormat::Ipc => table(TableFormat::Ipc),
        ExportFormat::Csv => table(TableFormat::Csv),
        ExportFormat::Perfetto => {
            let file = create_file(&args.out)?;
            let progress = progress_line("requests");
            let stats = toktrace_exports::perfetto::write(
                &a,
                &selection,
                std::io::BufWriter::new(file),
                progress.as_ref().map(|p| p as &dyn Fn(u64, u64)),
            )
            .with_context(|| format!("writing {}", args.out.display()))?;
            eprintln!(
                "toktrace: wrote {} ({} steps, {} requests, {} tokens; open it at ui.perfetto.dev)",
                args.out.display(),
                stats.steps,
                stats.requests,
                stats.tokens
            );
            Ok(())
        }
        ExportFormat::Html => {
            let file = create_file(&args.out)?;
            toktrace_exports::html::write(&a, &selection, std::io::BufWriter::new(file))
                .with_context(|| format!("writing {}", args.out.display()))?;
            eprintln!("toktrace: wrote {}", args.out.display());
            Ok(())
        }
    }
}

/// Create an output file, its directory too; refuse a directory.
fn create_file(path: &Path) -> Result<std::fs::File> {
    if path.is_dir() {
        anyhow::bail!("{} is a directory; give a file name", path.display());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
}

/// A "done / total" line on stderr, when stderr is a terminal.
fn progress_line(what: &'static str) -> Option<impl Fn(u64, u64)> {
    std::io::stderr()
        .is_terminal()
        .then_some(move |done: u64, total: u64| {
            eprint!("\rtoktrace: writing {what} {done} / {total}");
            if done >= total {
                eprintln!();
            }
        })
}
