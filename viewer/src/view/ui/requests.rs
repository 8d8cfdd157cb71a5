//! The requests screen: a strip of batch size and step time over the whole
//! trace (busy periods stand out, and the selected request's lifetime is
//! drawn under it), the sortable list, and a line about the selection.

use super::style;
use super::window;
use crate::view::fmt;
use crate::view::requests::{short_flag, RequestList};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use ratatui::Frame;
use toktrace_analyzer::Analysis;

/// Draw the screen; returns the number of list rows shown (a page).
pub fn draw(frame: &mut Frame, area: Rect, a: &Analysis, list: &RequestList) -> usize {
    let [strip, table, about] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(3),
        Constraint::Length(2),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(strip_lines(a, list, strip.width)), strip);
    if list.rows.is_empty() {
        let d = &a.data;
        let text = vec![
            Line::from(Span::styled("this trace holds no requests", style::alarm())),
            Line::from(format!(
                "{} process(es), {} steps. Was the engine traced while it served? `toktrace info DIR` lists what was recorded.",
                d.processes.len(),
                d.steps.len()
            )),
        ];
        frame.render_widget(
            Paragraph::new(text).wrap(ratatui::widgets::Wrap { trim: true }),
            table,
        );
        return 1;
    }
    let page = draw_table(frame, table, list);
    frame.render_widget(Paragraph::new(about_lines(list)), about);
    page
}

fn draw_table(frame: &mut Frame, area: Rect, list: &RequestList) -> usize {
    let height = area.height.saturating_sub(1) as usize;
    let header = Row::new(
        [
            "request", "out", "TTFT ms", "p99 ITL", "slow@tok", "interf", "culprit", "flags",
        ]
        .map(Cell::from),
    )
    .style(style::header());
    let shown = window(list.shown.len(), list.selected, height);
    let rows: Vec<Row> = shown
        .map(|pos| {
            let r = &list.rows[list.shown[pos] as usize];
            let slowest = match (r.max_itl_ms, r.max_itl_index) {
                (Some(m), Some(i)) => format!("{m:.1}@{i}"),
                _ => "-".into(),
            };
            let culprit = r
                .top_culprits
                .first()
                .map(|c| c.request_id.clone())
                .unwrap_or_else(|| "-".into());
            let flags: Vec<&str> = r.flags.iter().map(|f| short_flag(f)).collect();
            let row = Row::new(vec![
                Cell::from(fmt::fit_end(&r.request_id, 24)),
                Cell::from(r.output_tokens.to_string()),
                Cell::from(fmt::ms(r.ttft_ms)),
                Cell::from(fmt::ms(r.itl_p99_ms)),
                Cell::from(slowest),
                Cell::from(format!("{:.1}", r.interference_ms)).style(if r.interference_ms > 0.0 {
                    style::alarm()
                } else {
                    Default::default()
                }),
                Cell::from(culprit),
                Cell::from(flags.join(",")),
            ]);
            if pos == list.selected {
                row.style(style::selected())
            } else {
                row
            }
        })
        .collect();
    let widths = [
        Constraint::Min(12),
        Constraint::Length(4),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(12),
        Constraint::Length(10),
    ];
    frame.render_widget(
        Table::new(rows, widths).header(header).column_spacing(1),
        area,
    );
    height
}

fn about_lines(list: &RequestList) -> Vec<Line<'static>> {
    let order = format!(
        "{} of {} shown · sorted by {}{}{}{}",
        list.shown.len(),
        list.rows.len(),
        list.sort.name(),
        if list.worst_first { "" } else { " (reversed)" },
        if list.only_interfered {
            " · only interfered"
        } else {
            ""
        },
        if list.filter.is_empty() {
            String::new()
        } else {
            format!(" · filter {:?}", list.filter)
        }
    );
    let mut lines = vec![Line::from(Span::styled(order, style::dim()))];
    if let Some(r) = list.selected_request().map(|r| &list.rows[r as usize]) {
        let mut about = format!(
            "{} (internal {}) · prompt {} · {} tokens",
            r.request_id, r.internal_id, r.prompt_tokens, r.output_tokens
        );
        if let Some(t) = &r.trace_id {
            about.push_str(&format!(" · trace {t}"));
        }
        lines.push(Line::from(about));
    }
    lines
}

/// Three lines: peak batch size and peak step time per column over the
/// trace's whole time span, and the selected request's lifetime under them.
fn strip_lines(a: &Analysis, list: &RequestList, width: u16) -> Vec<Line<'static>> {
    const LABEL: usize = 7;
    let cols = (width as usize).saturating_sub(LABEL + 10);
    let steps = &a.data.steps;
    let (Some(t0), Some(t1)) = (
        steps.iter().map(|s| s.start_ns).min(),
        steps.iter().map(|s| s.end_ns).max(),
    ) else {
        return vec![Line::from(Span::styled(
            "no engine steps in this trace",
            style::dim(),
        ))];
    };
    if cols == 0 {
        return Vec::new();
    }
    let span = (t1.saturating_sub(t0)).max(1) as f64;
    let col = |t: u64| (((t.saturating_sub(t0)) as f64 / span) * cols as f64) as usize;
    let mut batch = vec![0u64; cols];
    let mut time = vec![0u64; cols];
    for s in steps {
        let c = col(s.start_ns).min(cols - 1);
        batch[c] = batch[c].max(u64::from(s.requests));
        time[c] = time[c].max(s.duration_ns());
    }
    let peak_batch = batch.iter().copied().max().unwrap_or(0);
    let peak_time = time.iter().copied().max().unwrap_or(0);
    let mut lines = vec![
        Line::from(vec![
            Span::styled(format!("{:<LABEL$}", "batch"), style::dim()),
            Span::styled(bars(&batch), style::focus()),
            Span::styled(format!(" ≤{peak_batch}"), style::dim()),
        ]),
        Line::from(vec![
            Span::styled(format!("{:<LABEL$}", "step"), style::dim()),
            Span::styled(bars(&time), style::prefill()),
            Span::styled(format!(" ≤{}", fmt::dur(peak_time as f64)), style::dim()),
        ]),
    ];
    // Where the selected request lived: arrival to its last token.
    let selected = list
        .selected_request()
        .and_then(|r| a.data.requests.get(r as usize));
    let mut life = String::new();
    if let Some(req) = selected {
        let last = req
            .token_step
            .last()
            .and_then(|&s| steps.get(s as usize))
            .map(|s| s.end_ns);
        let first = req.engine_arrival_ns.or_else(|| {
            req.first_scheduled
                .and_then(|s| steps.get(s as usize))
                .map(|s| s.start_ns)
        });
        if let (Some(from), Some(to)) = (first, last) {
            let (from, to) = (col(from).min(cols - 1), col(to).min(cols - 1));
            life = " ".repeat(from) + &"━".repeat(to.saturating_sub(from) + 1);
        }
    }
    lines.push(Line::from(vec![
        Span::styled(format!("{:<LABEL$}", "sel"), style::dim()),
        Span::styled(life, style::focus()),
    ]));
    lines
}

/// One block character per value, scaled to the largest.
fn bars(values: &[u64]) -> String {
    const BLOCKS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let peak = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    values
        .iter()
        .map(|&v| {
            if v == 0 {
                ' '
            } else {
                // At least the lowest bar, so a step is never invisible.
                BLOCKS[((v as f64 / peak) * 8.0).ceil().clamp(1.0, 8.0) as usize]
            }
        })
        .collect()
}
