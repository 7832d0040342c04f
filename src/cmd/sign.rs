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
    /// The exact bytes to sign, hex (a raw message: only keys whose policy allows it).
    #[arg(long, conflicts_with_all = ["message_file", "asset"])]
    message: Option<String>,
    /// Or: a file whose exact bytes are signed (for messages too long for a command
    /// line).
    #[arg(long, conflicts_with = "asset")]
    message_file: Option<std::path::PathBuf>,
    /// Or a structured transfer: the asset (e.g. BTC). The signers derive the signed
    /// message from the transfer and check it against the key's policy.
    #[arg(long, requires_all = ["amount", "destination"])]
    asset: Option<String>,
    /// The transfer's amount, in minor units.
    #[arg(long, requires = "asset")]
    amount: Option<String>,
    /// The transfer's destination.
    #[arg(long, requires = "asset")]
    destination: Option<String>,
    /// The transfer's memo.
    #[arg(long, requires = "asset", default_value = "")]
    memo: String,
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
    if let Some(p) = &r.pending {
        if r.state == "pending" {
            super::request::print(p, json);
            return;
        }
    }
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
    let transfer = a
        .asset
        .as_ref()
        .map(|asset| custody_protocol::proto::Transfer {
            asset: asset.clone(),
            amount: a.amount.clone().unwrap_or_default(),
            destination: a.destination.clone().unwrap_or_default(),
            memo: a.memo.clone(),
        });
    let message = match (&a.message, &a.message_file, &transfer) {
        (Some(h), _, _) => parse_hex("--message", h)?,
        (None, Some(f), _) => {
            std::fs::read(f).map_err(|e| format!("--message-file {}: {e}", f.display()))?
        }
        (None, None, Some(_)) => Vec::new(),
        (None, None, None) => {
            return Err(
                "give --message HEX, --message-file PATH, or a transfer (--asset, --amount, --destination)"
                    .into(),
            )
        }
    };
    super::daemon::runtime()?.block_on(async move {
        let mut c = a.conn.connect().await?;
        let r = c
            .sign(SignRequest {
                key_id: a.key,
                message,
                request_id: a.request_id.unwrap_or_default(),
                transfer,
                settlement: None,
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
