//! A cluster in one process: every signer's core ([`custody_signer::SignerApi`]) and
//! the coordinator's drivers run here, the coordinator reaching the signers over an
//! in-memory [`SignerLink`] (no signer listens anywhere; the coordinator never depends
//! on the signer crate: the link is this file). Clients talk to the coordinator over
//! mTLS gRPC on 127.0.0.1, a port the OS picks. Time comes from one [`ManualClock`]
//! that tests move instead of sleeping.
//!
//! The cluster directory (CA, certificates, configs) is made by `custody dev
//! --init-only`, so the in-process daemons open exactly what real ones would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custody_coordinator::link::{LinkError, LinkFuture, SignerLink};
use custody_ops::clock::ManualClock;
use custody_protocol::proto::custody_client::CustodyClient;
use custody_protocol::proto::*;
use custody_protocol::IdentityPublic;
use custody_signer::SignerApi;
use tonic::transport::Channel;

use super::BIN;

/// A signer core behind an in-memory link; swappable (a signer that lost its
/// database comes back as a new core).
#[derive(Debug)]
pub struct MemLink {
    api: Mutex<SignerApi>,
    coordinator: IdentityPublic,
}

impl MemLink {
    fn api(&self) -> SignerApi {
        self.api.lock().expect("lock").clone()
    }
}

fn decoded(st: tonic::Status) -> LinkError {
    LinkError::from_status(&st)
}

/// One call to the signer core, as the coordinator.
macro_rules! mem {
    ($self:ident, $method:ident, $r:expr) => {{
        let (api, coordinator) = ($self.api(), $self.coordinator);
        Box::pin(async move { api.$method(coordinator, $r).await.map_err(decoded) })
    }};
}

impl SignerLink for MemLink {
    fn identity(&self) -> LinkFuture<'_, IdentityResponse> {
        let api = self.api();
        Box::pin(async move { Ok(api.identity()) })
    }
    fn dkg_start(&self, r: DkgStartRequest) -> LinkFuture<'_, DkgStartResponse> {
        mem!(self, dkg_start, r)
    }
    fn dkg_round1(&self, r: DkgRound1Request) -> LinkFuture<'_, DkgRound1Response> {
        mem!(self, dkg_round1, r)
    }
    fn dkg_round2(&self, r: DkgRound2Request) -> LinkFuture<'_, DkgRound2Response> {
        mem!(self, dkg_round2, r)
    }
    fn dkg_finalize(&self, r: DkgFinalizeRequest) -> LinkFuture<'_, DkgFinalizeResponse> {
        mem!(self, dkg_finalize, r)
    }
    fn commit(&self, r: CommitRequest) -> LinkFuture<'_, CommitResponse> {
        mem!(self, commit, r)
    }
    fn sign_share(&self, r: SignShareRequest) -> LinkFuture<'_, SignShareResponse> {
        mem!(self, sign_share, r)
    }
    fn key_lifecycle(&self, r: KeyLifecycleRequest) -> LinkFuture<'_, KeyLifecycleResponse> {
        mem!(self, key_lifecycle, r)
    }
    fn repair_help(&self, r: RepairHelpRequest) -> LinkFuture<'_, RepairHelpResponse> {
        mem!(self, repair_help, r)
    }
    fn repair_sigma(&self, r: RepairSigmaRequest) -> LinkFuture<'_, RepairSigmaResponse> {
        mem!(self, repair_sigma, r)
    }
    fn repair_recover(&self, r: RepairRecoverRequest) -> LinkFuture<'_, RepairRecoverResponse> {
        mem!(self, repair_recover, r)
    }
    fn set_policy(&self, r: SetPolicyRequest) -> LinkFuture<'_, SetPolicyResponse> {
        mem!(self, set_policy, r)
    }
    fn propose(&self, r: ProposeRequest) -> LinkFuture<'_, ProposeResponse> {
        mem!(self, propose, r)
    }
    fn export_audit(&self, nonce: Vec<u8>) -> LinkFuture<'_, Vec<u8>> {
        let api = self.api();
        Box::pin(async move { api.export_audit(&nonce).await.map_err(decoded) })
    }
    fn endpoint(&self) -> String {
        "in-process".into()
    }
}

/// An in-process cluster; dropping it stops the coordinator and removes the directory.
#[derive(Debug)]
pub struct InProc {
    pub dir: PathBuf,
    pub clock: ManualClock,
    /// Each signer's link, by name.
    pub links: Vec<(String, Arc<MemLink>)>,
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), custody_coordinator::StartError>>>,
}

/// Opens signer `name`'s core from its config in `dir`.
fn open_signer(dir: &Path, name: &str, clock: &ManualClock) -> SignerApi {
    let config =
        custody_signer::Config::load(&dir.join(name).join("signer.toml")).expect("signer config");
    SignerApi::open(&config, Arc::new(clock.clone())).expect("signer core")
}

