//! The `toktrace` command. Parsing lives in `cli`, the work in `commands`;
//! this file alone turns errors into messages and exit codes.

mod cli;
mod commands;

use std::process::ExitCode;

fn main() -> ExitCode {
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
            ExitCode::from(1)
        }
    }
}
