//! The analysis commands: summary, requests, tokens, interference.
//! Each loads the trace, runs the analyzer and prints a table or stable JSON.

use crate::cli::{AnalysisArgs, SortKey};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use toktrace_analyzer::data::RequestIx;
use toktrace_analyzer::report::RequestRow;
use toktrace_analyzer::{Analysis, AnalyzeOptions, Detail, LoadOptions};
// One request id resolution (and its exit code 3) for the viewer and the commands.
pub(crate) use toktrace_analyzer::open::{resolve, UnknownRequest};
use toktrace_viewer::progress;

pub(crate) fn analyze(dir: &Path, load: &LoadOptions, args: &AnalysisArgs) -> Result<Analysis> {
    let t0 = std::time::Instant::now();
    let data = read(
        dir,
        LoadOptions {
            low_confidence: args.low_confidence(),
            ..load.clone()
        },
    )?;
    let t1 = std::time::Instant::now();
    let mut a = analyze_loaded(data, args);
    // Same-prompt requests that answered differently: where they parted
    // takes their tokens, read again for those few requests.
    if let Err(e) = toktrace_analyzer::variance::locate_in_dir(&mut a, dir) {
        eprintln!("toktrace: warning: batch variance not located: {e}");
    }
    if std::env::var_os("TOKTRACE_TIMING").is_some() {
        eprintln!(
            "toktrace: load {:.2} s, analysis {:.2} s",
            (t1 - t0).as_secs_f64(),
            t1.elapsed().as_secs_f64()
        );
    }
    Ok(a)
}

/// Load, showing progress on stderr when it is a terminal and the trace is
/// big enough to keep someone waiting.
fn read(dir: &Path, mut options: LoadOptions) -> Result<toktrace_analyzer::data::TraceData> {
    options.progress = progress::bytes("reading");
    Ok(toktrace_analyzer::load(dir, &options)?)
}

/// Report what the load worked around, then analyse.
fn analyze_loaded(data: toktrace_analyzer::data::TraceData, args: &AnalysisArgs) -> Analysis {
    for w in &data.warnings {
        eprintln!("toktrace: warning: {w}");
    }
    for p in &data.processes {
        if p.drops.records() > 0 {
            eprintln!(
                "toktrace: warning: {}: the probe dropped {} records ({} tokens)",
                p.name,
                p.drops.records(),
                p.drops.tokens
            );
        }
    }
    let options = AnalyzeOptions {
        tbt_deadline_ns: args.tbt_deadline_ms.map(|ms| ms * 1e6),
    };
    let mut a = Analysis::new(data, &options);
    a.include_warmup = args.include_warmup;
    a
}

/// `toktrace index`: build (or confirm) the trace's index.
pub(crate) fn index(dir: &Path, force: bool) -> Result<()> {
    use toktrace_analyzer::index;
    if !dir.is_dir() {
        anyhow::bail!(
            "{}: not a directory; index a trace directory (or one process directory)",
            dir.display()
        );
    }
    if !force {
        if let Some(ix) = index::open(dir) {
            println!(
                "{}: index is current ({} requests, {} steps); --force rebuilds it",
                dir.display(),
                ix.requests.len(),
                ix.steps
            );
            return Ok(());
        }
    }
    let t0 = std::time::Instant::now();
    let bytes = index::trace_bytes(dir)?;
    let (ix, analysis) = index::build(dir, progress::bytes("indexing"))
        .with_context(|| format!("reading the trace {}", dir.display()))?;
    for w in &analysis.data.warnings {
        eprintln!("toktrace: warning: {w}");
    }
    let path = index::save(dir, &ix)?;
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    println!(
        "indexed {:.1} MB ({} requests, {} steps, {} tokens) in {:.1} s -> {} ({:.1} MB)",
        bytes as f64 / 1e6,
        ix.requests.len(),
        ix.steps,
        ix.tokens,
        t0.elapsed().as_secs_f64(),
        path.display(),
        size as f64 / 1e6
    );
    Ok(())
}

