//! Subcommands.

mod demo;
mod verify;

use clap::{Parser, Subcommand};

/// Threshold-signing custody: FROST keys split across a quorum of signers.
#[derive(Debug, Parser)]
#[command(name = "custody", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole DKG and a signature in one process (in-memory simulation of the
    /// signers and the coordinator) and print the result. No daemons, no storage.
    Demo(demo::Args),
    /// Verify a signature offline (BIP340 for secp256k1-tr, RFC 8032 for ed25519).
    Verify(verify::Args),
}

/// A command failure: one line naming the cause.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Verify(a) => verify::run(a),
    }
}

/// Parses a hex string, naming the argument in the error.
pub fn parse_hex(what: &str, s: &str) -> Result<Vec<u8>, Error> {
    hex::decode(s.trim_start_matches("0x"))
        .map_err(|e| format!("{what}: not valid hex ({e})").into())
}
