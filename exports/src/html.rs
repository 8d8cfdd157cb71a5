//! A one-file HTML report for an incident review: key numbers, batch size
//! and step time over time, TTFT and inter-token-latency distributions, the
//! slowest requests with their culprits, the offender ranking and the
//! accuracy flags. Inline CSS and SVG only: it opens offline, in a mail
//! attachment or a ticket, and prints.
//!
//! Every figure comes from the same analysis as the CLI's JSON (each key
//! number carries its JSON name in `data-key`), narrowed to the selection.

use crate::svg::{self, escape};
use anyhow::Result;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use toktrace_analyzer::data::{RequestIx, StepIx};
use toktrace_analyzer::report::{spread, RequestRow};
use toktrace_analyzer::select::{format_rfc3339, Selection};
use toktrace_analyzer::Analysis;

/// How many rows the tables show.
const TABLE_ROWS: usize = 15;
/// Points of the time series (buckets of steps).
const SERIES_POINTS: usize = 400;

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #1d2330; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #dde; }
.meta { color: #556; margin: 0 0 12px; }
dl.numbers { display: grid; grid-template-columns: repeat(4, 1fr); gap: 8px 16px; margin: 0; }
dl.numbers div { background: #f3f5fa; border-radius: 6px; padding: 8px 10px; }
dt { color: #556; font-size: 12px; } dd { margin: 0; font-size: 20px; font-weight: 600; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eef; } td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.chart { display: block; margin: 8px 0; max-width: 100%; height: auto; }
.chart .title { font-size: 13px; font-weight: 600; fill: #1d2330; } .chart .tick { font-size: 11px; fill: #556; }
.chart .grid { stroke: #e6e8f0; } .chart .axis { stroke: #889; }
.chart .batch { stroke: #2f6fdf; stroke-width: 1.5; } .chart .steptime { stroke: #d9480f; stroke-width: 1.5; }
.chart .ttft { fill: #2f6fdf; } .chart .itl { fill: #7048e8; }
.empty { color: #889; font-style: italic; }
"#;

/// Write the report of what `sel` covers.
/// Unless the analysis includes it, an engine's warm-up (its first, far
/// slower steps) is left out of the charts and figures, and requests that
/// waited on it count as served from its end, so the page shows serving
/// rather than start-up.
pub fn write(a: &Analysis, sel: &Selection, mut out: impl Write) -> Result<()> {
    let requests: Vec<RequestIx> = (0..a.data.requests.len() as RequestIx)
        .filter(|&r| sel.request(a, r))
        .collect();
    let (steps, warm_steps): (Vec<StepIx>, Vec<StepIx>) = (0..a.data.steps.len() as StepIx)
        .filter(|&s| sel.step(a, s))
        .partition(|&s| !a.left_out_as_warmup(s));
    let rows: Vec<RequestRow> = requests.iter().map(|&r| a.statistics_row(r)).collect();

    let mut page = String::new();
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    page.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    page.push_str("<title>toktrace report</title><style>");
    page.push_str(STYLE);
    page.push_str("</style></head><body>");
    header(&mut page, a, &steps, &requests);
    if !warm_steps.is_empty() {
        let waited = requests
            .iter()
            .filter(|&&r| a.reports[r as usize].warmup)
            .count();
        let _ = write!(
            page,
            "<p class=\"meta\" id=\"warmup\">Engine warm-up left out: its first {} step(s); the {waited} \
             request(s) that arrived during it count from its end (<code>--include-warmup</code> \
             keeps it all).</p>",
            warm_steps.len()
        );
    }
    numbers(&mut page, a, &steps, steps.len() + warm_steps.len(), &rows);
    timeline(&mut page, a, &steps);
    distributions(&mut page, a, sel, &requests, &rows);
    slowest(&mut page, &rows);
    offenders(&mut page, a, &requests);
    flags(&mut page, a, &requests);
    page.push_str("</body></html>\n");
    out.write_all(page.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn header(page: &mut String, a: &Analysis, steps: &[StepIx], requests: &[RequestIx]) {
    let d = &a.data;
    // Every engine and model named once (a frontend process names the
    // engine but often not the model).
    let distinct = |f: &dyn Fn(&probe_core::event::ProcessInfo) -> Option<String>| {
        let mut v: Vec<String> = d
            .processes
            .iter()
            .filter_map(|p| p.info.as_ref().and_then(f))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let mut engines = distinct(&|i| Some(format!("{} {}", i.engine, i.engine_version)));
    engines.extend(distinct(&|i| i.model_name.clone()));
    let window = window(a, steps);
    let _ = write!(
        page,
        "<h1>toktrace report</h1><p class=\"meta\">{} · {} · {} requests · toktrace {}</p>",
        escape(&if engines.is_empty() {
            "engine unknown".to_string()
        } else {
            engines.join(" · ")
        }),
        window.map_or("no steps".to_string(), |(from, to)| format!(
            "{} – {}",
            format_rfc3339(from),
            format_rfc3339(to)
        )),
        requests.len(),
        env!("CARGO_PKG_VERSION")
    );
}

/// First step start and last step end, unix ns.
fn window(a: &Analysis, steps: &[StepIx]) -> Option<(u64, u64)> {
    let d = &a.data;
    let unix = |s: StepIx, end: bool| {
        let step = &d.steps[s as usize];
        d.processes[step.process as usize].unix_ns(if end { step.end_ns } else { step.start_ns })
    };
    let from = steps.iter().map(|&s| unix(s, false)).min()?;
    let to = steps.iter().map(|&s| unix(s, true)).max()?;
    Some((from, to))
}

/// The key figures; `all_steps` counts the warm-up's too.
fn numbers(
    page: &mut String,
    a: &Analysis,
    steps: &[StepIx],
    all_steps: usize,
    rows: &[RequestRow],
) {
    let tokens: usize = rows.iter().map(|r| r.output_tokens).sum();
    let duration_s = window(a, steps).map_or(0.0, |(f, t)| (t - f) as f64 / 1e9);
    let of = |f: &dyn Fn(&RequestRow) -> Option<f64>| spread(rows.iter().filter_map(f).collect());
    let ttft = of(&|r| r.ttft_ms);
    let itl_p99 = of(&|r| r.itl_p99_ms);
    let max_itl = of(&|r| r.max_itl_ms);
    let interference: f64 = rows.iter().map(|r| r.interference_ms).sum();
    let preemptions: usize = rows.iter().map(|r| r.preemptions).sum();
    let stalls: u32 = rows.iter().map(|r| r.stalls).sum();
    let items: [(&str, &str, String); 12] = [
        ("requests", "Requests", rows.len().to_string()),
        ("tokens", "Output tokens", tokens.to_string()),
        ("steps", "Engine steps", all_steps.to_string()),
        ("duration_s", "Duration (s)", format!("{duration_s:.2}")),
        ("ttft_ms.p50", "TTFT p50 (ms)", format!("{:.1}", ttft.p50)),
        ("ttft_ms.p99", "TTFT p99 (ms)", format!("{:.1}", ttft.p99)),
        (
            "itl_p99_ms.p50",
            "Request p99 ITL, median (ms)",
            format!("{:.1}", itl_p99.p50),
        ),
        (
            "max_itl_ms.max",
            "Worst token gap (ms)",
            format!("{:.1}", max_itl.max),
        ),
        (
            "total_interference_ms",
            "Interference (ms)",
            format!("{interference:.1}"),
        ),
        ("stalls", "Stalled tokens", stalls.to_string()),
        ("preemptions", "Preemptions", preemptions.to_string()),
        (
            "flagged_requests",
            "Requests with accuracy flags",
            rows.iter()
                .filter(|r| !r.flags.is_empty())
                .count()
                .to_string(),
        ),
    ];
    page.push_str("<h2>Key numbers</h2><dl class=\"numbers\">");
    for (key, name, value) in items {
        let _ = write!(
            page,
            "<div><dt>{name}</dt><dd data-key=\"{key}\">{value}</dd></div>"
        );
    }
    page.push_str("</dl>");
}

fn timeline(page: &mut String, a: &Analysis, steps: &[StepIx]) {
    page.push_str("<h2>Engine over time</h2>");
    let d = &a.data;
    let Some((from, to)) = window(a, steps) else {
        page.push_str("<p class=\"empty\">No engine steps in this selection.</p>");
        return;
    };
    // Buckets of equal time; each shows its largest batch and slowest step,
    // so a single stalled step is never averaged away.
    let span = (to - from).max(1) as f64;
    let n = steps.len().clamp(1, SERIES_POINTS);
    let mut batch = vec![None::<f64>; n];
    let mut step_ms = vec![None::<f64>; n];
    for &s in steps {
        let step = &d.steps[s as usize];
        let start = d.processes[step.process as usize].unix_ns(step.start_ns);
        let i = (((start - from) as f64 / span) * n as f64) as usize;
        let i = i.min(n - 1);
        let b = f64::from(step.requests);
        let t = step.duration_ns() as f64 / 1e6;
        batch[i] = Some(batch[i].map_or(b, |v: f64| v.max(b)));
        step_ms[i] = Some(step_ms[i].map_or(t, |v: f64| v.max(t)));
    }
    let points = |v: &[Option<f64>]| -> Vec<(f64, f64, Option<f64>)> {
        let at = |i: usize| i as f64 / n as f64 * span / 1e9;
        v.iter()
            .enumerate()
            .map(|(i, &y)| (at(i), at(i + 1), y))
            .collect()
    };
    page.push_str(&svg::series(
        "Batch size (requests per step, largest in each interval)",
        "seconds from the first step",
        "requests",
        &points(&batch),
        "batch",
    ));
    page.push_str(&svg::series(
        "Step time (ms, slowest in each interval)",
        "seconds from the first step",
        "ms",
        &points(&step_ms),
        "steptime",
    ));
}

fn distributions(
    page: &mut String,
    a: &Analysis,
    sel: &Selection,
    requests: &[RequestIx],
    rows: &[RequestRow],
) {
    page.push_str("<h2>Latency distributions</h2>");
    let ttft: Vec<f64> = rows.iter().filter_map(|r| r.ttft_ms).collect();
    let mut gaps = Vec::new();
    for &r in requests {
        let req = &a.data.requests[r as usize];
        let p = &a.data.processes[req.process as usize];
        // The first token's gap is its TTFT, shown above; a gap that ends in
        // or spans a warm-up step left out is no serving gap.
        let timings = a.timings(r);
        for (prev, t) in timings.iter().zip(timings.iter().skip(1)) {
            if a.left_out_as_warmup(prev.step) || a.left_out_as_warmup(t.step) {
                continue;
            }
            if sel.contains(p.unix_ns(t.exit_ns)) {
                gaps.push(t.gap_ns as f64 / 1e6);
            }
        }
    }
    for (values, title, class) in [
        (&ttft, "Time to first token (ms, log buckets)", "ttft"),
        (&gaps, "Inter-token latency (ms, log buckets)", "itl"),
    ] {
        if values.is_empty() {
            let _ = write!(page, "<p class=\"empty\">{title}: no values.</p>");
        } else {
            page.push_str(&svg::histogram(
                title,
                "ms",
                &svg::log_buckets(values, 24),
                class,
            ));
        }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.1}"))
}

fn slowest(page: &mut String, rows: &[RequestRow]) {
    page.push_str("<h2>Slowest requests (by worst token gap)</h2>");
    let mut order: Vec<&RequestRow> = rows.iter().filter(|r| r.max_itl_ms.is_some()).collect();
    order.sort_by(|a, b| {
        b.max_itl_ms
            .unwrap_or(0.0)
            .total_cmp(&a.max_itl_ms.unwrap_or(0.0))
    });
    if order.is_empty() {
        page.push_str("<p class=\"empty\">No request produced two tokens.</p>");
        return;
    }
    page.push_str(
        "<table id=\"slowest\"><tr><th>request</th><th class=\"n\">TTFT ms</th><th class=\"n\">p99 ITL ms</th>\
         <th class=\"n\">max ITL ms</th><th class=\"n\">at token</th><th class=\"n\">interference ms</th><th>culprits</th></tr>",
    );
    for r in order.into_iter().take(TABLE_ROWS) {
        let culprits: Vec<String> = r
            .top_culprits
            .iter()
            .map(|c| format!("{} ({:.1} ms)", escape(&c.request_id), c.ms))
            .collect();
        let _ = write!(
            page,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}</td><td>{}</td></tr>",
            escape(&r.request_id),
            ms(r.ttft_ms),
            ms(r.itl_p99_ms),
            ms(r.max_itl_ms),
            r.max_itl_index.map_or("–".to_string(), |i| i.to_string()),
            r.interference_ms,
            if culprits.is_empty() { "–".to_string() } else { culprits.join(", ") }
        );
    }
    page.push_str("</table>");
}

fn offenders(page: &mut String, a: &Analysis, requests: &[RequestIx]) {
    page.push_str("<h2>Offenders (whose work delayed others)</h2>");
    // Summed over the selected victims, so a narrowed report ranks what
    // happened to the requests it shows.
    let mut by_culprit: HashMap<RequestIx, (f64, u32)> = HashMap::new();
    for &r in requests {
        for &(culprit, ns) in &a.reports[r as usize].culprits {
            let e = by_culprit.entry(culprit).or_default();
            e.0 += ns;
            e.1 += 1;
        }
    }
    let mut ranked: Vec<(RequestIx, f64, u32)> = by_culprit
        .into_iter()
        .map(|(c, (ns, v))| (c, ns, v))
        .collect();
    ranked.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
    if ranked.is_empty() {
        page.push_str("<p class=\"empty\">No request delayed another.</p>");
        return;
    }
    page.push_str(
        "<table id=\"offenders\"><tr><th>request</th><th class=\"n\">delay caused ms</th><th class=\"n\">requests delayed</th><th class=\"n\">prompt tokens</th></tr>",
    );
    for (c, ns, victims) in ranked.into_iter().take(TABLE_ROWS) {
        let req = &a.data.requests[c as usize];
        let _ = write!(
            page,
            "<tr><td>{}</td><td class=\"n\">{:.1}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(req.display_id()),
            ns / 1e6,
            victims,
            req.prompt_tokens
        );
    }
    page.push_str("</table>");
}

fn flags(page: &mut String, a: &Analysis, requests: &[RequestIx]) {
    page.push_str("<h2>Accuracy and health flags</h2>");
    let flagged: Vec<RequestIx> = requests
        .iter()
        .copied()
        .filter(|&r| !a.reports[r as usize].flags.is_empty())
        .collect();
    if flagged.is_empty() {
        page.push_str("<p class=\"empty\">No request was flagged.</p>");
        return;
    }
    page.push_str(
        "<table id=\"flags\"><tr><th>request</th><th>flag</th><th>what was seen</th></tr>",
    );
    for &r in flagged.iter().take(TABLE_ROWS * 4) {
        for f in &a.reports[r as usize].flags {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(a.data.requests[r as usize].display_id()),
                f.name,
                escape(&f.detail)
            );
        }
    }
    page.push_str("</table>");
}
