//! `custody audit`: export every daemon's audit log, verify an export, replay one
//! ceremony. `verify` and `replay` work offline, without the cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;

use custody_audit::export::{verify_bundle, Bundle, Summary};
use custody_audit::transcript::{DkgReplay, Party, SigningReplay};
use custody_audit::{replay_dkg, replay_signing, DkgTranscript, SigningTranscript, Trust};
use custody_protocol::proto::ExportAuditRequest;
use rand_core::{OsRng, RngCore};

use super::client::{status, Conn};
use super::Error;

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Fetch every daemon's audit log (coordinator and signers, each sealed with a
    /// fresh nonce) as one export file.
    Export(ExportArgs),
    /// Verify an export offline: every log's chain and signatures, and a replay of
    /// every ceremony it records. Exit 0 only when everything checks.
    Verify(CheckArgs),
    /// Replay one ceremony transcript offline (a DKG transcript such as
    /// DIR/coordinator/transcripts/dkg-KEY.json, or a signing transcript), or every
    /// ceremony of an export. Exit 0 only when everything checks.
    Replay(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    conn: Conn,
    /// Where to write the export (default: DIR/audit-export-<unix time>.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The export or transcript file.
    file: PathBuf,
    /// Trust identities certified by this cluster CA certificate (PEM), as carried by
    /// the file's certificates.
    #[arg(long, conflicts_with_all = ["identities", "unpinned"])]
    ca: Option<PathBuf>,
    /// Trust the identities in this JSON file: {"signer-1": "<128 hex>", ...}.
    #[arg(long, conflicts_with = "unpinned")]
    identities: Option<PathBuf>,
    /// Take identities from the file itself (checks consistency only: whoever wrote
    /// the file chose the keys).
    #[arg(long)]
    unpinned: bool,
    /// Machine-readable report.
    #[arg(long)]
    json: bool,
}

pub fn run(c: Cmd) -> Result<(), Error> {
    match c {
        Cmd::Export(a) => export(a),
        Cmd::Verify(a) => check(a, false),
        Cmd::Replay(a) => check(a, true),
    }
}

