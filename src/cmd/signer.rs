//! `custody signer`: runs one signer daemon, or (`custody signer offline`) answers one
//! request file of an air-gapped signature.

use std::path::PathBuf;

use super::daemon::{self, DaemonArgs};
use super::Error;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// The daemon's TOML config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write the listening address to this file once the daemon accepts connections.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Also stop when standard input closes (used by `custody dev`, so its children
    /// never outlive it).
    #[arg(long)]
    stop_on_stdin_eof: bool,
    /// Create (or load) the signer's sealed identity, print its public keys (hex: the
    /// Ed25519 key then the X25519 key) and exit, so the CA can certify it.
    #[arg(long)]
    print_identity: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Air-gapped signing: read one request file (from `custody cold export`), write
    /// the signed response file (for `custody cold import`). Opens no network
    /// listener; the signer daemon must not be running on the same data directory.
    Offline {
        /// The signer's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// The request file.
        #[arg(long)]
        request: PathBuf,
        /// Where to write the response file.
        #[arg(long)]
        response: PathBuf,
    },
}

pub fn run(a: Args) -> Result<(), Error> {
    if let Some(Cmd::Offline {
        config,
        request,
        response,
    }) = a.cmd
    {
        return offline(&config, &request, &response);
    }
    let a = DaemonArgs {
        config: a
            .config
            .ok_or("--config: the signer's TOML config is required")?,
        ready_file: a.ready_file,
        stop_on_stdin_eof: a.stop_on_stdin_eof,
        print_identity: a.print_identity,
    };
    daemon::init_tracing();
    let config = custody_signer::Config::load(&a.config)?;
    // Before any thread exists: the PKCS#11 module reads its environment when loaded.
    config.sealer.apply_module_env();
    if a.print_identity {
        let id = custody_signer::init_identity(&config)?;
        println!("{}", hex::encode(id.to_bytes()));
        return Ok(());
    }
    // Before secrets are loaded and threads start.
    custody_pki::server::harden_and_log("signer");
    let rt = daemon::runtime()?;
    rt.block_on(custody_signer::run(
        config,
        daemon::shutdown_signal(a.stop_on_stdin_eof),
        daemon::ready_writer(a.ready_file),
    ))?;
    Ok(())
}

fn offline(
    config: &std::path::Path,
    request: &std::path::Path,
    response: &std::path::Path,
) -> Result<(), Error> {
    daemon::init_tracing();
    let config = custody_signer::Config::load(config)?;
    config.sealer.apply_module_env();
    custody_pki::server::harden_and_log("offline signer");
    let bytes =
        std::fs::read(request).map_err(|e| format!("--request {}: {e}", request.display()))?;
    let out = daemon::runtime()?.block_on(custody_signer::offline(&config, &bytes))?;
    std::fs::write(response, out).map_err(|e| format!("--response {}: {e}", response.display()))?;
    println!("wrote {}", response.display());
    Ok(())
}
