//! The viewer's colours in one place, so every screen means the same thing
//! by the same colour: yellow is prefill and scheduling delay, blue is a
//! running step, magenta the frontend's emit delay, red a culprit or a slow
//! token, cyan the request being looked at.

use ratatui::style::{Color, Modifier, Style};

/// Column headers.
pub fn header() -> Style {
    Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
}

/// The selected row.
pub fn selected() -> Style {
    Style::new().add_modifier(Modifier::REVERSED)
}

/// Titles and labels.
pub fn title() -> Style {
    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
}

/// Secondary text.
pub fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

/// Time outside a step: scheduling delay.
pub fn scheduling() -> Style {
    Style::new().fg(Color::Yellow)
}

/// Time inside the step that computed the token.
pub fn running() -> Style {
    Style::new().fg(Color::Blue)
}

/// Engine exit to client emit.
pub fn emit() -> Style {
    Style::new().fg(Color::Magenta)
}

/// Prefill work.
pub fn prefill() -> Style {
    Style::new().fg(Color::Yellow)
}

/// A culprit, a slow token, an error.
pub fn alarm() -> Style {
    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
}

/// The request the view is about.
pub fn focus() -> Style {
    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
}

/// Special tokens: never plain text.
pub fn special() -> Style {
    Style::new()
        .fg(Color::Black)
        .bg(Color::LightMagenta)
        .add_modifier(Modifier::BOLD)
}

/// A token's text coloured by how likely the model found it: green sure,
/// plain likely, yellow doubtful, red unlikely; grey when not captured.
pub fn by_logprob(logprob: Option<f32>) -> Style {
    match logprob.map(f32::exp) {
        None => dim(),
        Some(p) if p >= 0.9 => Style::new().fg(Color::Green),
        Some(p) if p >= 0.5 => Style::new(),
        Some(p) if p >= 0.1 => Style::new().fg(Color::Yellow),
        Some(_) => Style::new().fg(Color::Red),
    }
}
