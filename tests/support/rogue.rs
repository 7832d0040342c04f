//! A compromised coordinator, for adversarial tests: it holds the coordinator's own
//! certificate and identity key (read from a `custody dev` directory) and talks to the
//! signers directly, asking them for whatever it likes. Honest signers must refuse.

use custody_protocol::proto::signer_client::SignerClient;
use custody_protocol::proto::*;
use tonic::transport::Channel;

use super::Cluster;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The coordinator's identity key, unsealed from the cluster directory.
pub fn coordinator_identity(c: &Cluster) -> custody_protocol::IdentityKey {
    coordinator_identity_in(&c.dir)
}

/// The coordinator's identity key, unsealed from cluster directory `dir`.
pub fn coordinator_identity_in(dir: &std::path::Path) -> custody_protocol::IdentityKey {
    let d = dir.join("coordinator");
    let sealer =
        custody_hsm::InsecureSoftwareSealer::open_or_create(&d.join("INSECURE-sealing.key"))
            .expect("sealer");
    custody_pki::load_or_create_identity(
        &d.join("identity.sealed"),
        &sealer,
        &custody_coordinator::identity_aad("coordinator"),
    )
    .expect("identity")
}

/// A client of signer `name` presenting the coordinator's certificate.
pub async fn signer(c: &Cluster, name: &str) -> SignerClient<Channel> {
    SignerClient::new(
        c.channel(&c.addr(name), Some("coordinator"))
            .await
            .expect("channel"),
    )
}

/// Acts as a compromised coordinator: with the coordinator's own certificate and
/// identity key, draws fresh commitments from signers 1..=n of a secp256k1-tr key,
/// builds and signs a package for `message`, and asks every signer for its share.
pub fn as_rogue_coordinator(
    c: &Cluster,
    key: &str,
    n: u16,
    message: Vec<u8>,
    request_id: &str,
    transfer: Option<Transfer>,
) -> Vec<Result<(), tonic::Status>> {
    as_rogue_coordinator_with(c, key, n, message, request_id, transfer, vec![], None)
}

/// [`as_rogue_coordinator`], presenting `approvals` (and a settlement) too.
#[allow(clippy::too_many_arguments)]
pub fn as_rogue_coordinator_with(
    c: &Cluster,
    key: &str,
    n: u16,
    message: Vec<u8>,
    request_id: &str,
    transfer: Option<Transfer>,
    approvals: Vec<Approval>,
    settlement: Option<Settlement>,
) -> Vec<Result<(), tonic::Status>> {
    rt().block_on(async {
        let (mut clients, package) = package(c, key, n, message).await;
        let mut out = Vec::new();
        for s in clients.iter_mut() {
            let r = s
                .sign_share(SignShareRequest {
                    key_id: key.to_string(),
                    package: package.clone(),
                    request_id: request_id.into(),
                    transfer: transfer.clone(),
                    settlement: settlement.clone(),
                    approvals: approvals.clone(),
                })
                .await;
            out.push(r.map(|_| ()));
        }
        out
    })
}

/// The one commitment in signer `p`'s batch envelope (secp256k1-tr), checked.
pub fn only_commitment(
    roster: &custody_protocol::Roster,
    p: custody_protocol::ParticipantId,
    batch: &[u8],
) -> custody_protocol::sign::Commitments<custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR> {
    use custody_protocol::sign::CommitmentBatch;
    use custody_protocol::wire::{self, Kind};
    use custody_protocol::{identity, SessionId};
    type C = custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR;
    let opened = identity::open_from(roster, p, batch).expect("batch");
    let (_, b) = wire::decode_with(
        opened.body,
        custody_protocol::Suite::Secp256k1Tr,
        Kind::CommitmentBatch,
        &SessionId([0; 32]),
        |_, r| CommitmentBatch::<C>::decode_body(r, 1),
    )
    .expect("decode");
    b.0[0]
}

