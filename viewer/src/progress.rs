//! Progress on stderr for work long enough to keep someone waiting: reading
//! or indexing a big trace, writing a big export. Drawn by indicatif, only
//! when stderr is a terminal (scripts and pipes see nothing), and only once
//! the work is big enough to be worth a bar.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use toktrace_analyzer::load::ProgressHook;

/// Reads smaller than this are too quick to need a bar.
const BAR_FROM_BYTES: u64 = 256 << 20;

/// A hook for the analyzer's reads, told bytes done of bytes in all: a bar
/// labelled `what` ("reading", "indexing") for traces of 256 MB and more.
pub fn bytes(what: &'static str) -> Option<ProgressHook> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = hidden_bar(what, "{bytes} / {total_bytes} ({percent}%), {eta} left");
    Some(Arc::new(move |done: u64, total: u64| {
        if total >= BAR_FROM_BYTES {
            advance(&bar, done, total);
        }
    }))
}

/// A callback for items written of items in all (requests, spans), as a bar
/// labelled `what`.
pub fn count(what: &'static str) -> Option<impl Fn(u64, u64)> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = hidden_bar(what, "{pos} / {len} ({percent}%), {eta} left");
    Some(move |done: u64, total: u64| advance(&bar, done, total))
}

/// A bar that draws nothing until it is first advanced.
fn hidden_bar(what: &'static str, counts: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template(&format!("toktrace: {{msg}} {counts}")) {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

fn advance(bar: &ProgressBar, done: u64, total: u64) {
    if bar.is_hidden() && done < total {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    bar.set_length(total);
    bar.set_position(done);
    if done >= total && !bar.is_finished() {
        bar.finish();
    }
}
