//! `custody`: one binary for every role of the custody cluster.
//!
//! Each subcommand lives in its own module under `cmd/`; this file only parses the
//! command line and reports errors.

mod cmd;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
