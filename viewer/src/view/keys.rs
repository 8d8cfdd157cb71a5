//! Keys to actions. The one place that knows which key does what, so the
//! help screen and the handlers cannot drift apart: [`HELP`] is written next
//! to the mapping.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Everything a key can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave the viewer.
    Quit,
    /// Show or hide the help.
    Help,
    /// Back to the previous screen (the requests list at the bottom).
    Back,
    /// Selection up by one.
    Up,
    /// Selection down by one.
    Down,
    /// Selection up by a page.
    PageUp,
    /// Selection down by a page.
    PageDown,
    /// The first row.
    Top,
    /// The last row.
    Bottom,
    /// Sideways to the previous member of a step (concurrency), nothing elsewhere.
    Left,
    /// Sideways to the next member of a step (concurrency), nothing elsewhere.
    Right,
    /// Open what is selected: a request (list, concurrency).
    Open,
    /// The next slow token.
    NextSlow,
    /// The previous slow token.
    PrevSlow,
    /// The slowest token of the request.
    Slowest,
    /// Open the culprit of the selected token.
    Culprit,
    /// The concurrency view around the selected token (or back to the tokens).
    Concurrency,
    /// Requests list: the next sort order.
    Sort,
    /// Requests list: reverse the order.
    Reverse,
    /// Requests list: only the requests others interfered with, or all again.
    Interfered,
    /// Requests list: start typing a filter.
    Filter,
    /// While typing a filter: a character.
    Type(char),
    /// While typing a filter: erase the last character.
    Erase,
    /// While typing a filter: keep it.
    Done,
    /// While typing a filter: drop it.
    Cancel,
}

/// Whether keys go to the screens or to the filter being typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Keys are commands.
    Normal,
    /// Keys edit the filter.
    Typing,
}

/// The action of a key press, if it has one.
pub fn action(key: KeyEvent, mode: Mode) -> Option<Action> {
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return match key.code {
            KeyCode::Char('c') => Some(Action::Quit),
            KeyCode::Char('d') => Some(Action::PageDown),
            KeyCode::Char('u') => Some(Action::PageUp),
            KeyCode::Char('f') => Some(Action::PageDown),
            KeyCode::Char('b') => Some(Action::PageUp),
            _ => None,
        };
    }
    if mode == Mode::Typing {
        return match key.code {
            KeyCode::Enter => Some(Action::Done),
            KeyCode::Esc => Some(Action::Cancel),
            KeyCode::Backspace => Some(Action::Erase),
            KeyCode::Char(c) => Some(Action::Type(c)),
            _ => None,
        };
    }
    Some(match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Char('?') => Action::Help,
        KeyCode::Esc | KeyCode::Backspace => Action::Back,
        KeyCode::Char('k') | KeyCode::Up => Action::Up,
        KeyCode::Char('j') | KeyCode::Down => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown | KeyCode::Char(' ') => Action::PageDown,
        KeyCode::Char('g') | KeyCode::Home => Action::Top,
        KeyCode::Char('G') | KeyCode::End => Action::Bottom,
        KeyCode::Char('h') | KeyCode::Left => Action::Left,
        KeyCode::Char('l') | KeyCode::Right => Action::Right,
        KeyCode::Enter => Action::Open,
        KeyCode::Char('n') => Action::NextSlow,
        KeyCode::Char('N') | KeyCode::Char('p') => Action::PrevSlow,
        KeyCode::Char('w') => Action::Slowest,
        KeyCode::Char('c') => Action::Culprit,
        KeyCode::Tab | KeyCode::Char('t') => Action::Concurrency,
        KeyCode::Char('s') => Action::Sort,
        KeyCode::Char('r') => Action::Reverse,
        KeyCode::Char('i') => Action::Interfered,
        KeyCode::Char('/') => Action::Filter,
        _ => return None,
    })
}

/// The help screen: (keys, what they do), in sections.
pub const HELP: &[(&str, &[(&str, &str)])] = &[
    (
        "everywhere",
        &[
            ("j k ↓ ↑  g G", "move the selection; first / last"),
            ("space PgDn PgUp ^d ^u", "a page down / up"),
            ("Esc Backspace", "back to the previous screen"),
            ("?  q ^c", "this help; quit"),
        ],
    ),
    (
        "requests",
        &[
            ("Enter", "open the request's tokens"),
            ("s / r", "next sort order / reverse it"),
            ("i", "only requests delayed by others"),
            ("/", "filter by id, trace id, flag or culprit"),
        ],
    ),
    (
        "tokens",
        &[
            ("w", "the slowest token"),
            ("n / N p", "next / previous slow token"),
            ("c", "open the culprit of the selected token"),
            ("Tab t", "concurrency view around the token"),
        ],
    ),
    (
        "concurrency",
        &[
            ("j k", "move along time, step by step"),
            ("h l ← →", "choose a request in the step"),
            ("Enter", "open that request at this step"),
            ("Tab t", "back to the tokens"),
        ],
    ),
];
