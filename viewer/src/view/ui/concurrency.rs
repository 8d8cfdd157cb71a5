//! The concurrency screen: the engine's steps around the stalled token on a
//! shared time axis, one row per step, with who was in it — prefill (with
//! its token count) before decodes, the culprits in red, the request being
//! examined in cyan, the token's own step marked ▶.

use super::style;
use crate::view::app::Concurrency;
use crate::view::concurrency::{lines, StepLine};
use crate::view::fmt;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::Frame;
use toktrace_analyzer::Analysis;

/// Width of the time-axis column.
const AXIS: u16 = 18;

/// Draw the screen; returns the number of step rows shown (a page).
pub fn draw(frame: &mut Frame, area: Rect, a: &Analysis, c: &Concurrency) -> usize {
    let [head, table, about] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(6),
    ])
    .areas(area);
    let d = &a.data;
    let w = &c.window;
    let height = table.height.saturating_sub(1) as usize;
    let steps = lines(d, w.visible(height), c.request);
    let (t0, t1) = span(a, &steps);
    let focus_start = d.steps.get(w.focus as usize).map_or(t0, |s| s.start_ns);

    let process = d
        .steps
        .get(w.focus as usize)
        .and_then(|s| d.processes.get(s.process as usize))
        .map_or("", |p| p.name.as_str());
    let token = match (c.request, c.token_index) {
        (Some(r), Some(i)) => format!(
            "token {i} of {} · ",
            d.requests.get(r as usize).map_or("", |q| q.display_id())
        ),
        _ => String::new(),
    };
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::raw(format!("{token}axis {} · ", fmt::dur((t1 - t0) as f64))),
            Span::styled("▶ its step", style::focus()),
            Span::raw(" "),
            Span::styled("culprit", style::alarm()),
            Span::raw(" "),
            Span::styled("+N prefill", style::prefill()),
            Span::styled(format!(" · {process}"), style::dim()),
        ])),
        head,
    );

    let header = Row::new(
        [
            "",
            "step",
            "start",
            "took",
            "time axis",
            "requests in the step",
        ]
        .map(Cell::from),
    )
    .style(style::header());
    // What is left for the members after the fixed columns and their gaps.
    let members_width = (table.width as usize).saturating_sub(1 + 6 + 9 + 8 + AXIS as usize + 5);
    let rows: Vec<Row> = steps
        .iter()
        .map(|line| {
            let s = &d.steps[line.step as usize];
            let is_focus = line.step == w.focus;
            let on_cursor = line.step == w.cursor;
            let row = Row::new(vec![
                Cell::from(if is_focus { "▶" } else { " " }).style(style::focus()),
                Cell::from(s.step_id.to_string()),
                Cell::from(signed(s.start_ns as i128 - focus_start as i128)),
                Cell::from(fmt::dur(s.duration_ns() as f64)),
                Cell::from(axis(
                    s.start_ns,
                    s.end_ns,
                    t0,
                    t1,
                    AXIS as usize,
                    s.prefill_tokens > 0,
                )),
                Cell::from(members(a, c, line, on_cursor, members_width)),
            ]);
            if on_cursor {
                row.style(style::selected())
            } else {
                row
            }
        })
        .collect();
    let widths = [
        Constraint::Length(1),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(AXIS),
        Constraint::Min(10),
    ];
    frame.render_widget(
        Table::new(rows, widths).header(header).column_spacing(1),
        table,
    );
    frame.render_widget(
        Paragraph::new(about_lines(a, c, &steps))
            .wrap(ratatui::widgets::Wrap { trim: true })
            .block(Block::bordered().title(" step under the cursor ")),
        about,
    );
    height
}

/// Time span of the rows shown.
fn span(a: &Analysis, steps: &[StepLine]) -> (u64, u64) {
    let rows = steps
        .iter()
        .filter_map(|l| a.data.steps.get(l.step as usize));
    let t0 = rows.clone().map(|s| s.start_ns).min().unwrap_or(0);
    let t1 = rows.map(|s| s.end_ns).max().unwrap_or(t0).max(t0 + 1);
    (t0, t1)
}

