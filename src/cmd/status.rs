//! `custody status`: the signers as the coordinator sees them.

use custody_protocol::proto::ClusterStatusRequest;
use serde_json::json;

use super::client::{status, Conn};
use super::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    conn: Conn,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<(), Error> {
    super::daemon::runtime()?.block_on(async move {
        let mut c = a.conn.connect().await?;
        let s = c
            .cluster_status(ClusterStatusRequest {})
            .await
            .map_err(status)?
            .into_inner();
        if a.json {
            let v: Vec<_> = s
                .signers
                .iter()
                .map(|x| {
                    json!({
                        "name": x.name, "endpoint": x.endpoint, "reachable": x.reachable,
                        "last_seen_ms": x.last_seen_ms, "last_error": x.last_error,
                    })
                })
                .collect();
            println!("{}", json!({ "signers": v }));
        } else {
            for x in &s.signers {
                println!(
                    "{:<12} {:<22} {}{}",
                    x.name,
                    x.endpoint,
                    if x.reachable { "up" } else { "DOWN" },
                    if x.last_error.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", x.last_error)
                    }
                );
            }
        }
        Ok(())
    })
}

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    conn: Conn,
    /// Print JSON (`url`, `expires_at`, `spki_sha256`).
    #[arg(long)]
    json: bool,
}

/// `custody console`: a one-time sign-in link to the operator console.
pub fn console(a: ConsoleArgs) -> Result<(), Error> {
    super::daemon::runtime()?.block_on(async move {
        let mut c = a.conn.connect().await?;
        let r = c
            .console_login(custody_protocol::proto::ConsoleLoginRequest {})
            .await
            .map_err(status)?
            .into_inner();
        if a.json {
            println!(
                "{}",
                json!({ "url": r.url, "expires_at": r.expires_at, "spki_sha256": r.spki_sha256 })
            );
        } else {
            println!("{}", r.url);
            eprintln!(
                "open it within a minute, once; the console's certificate is the cluster CA's (SPKI SHA-256 {})",
                r.spki_sha256
            );
        }
        Ok(())
    })
}