fn export(a: ExportArgs) -> Result<(), Error> {
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let bytes = super::daemon::runtime()?.block_on(async {
        let mut client = a.conn.connect().await?;
        let mut stream = client
            .export_audit(ExportAuditRequest {
                nonce: nonce.to_vec(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(status)? {
            out.extend_from_slice(&chunk.data);
        }
        Ok::<_, Error>(out)
    })?;
    let bundle: Bundle = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the coordinator sent an unreadable export: {e}"))?;
    if bundle.nonce != hex::encode(nonce) {
        return Err("the coordinator sent an export sealed with another nonce than ours".into());
    }
    let out = a.out.unwrap_or_else(|| {
        a.conn.cluster.join(format!(
            "audit-export-{}.json",
            bundle.exported_at_ms / 1000
        ))
    });
    std::fs::write(&out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    let missing: Vec<String> = bundle
        .parties
        .iter()
        .filter_map(|p| p.unavailable.as_ref().map(|w| format!("{} ({w})", p.name)))
        .collect();
    println!(
        "wrote {} ({} logs, {} bytes)",
        out.display(),
        bundle.parties.len() - missing.len(),
        bytes.len()
    );
    if !missing.is_empty() {
        return Err(format!(
            "export is incomplete: no log from {}; it will not verify",
            missing.join(", ")
        )
        .into());
    }
    Ok(())
}

/// What the file is.
enum Input {
    Bundle(Bundle),
    Dkg(DkgTranscript),
    Signing(SigningTranscript),
}

fn read_input(path: &PathBuf) -> Result<Input, Error> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let format = v["format"].as_str().unwrap_or_default().to_string();
    let parse_err = |e: serde_json::Error| format!("{}: {format}: {e}", path.display());
    Ok(match format.as_str() {
        custody_audit::export::EXPORT_FORMAT => {
            Input::Bundle(serde_json::from_value(v).map_err(parse_err)?)
        }
        custody_audit::transcript::DKG_FORMAT | custody_audit::transcript::REFRESH_FORMAT => {
            Input::Dkg(serde_json::from_value(v).map_err(parse_err)?)
        }
        custody_audit::transcript::SIGNING_FORMAT => {
            Input::Signing(serde_json::from_value(v).map_err(parse_err)?)
        }
        other => {
            return Err(format!(
                "{}: unknown format {other:?} (expected an audit export or a ceremony transcript)",
                path.display()
            )
            .into())
        }
    })
}

/// Parties whose certificates the file carries, with the role each must have.
fn certified(input: &Input) -> Vec<(Party, &'static str)> {
    match input {
        Input::Bundle(b) => b
            .parties
            .iter()
            .map(|p| {
                let role = if p.role == "coordinator" {
                    "coordinator"
                } else {
                    "signer"
                };
                (
                    Party {
                        id: 1,
                        name: p.name.clone(),
                        identity: p.identity.clone(),
                        certificate: p.certificate.clone(),
                    },
                    role,
                )
            })
            .collect(),
        Input::Dkg(t) => t
            .participants
            .iter()
            .map(|p| (p.clone(), "signer"))
            .collect(),
        Input::Signing(t) => std::iter::once((t.coordinator.clone(), "coordinator"))
            .chain(t.signers.iter().map(|p| (p.clone(), "signer")))
            .collect(),
    }
}

fn trust(a: &CheckArgs, input: &Input) -> Result<(Trust, String), Error> {
    if let Some(ca) = &a.ca {
        let pem = std::fs::read_to_string(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        let ca_der =
            custody_pki::pem_to_der(&pem).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        let mut map = BTreeMap::new();
        for (p, role) in certified(input) {
            let Some(cert) = &p.certificate else {
                return Err(format!(
                    "{}: no certificate in the file to check against --ca; pin identities with --identities",
                    p.name
                )
                .into());
            };
            let der =
                hex::decode(cert).map_err(|_| format!("{}: certificate is not hex", p.name))?;
            let info = custody_pki::verify_issued_by(&der, &ca_der)
                .map_err(|e| format!("{}: certificate: {e}", p.name))?;
            if info.name != p.name || info.role.to_string() != role {
                return Err(format!(
                    "{}: its certificate is for {} {}, not {role} {}",
                    p.name, info.role, info.name, p.name
                )
                .into());
            }
            let id = info
                .identity
                .ok_or_else(|| format!("{}: certificate carries no identity", p.name))?;
            map.insert(p.name.clone(), id.to_bytes());
        }
        return Ok((
            Trust::Pinned(map),
            format!("certified by the CA in {}", ca.display()),
        ));
    }
    if let Some(f) = &a.identities {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("--identities {}: {e}", f.display()))?;
        let raw: BTreeMap<String, String> = serde_json::from_str(&text).map_err(|e| {
            format!(
                "--identities {}: expected {{\"name\": \"hex\"}}: {e}",
                f.display()
            )
        })?;
        let mut map = BTreeMap::new();
        for (name, h) in raw {
            let b: [u8; 64] = hex::decode(&h)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("--identities: {name}: not 64 bytes of hex"))?;
            map.insert(name, b);
        }
        return Ok((Trust::Pinned(map), format!("pinned by {}", f.display())));
    }
    if a.unpinned {
        return Ok((
            Trust::Unpinned,
            "NOT PINNED (taken from the file itself)".into(),
        ));
    }
    Err("name what to trust: --ca CA.pem (the cluster CA), --identities FILE, or --unpinned".into())
}

fn check(a: CheckArgs, replay_only: bool) -> Result<(), Error> {
    let input = read_input(&a.file)?;
    let (trust, how) = trust(&a, &input)?;
    match &input {
        Input::Bundle(b) if !replay_only => {
            let r = verify_bundle(b, &trust);
            report_bundle(&a, b, &how, r)
        }
        Input::Bundle(b) => {
            // Replay only the ceremonies, without requiring every log.
            let r = replay_bundle(b, &trust);
            report_ceremonies(&a, &how, r)
        }
        Input::Dkg(t) => {
            let r = replay_dkg(t, &trust).map(|d| (vec![d], vec![]));
            report_ceremonies(&a, &how, r)
        }
        Input::Signing(t) => {
            let r = replay_signing(t, &trust, None).map(|s| (vec![], vec![s]));
            report_ceremonies(&a, &how, r)
        }
    }
}

type Replayed = (Vec<DkgReplay>, Vec<SigningReplay>);

/// Every ceremony in the coordinator's log of `b`, replayed (logs verified as far as
/// reading them needs: chain and signatures, no export seal).
fn replay_bundle(b: &Bundle, trust: &Trust) -> Result<Replayed, String> {
    use custody_audit::export::{KeyCreated, Signature, KEY_CREATED, KEY_REFRESHED, SIGNATURE};
    let coord = b
        .parties
        .iter()
        .find(|p| p.role == "coordinator")
        .ok_or("no coordinator log in the export")?;
    let party = Party {
        id: 1,
        name: coord.name.clone(),
        identity: coord.identity.clone(),
        certificate: None,
    };
    let public = custody_audit::transcript::check_party(trust, &party)?;
    let bytes = hex::decode(&coord.log).map_err(|_| "coordinator log is not hex")?;
    let entries = custody_audit::verify_log(&bytes, &public.verify, None)
        .map_err(|p| format!("log of {}, {p}", coord.name))?;
    let mut sets = BTreeMap::new();
    let (mut dkgs, mut sigs) = (Vec::new(), Vec::new());
    for (i, e) in entries.iter().enumerate() {
        let at = |why: String| format!("log of {}, entry {i} ({}): {why}", coord.name, e.kind);
        match e.kind.as_str() {
            KEY_CREATED | KEY_REFRESHED => {
                let k: KeyCreated =
                    serde_json::from_slice(&e.body).map_err(|x| at(x.to_string()))?;
                let r = replay_dkg(&k.transcript, trust).map_err(at)?;
                let previous = sets.insert(r.key_id.clone(), r.public_key_set.clone());
                if previous != k.transcript.previous_public_key_set {
                    return Err(at(
                        "not the key's current key set (or a key created twice)".into()
                    ));
                }
                dkgs.push(r);
            }
            SIGNATURE => {
                let s: Signature =
                    serde_json::from_slice(&e.body).map_err(|x| at(x.to_string()))?;
                let set = sets.get(&s.transcript.key_id).map(String::as_str);
                if set.is_none() {
                    return Err(at(format!(
                        "key {} has no DKG in this log",
                        s.transcript.key_id
                    )));
                }
                sigs.push(replay_signing(&s.transcript, trust, set).map_err(at)?);
            }
            _ => {}
        }
    }
    Ok((dkgs, sigs))
}

fn report_ceremonies(a: &CheckArgs, how: &str, r: Result<Replayed, String>) -> Result<(), Error> {
    match r {
        Ok((dkgs, sigs)) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "identities": how, "dkg": dkgs, "signatures": sigs })
                );
            } else {
                println!("identities: {how}");
                for d in &dkgs {
                    println!(
                        "{} {}  {} {}-of-{}  public key {}  replayed: every verifying share re-derived, all {} confirmations check",
                        if d.refresh { "refresh (same group key)" } else { "DKG" },
                        d.key_id, d.suite, d.threshold, d.participants.len(), d.public_key, d.participants.len()
                    );
                }
                for s in &sigs {
                    println!(
                        "signature {}  request {}  by {}  replayed: every share checks against its verifying share, the signature against the group key",
                        s.key_id, s.request_id, s.signers.join(", ")
                    );
                }
                println!(
                    "OK: {} DKG and {} signing ceremonies replay",
                    dkgs.len(),
                    sigs.len()
                );
            }
            Ok(())
        }
        Err(why) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "identities": how, "error": why })
                );
            }
            Err(format!("replay FAILED: {why}").into())
        }
    }
}

