//! The library half of the `toktrace` command: the terminal viewer
//! ([`view`]), kept in a library so its screens can be driven and rendered
//! by the tests in `viewer/tests/` without a terminal.

#![forbid(unsafe_code)]

pub mod view;