impl InProc {
    /// `n` signers with threshold `t`; `faults` names signers that misbehave (fault
    /// injection, as in their config).
    pub async fn start(name: &str, n: u16, t: u16, faults: &[(&str, &str)]) -> InProc {
        let dir =
            std::env::temp_dir().join(format!("custody-inproc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(BIN)
            .args(["dev", "--init-only", "--dir"])
            .arg(&dir)
            .args(["--signers", &n.to_string(), "--threshold", &t.to_string()])
            .output()
            .expect("custody dev --init-only");
        assert!(
            out.status.success(),
            "custody dev --init-only: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (signer, fault) in faults {
            let cfg = dir.join(signer).join("signer.toml");
            let text = std::fs::read_to_string(&cfg).expect("signer config");
            std::fs::write(&cfg, format!("fault_injection = \"{fault}\"\n{text}"))
                .expect("signer config");
        }
        let clock = ManualClock::at(1_800_000_000);
        let mut config =
            custody_coordinator::Config::load(&dir.join("coordinator/coordinator.toml"))
                .expect("coordinator config");
        config.console_listen = None;
        let coordinator =
            custody_coordinator::init_identity(&config).expect("coordinator identity");
        let links: Vec<(String, Arc<MemLink>)> = (1..=n)
            .map(|i| {
                let name = format!("signer-{i}");
                let api = open_signer(&dir, &name, &clock);
                (
                    name,
                    Arc::new(MemLink {
                        api: Mutex::new(api),
                        coordinator,
                    }),
                )
            })
            .collect();
        let dyn_links = links
            .iter()
            .map(|(n, l)| (n.clone(), l.clone() as Arc<dyn SignerLink>))
            .collect();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, bound) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(custody_coordinator::run_with_links(
            config,
            dyn_links,
            Arc::new(clock.clone()),
            async move {
                let _ = stopped.await;
            },
            move |addr| {
                let _ = ready.send(addr);
            },
        ));
        let addr = tokio::time::timeout(Duration::from_secs(30), bound)
            .await
            .expect("the coordinator started in time")
            .expect("the coordinator started");
        InProc {
            dir,
            clock,
            links,
            addr,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// A client of the coordinator presenting certificate `name` (`operator`, …).
    pub async fn client(&self, name: &str) -> CustodyClient<Channel> {
        let pki = self.dir.join("pki");
        let read = |f: &str| std::fs::read_to_string(pki.join(f)).expect("pki file");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")))
            .domain_name("localhost")
            .identity(tonic::transport::Identity::from_pem(
                read(&format!("{name}.pem")),
                read(&format!("{name}.key")),
            ));
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", self.addr))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .connect()
            .await
            .expect("connect to the coordinator");
        CustodyClient::new(channel)
    }

    /// Signer `name`'s core, to call as a (compromised) coordinator would.
    pub fn signer(&self, name: &str) -> SignerApi {
        self.links
            .iter()
            .find(|(n, _)| n == name)
            .expect("signer")
            .1
            .api()
    }

    /// As a compromised coordinator: fresh commitments of key `key_id` (secp256k1-tr)
    /// from signers `ids`, and a package over them for `message`, signed with the
    /// coordinator's own identity key.
    pub async fn rogue_package(&self, key_id: &str, ids: &[u16], message: &[u8]) -> Vec<u8> {
        use custody_protocol::sign::{SigningPackage, COORDINATOR};
        use custody_protocol::wire::{Header, Kind};
        use custody_protocol::{identity, Identity, ParticipantId, Roster, SessionId};
        type C = custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR;
        let rogue = super::rogue::coordinator_identity_in(&self.dir);
        let mut commitments = std::collections::BTreeMap::new();
        for i in ids {
            let api = self.signer(&format!("signer-{i}"));
            let p = ParticipantId::new(*i).expect("id");
            let mut roster = Roster::new();
            roster.insert(
                p,
                IdentityPublic::from_bytes(&api.identity().identity).expect("identity"),
            );
            let batch = api
                .commit(
                    rogue.public(),
                    CommitRequest {
                        key_id: key_id.to_string(),
                        count: 1,
                    },
                )
                .await
                .expect("commit")
                .batch;
            commitments.insert(p, super::rogue::only_commitment(&roster, p, &batch));
        }
        let pkg = SigningPackage::<C>::new(commitments, message.to_vec()).expect("package");
        let header = Header {
            suite: custody_protocol::Suite::Secp256k1Tr,
            kind: Kind::SigningPackage,
            session: SessionId([9; 32]),
            from: COORDINATOR,
            to: None,
        };
        identity::signed(&rogue, &header, &pkg).expect("signed package")
    }

    /// The coordinator's identity.
    pub fn coordinator(&self) -> IdentityPublic {
        use custody_protocol::Identity;
        super::rogue::coordinator_identity_in(&self.dir).public()
    }

    /// The coordinator's metrics (OpenMetrics text), scraped from its own listener.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let addr = std::fs::read_to_string(self.dir.join("coordinator/metrics-addr"))
            .expect("metrics-addr");
        let mut s = std::net::TcpStream::connect(addr.trim()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("metrics");
        out
    }

    /// Signer `name` loses its database (its identity survives): it comes back as a
    /// fresh core over the same identity, with no key.
    pub fn wipe_signer(&self, name: &str) {
        let link = &self
            .links
            .iter()
            .find(|(n, _)| n == name)
            .expect("signer")
            .1;
        let mut api = link.api.lock().expect("lock");
        // The old core lets go of its database once the new one is in place: open the
        // new one on a copy of the data directory without the database.
        let old = self.dir.join(name);
        let new = self.dir.join(format!("{name}-wiped"));
        std::fs::create_dir_all(&new).expect("new data dir");
        for f in ["identity.sealed", "INSECURE-sealing.key"] {
            std::fs::copy(old.join(f), new.join(f)).expect("identity copy");
        }
        let text = std::fs::read_to_string(old.join("signer.toml")).expect("config");
        let text = text.replace(
            old.to_string_lossy().as_ref(),
            new.to_string_lossy().as_ref(),
        );
        std::fs::write(new.join("signer.toml"), text).expect("config");
        let config = custody_signer::Config::load(&new.join("signer.toml")).expect("config");
        *api = SignerApi::open(&config, Arc::new(self.clock.clone())).expect("fresh core");
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
