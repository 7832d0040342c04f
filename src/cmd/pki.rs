//! `custody pki`: a cluster CA and certificates for production layouts (what `custody
//! dev` does for a development cluster, with the host names each member is reached at).
//!
//! ```sh
//! custody pki init --dir /etc/custody/ca --name prod           # once, offline
//! custody signer --config signer-1.toml --print-identity        # on the signer host
//! custody pki issue --dir /etc/custody/ca --name signer-1 --role signer \
//!     --identity <128 hex> --host signer-1.custody.internal --host 10.0.10.11
//! ```

use std::path::PathBuf;

use custody_pki::{Ca, Role};

use super::Error;

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Create a cluster CA in DIR (ca.pem, and ca.key readable by its owner only).
    /// Keep the directory offline; only ca.pem goes to the members.
    Init {
        /// Where the CA lives.
        #[arg(long)]
        dir: PathBuf,
        /// The cluster's name (in the CA's subject).
        #[arg(long, default_value = "custody")]
        name: String,
    },
    /// Issue a member's certificate and key (NAME.pem, NAME.key) signed by the CA.
    Issue {
        /// The CA's directory (from `custody pki init`).
        #[arg(long)]
        dir: PathBuf,
        /// The member's name: as in its config (`name`) or the coordinator's
        /// `[[signers]]`.
        #[arg(long)]
        name: String,
        /// coordinator, signer, operator, auditor, approver, payment-backend, payments
        /// or detokenizer.
        #[arg(long)]
        role: String,
        /// For a signer or the coordinator: its identity, as `--print-identity` prints
        /// it (128 hex digits).
        #[arg(long)]
        identity: Option<String>,
        /// A host name or IP address clients reach it at (repeat for several). Servers
        /// need the names they are dialled by; clients only (operator, auditor…) may
        /// keep the default.
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        hosts: Vec<String>,
        /// Where to write NAME.pem and NAME.key (default: the CA's directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(c: Cmd) -> Result<(), Error> {
    match c {
        Cmd::Init { dir, name } => {
            if dir.join("ca.pem").exists() || dir.join("ca.key").exists() {
                return Err(format!(
                    "{}: a CA is already there (ca.pem or ca.key); refusing to replace it",
                    dir.display()
                )
                .into());
            }
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            Ca::create(&dir, &name)?;
            println!(
                "CA created in {} (ca.pem; ca.key must stay offline)",
                dir.display()
            );
            Ok(())
        }
        Cmd::Issue {
            dir,
            name,
            role,
            identity,
            hosts,
            out,
        } => {
            let role = Role::parse(&role).ok_or_else(|| {
                format!("--role {role}: one of coordinator, signer, operator, auditor, approver, payment-backend, payments, detokenizer")
            })?;
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(
                    format!("--name {name:?}: a plain name (it becomes a file name)").into(),
                );
            }
            let needs_identity = matches!(role, Role::Signer | Role::Coordinator);
            let identity = match (identity, needs_identity) {
                (Some(hex_id), true) => {
                    let bytes = hex::decode(hex_id.trim())
                        .map_err(|_| "--identity: not hex (use --print-identity's output)")?;
                    Some(custody_protocol::IdentityPublic::from_bytes(&bytes).map_err(|e| {
                        format!("--identity: {e} (128 hex digits from --print-identity)")
                    })?)
                }
                (None, true) => {
                    return Err(format!(
                        "--identity is required for a {role}: run `custody {} --config FILE --print-identity` on its host",
                        if role == Role::Signer { "signer" } else { "coordinator" }
                    )
                    .into())
                }
                (Some(_), false) => {
                    return Err(format!("--identity: a {role} has no identity key").into())
                }
                (None, false) => None,
            };
            let ca = Ca::load(&dir)?;
            let out = out.unwrap_or_else(|| dir.clone());
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            ca.issue_for(&out, &name, role, identity.as_ref(), &hosts)?;
            println!(
                "issued {}/{name}.pem and {name}.key: role {role}, hosts {}",
                out.display(),
                hosts.join(", ")
            );
            Ok(())
        }
    }
}
