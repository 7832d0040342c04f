//! `custody signer`: runs one signer daemon.

use super::daemon::{self, DaemonArgs};
use super::Error;

pub fn run(a: DaemonArgs) -> Result<(), Error> {
    daemon::init_tracing();
    let config = custody_signer::Config::load(&a.config)?;
    let rt = daemon::runtime()?;
    rt.block_on(custody_signer::run(
        config,
        daemon::shutdown_signal(a.stop_on_stdin_eof),
        daemon::ready_writer(a.ready_file),
    ))?;
    Ok(())
}
