//! The library half of the `toktrace` command: the terminal viewer
//! ([`view`]), kept in a library so its screens can be driven and rendered
//! by the tests in `viewer/tests/` without a terminal, and what the viewer
//! and the command-line half share: progress lines ([`progress`]) and how a
//! failure to open a trace becomes the command's error ([`opened`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod progress;
pub mod view;

use toktrace_analyzer::open::{OpenError, UnknownRequest};

/// A trace opened, or the command's error: an unknown request stays an
/// [`UnknownRequest`] of its own, which `main` turns into exit code 3.
pub fn opened<T>(result: Result<T, OpenError>) -> anyhow::Result<T> {
    result.map_err(|e| match e {
        OpenError::UnknownRequest(u) => anyhow::Error::new(u),
        other => anyhow::Error::new(other),
    })
}

/// The error of an id that answers to no request (or to several).
pub fn unknown_request(message: String) -> anyhow::Error {
    anyhow::Error::new(UnknownRequest(message))
}
