//! The token screen: the request's figures on top, every token with its text
//! (coloured by logprob) and latency bar on the left, the selected token's
//! detail on the right — step, batch, timing, the verdict with its culprits,
//! and the top-K candidates.

use super::style;
use super::window;
use crate::view::detok::TokenText;
use crate::view::fmt;
use crate::view::tokens::{cause_name, culprits, verdict, RequestView, TokenLine};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;
use toktrace_analyzer::Analysis;

/// Width of the detail panel (wider on wide terminals).
const DETAIL_WIDTH: u16 = 44;
/// See [`DETAIL_WIDTH`].
const WIDE_DETAIL_WIDTH: u16 = 60;

/// Draw the screen; returns the number of token rows shown (a page).
pub fn draw(frame: &mut Frame, area: Rect, a: &Analysis, view: &RequestView) -> usize {
    let [head, body] = Layout::vertical([Constraint::Length(2), Constraint::Min(0)]).areas(area);
    frame.render_widget(Paragraph::new(head_lines(a, view)), head);
    if view.tokens.is_empty() {
        frame.render_widget(
            Paragraph::new(vec![
                Line::from(Span::styled(
                    "no generated tokens recorded for this request",
                    style::alarm(),
                )),
                Line::from("it may have been aborted before its first token, or its records were dropped; Tab shows the steps it ran in"),
            ])
            .wrap(Wrap { trim: true }),
            body,
        );
        return 1;
    }
    let panel_width = if body.width >= 120 {
        WIDE_DETAIL_WIDTH
    } else {
        DETAIL_WIDTH
    };
    let [list, detail] =
        Layout::horizontal([Constraint::Min(30), Constraint::Length(panel_width)]).areas(body);
    let page = draw_list(frame, list, view);
    let panel = Paragraph::new(detail_lines(a, view))
        .wrap(Wrap { trim: false })
        .block(Block::bordered().title(" token "));
    frame.render_widget(panel, detail);
    page
}

fn head_lines(a: &Analysis, view: &RequestView) -> Vec<Line<'static>> {
    let req = &a.data.requests[view.request as usize];
    let row = a.request_row(view.request);
    // The figures first (they must fit 80 columns), then the internal id and
    // the legend, then where the text comes from.
    let mut first = vec![
        Span::styled(req.display_id().to_string(), style::focus()),
        Span::raw(format!(
            " · prompt {} · {} tok · TTFT {} · TPOT {} · p99 ITL {} ms",
            fmt::count(u64::from(req.prompt_tokens)),
            view.tokens.len(),
            row.ttft_ms
                .map_or_else(|| "-".into(), |v| fmt::dur(v * 1e6)),
            row.tpot_ms
                .map_or_else(|| "-".into(), |v| fmt::dur(v * 1e6)),
            fmt::ms(row.itl_p99_ms),
        )),
    ];
    if !row.flags.is_empty() {
        first.push(Span::styled(
            format!(" · {}", row.flags.join(", ")),
            style::alarm(),
        ));
    }
    // A problem with the detail goes first, where it is seen; where the text
    // comes from goes last.
    let problem = match (&view.detail_note, view.has_ids) {
        (Some(note), _) => Some(note.clone()),
        (None, false) => Some("no token ids captured (capture level metadata)".to_string()),
        (None, true) => None,
    };
    let mut second = Vec::new();
    if let Some(p) = problem {
        second.push(Span::styled(format!("{p} · "), style::alarm()));
    }
    second.extend([
        Span::styled("█ sched", style::scheduling()),
        Span::styled(" █ run", style::running()),
        Span::styled(" █ emit", style::emit()),
        Span::styled(
            format!(" · ! slow · internal {}", req.internal_id),
            style::dim(),
        ),
    ]);
    if view.has_ids {
        second.push(Span::styled(format!(" · {}", view.text_note), style::dim()));
    }
    let second = Line::from(second);
    vec![Line::from(first), second]
}

