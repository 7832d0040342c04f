//! Subcommands.

mod audit;
mod client;
mod cluster;
mod cold;
mod coordinator;
mod daemon;
mod demo;
mod dev;
mod key;
mod payments;
mod pki;
mod request;
mod sign;
mod signer;
mod status;
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
    /// Bring up a whole local cluster (signers and coordinator as separate processes on
    /// 127.0.0.1) in DIR, creating it on first use. Development only.
    Dev(dev::Args),
    /// Run a signer daemon (or `signer offline`: answer one air-gapped request file).
    Signer(signer::Args),
    /// Run the coordinator daemon.
    Coordinator(daemon::DaemonArgs),
    /// Create, list and show threshold keys.
    #[command(subcommand)]
    Key(key::Cmd),
    /// Sign a message with a threshold key.
    Sign(sign::Args),
    /// Show a past signature by its request id.
    Signature(sign::GetArgs),
    /// Show the signers as the coordinator sees them.
    Status(status::Args),
    /// A one-time sign-in link to the operator console (operators and auditors).
    Console(status::ConsoleArgs),
    /// Run a whole DKG and a signature in one process (in-memory simulation of the
    /// signers and the coordinator) and print the result. No daemons, no storage.
    Demo(demo::Args),
    /// Verify a signature offline (BIP340 for secp256k1-tr, RFC 8032 for ed25519).
    Verify(verify::Args),
    /// Requests of keys that need approvals (warm keys): show, list.
    #[command(subcommand)]
    Request(request::Cmd),
    /// Approve a request with an approver key (checks what it signs itself).
    Approve(request::ApproveArgs),
    /// Cold keys: carry request and response files to and from offline signers.
    #[command(subcommand)]
    Cold(cold::Cmd),
    /// Approver keys (Ed25519).
    #[command(subcommand)]
    Approver(request::ApproverCmd),
    /// The payments daemon (`--config`), and its client commands: tokenize, pay, get,
    /// list, batches, proof, verify-proof.
    Payments(payments::Args),
    /// Audit logs and ceremony transcripts: export, verify, replay.
    #[command(subcommand)]
    Audit(audit::Cmd),
    /// A cluster CA and members' certificates for a production layout: init, issue.
    #[command(subcommand)]
    Pki(pki::Cmd),
}

/// A command failure: one line naming the cause.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Dev(a) => dev::run(a),
        Command::Signer(a) => signer::run(a),
        Command::Coordinator(a) => coordinator::run(a),
        Command::Key(c) => key::run(c),
        Command::Sign(a) => sign::run(a),
        Command::Signature(a) => sign::get(a),
        Command::Status(a) => status::run(a),
        Command::Console(a) => status::console(a),
        Command::Demo(a) => demo::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Audit(c) => audit::run(c),
        Command::Pki(c) => pki::run(c),
        Command::Payments(a) => payments::run(a),
        Command::Request(c) => request::run(c),
        Command::Approve(a) => request::approve(a),
        Command::Approver(c) => request::keygen(c),
        Command::Cold(c) => cold::run(c),
    }
}

/// Parses a hex string, naming the argument in the error.
pub fn parse_hex(what: &str, s: &str) -> Result<Vec<u8>, Error> {
    hex::decode(s.trim_start_matches("0x"))
        .map_err(|e| format!("{what}: not valid hex ({e})").into())
}
