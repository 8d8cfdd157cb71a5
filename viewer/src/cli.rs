//! Command-line parsing: strings in, a plain [`Command`] out, so tests can
//! check parsing without running anything.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// toktrace: token-level traces of LLM inference engines.
///
/// Record a trace by installing the `toktrace` Python package into the server's
/// environment and setting TOKTRACE_DIR; then point these commands at that
/// directory. DIR may be the trace directory, one process directory inside it,
/// or a single segment file.
///
/// Exit codes: 0 success; 1 the trace could not be read (missing, not a trace,
/// unsupported format version); 2 bad command line.
#[derive(Debug, Parser, PartialEq)]
#[command(name = "toktrace", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand, PartialEq)]
pub enum Command {
    /// What a trace holds: processes, segments, record counts, losses, read warnings.
    Info {
        /// Trace directory, process directory or segment file.
        dir: PathBuf,
        /// Print stable JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The engine's iterations in order: duration, batch composition, tokens sampled.
    ///
    /// One line per step of every process that recorded steps. Times are
    /// milliseconds from the first step of that process.
    Steps {
        /// Trace directory, process directory or segment file.
        dir: PathBuf,
        /// Show at most this many steps (the slowest first with --slowest).
        #[arg(long)]
        limit: Option<usize>,
        /// Order by step duration, longest first.
        #[arg(long)]
        slowest: bool,
    },
    /// Every record of a trace as JSON lines, in file order (for debugging and scripts).
    ///
    /// Each line is {"process": DIR, "segment": INDEX, "offset": BYTE, "record": {KIND: {...}}}.
    /// Timestamps are the probe's CLOCK_MONOTONIC nanoseconds; each segment's Header record
    /// carries the anchor that converts them to unix time.
    Dump {
        /// Trace directory, process directory or segment file.
        dir: PathBuf,
    },
}

/// Parse arguments (the first is the program name).
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info() {
        let cli = parse(["toktrace", "info", "/tmp/t", "--json"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Info {
                dir: "/tmp/t".into(),
                json: true
            }
        );
    }

    #[test]
    fn rejects_missing_dir() {
        let err = parse(["toktrace", "info"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }
}
