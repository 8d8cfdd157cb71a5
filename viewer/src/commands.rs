//! What each subcommand does.

use crate::analyze;
use crate::cli::{Command, FleetQuestion};
use crate::export;
use crate::fleet;
use anyhow::Result;
use probe_core::reader::read_trace;
use serde_json::json;

/// Run one command.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Info { dir, json } => info(&dir, json),
        Command::Index { dir, force } => analyze::index(&dir, force),
        Command::Dump { dir } => dump(&dir),
        Command::Steps {
            dir,
            limit,
            slowest,
        } => steps(&dir, limit, slowest),
        Command::Summary {
            dir,
            json,
            analysis,
        } => analyze::summary(&dir, json, &analysis),
        Command::Requests {
            dir,
            sort,
            slowest,
            limit,
            min_itl_ms,
            has_interference,
            flag,
            json,
            analysis,
        } => {
            let query = analyze::RequestQuery {
                sort,
                slowest,
                limit,
                min_itl_ms,
                has_interference,
                flag,
            };
            analyze::requests(&dir, &query, json, &analysis)
        }
        Command::Tokens {
            dir,
            request,
            json,
            analysis,
        } => analyze::tokens(&dir, &request, json, &analysis),
        Command::Interference {
            dir,
            request,
            limit,
            json,
            analysis,
        } => analyze::interference(&dir, request.as_deref(), limit, json, &analysis),
        Command::View {
            dir,
            request,
            tokenizer,
            no_index,
        } => toktrace_viewer::view::run(&toktrace_viewer::view::ViewArgs {
            dir: &dir,
            request: request.as_deref(),
            tokenizer: tokenizer.as_deref(),
            use_index: !no_index,
        }),
        Command::Watch {
            dir,
            json,
            prometheus,
            otlp,
            protocol,
            allow_remote_http,
            poll_ms,
            window_steps,
            max_steps,
            exit_when_idle,
            once,
        } => {
            let exit_when_idle = match exit_when_idle {
                Some(s) if !(s.is_finite() && s >= 0.0) => {
                    return Err(crate::export::UsageError(
                        "--exit-when-idle takes seconds, at least 0",
                    )
                    .into())
                }
                s => s.map(std::time::Duration::from_secs_f64),
            };
            crate::watch::watch(crate::watch::WatchArgs {
                dir,
                json,
                prometheus,
                otlp,
                protocol,
                allow_remote_http,
                poll: std::time::Duration::from_millis(poll_ms),
                window_steps: window_steps as usize,
                max_steps: max_steps as usize,
                exit_when_idle,
                once,
            })
        }
        Command::Fleet {
            root,
            worst_itl,
            offenders,
            stalls,
            by,
            sql,
            from,
            to,
            limit,
            json,
            show_sql,
        } => {
            // clap's group lets exactly one question through.
            let question = match (worst_itl, offenders, stalls, sql) {
                (_, _, _, Some(sql)) => FleetQuestion::Sql(sql),
                (true, _, _, None) => FleetQuestion::WorstItl,
                (_, true, _, None) => FleetQuestion::Offenders,
                _ => FleetQuestion::Stalls,
            };
            fleet::fleet(&fleet::FleetArgs {
                root,
                question,
                by,
                from,
                to,
                limit,
                json,
                show_sql,
            })
        }
        Command::Export {
            dirs,
            format,
            out,
            dataset,
            endpoint,
            protocol,
            allow_remote_http,
            from,
            to,
            requests,
            analysis,
        } => export::export(
            &dirs,
            &export::ExportArgs {
                format,
                out,
                dataset,
                endpoint,
                protocol,
                allow_remote_http,
                from,
                to,
                requests,
            },
            &analysis,
        ),
    }
}

