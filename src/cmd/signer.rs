//! `custody signer`: runs one signer daemon.

use super::daemon::{self, DaemonArgs};
use super::Error;

pub fn run(a: DaemonArgs) -> Result<(), Error> {
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
