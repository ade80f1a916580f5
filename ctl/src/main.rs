//! `talkheadctl`: the operator's client for talkheadd's Unix-socket admin plane.
//!
//! The admin plane (gRPC over a Unix socket) is not served yet; this binary currently answers `version`
//! only and says so for everything else, with the documented exit codes.
//!
//! Exit codes: 0 ok, 1 other error, 2 usage, 3 daemon unreachable, 4 not found, 5 permission denied.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Operate a running talkheadd.
#[derive(Debug, Parser)]
#[command(name = "talkheadctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the client version.
    Version,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Version => {
            println!("talkheadctl {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