fn draw_list(frame: &mut Frame, area: Rect, view: &RequestView) -> usize {
    let height = area.height.saturating_sub(1) as usize;
    // Columns: mark, index, text, gap, bar (what is left).
    let bar_width = area.width.saturating_sub(1 + 5 + 12 + 8 + 4) as usize;
    let scale = view.bar_scale_ns();
    let rows: Vec<Row> = window(view.tokens.len(), view.selected, height)
        .map(|i| {
            let t = &view.tokens[i];
            let text_style = match t.text {
                TokenText::Special(_) => style::special(),
                _ => style::by_logprob(t.logprob),
            };
            let row = Row::new(vec![
                Cell::from(if t.slow { "!" } else { " " }).style(style::alarm()),
                Cell::from(t.timing.index.to_string()),
                Cell::from(fmt::fit(&t.text.display(), 12)).style(text_style),
                Cell::from(fmt::dur(t.timing.gap_ns as f64)),
                Cell::from(bar(t, scale, bar_width)),
            ]);
            if i == view.selected {
                row.style(style::selected())
            } else {
                row
            }
        })
        .collect();
    let header =
        Row::new(["", "#", "text", "gap", "latency"].map(Cell::from)).style(style::header());
    let widths = [
        Constraint::Length(1),
        Constraint::Length(5),
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Min(4),
    ];
    frame.render_widget(
        Table::new(rows, widths).header(header).column_spacing(1),
        area,
    );
    height
}

/// The token's latency as three coloured runs, scaled to `scale`; a bar
/// longer than the width (the first token's TTFT) ends in "»".
fn bar(t: &TokenLine, scale: u64, width: usize) -> Line<'static> {
    let cells = |ns: u64| ((ns as f64 / scale as f64) * width as f64).round() as usize;
    let parts = [
        (t.timing.scheduling_ns, style::scheduling()),
        (t.timing.running_ns, style::running()),
        (t.emit_delay_ns.unwrap_or(0), style::emit()),
    ];
    let mut lengths: Vec<usize> = parts.iter().map(|&(ns, _)| cells(ns)).collect();
    // A token that took any time shows at least one cell, in the colour of
    // its largest part.
    if lengths.iter().sum::<usize>() == 0 && t.total_ns() > 0 {
        let largest = (0..parts.len()).max_by_key(|&i| parts[i].0).unwrap_or(0);
        lengths[largest] = 1;
    }
    let mut spans = Vec::new();
    let mut used = 0usize;
    for (n, (_, st)) in lengths.into_iter().zip(parts) {
        let n = n.min(width.saturating_sub(used));
        used += n;
        if n > 0 {
            spans.push(Span::styled("█".repeat(n), st));
        }
    }
    if t.total_ns() > scale && width > 0 {
        spans.push(Span::styled("»", style::alarm()));
    }
    Line::from(spans)
}

