//! `toktrace view`: the terminal viewer.
//!
//! The trace and one request's token detail come from
//! [`toktrace_analyzer::open`]; [`detok`] turns ids into text, [`requests`], [`tokens`] and [`concurrency`] shape what the
//! screen of the same name shows, [`app`] holds the state and applies
//! [`keys`]' actions, and [`ui`] draws it (one file per screen, named alike).
//! This module only wires them to a real terminal.

pub mod app;
pub mod concurrency;
pub mod detok;
pub mod fmt;
pub mod keys;
pub mod requests;
pub mod tokens;
pub mod ui;

use anyhow::{Context, Result};
use app::App;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use std::path::Path;

pub use toktrace_analyzer::open::UnknownRequest;

/// What `toktrace view` was asked for.
#[derive(Debug, Clone)]
pub struct ViewArgs<'a> {
    /// Trace directory, process directory or segment file.
    pub dir: &'a Path,
    /// Open this request straight away.
    pub request: Option<&'a str>,
    /// tokenizer.json (or its directory) for offline detokenizing.
    pub tokenizer: Option<&'a Path>,
    /// Use the trace's index (building it for a large trace opened on a
    /// request); false reads the whole trace.
    pub use_index: bool,
}

/// Build the viewer's state: load, analyse, resolve the request. Everything
/// that can fail does so here, before the terminal is taken over, so errors
/// print as plain messages.
pub fn prepare(args: &ViewArgs) -> Result<App> {
    let options = toktrace_analyzer::open::OpenOptions {
        use_index: args.use_index,
        progress: crate::progress::bytes("reading"),
    };
    let opened = crate::opened(toktrace_analyzer::open::open(
        args.dir,
        args.request,
        &options,
    ))?;
    let detok = detok::Detokenizer::resolve(args.tokenizer, &opened.analysis.data)?;
    let mut app = App::new(opened.analysis, detok, opened.loader);
    app.window = opened.window;
    if !app.detok.has_tokenizer() {
        // Say up front why ids will show instead of text.
        app.status = app.detok.note.clone();
    }
    if let Some(r) = opened.request {
        app.open_request(r);
    }
    if let Some(note) = opened.note {
        app.status = if app.status.is_empty() {
            note
        } else {
            format!("{note}; {}", app.status)
        };
    }
    Ok(app)
}

/// `toktrace view`: prepare, then run the viewer until the user quits.
pub fn run(args: &ViewArgs) -> Result<()> {
    let mut app = prepare(args)?;
    let mut terminal = ratatui::try_init().context("opening the terminal")?;
    let result = event_loop(&mut terminal, &mut app);
    ratatui::restore();
    for w in &app.analysis.data.warnings {
        eprintln!("toktrace: warning: {w}");
    }
    result
}

fn event_loop(terminal: &mut ratatui::DefaultTerminal, app: &mut App) -> Result<()> {
    while !app.quit {
        terminal
            .draw(|frame| ui::draw(frame, app))
            .context("drawing")?;
        // Resizes need nothing but the redraw at the top of the loop.
        if let Event::Key(key) = event::read().context("reading the keyboard")? {
            // Windows reports releases too; act once per press.
            if key.kind == KeyEventKind::Press {
                if let Some(action) = keys::action(key, app.mode) {
                    app.apply(action);
                }
            }
        }
    }
    Ok(())
}