/// Load with per-token detail for the request `id` only. With a current
/// index, only the request's window is read; else the first pass finds it
/// and the second keeps its tokens.
fn analyze_request(dir: &Path, id: &str, args: &AnalysisArgs) -> Result<(Analysis, RequestIx)> {
    // A deadline given on the command line changes the analysis: the index
    // holds the default one, so it serves only without it.
    if args.tbt_deadline_ms.is_none() && dir.is_dir() {
        if let Some(ix) = toktrace_analyzer::index::open(dir) {
            let (window, r) =
                toktrace_viewer::opened(toktrace_analyzer::open::open_window(dir, &ix, id))?;
            return Ok((window.analysis, r));
        }
    }
    let light = read(dir, LoadOptions::default())?;
    let r = resolve(&light, id)?;
    let found = &light.requests[r as usize];
    let key = (found.process, found.key);
    drop(light);
    let options = LoadOptions {
        detail: Detail::Only([key].into_iter().collect()),
        ..Default::default()
    };
    let a = analyze(dir, &options, args)?;
    // Look it up again: a trace still being written may have grown between
    // the two reads.
    let again = a
        .data
        .requests
        .iter()
        .position(|q| (q.process, q.key) == key)
        .ok_or_else(|| UnknownRequest(format!("request {id:?} vanished between two reads")))?;
    Ok((a, again as RequestIx))
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

fn f(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(n - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}

/// `toktrace summary`.
pub fn summary(dir: &Path, json: bool, args: &AnalysisArgs) -> Result<()> {
    let a = analyze(dir, &LoadOptions::default(), args)?;
    let s = a.summary();
    if json {
        return print_json(&s);
    }
    println!("trace {}", dir.display());
    for p in &s.processes {
        println!(
            "  {:<44} {:<12} {:<16} {} steps, {} tokens, {} emitted{}",
            p.name,
            p.role,
            format!(
                "{} {}",
                p.engine.as_deref().unwrap_or("-"),
                p.engine_version.as_deref().unwrap_or("")
            ),
            p.steps,
            p.tokens,
            p.emitted_tokens,
            if p.dropped_records > 0 {
                format!(", {} records DROPPED", p.dropped_records)
            } else {
                String::new()
            }
        );
    }
    println!(
        "{} requests ({} finished), {} steps, {} tokens in {:.1} s ({:.1} tokens/s)",
        s.requests, s.finished_requests, s.steps, s.tokens, s.duration_s, s.output_tokens_per_s
    );
    for w in &s.warmup {
        println!(
            "warm-up: {} ran its first {} step{} in {:.1} s; the {} request{} that arrived during it {}",
            w.process,
            w.steps,
            if w.steps == 1 { "" } else { "s" },
            w.duration_ms / 1e3,
            w.requests,
            if w.requests == 1 { "" } else { "s" },
            if s.warmup_included {
                "count from their arrival (--include-warmup)"
            } else {
                "count from its end below (--include-warmup counts it)"
            },
        );
    }
    println!("                     p50       p90       p99       max");
    for (name, sp) in [
        ("TTFT ms", s.ttft_ms),
        ("TPOT ms", s.tpot_ms),
        ("p99 ITL ms", s.itl_p99_ms),
        ("max ITL ms", s.max_itl_ms),
    ] {
        println!(
            "  {name:<12} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            sp.p50, sp.p90, sp.p99, sp.max
        );
    }
    println!(
        "{} stalls, {} preemptions, {:.1} ms of delay caused by other requests' work",
        s.stalls, s.preemptions, s.total_interference_ms
    );
    if !s.top_offenders.is_empty() {
        println!("worst offenders (whose work delayed others most):");
        for o in &s.top_offenders {
            println!(
                "  {:<28} {:>10.1} ms over {} tokens of {} requests (prompt {} tokens)",
                short(&o.request_id, 28),
                o.delay_ms,
                o.tokens,
                o.victims,
                o.prompt_tokens
            );
        }
    }
    if !s.flags.is_empty() {
        let flags: Vec<String> = s.flags.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("flags: {}", flags.join(", "));
    }
    for m in &s.step_models {
        println!(
            "step model {}: {:.2} ms + {:.3} ms/decode token + {:.4} ms/prefill token + {:.6} ms/context token ({} steps, pause {:.2} ms, TBT deadline {:.1} ms)",
            m.process,
            m.base_ms,
            m.per_decode_token_ms,
            m.per_prefill_token_ms,
            m.per_context_token_ms,
            m.steps,
            m.pause_ms,
            m.tbt_deadline_ms
        );
    }
    if !s.warnings.is_empty() {
        println!("{} read warning(s), see stderr", s.warnings.len());
    }
    Ok(())
}

/// Filters and order of `toktrace requests`.
pub struct RequestQuery {
    pub sort: SortKey,
    pub slowest: Option<usize>,
    pub limit: Option<usize>,
    pub min_itl_ms: Option<f64>,
    pub has_interference: bool,
    pub flag: Option<String>,
}

fn sort_value(r: &RequestRow, key: SortKey) -> Option<f64> {
    match key {
        SortKey::Arrival => r.arrival_unix_ns.map(|t| -(t as f64)),
        SortKey::Ttft => r.ttft_ms,
        SortKey::Tpot => r.tpot_ms,
        SortKey::ItlP99 => r.itl_p99_ms,
        SortKey::MaxItl => r.max_itl_ms,
        SortKey::Interference => Some(r.interference_ms),
        SortKey::E2e => r.e2e_ms,
    }
}

/// `toktrace requests`.
pub fn requests(dir: &Path, q: &RequestQuery, json: bool, args: &AnalysisArgs) -> Result<()> {
    let a = analyze(dir, &LoadOptions::default(), args)?;
    let (sort, limit) = match q.slowest {
        Some(n) => (SortKey::MaxItl, Some(n.min(q.limit.unwrap_or(usize::MAX)))),
        None => (q.sort, q.limit),
    };
    let mut rows: Vec<RequestRow> = (0..a.data.requests.len() as RequestIx)
        .map(|r| a.request_row(r))
        .filter(|r| {
            q.min_itl_ms
                .is_none_or(|m| r.max_itl_ms.is_some_and(|x| x >= m))
        })
        .filter(|r| !q.has_interference || r.interference_ms > 0.0)
        .filter(|r| {
            q.flag
                .as_ref()
                .is_none_or(|f| r.flags.iter().any(|x| x == f))
        })
        .collect();
    // Worst first; requests without the figure go last.
    rows.sort_by(|x, y| {
        let (a, b) = (sort_value(x, sort), sort_value(y, sort));
        b.unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.unwrap_or(f64::NEG_INFINITY))
    });
    rows.truncate(limit.unwrap_or(usize::MAX));
    if json {
        return print_json(&rows);
    }
    println!(
        "{:<24} {:>6} {:>5} {:>9} {:>8} {:>9} {:>14} {:>9} {:<20} flags",
        "request",
        "prompt",
        "out",
        "ttft_ms",
        "tpot_ms",
        "p99_itl",
        "max_itl@token",
        "interf_ms",
        "top culprit"
    );
    for r in &rows {
        println!(
            "{:<24} {:>6} {:>5} {:>9} {:>8} {:>9} {:>14} {:>9.1} {:<20} {}",
            short(&r.request_id, 24),
            r.prompt_tokens,
            r.output_tokens,
            f(r.ttft_ms),
            f(r.tpot_ms),
            f(r.itl_p99_ms),
            match (r.max_itl_ms, r.max_itl_index) {
                (Some(m), Some(i)) => format!("{m:.1}@{i}"),
                _ => "-".into(),
            },
            r.interference_ms,
            r.top_culprits
                .first()
                .map(|c| short(&c.request_id, 20))
                .unwrap_or_else(|| "-".into()),
            r.flags.join(",")
        );
    }
    Ok(())
}

/// `toktrace tokens`.
pub fn tokens(dir: &Path, id: &str, json: bool, args: &AnalysisArgs) -> Result<()> {
    let (a, r) = analyze_request(dir, id, args)?;
    let rows = a.token_rows(r);
    if json {
        return print_json(&rows);
    }
    let req = &a.data.requests[r as usize];
    println!(
        "request {} (internal {}), {} prompt tokens, {} tokens",
        req.display_id(),
        req.internal_id,
        req.prompt_tokens,
        rows.len()
    );
    println!(
        "{:>5} {:>7} {:<12} {:>8} {:>8} {:>9} {:>7} {:>9} {:>9}  culprit",
        "index", "token", "text", "logprob", "rank", "gap_ms", "step", "batch", "excess"
    );
    for t in &rows {
        let text = t
            .text
            .as_deref()
            .map(|s| short(&s.escape_debug().to_string(), 12))
            .unwrap_or_default();
        println!(
            "{:>5} {:>7} {:<12} {:>8} {:>8} {:>9.2} {:>7} {:>9} {:>9.2}  {}",
            t.index,
            t.token_id
                .map(|i| if t.special {
                    format!("⟨{i}⟩")
                } else {
                    i.to_string()
                })
                .unwrap_or_else(|| "-".into()),
            text,
            t.logprob.map_or_else(|| "-".into(), |l| format!("{l:.3}")),
            t.rank.map_or_else(|| "-".into(), |r| r.to_string()),
            t.gap_ms,
            t.step,
            format!("{}r/{}t", t.batch_requests, t.batch_tokens),
            t.excess_ms,
            t.culprits
                .first()
                .map(|c| format!("{} {:.0}%", c.request_id, c.share * 100.0))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `toktrace interference`.
pub fn interference(
    dir: &Path,
    id: Option<&str>,
    limit: usize,
    json: bool,
    args: &AnalysisArgs,
) -> Result<()> {
    let Some(id) = id else {
        let a = analyze(dir, &LoadOptions::default(), args)?;
        let t = a.trace_interference(limit);
        if json {
            return print_json(&t);
        }
        println!(
            "{:.1} ms of delay caused by other requests' work in all",
            t.total_interference_ms
        );
        println!(
            "{:<28} {:>12} {:>8} {:>8} {:>8}",
            "offender", "delay_ms", "victims", "tokens", "prompt"
        );
        for o in &t.offenders {
            println!(
                "{:<28} {:>12.1} {:>8} {:>8} {:>8}",
                short(&o.request_id, 28),
                o.delay_ms,
                o.victims,
                o.tokens,
                o.prompt_tokens
            );
        }
        return Ok(());
    };
    let light = read(dir, LoadOptions::default())?;
    let r = resolve(&light, id)?;
    let a = analyze_loaded(light, args);
    let mut report = a.request_interference(r);
    report.slow_tokens.truncate(limit);
    if json {
        return print_json(&report);
    }
    println!(
        "request {}: {:.1} ms of delay caused by other requests; {} slow token(s)",
        report.request_id,
        report.interference_ms,
        report.slow_tokens.len()
    );
    for t in &report.slow_tokens {
        println!(
            "  token {} (step {}): waited {:.1} ms, expected {:.1} ms, excess {:.1} ms (scheduling {:.1} ms, running {:.1} ms)",
            t.index, t.step, t.gap_ms, t.expected_ms, t.excess_ms, t.scheduling_ms, t.running_ms
        );
        if t.culprits.is_empty() {
            println!("    no other request's prefill explains it (engine pause, warm-up or noise)");
        }
        for c in &t.culprits {
            println!(
                "    {:<28} {:>9.1} ms {:>4.0}%  {}",
                short(&c.request_id, 28),
                c.ms,
                c.share * 100.0,
                c.cause.name()
            );
        }
    }
    Ok(())
}
