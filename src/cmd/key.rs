//! `custody key create|list|show`.

use custody_protocol::proto::{CreateKeyRequest, GetKeyRequest, Key, ListKeysRequest};
use serde_json::json;

use super::client::{status, Conn};
use super::Error;

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Create a threshold key by DKG among the signers.
    Create {
        #[command(flatten)]
        conn: Conn,
        /// secp256k1-tr (BIP340, Taproot) or ed25519.
        #[arg(long)]
        suite: custody_protocol::Suite,
        /// Threshold t (default: the cluster's).
        #[arg(long)]
        threshold: Option<u32>,
        /// Number of signers n (default: all).
        #[arg(long)]
        signers: Option<u32>,
        /// A name for the key.
        #[arg(long, default_value = "")]
        name: String,
        /// Tier: hot (default); warm and cold keys need a policy with approvers (--policy).
        #[arg(long, default_value = "")]
        tier: String,
        /// The key's policy, a JSON file (assets with limits, allowlist, allow_raw,
        /// approvals, time lock, max age, max signatures). Default: the development
        /// policy (raw messages allowed, no limits). Every signer enforces it.
        #[arg(long)]
        policy: Option<std::path::PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every key.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON (an array of keys).
        #[arg(long)]
        json: bool,
    },
    /// Stop signing with a key for now (every signer refuses until `resume`).
    Suspend(StateArgs),
    /// Sign with a suspended key again.
    Resume(StateArgs),
    /// Stop signing with a key for good (its public key still verifies).
    Retire(StateArgs),
    /// Erase every signer's share of a retired or suspended key (a tombstone remains).
    Destroy(StateArgs),
    /// Replace an active key by a new one (new DKG, same suite, threshold, signers,
    /// tier and policy) and retire the old one. Prints both.
    Rotate(StateArgs),
    /// Refresh every share of an active key (FROST refresh among all its signers): the
    /// public key stays, old shares become useless. Run it again to complete a refresh
    /// that a signer could not apply.
    Refresh(StateArgs),
    /// Recover a signer's lost share (its identity intact: a wiped database, a restored
    /// machine) from t other signers, without reconstructing the key.
    Repair {
        #[command(flatten)]
        conn: Conn,
        /// The key id.
        key_id: String,
        /// The signer whose share is lost.
        #[arg(long)]
        signer: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Propose a new policy for a key; it applies once enough of the admins named in
    /// the key's current policy approve (`custody approve REQUEST_ID --key ADMIN.key`).
    Policy {
        #[command(flatten)]
        conn: Conn,
        /// The key id.
        key_id: String,
        /// The new policy (JSON file).
        #[arg(long)]
        policy: std::path::PathBuf,
        /// Id of this change request (what admins approve).
        #[arg(long)]
        request_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Show {
        #[command(flatten)]
        conn: Conn,
        /// The key id.
        key_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct StateArgs {
    #[command(flatten)]
    conn: Conn,
    /// The key id.
    key_id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

async fn change_state(a: StateArgs, event: &str) -> Result<(), Error> {
    let mut c = a.conn.connect().await?;
    let k = c
        .change_key_state(custody_protocol::proto::ChangeKeyStateRequest {
            key_id: a.key_id,
            event: event.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    print(&k, a.json);
    Ok(())
}

fn key_json(k: &Key) -> serde_json::Value {
    json!({
        "key_id": k.key_id,
        "name": k.name,
        "suite": k.suite,
        "threshold": k.threshold,
        "signers": k.signers,
        "public_key": hex::encode(&k.public_key),
        "public_key_set": hex::encode(&k.public_key_set),
        "tier": k.tier,
        "state": k.state,
        "created_at": k.created_at,
        "policy": serde_json::from_str::<serde_json::Value>(&k.policy).unwrap_or(serde_json::Value::Null),
        "rotated_from": k.rotated_from,
        "rotated_to": k.rotated_to,
        "state_reason": k.state_reason,
    })
}

fn key_text(k: &Key) -> String {
    format!(
        "{}  {}  {}-of-{}  {}  {}  public key {}{}",
        k.key_id,
        k.suite,
        k.threshold,
        k.signers.len(),
        k.tier,
        k.state,
        hex::encode(&k.public_key),
        if k.name.is_empty() {
            String::new()
        } else {
            format!("  name {:?}", k.name)
        }
    ) + &if k.state_reason.is_empty() {
        String::new()
    } else {
        format!("  ({})", k.state_reason)
    }
}

pub fn run(cmd: Cmd) -> Result<(), Error> {
    super::daemon::runtime()?.block_on(async move {
        match cmd {
            Cmd::Create {
                conn,
                suite,
                threshold,
                signers,
                name,
                tier,
                policy,
                json,
            } => {
                let policy = match policy {
                    Some(f) => {
                        let text = std::fs::read_to_string(&f)
                            .map_err(|e| format!("--policy {}: {e}", f.display()))?;
                        // An empty request policy means the permissive development
                        // policy: never from a file that is empty by mistake.
                        if text.trim().is_empty() {
                            return Err(format!(
                                "--policy {}: the file is empty (omit --policy for the permissive development policy)",
                                f.display()
                            )
                            .into());
                        }
                        text
                    }
                    None => String::new(),
                };
                let mut c = conn.connect().await?;
                let k = c
                    .create_key(CreateKeyRequest {
                        suite: suite.name().into(),
                        threshold: threshold.unwrap_or(0),
                        signers: vec![],
                        signer_count: signers.unwrap_or(0),
                        name,
                        tier,
                        policy,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                print(&k, json);
            }
            Cmd::List { conn, json } => {
                let mut c = conn.connect().await?;
                let keys = c
                    .list_keys(ListKeysRequest {})
                    .await
                    .map_err(status)?
                    .into_inner()
                    .keys;
                if json {
                    println!(
                        "{}",
                        serde_json::Value::Array(keys.iter().map(key_json).collect())
                    );
                } else if keys.is_empty() {
                    println!("no keys");
                } else {
                    for k in &keys {
                        println!("{}", key_text(k));
                    }
                }
            }
            Cmd::Suspend(a) => change_state(a, "suspend").await?,
            Cmd::Resume(a) => change_state(a, "resume").await?,
            Cmd::Retire(a) => change_state(a, "retire").await?,
            Cmd::Destroy(a) => change_state(a, "destroy").await?,
            Cmd::Rotate(a) => {
                let mut c = a.conn.connect().await?;
                let r = c
                    .rotate_key(custody_protocol::proto::RotateKeyRequest { key_id: a.key_id })
                    .await
                    .map_err(status)?
                    .into_inner();
                let (old, new) = (r.old.unwrap_or_default(), r.new.unwrap_or_default());
                if a.json {
                    println!(
                        "{}",
                        json!({ "old": key_json(&old), "new": key_json(&new) })
                    );
                } else {
                    println!("retired  {}", key_text(&old));
                    println!("new      {}", key_text(&new));
                }
            }
            Cmd::Refresh(a) => {
                let mut c = a.conn.connect().await?;
                let k = c
                    .refresh_key(custody_protocol::proto::RefreshKeyRequest { key_id: a.key_id })
                    .await
                    .map_err(status)?
                    .into_inner();
                print(&k, a.json);
            }
            Cmd::Repair {
                conn,
                key_id,
                signer,
                json,
            } => {
                let mut c = conn.connect().await?;
                let k = c
                    .repair_key(custody_protocol::proto::RepairKeyRequest { key_id, signer })
                    .await
                    .map_err(status)?
                    .into_inner();
                print(&k, json);
            }
            Cmd::Policy {
                conn,
                key_id,
                policy,
                request_id,
                json,
            } => {
                let text = std::fs::read_to_string(&policy)
                    .map_err(|e| format!("--policy {}: {e}", policy.display()))?;
                let mut c = conn.connect().await?;
                let r = c
                    .change_policy(custody_protocol::proto::ChangePolicyRequest {
                        key_id,
                        policy: text,
                        request_id,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                super::request::print(&r, json);
            }
            Cmd::Show { conn, key_id, json } => {
                let mut c = conn.connect().await?;
                let k = c
                    .get_key(GetKeyRequest { key_id })
                    .await
                    .map_err(status)?
                    .into_inner();
                print(&k, json);
            }
        }
        Ok(())
    })
}

fn print(k: &Key, json: bool) {
    if json {
        println!("{}", key_json(k));
    } else {
        println!("{}", key_text(k));
    }
}