fn detail_lines(a: &Analysis, view: &RequestView) -> Vec<Line<'static>> {
    let Some(t) = view.current() else {
        return Vec::new();
    };
    let timing = &t.timing;
    let step = &a.data.steps[timing.step as usize];
    let mut lines = Vec::new();

    let id = match (t.id, &t.text) {
        (Some(id), TokenText::Special(name)) => format!("id {id}, special ⟨{name}⟩"),
        (Some(id), _) => format!("id {id}"),
        (None, _) => "id not captured".to_string(),
    };
    let text_style = match t.text {
        TokenText::Special(_) => style::special(),
        _ => style::by_logprob(t.logprob),
    };
    lines.push(Line::from(vec![
        Span::styled(format!("#{} ", timing.index), style::title()),
        Span::styled(quoted(&t.text), text_style),
        Span::raw(format!(" {id}")),
    ]));
    if let Some(lp) = t.logprob {
        lines.push(Line::from(format!(
            "logprob {lp:.3} (p {:.2}){}",
            lp.exp(),
            t.rank.map_or_else(String::new, |r| format!(" · rank {r}"))
        )));
    }
    lines.push(Line::from(format!(
        "step {} · batch {} req, {} tok",
        step.step_id,
        step.requests,
        fmt::count(u64::from(step.prefill_tokens + step.decode_tokens))
    )));
    if step.prefill_tokens > 0 {
        lines.push(Line::from(Span::styled(
            format!(
                "co-scheduled prefill {} tok",
                fmt::count(u64::from(step.prefill_tokens))
            ),
            style::prefill(),
        )));
    }
    lines.push(Line::from(vec![
        Span::raw(format!("gap {} = ", fmt::dur(timing.gap_ns as f64))),
        Span::styled(
            format!("sched {}", fmt::dur(timing.scheduling_ns as f64)),
            style::scheduling(),
        ),
        Span::raw(" + "),
        Span::styled(
            format!("run {}", fmt::dur(timing.running_ns as f64)),
            style::running(),
        ),
    ]));
    let emit = t
        .emit_delay_ns
        .map_or_else(|| "no frontend".into(), |e| fmt::dur(e as f64));
    // The first token's wait is the TTFT: no step model expectation for it.
    let expected = if timing.position == 0 {
        String::new()
    } else {
        format!(
            " · expected {} · excess {}",
            fmt::dur(timing.expected_ns),
            fmt::dur(timing.excess_ns)
        )
    };
    lines.push(Line::from(vec![
        Span::styled(format!("emit +{emit}"), style::emit()),
        Span::raw(expected),
    ]));

    // The verdict, then the candidates, then the culprits one by one: on a
    // short terminal what is cut is the least needed.
    let found = culprits(a, view.request, timing);
    let verdict_style = if found.is_empty() {
        Style::new()
    } else {
        style::alarm()
    };
    lines.push(Line::from(Span::styled(
        format!("▶ {}", verdict(timing, &found)),
        verdict_style,
    )));

    lines.push(Line::from(Span::styled(
        match t.rank {
            Some(r) => format!("top-K (sampled rank {r})"),
            None => "top-K".to_string(),
        },
        style::title(),
    )));
    if t.top.is_empty() {
        lines.push(Line::from(Span::styled(
            if view.has_top {
                "none recorded for this token"
            } else {
                "not captured (logprobs not requested, or capture level metadata)"
            },
            style::dim(),
        )));
    }
    for c in &t.top {
        let sampled = Some(c.id) == t.id;
        let st = if sampled {
            style::focus()
        } else {
            Style::new()
        };
        lines.push(Line::from(vec![
            Span::styled(if sampled { "▸" } else { " " }, st),
            Span::styled(format!("{:<12}", fmt::fit(&quoted(&c.text), 12)), st),
            Span::raw(format!(
                " {:>5.1} % {:>7.3} #{}",
                c.logprob.exp() * 100.0,
                c.logprob,
                c.id
            )),
        ]));
    }

    if let (Some(id), false) = (t.id, t.top.is_empty()) {
        if t.top.iter().all(|c| c.id != id) {
            lines.push(Line::from(Span::styled(
                format!("▸ sampled {} is not among them", quoted(&t.text)),
                style::alarm(),
            )));
        }
    }

    if !found.is_empty() {
        lines.push(Line::from(Span::styled(
            format!("culprits ({})", found.len()),
            style::title(),
        )));
    }
    for c in found.iter().take(5) {
        lines.push(Line::from(format!(
            " {:<12} {:>8} {:>3.0} % {}",
            fmt::fit_end(&c.id, 12),
            fmt::dur(c.ns),
            c.share * 100.0,
            cause_name(c.cause)
        )));
    }
    lines
}

/// Text in quotes (whitespace visible); specials and unknowns as they are.
fn quoted(t: &TokenText) -> String {
    match t {
        TokenText::Text(_) => format!("\"{}\"", t.display()),
        _ => t.display(),
    }
}
