//! The analyzer's frames as files: Parquet, Arrow IPC or CSV, one file per
//! frame (steps, slices, tokens, requests, interference).
//!
//! Parquet carries the trace's metadata (engines, models, clock anchors, step
//! models) as JSON under the key-value metadata key `toktrace`. CSV has no
//! place for list columns, so a token's candidates become one text cell of
//! space-separated values, best first.

use anyhow::{Context, Result};
use probe_core::files::PendingFile;
use std::path::{Path, PathBuf};
use toktrace_analyzer::frames::frames;
use toktrace_analyzer::polars::prelude::{
    AnyValue, Column, CsvWriter, DataFrame, DataType, IntoColumn, IpcWriter, KeyValueMetadata,
    NamedFrom, ParquetWriter, PolarsResult, SerWriter, Series,
};
use toktrace_analyzer::select::Selection;
use toktrace_analyzer::Analysis;

/// A tabular file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// Parquet (zstd).
    Parquet,
    /// Arrow IPC (Feather v2).
    Ipc,
    /// Comma-separated values with a header row.
    Csv,
}

impl TableFormat {
    fn extension(self) -> &'static str {
        match self {
            TableFormat::Parquet => "parquet",
            TableFormat::Ipc => "arrow",
            TableFormat::Csv => "csv",
        }
    }
}

/// One file written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Where.
    pub path: PathBuf,
    /// Rows in it.
    pub rows: usize,
}

/// Write every frame of what `sel` covers into `dir` (created if missing).
pub fn write(
    a: &Analysis,
    sel: &Selection,
    format: TableFormat,
    dir: &Path,
) -> Result<Vec<Written>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut frames = frames(a, sel).context("building the frames")?;
    let metadata = serde_json::to_string(&a.metadata()).context("encoding the trace metadata")?;
    let mut written = Vec::new();
    for (name, frame) in frames.named() {
        let path = dir.join(format!("{name}.{}", format.extension()));
        // Written aside and renamed: a reader never sees half a table.
        let mut file = PendingFile::create(&path, 0o666)
            .with_context(|| format!("creating {}", path.display()))?;
        match format {
            TableFormat::Parquet => ParquetWriter::new(&mut file)
                .with_key_value_metadata(Some(KeyValueMetadata::from_static(vec![(
                    "toktrace".to_string(),
                    metadata.clone(),
                )])))
                .finish(frame)
                .map(|_| ()),
            TableFormat::Ipc => IpcWriter::new(&mut file).finish(frame),
            TableFormat::Csv => {
                let mut flat = lists_as_text(frame)?;
                CsvWriter::new(&mut file).finish(&mut flat)
            }
        }
        .with_context(|| format!("writing {}", path.display()))?;
        file.commit()
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(Written {
            path,
            rows: frame.height(),
        });
    }
    Ok(written)
}

/// The frame with each list column replaced by text: the values separated
/// by spaces (an empty cell for an empty or missing list).
fn lists_as_text(frame: &DataFrame) -> PolarsResult<DataFrame> {
    let columns = frame
        .columns()
        .iter()
        .map(|c: &Column| {
            let DataType::List(_) = c.dtype() else {
                return Ok(c.clone());
            };
            let text = (0..c.len())
                .map(|row| {
                    Ok(match c.get(row)? {
                        AnyValue::List(values) => Some(
                            values
                                .iter()
                                .map(|v| v.to_string())
                                .collect::<Vec<_>>()
                                .join(" "),
                        ),
                        _ => None,
                    })
                })
                .collect::<PolarsResult<Vec<Option<String>>>>()?;
            Ok(Series::new(c.name().clone(), text).into_column())
        })
        .collect::<PolarsResult<Vec<_>>>()?;
    DataFrame::new_infer_height(columns)
}
