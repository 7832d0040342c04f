//! `custody request show|list`, `custody approve`, `custody approver keygen`: the
//! approval flow of warm keys.

use std::path::PathBuf;

use custody_protocol::proto::{
    Approval, ApproveRequest, GetRequestRequest, ListRequestsRequest, SigningRequest,
};
use ed25519_dalek::Signer;
use rand_core::OsRng;
use serde_json::json;

use super::client::{status, Conn};
use super::Error;

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Show one request of a key that needs approvals: what it signs, approvals so
    /// far, time lock, result.
    Show {
        #[command(flatten)]
        conn: Conn,
        /// The request id.
        request_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Requests waiting for approvals or a time lock, then the most recent others.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ApproverCmd {
    /// Make an approver key pair (Ed25519). Writes the secret to FILE (mode 0600) and
    /// prints the public key to put in a key's policy.
    Keygen {
        /// Where to write the key file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    conn: Conn,
    /// The request to approve.
    request_id: String,
    /// The approver's key file (`custody approver keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The key file of an approver.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    /// Ed25519 public key, hex.
    public_key: String,
    /// Ed25519 secret key (seed), hex. Keep it offline.
    secret_key: String,
}

pub fn run(c: Cmd) -> Result<(), Error> {
    super::daemon::runtime()?.block_on(async move {
        match c {
            Cmd::Show {
                conn,
                request_id,
                json,
            } => {
                let mut c = conn.connect().await?;
                let r = c
                    .get_request(GetRequestRequest { request_id })
                    .await
                    .map_err(status)?
                    .into_inner();
                print(&r, json);
            }
            Cmd::List { conn, json } => {
                let mut c = conn.connect().await?;
                let r = c
                    .list_requests(ListRequestsRequest {})
                    .await
                    .map_err(status)?
                    .into_inner();
                if json {
                    println!(
                        "{}",
                        serde_json::Value::Array(r.requests.iter().map(to_json).collect())
                    );
                } else {
                    for q in &r.requests {
                        println!("{}", line(q));
                    }
                }
            }
        }
        Ok(())
    })
}

pub fn keygen(c: ApproverCmd) -> Result<(), Error> {
    let ApproverCmd::Keygen { out } = c;
    if out.exists() {
        return Err(format!("{}: exists; not overwriting a key", out.display()).into());
    }
    let sk = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let file = KeyFile {
        public_key: hex::encode(sk.verifying_key().to_bytes()),
        secret_key: hex::encode(sk.to_bytes()),
    };
    let text = serde_json::to_string_pretty(&file)?;
    write_private(&out, text.as_bytes()).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{}", file.public_key);
    Ok(())
}

fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

pub fn approve(a: ApproveArgs) -> Result<(), Error> {
    let text =
        std::fs::read_to_string(&a.key).map_err(|e| format!("--key {}: {e}", a.key.display()))?;
    let file: KeyFile = serde_json::from_str(&text)
        .map_err(|e| format!("--key {}: not an approver key file: {e}", a.key.display()))?;
    let seed: [u8; 32] = hex::decode(&file.secret_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            format!(
                "--key {}: secret_key is not 32 bytes of hex",
                a.key.display()
            )
        })?;
    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
    super::daemon::runtime()?.block_on(async move {
        let mut c = a.conn.connect().await?;
        let r = c
            .get_request(GetRequestRequest {
                request_id: a.request_id.clone(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let digest = if r.kind == "policy-change" {
            policy_change_digest(&mut c, &r).await?
        } else {
            sign_digest(&r)?
        };
        if !a.json {
            eprintln!("approving {}", describe(&r));
        }
        let signature = sk.sign(&digest).to_bytes().to_vec();
        let r = c
            .approve(ApproveRequest {
                request_id: a.request_id,
                approval: Some(Approval {
                    approver: sk.verifying_key().to_bytes().to_vec(),
                    signature,
                }),
            })
            .await
            .map_err(status)?
            .into_inner();
        print(&r, a.json);
        Ok(())
    })
}

/// What an admin signs to approve a policy change: computed from the proposed policy
/// and the key's current policy as this client reads them.
async fn policy_change_digest(
    c: &mut custody_protocol::proto::custody_client::CustodyClient<tonic::transport::Channel>,
    r: &SigningRequest,
) -> Result<[u8; 32], Error> {
    let key = c
        .get_key(custody_protocol::proto::GetKeyRequest {
            key_id: r.key_id.clone(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let current = hot_warm_cold::Policy::from_json(&key.policy)
        .map_err(|e| format!("the key's current policy: {e}"))?;
    if current.digest().as_slice() != r.current_policy_digest.as_slice() {
        return Err(
            "the key's policy is not the one this change replaces: refusing to approve".into(),
        );
    }
    let new = hot_warm_cold::Policy::from_json(&r.new_policy)
        .map_err(|e| format!("the proposed policy: {e}"))?;
    Ok(new.change_digest(&r.key_id, r.policy_version, &current.digest()))
}

/// What an approver signs for a signing request: `TaggedHash("custody/v1/approval",
/// key id, message)`, the message computed here from the request's own fields.
fn sign_digest(r: &SigningRequest) -> Result<[u8; 32], Error> {
    {
        // What the request itself says, whatever the coordinator computed: a
        // structured request's message is derived here (the coordinator's is compared
        // below), a raw one is the coordinator's.
        let raw: &[u8] = if r.transfer.is_some() || r.settlement.is_some() {
            &[]
        } else {
            &r.message
        };
        let message = custody_api::ask(
            &r.request_id,
            raw,
            r.transfer.as_ref(),
            r.settlement.as_ref(),
        )
        .map_err(|e| format!("the request is invalid: {e}; refusing"))?
        .message(&r.key_id);
        if message != r.message {
            return Err(
                "the coordinator's message is not the request's: refusing to approve".into(),
            );
        }
        Ok(hot_warm_cold::approval_digest(&r.key_id, &message))
    }
}

fn describe(r: &SigningRequest) -> String {
    if r.kind == "policy-change" {
        return format!(
            "request {} on key {}: change its policy to {}",
            r.request_id, r.key_id, r.new_policy
        );
    }
    if let Some(s) = &r.settlement {
        return format!(
            "request {} on key {}: settle batch {} of {} payments, totals {}, Merkle root {}, period {}..{} ms",
            r.request_id,
            r.key_id,
            s.batch_id,
            s.count,
            s.totals
                .iter()
                .map(|t| format!("{} {}", t.amount, t.currency))
                .collect::<Vec<_>>()
                .join(", "),
            hex::encode(&s.root),
            s.period_start_ms,
            s.period_end_ms
        );
    }
    match &r.transfer {
        Some(t) => format!(
            "request {} on key {}: transfer {} {} to {}{}",
            r.request_id,
            r.key_id,
            t.amount,
            t.asset,
            t.destination,
            if t.memo.is_empty() {
                String::new()
            } else {
                format!(" ({})", t.memo)
            }
        ),
        None => format!(
            "request {} on key {}: raw message {}",
            r.request_id,
            r.key_id,
            hex::encode(&r.message)
        ),
    }
}

fn line(r: &SigningRequest) -> String {
    format!(
        "{}  {}  approvals {}/{}  unlocks at {}{}  — {}",
        r.request_id,
        r.state,
        r.approvals,
        r.required,
        r.unlocks_at,
        if r.last_error.is_empty() {
            String::new()
        } else {
            format!("  ({})", r.last_error)
        },
        describe(r)
    )
}

fn to_json(r: &SigningRequest) -> serde_json::Value {
    json!({
        "request_id": r.request_id,
        "key_id": r.key_id,
        "state": r.state,
        "message": hex::encode(&r.message),
        "transfer": r.transfer.as_ref().map(|t| json!({
            "asset": t.asset, "amount": t.amount, "destination": t.destination, "memo": t.memo,
        })),
        "approval_digest": hex::encode(&r.approval_digest),
        "approvals": r.approvals,
        "required": r.required,
        "approved_by": r.approved_by.iter().map(hex::encode).collect::<Vec<_>>(),
        "created_at": r.created_at,
        "unlocks_at": r.unlocks_at,
        "last_error": r.last_error,
        "signature": r.result.as_ref().map(|s| hex::encode(&s.signature)),
        "kind": r.kind,
        "new_policy": serde_json::from_str::<serde_json::Value>(&r.new_policy).ok(),
        "settlement": r.settlement.as_ref().map(|s| json!({
            "batch_id": s.batch_id,
            "root": hex::encode(&s.root),
            "count": s.count,
            "totals": s.totals.iter().map(|t| (t.currency.clone(), serde_json::Value::from(t.amount.clone()))).collect::<serde_json::Map<_, _>>(),
            "period_start_ms": s.period_start_ms,
            "period_end_ms": s.period_end_ms,
        })),
    })
}

/// Prints a request (text or JSON).
pub fn print(r: &SigningRequest, json: bool) {
    if json {
        println!("{}", to_json(r));
    } else {
        println!("{}", line(r));
        if let Some(s) = &r.result {
            println!("signature {}", hex::encode(&s.signature));
        }
    }
}