fn steps(dir: &std::path::Path, limit: Option<usize>, slowest: bool) -> Result<()> {
    use probe_core::event::Record;
    let trace = read_trace(dir)?;
    for w in trace.all_warnings() {
        eprintln!("toktrace: warning: {w}");
    }
    for p in &trace.processes {
        let mut steps: Vec<&probe_core::event::Step> = p
            .records()
            .filter_map(|r| match r {
                Record::Step(s) => Some(s),
                _ => None,
            })
            .collect();
        if steps.is_empty() {
            continue;
        }
        let origin = steps.iter().map(|s| s.start_ns).min().unwrap_or(0);
        let name = p.dir.file_name().map(|n| n.to_string_lossy().into_owned());
        println!("{}", name.unwrap_or_default());
        println!(
            "{:>7} {:>10} {:>9} {:>5} {:>8} {:>7} {:>7} {:>7} {:>6}",
            "step", "start_ms", "dur_ms", "reqs", "prefill", "cached", "decode", "tokens", "kv"
        );
        if slowest {
            steps.sort_by_key(|s| std::cmp::Reverse(s.end_ns.saturating_sub(s.start_ns)));
        }
        for s in steps.iter().take(limit.unwrap_or(usize::MAX)) {
            let sum = |f: fn(&probe_core::event::BatchEntry) -> u32| -> u64 {
                s.batch.iter().map(|b| u64::from(f(b))).sum()
            };
            println!(
                "{:>7} {:>10.3} {:>9.3} {:>5} {:>8} {:>7} {:>7} {:>7} {:>6}",
                s.step_id,
                s.start_ns.saturating_sub(origin) as f64 / 1e6,
                s.end_ns.saturating_sub(s.start_ns) as f64 / 1e6,
                s.batch.len(),
                sum(|b| b.prefill_tokens),
                sum(|b| b.cached_tokens),
                sum(|b| b.decode_tokens),
                s.tokens.len(),
                s.kv_usage
                    .map(|k| format!("{:.0}%", k * 100.0))
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    Ok(())
}

/// Prints one segment at a time, so memory holds one segment however long
/// the trace (a 30-minute soak's trace is gigabytes). Warnings go to stderr
/// as each segment is read.
fn dump(dir: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let files = probe_core::reader::list_trace(dir)?;
    for w in &files.warnings {
        eprintln!("toktrace: warning: {w}");
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut buf = Vec::new();
    for p in &files.processes {
        let process = p.dir.display().to_string();
        for (i, path) in p.segments.iter().enumerate() {
            let seg = probe_core::reader::read_segment_into(path, &mut buf)?;
            for w in &seg.warnings {
                eprintln!("toktrace: warning: {w}");
            }
            let index = seg.header().map_or(i as u32, |h| h.segment_index);
            for r in &seg.records {
                let line = json!({
                    "process": process,
                    "segment": index,
                    "offset": r.offset,
                    "record": r.record,
                });
                match writeln!(out, "{line}") {
                    Ok(()) => {}
                    Err(e) if is_closed_pipe(&e) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    match out.flush() {
        Err(e) if !is_closed_pipe(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

/// A closed pipe (`| head`) is the reader's choice, not an error.
fn is_closed_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

fn info(dir: &std::path::Path, as_json: bool) -> Result<()> {
    let trace = read_trace(dir)?;
    let counts = toktrace_analyzer::count_trace(&trace);
    let warnings: Vec<String> = trace.all_warnings().iter().map(|w| w.to_string()).collect();
    for w in &warnings {
        eprintln!("toktrace: warning: {w}");
    }
    let processes: Vec<_> = trace
        .processes
        .iter()
        .zip(&counts)
        .map(|(p, c)| {
            let h = p.header();
            let info = p.process_info();
            let drops = p.drops();
            json!({
                "dir": p.dir.display().to_string(),
                "host": h.map(|h| h.host.clone()),
                "pid": h.map(|h| h.pid),
                "role": info.map(|i| i.role.clone()).or_else(|| h.map(|h| h.role.clone())),
                "engine": info.map(|i| i.engine.clone()),
                "engine_version": info.map(|i| i.engine_version.clone()),
                "model": info.and_then(|i| i.model_name.clone()),
                // What the process recorded about itself: engine settings,
                // which path read the engine's objects (`direct_reads`), ….
                "extra": info.map(|i| i.extra.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>()),
                "start_unix_ns": h.map(|h| h.process_start_unix_ns),
                "segments": c.segments,
                "steps": c.steps,
                "tokens": c.tokens,
                "requests": c.requests,
                "finished": c.finished,
                "emitted_tokens": c.emitted_tokens,
                "dropped_records": drops.records(),
                "dropped_tokens": drops.tokens,
                "adapter_errors": p.adapter_errors().map(|e| json!({
                    "total": e.total(),
                    "disabled": e.disabled,
                    "hooks": e.hooks.iter().map(|h| json!({
                        "hook": h.hook, "count": h.count, "first_error": h.first_error,
                    })).collect::<Vec<_>>(),
                })),
            })
        })
        .collect();
    if as_json {
        let out = json!({ "processes": processes, "warnings": warnings });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<44} {:<12} {:>4} {:>9} {:>11} {:>8} {:>9}",
        "process", "engine", "segs", "steps", "tokens", "requests", "dropped"
    );
    for p in &processes {
        let name = std::path::Path::new(p["dir"].as_str().unwrap_or(""))
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        println!(
            "{:<44} {:<12} {:>4} {:>9} {:>11} {:>8} {:>9}",
            name,
            p["engine"].as_str().unwrap_or("-"),
            n("segments"),
            n("steps"),
            n("tokens"),
            n("requests"),
            n("dropped_records"),
        );
        if let Some(layout) = p["extra"]["layout"].as_str() {
            let untested = p["extra"]["engine_version_tested"].as_str() == Some("no");
            println!(
                "    adapter layout {layout}{}",
                if untested {
                    " — engine version not tested (TOKTRACE_ALLOW_UNTESTED=1)"
                } else {
                    ""
                }
            );
        }
        if let Some(reads) = p["extra"]["direct_reads"].as_str() {
            println!("    objects read by {reads}");
        }
        if let Some(total) = p["adapter_errors"]["total"].as_u64() {
            let off = if p["adapter_errors"]["disabled"].as_bool() == Some(true) {
                ", then switched tracing off"
            } else {
                ""
            };
            println!("    adapter errors: {total} caught in its hooks{off} (see --json)");
        }
    }
    if !warnings.is_empty() {
        println!("{} read warning(s), see stderr", warnings.len());
    }
    Ok(())
}
