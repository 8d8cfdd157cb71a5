//! The `toktrace` command. Parsing lives in `cli`, the work in `commands`;
//! this file alone turns errors into messages and exit codes (0 ok, 1 the
//! trace or the output failed, 2 bad command line, 3 unknown request id).

mod analyze;
mod cli;
mod commands;
mod export;
mod fleet;
mod watch;

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the loader allocates records on its
/// decoding thread and frees them on the folding one, which glibc serialises
/// on an arena lock (the analyzer's figures: docs/performance.md, Analyzer).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Like other Unix filters, stop quietly when the reader goes away
    // (`toktrace tokens … | head`) instead of failing on a closed pipe.
    #[cfg(unix)]
    // SAFETY: set once at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match cli::parse(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout with success, usage errors to stderr.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match commands::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("toktrace: error: {e:#}");
            if e.downcast_ref::<export::UsageError>().is_some() {
                ExitCode::from(2)
            } else if e.downcast_ref::<analyze::UnknownRequest>().is_some() {
                ExitCode::from(3)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