fn report_bundle(
    a: &CheckArgs,
    b: &Bundle,
    how: &str,
    r: Result<Summary, custody_audit::export::Failure>,
) -> Result<(), Error> {
    match r {
        Ok(s) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "identities": how, "summary": s })
                );
            } else {
                println!(
                    "export {} made at unix time {} (nonce {})",
                    b.format,
                    b.exported_at_ms / 1000,
                    b.nonce
                );
                println!("identities: {how}");
                for (name, n) in &s.entries {
                    println!(
                        "log {name}: {n} entries; chain, signatures and the export seal check"
                    );
                }
                for d in &s.keys {
                    println!(
                        "{} {}  {} {}-of-{}  public key {}: replayed",
                        if d.refresh { "refresh" } else { "DKG" },
                        d.key_id,
                        d.suite,
                        d.threshold,
                        d.participants.len(),
                        d.public_key
                    );
                }
                println!(
                    "signatures: {} replayed; {} shares and {} DKG participations found in the signers' own logs",
                    s.signatures, s.shares_matched, s.dkg_confirmations_matched
                );
                println!(
                    "recorded: {} refusals, {} lifecycle changes, {} refused callers",
                    s.refusals, s.lifecycle, s.auth_denied
                );
                if !s.unaccounted_shares.is_empty() {
                    println!(
                        "note: {} shares were issued that no recorded signature used (a failed attempt retried with another quorum, or a signature the coordinator did not record):",
                        s.unaccounted_shares.len()
                    );
                    for u in &s.unaccounted_shares {
                        println!("  {u}");
                    }
                }
                println!("OK: everything checks");
            }
            Ok(())
        }
        Err(f) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "identities": how, "failure": f })
                );
            }
            Err(format!("verification FAILED at {f}").into())
        }
    }
}