/// The step as a run of cells on the window's time axis (at least one cell).
fn axis(start: u64, end: u64, t0: u64, t1: u64, width: usize, prefill: bool) -> Line<'static> {
    if width == 0 || t1 <= t0 {
        return Line::default();
    }
    let scale = width as f64 / (t1 - t0) as f64;
    let from = (((start.saturating_sub(t0)) as f64 * scale) as usize).min(width.saturating_sub(1));
    let to = ((((end.saturating_sub(t0)) as f64) * scale).ceil() as usize).clamp(from + 1, width);
    let st = if prefill {
        style::prefill()
    } else {
        style::running()
    };
    Line::from(vec![
        Span::raw(" ".repeat(from)),
        Span::styled("█".repeat(to - from), st),
    ])
}

fn signed(ns: i128) -> String {
    let sign = if ns < 0 { "-" } else { "+" };
    format!("{sign}{}", fmt::dur(ns.unsigned_abs() as f64))
}

/// The step's members: name (+prefill tokens), coloured by role. On the
/// cursor's row the list scrolls sideways so the chosen member is in view
/// (`‹N` counts those scrolled past); other rows are cut at the edge.
fn members(
    a: &Analysis,
    c: &Concurrency,
    line: &StepLine,
    on_cursor: bool,
    width: usize,
) -> Line<'static> {
    let chosen = c.window.member.min(line.members.len().saturating_sub(1));
    let items: Vec<(String, Style)> = line
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let name = a
                .data
                .requests
                .get(m.request as usize)
                .map_or("?", |q| q.display_id());
            let mut st = if c.culprits.contains(&m.request) {
                style::alarm()
            } else if Some(m.request) == c.request {
                style::focus()
            } else if m.prefill_tokens > 0 {
                style::prefill()
            } else {
                Style::new()
            };
            if on_cursor && i == chosen {
                st = st.add_modifier(ratatui::style::Modifier::UNDERLINED);
            }
            let text = if m.prefill_tokens > 0 {
                format!("{name}+{}", fmt::count(u64::from(m.prefill_tokens)))
            } else {
                name.to_string()
            };
            (text, st)
        })
        .collect();
    let count = format!("{}r ", line.members.len());
    let mut from = 0;
    if on_cursor {
        // Drop members from the front until the chosen one fits (6 columns
        // kept for the `‹N ` marker).
        let room = width.saturating_sub(count.chars().count() + 6);
        let mut used: usize = items
            .iter()
            .take(chosen + 1)
            .map(|(t, _)| t.chars().count() + 1)
            .sum();
        while from < chosen && used > room {
            used -= items[from].0.chars().count() + 1;
            from += 1;
        }
    }
    let mut spans = vec![Span::raw(count)];
    if from > 0 {
        spans.push(Span::styled(format!("‹{from} "), style::dim()));
    }
    for (text, st) in items.into_iter().skip(from) {
        spans.push(Span::styled(text, st));
        spans.push(Span::raw(" "));
    }
    Line::from(spans)
}

fn about_lines(a: &Analysis, c: &Concurrency, steps: &[StepLine]) -> Vec<Line<'static>> {
    let d = &a.data;
    let w = &c.window;
    let Some(s) = d.steps.get(w.cursor as usize) else {
        return Vec::new();
    };
    let mut out = vec![Line::from(format!(
        "step {} took {} · {} requests · prefill {} + decode {} tok · waiting {} · running {}{}",
        s.step_id,
        fmt::dur(s.duration_ns() as f64),
        s.requests,
        fmt::count(u64::from(s.prefill_tokens)),
        fmt::count(u64::from(s.decode_tokens)),
        s.waiting,
        s.running,
        s.kv_usage
            .map_or_else(String::new, |k| format!(" · KV {:.0} %", k * 100.0)),
    ))];
    if s.preempted > 0 || s.finished > 0 {
        out.push(Line::from(format!(
            "preempted {} · finished {}",
            s.preempted, s.finished
        )));
    }
    let line = steps.iter().find(|l| l.step == w.cursor);
    if let Some(m) = line.and_then(|l| {
        l.members
            .get(w.member.min(l.members.len().saturating_sub(1)))
    }) {
        let name = d
            .requests
            .get(m.request as usize)
            .map_or("?", |q| q.display_id());
        let role = if m.prefill_tokens > 0 {
            format!("prefill {} tokens", fmt::count(u64::from(m.prefill_tokens)))
        } else {
            format!("decode, {} token(s)", m.sampled)
        };
        let culprit = if c.culprits.contains(&m.request) {
            " · a culprit of the stalled token"
        } else {
            ""
        };
        out.push(Line::from(vec![
            Span::raw("selected "),
            Span::styled(name.to_string(), style::focus()),
            Span::raw(format!(": {role}{culprit} · Enter opens it")),
        ]));
    }
    out
}
