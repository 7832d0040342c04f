//! `custody sign` and `custody signature`.

use custody_protocol::proto::{GetSignatureRequest, SignRequest, SignResponse};
use serde_json::json;

use super::client::{status, Conn};
use super::{parse_hex, Error};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    conn: Conn,
    /// The key id.
    #[arg(long)]
    key: String,
    /// The exact bytes to sign, hex.
    #[arg(
        long,
        required_unless_present = "message_file",
        conflicts_with = "message_file"
    )]
    message: Option<String>,
    /// Or: a file whose exact bytes are signed (for messages too long for a command
    /// line).
    #[arg(long)]
    message_file: Option<std::path::PathBuf>,
    /// Idempotency key: the same id with the same key and message returns the stored
    /// signature instead of signing again.
    #[arg(long)]
    request_id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    conn: Conn,
    /// The request id of a past signature.
    request_id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn print(r: &SignResponse, json: bool) {
    if json {
        println!(
            "{}",
            json!({
                "request_id": r.request_id,
                "key_id": r.key_id,
                "message": hex::encode(&r.message),
                "signature": hex::encode(&r.signature),
                "signers": r.signers,
                "replayed": r.replayed,
            })
        );
    } else {
        println!(
            "signature {}\nrequest {}  key {}  signers {:?}{}",
            hex::encode(&r.signature),
            r.request_id,
            r.key_id,
            r.signers,
            if r.replayed {
                "  (stored result of an earlier identical request)"
            } else {
                ""
            }
        );
    }
}

pub fn run(a: Args) -> Result<(), Error> {
    let message = match (&a.message, &a.message_file) {
        (Some(h), _) => parse_hex("--message", h)?,
        (None, Some(f)) => {
            std::fs::read(f).map_err(|e| format!("--message-file {}: {e}", f.display()))?
        }
        (None, None) => return Err("give --message HEX or --message-file PATH".into()),
    };
    super::daemon::runtime()?.block_on(async move {
        let mut c = a.conn.connect().await?;
        let r = c
            .sign(SignRequest {
                key_id: a.key,
                message,
                request_id: a.request_id.unwrap_or_default(),
            })
            .await
            .map_err(status)?
            .into_inner();
        print(&r, a.json);
        Ok(())
    })
}

pub fn get(a: GetArgs) -> Result<(), Error> {
    super::daemon::runtime()?.block_on(async move {
        let mut c = a.conn.connect().await?;
        let r = c
            .get_signature(GetSignatureRequest {
                request_id: a.request_id,
            })
            .await
            .map_err(status)?
            .into_inner();
        print(&r, a.json);
        Ok(())
    })
}
