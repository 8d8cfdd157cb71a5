//! `toktrace fleet ROOT`: fleet questions over a dataset written by `export
//! --dataset`, answered by polars' lazy engine and its SQL, so only the
//! partitions and columns a query needs are read.
//!
//! The named questions are SQL files shipped in the Python package
//! (`toktrace/queries/*.sql`), in a subset of SQL that DuckDB and Spark run
//! as they are (`toktrace.fleet` registers the tables there): the embedded
//! engine and the engines at scale answer the same text.

use crate::cli::{FleetQuestion, StallsBy};
use crate::export::UsageError;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use toktrace_analyzer::polars::prelude::{
    AnyValue, DataFrame, DataType, Field, HiveOptions, LazyFrame, PlRefPath, ScanArgsParquet,
    Schema,
};
use toktrace_analyzer::polars::sql::SQLContext;

const WORST_ITL: &str = include_str!("../../bindings-python/python/toktrace/queries/worst_itl.sql");
const OFFENDERS: &str = include_str!("../../bindings-python/python/toktrace/queries/offenders.sql");
const STALLS: &str = include_str!("../../bindings-python/python/toktrace/queries/stalls.sql");

/// What `fleet` was asked.
#[derive(Debug, Clone)]
pub struct FleetArgs {
    pub root: PathBuf,
    pub question: FleetQuestion,
    pub by: StallsBy,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: usize,
    pub json: bool,
    pub show_sql: bool,
}

/// `toktrace fleet`.
pub fn fleet(args: &FleetArgs) -> Result<()> {
    let sql = query_text(args)?;
    if args.show_sql {
        println!("{}", sql.trim_end());
        return Ok(());
    }
    let frame = answer(&args.root, &sql)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&as_json(&frame)?)?);
    } else {
        print_table(&frame)?;
    }
    Ok(())
}

/// The SQL of the question, its placeholders filled.
fn query_text(args: &FleetArgs) -> Result<String> {
    for day in [&args.from, &args.to].into_iter().flatten() {
        if !is_day(day) {
            return Err(UsageError("--from and --to take a day, YYYY-MM-DD").into());
        }
    }
    let template = match &args.question {
        FleetQuestion::WorstItl => WORST_ITL,
        FleetQuestion::Offenders => OFFENDERS,
        FleetQuestion::Stalls => STALLS,
        FleetQuestion::Sql(sql) => return Ok(sql.clone()),
    };
    Ok(template
        .replace("${from}", args.from.as_deref().unwrap_or("0000-01-01"))
        .replace("${to}", args.to.as_deref().unwrap_or("9999-12-31"))
        .replace("${limit}", &args.limit.to_string())
        .replace("${by}", args.by.column()))
}

fn is_day(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// Run `sql` over the dataset at `root`, every table registered under its
/// name.
pub fn answer(root: &Path, sql: &str) -> Result<DataFrame> {
    if !root.join("_toktrace").join("dataset.json").is_file() {
        anyhow::bail!(
            "{}: not a toktrace dataset (no _toktrace/dataset.json; make one with `toktrace export TRACE --format parquet --dataset {}`)",
            root.display(),
            root.display()
        );
    }
    let mut ctx = SQLContext::new();
    for table in toktrace_analyzer::frames::NAMES {
        let dir = root.join(table);
        if dir.is_dir() {
            ctx.register(table, scan(&dir)?);
        }
    }
    ctx.execute(sql)
        .and_then(|lf| lf.collect())
        .with_context(|| format!("running the query over {}", root.display()))
}

/// One table's files, `day` and `host` from their Hive paths, as text (the
/// same types DuckDB and Spark are told to use). Files from an older schema
/// get NULL in the columns they lack.
fn scan(dir: &Path) -> Result<LazyFrame> {
    let partitions = Schema::from_iter([
        Field::new("day".into(), DataType::String),
        Field::new("host".into(), DataType::String),
    ]);
    let args = ScanArgsParquet {
        hive_options: HiveOptions {
            enabled: Some(true),
            hive_start_idx: 0,
            schema: Some(std::sync::Arc::new(partitions)),
            try_parse_dates: false,
        },
        allow_missing_columns: true,
        ..Default::default()
    };
    let glob = format!("{}/**/*.parquet", dir.display());
    LazyFrame::scan_parquet(PlRefPath::new(glob.as_str()), args)
        .with_context(|| format!("scanning {}", dir.display()))
}

/// A cell as text: strings bare, floats to 3 decimals, NULL empty.
fn cell(v: &AnyValue<'_>) -> String {
    match v {
        AnyValue::Null => String::new(),
        AnyValue::String(s) => (*s).to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        AnyValue::Float32(f) => format!("{f:.3}"),
        AnyValue::Float64(f) => format!("{f:.3}"),
        other => other.to_string(),
    }
}

fn print_table(frame: &DataFrame) -> Result<()> {
    let names: Vec<String> = frame
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(frame.height());
    for i in 0..frame.height() {
        let row = frame
            .columns()
            .iter()
            .map(|c| c.get(i).map(|v| cell(&v)))
            .collect::<Result<Vec<_>, _>>()?;
        rows.push(row);
    }
    let widths: Vec<usize> = (0..names.len())
        .map(|j| {
            rows.iter()
                .map(|r| r[j].chars().count())
                .chain([names[j].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(&names));
    for r in &rows {
        println!("{}", line(r));
    }
    if rows.is_empty() {
        println!("(no rows)");
    }
    Ok(())
}

/// The answer as a JSON array of objects, one per row, columns by name.
fn as_json(frame: &DataFrame) -> Result<serde_json::Value> {
    let mut out = Vec::with_capacity(frame.height());
    for i in 0..frame.height() {
        let mut row = serde_json::Map::new();
        for c in frame.columns() {
            row.insert(c.name().to_string(), json_value(&c.get(i)?));
        }
        out.push(serde_json::Value::Object(row));
    }
    Ok(serde_json::Value::Array(out))
}

fn json_value(v: &AnyValue<'_>) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(*b),
        AnyValue::String(s) => Value::String((*s).to_string()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::Float32(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        AnyValue::Float64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AnyValue::Int8(x) => Value::from(*x),
        AnyValue::Int16(x) => Value::from(*x),
        AnyValue::Int32(x) => Value::from(*x),
        AnyValue::Int64(x) => Value::from(*x),
        AnyValue::UInt8(x) => Value::from(*x),
        AnyValue::UInt16(x) => Value::from(*x),
        AnyValue::UInt32(x) => Value::from(*x),
        AnyValue::UInt64(x) => Value::from(*x),
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_checked() {
        assert!(is_day("2026-12-07"));
        assert!(!is_day("2026-12-7"));
        assert!(!is_day("2026/12/07"));
        assert!(!is_day("'; DROP"));
    }

    #[test]
    fn named_questions_fill_every_placeholder() -> Result<()> {
        for question in [
            FleetQuestion::WorstItl,
            FleetQuestion::Offenders,
            FleetQuestion::Stalls,
        ] {
            let args = FleetArgs {
                root: PathBuf::new(),
                question,
                by: StallsBy::Host,
                from: Some("2026-12-01".into()),
                to: None,
                limit: 7,
                json: false,
                show_sql: false,
            };
            let sql = query_text(&args)?;
            assert!(!sql.contains("${"), "{sql}");
        }
        Ok(())
    }
}