/// Draws one fresh commitment from each of signers 1..=n of a secp256k1-tr key and
/// signs (as the coordinator) a package over them for `message`.
pub async fn package(
    c: &Cluster,
    key: &str,
    n: u16,
    message: Vec<u8>,
) -> (Vec<SignerClient<Channel>>, Vec<u8>) {
    use custody_protocol::sign::{SigningPackage, COORDINATOR};
    use custody_protocol::wire::{Header, Kind};
    use custody_protocol::{identity, ParticipantId, Roster, SessionId};
    type C = custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR;
    let coordinator_id = coordinator_identity(c);
    let mut clients = Vec::new();
    let mut roster = Roster::new();
    let mut commitments = std::collections::BTreeMap::new();
    for i in 1..=n {
        let mut s = signer(c, &format!("signer-{i}")).await;
        let id = s
            .identity(IdentityRequest {})
            .await
            .expect("identity")
            .into_inner();
        let p = ParticipantId::new(i).expect("id");
        roster.insert(
            p,
            custody_protocol::IdentityPublic::from_bytes(&id.identity).expect("identity"),
        );
        let batch = s
            .commit(CommitRequest {
                key_id: key.to_string(),
                count: 1,
            })
            .await
            .expect("commit")
            .into_inner()
            .batch;
        commitments.insert(p, only_commitment(&roster, p, &batch));
        clients.push(s);
    }
    let pkg = SigningPackage::<C>::new(commitments, message).expect("package");
    let header = Header {
        suite: custody_protocol::Suite::Secp256k1Tr,
        kind: Kind::SigningPackage,
        session: SessionId([7; 32]),
        from: COORDINATOR,
        to: None,
    };
    let package = identity::signed(&coordinator_id, &header, &pkg).expect("signed package");
    (clients, package)
}

/// Asks signers 1..=n for shares of one package (one set of commitments) once per
/// request id in `request_ids`, in order: the same commitments used again, under the
/// same or another request. Results per request, per signer.
pub fn same_commitments_again(
    c: &Cluster,
    key: &str,
    n: u16,
    message: Vec<u8>,
    request_ids: &[&str],
) -> Vec<Vec<Result<(), tonic::Status>>> {
    rt().block_on(async {
        let (mut clients, package) = package(c, key, n, message).await;
        let mut out = Vec::new();
        for id in request_ids {
            let mut round = Vec::new();
            for s in clients.iter_mut() {
                let r = s
                    .sign_share(SignShareRequest {
                        key_id: key.to_string(),
                        package: package.clone(),
                        request_id: id.to_string(),
                        ..Default::default()
                    })
                    .await;
                round.push(r.map(|_| ()));
            }
            out.push(round);
        }
        out
    })
}

/// Starts a DKG session `session` (a new secp256k1-tr key `key_id`, threshold 2) on
/// signers 1..=n as the coordinator would, with their CA-signed certificates; returns
/// the clients and each signer's signed round-1 broadcast.
pub async fn dkg_start(
    c: &Cluster,
    key_id: &str,
    session: [u8; 32],
    n: u16,
) -> (
    Vec<SignerClient<Channel>>,
    Vec<Result<Vec<u8>, tonic::Status>>,
) {
    let mut clients = Vec::new();
    let mut participants = Vec::new();
    for i in 1..=n {
        let mut s = signer(c, &format!("signer-{i}")).await;
        let id = s
            .identity(IdentityRequest {})
            .await
            .expect("identity")
            .into_inner();
        participants.push(Participant {
            id: u32::from(i),
            certificate: id.certificate,
        });
        clients.push(s);
    }
    let mut round1 = Vec::new();
    for (i, s) in clients.iter_mut().enumerate() {
        let r = s
            .dkg_start(DkgStartRequest {
                key_id: key_id.to_string(),
                session: session.to_vec(),
                suite: "secp256k1-tr".into(),
                threshold: 2,
                participants: participants.clone(),
                me: i as u32 + 1,
                policy: String::new(),
                refresh: false,
            })
            .await
            .map(|r| r.into_inner().round1);
        round1.push(r);
    }
    (clients, round1)
}

/// Round-1 broadcasts as relayed to signer `to` (everyone's but its own).
pub fn relay(round1: &[Vec<u8>], to: usize) -> Vec<Relayed> {
    round1
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != to)
        .map(|(i, env)| Relayed {
            from: i as u32 + 1,
            to: to as u32 + 1,
            envelope: env.clone(),
        })
        .collect()
}
