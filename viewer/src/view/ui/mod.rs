//! Drawing: the frame around every screen (title line, status line, help
//! overlay, the "terminal too small" notice) and a module per screen. Drawing
//! reads the [`App`]; the only thing it writes back is the page height, which
//! page-wise moves need and only the layout knows.

mod concurrency;
mod requests;
mod style;
mod tokens;

use super::app::{App, Screen};
use super::keys::{Mode, HELP};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

/// The smallest terminal the screens are laid out for.
pub const MIN_WIDTH: u16 = 80;
/// See [`MIN_WIDTH`].
pub const MIN_HEIGHT: u16 = 24;

/// Draw the whole viewer.
pub fn draw(frame: &mut Frame, app: &mut App) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        too_small(frame, area);
        return;
    }
    let [top, body, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(title_line(app)), top);
    match app.stack.last() {
        Some(Screen::Tokens(view)) => {
            app.page = tokens::draw(frame, body, &app.analysis, view).max(1);
        }
        Some(Screen::Concurrency(c)) => {
            app.page = concurrency::draw(frame, body, &app.analysis, c).max(1);
        }
        _ => app.page = requests::draw(frame, body, &app.analysis, &app.list).max(1),
    }
    frame.render_widget(Paragraph::new(status_line(app)), bottom);
    if app.help {
        help(frame, body);
    }
}

fn too_small(frame: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("terminal too small"),
        Line::from(format!(
            "{}×{}: toktrace view needs {MIN_WIDTH}×{MIN_HEIGHT}",
            area.width, area.height
        )),
        Line::from("enlarge it, or q to quit"),
    ];
    frame.render_widget(
        Paragraph::new(text).wrap(ratatui::widgets::Wrap { trim: true }),
        area,
    );
}

fn title_line(app: &App) -> Line<'static> {
    let d = &app.analysis.data;
    let screen = match app.screen() {
        Screen::Requests => "requests".to_string(),
        Screen::Tokens(v) => format!("tokens of {}", request_name(app, v.request)),
        Screen::Concurrency(c) => match c.request {
            Some(r) => format!("concurrency around {}", request_name(app, r)),
            None => "concurrency".to_string(),
        },
    };
    let mut spans = vec![
        Span::styled("toktrace view", style::title()),
        Span::raw(format!(
            " · {screen} · {} requests, {} steps",
            d.requests.len(),
            d.steps.len()
        )),
    ];
    if let Some(w) = &app.window {
        spans.push(Span::styled(format!(" in {w}"), style::dim()));
    }
    if !d.warnings.is_empty() {
        spans.push(Span::styled(
            format!(" · {} read warning(s), shown on exit", d.warnings.len()),
            style::alarm(),
        ));
    }
    Line::from(spans)
}

fn request_name(app: &App, r: toktrace_analyzer::data::RequestIx) -> String {
    app.analysis
        .data
        .requests
        .get(r as usize)
        .map(|q| q.display_id().to_string())
        .unwrap_or_default()
}

fn status_line(app: &App) -> Line<'static> {
    if app.mode == Mode::Typing {
        return Line::from(vec![
            Span::styled("filter: ", style::title()),
            Span::raw(format!("{}▏", app.list.filter)),
            Span::styled("  Enter keep · Esc clear", style::dim()),
        ]);
    }
    if !app.status.is_empty() {
        return Line::from(Span::styled(app.status.clone(), style::alarm()));
    }
    let hints = match app.screen() {
        Screen::Requests => {
            "Enter open · s sort · r reverse · i interfered · / filter · ? help · q quit"
        }
        Screen::Tokens(_) => {
            "w slowest · n/N slow token · c culprit · Tab concurrency · Esc back · ? help · q quit"
        }
        Screen::Concurrency(_) => {
            "j/k time · h/l request · Enter open · Tab tokens · Esc back · ? help · q quit"
        }
    };
    Line::from(Span::styled(hints, style::dim()))
}

fn help(frame: &mut Frame, area: Rect) {
    let mut lines = Vec::new();
    for (section, keys) in HELP {
        lines.push(Line::from(Span::styled(*section, style::title())));
        for (k, what) in *keys {
            lines.push(Line::from(vec![
                Span::raw(format!("  {k:<22} ")),
                Span::raw(*what),
            ]));
        }
    }
    let height = (lines.len() as u16 + 2).min(area.height);
    let width = 70.min(area.width);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys (any key closes) ")),
        popup,
    );
}

/// The rows of a list that fit `height`, the selection kept in view and
/// centred when it can be (stateless, so every redraw agrees).
pub fn window(len: usize, selected: usize, height: usize) -> std::ops::Range<usize> {
    if len <= height {
        return 0..len;
    }
    let from = selected
        .saturating_sub(height / 2)
        .min(len.saturating_sub(height));
    from..from + height
}
