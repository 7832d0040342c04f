//! # custody-pki: the cluster's certificates and who may call what
//!
//! Every process of a cluster authenticates with an X.509 certificate issued by the
//! cluster CA (mTLS both ways). A certificate carries, as URI subject alternative names:
//! - `urn:custody:role:<role>`: what the holder may do ([`Role`]), checked per RPC;
//! - `urn:custody:name:<name>`: the holder's name (e.g. `signer-3`);
//! - `urn:custody:identity:<128 hex>`: for signers and the coordinator, their protocol
//!   identity (Ed25519 envelope key ‖ X25519 encryption key). Because the CA signs it,
//!   the coordinator cannot hand a signer a forged identity for a peer: signers check
//!   peer certificates against the CA themselves ([`verify_issued_by`]).
//!
//! The CA key signs certificates only; in production it stays offline (`custody dev`
//! keeps it in the cluster directory, which is fine for a development cluster only).

pub mod server;

use std::path::{Path, PathBuf};

pub use server::StartError;

use custody_protocol::IdentityPublic;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

const ROLE_PREFIX: &str = "urn:custody:role:";
const NAME_PREFIX: &str = "urn:custody:name:";
const IDENTITY_PREFIX: &str = "urn:custody:identity:";

/// What a certificate holder may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Drives ceremonies; the only caller signers accept.
    Coordinator,
    /// Holds key shares.
    Signer,
    /// Manages keys and the cluster.
    Operator,
    /// Asks for signatures and submits payments.
    PaymentBackend,
    /// Approves warm-tier requests.
    Approver,
    /// Reads audit logs and transcripts.
    Auditor,
    /// The payments daemon (a server).
    Payments,
    /// May turn payment tokens back into card or account data; nothing else may.
    Detokenizer,
}

impl Role {
    /// Name used in certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Signer => "signer",
            Role::Operator => "operator",
            Role::PaymentBackend => "payment-backend",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
            Role::Payments => "payments",
            Role::Detokenizer => "detokenizer",
        }
    }

    /// Inverse of [`Role::as_str`].
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "coordinator" => Role::Coordinator,
            "signer" => Role::Signer,
            "operator" => Role::Operator,
            "payment-backend" => Role::PaymentBackend,
            "approver" => Role::Approver,
            "auditor" => Role::Auditor,
            "payments" => Role::Payments,
            "detokenizer" => Role::Detokenizer,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of the PKI.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate could not be parsed or lacks a required field.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A certificate is not signed by the cluster CA.
    #[error("certificate is not issued by the cluster CA")]
    NotIssuedByCa,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// The cluster CA, as stored in a directory (`ca.pem`, `ca.key`).
#[derive(Debug)]
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl Ca {
    /// Creates a new CA in `dir` (files `ca.pem` and `ca.key`, the key 0600).
    pub fn create(dir: &Path, cluster_name: &str) -> Result<Ca, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("custody cluster CA ({cluster_name})"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        std::fs::write(dir.join("ca.pem"), &cert_pem).map_err(io(&dir.join("ca.pem")))?;
        let key_path = dir.join("ca.key");
        custody_hsm::write_private(&key_path, key.serialize_pem().as_bytes())
            .map_err(io(&key_path))?;
        Ok(Ca { cert_pem, key })
    }

    /// Loads the CA from `dir`.
    pub fn load(dir: &Path) -> Result<Ca, Error> {
        let cert_pem = read(&dir.join("ca.pem"))?;
        let key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
        Ok(Ca { cert_pem, key })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `name` with `role` (and `identity`, for signers and the
    /// coordinator), valid for localhost, and writes `<name>.pem` / `<name>.key` (0600)
    /// into `dir`, replacing existing files.
    pub fn issue(
        &self,
        dir: &Path,
        name: &str,
        role: Role,
        identity: Option<&IdentityPublic>,
    ) -> Result<(), Error> {
        let local = ["localhost", "127.0.0.1", "::1"].map(String::from);
        self.issue_for(dir, name, role, identity, &local)
    }

    /// [`Ca::issue`] for the host names and IP addresses in `hosts` (what clients
    /// connect to: they check the server's certificate against the host they dialled).
    pub fn issue_for(
        &self,
        dir: &Path,
        name: &str,
        role: Role,
        identity: Option<&IdentityPublic>,
        hosts: &[String],
    ) -> Result<(), Error> {
        if hosts.is_empty() {
            return Err(Error::Certificate(
                "at least one host name or IP address".into(),
            ));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        params.distinguished_name = dn;
        for h in hosts {
            params
                .subject_alt_names
                .push(match h.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => {
                        SanType::DnsName(h.clone().try_into().map_err(|_| {
                            Error::Certificate(format!("host {h:?}: not a DNS name"))
                        })?)
                    }
                });
        }
        let uri = |s: String| -> Result<SanType, Error> { Ok(SanType::URI(s.try_into()?)) };
        params
            .subject_alt_names
            .push(uri(format!("{ROLE_PREFIX}{}", role.as_str()))?);
        params
            .subject_alt_names
            .push(uri(format!("{NAME_PREFIX}{name}"))?);
        if let Some(id) = identity {
            params.subject_alt_names.push(uri(format!(
                "{IDENTITY_PREFIX}{}",
                hex::encode(id.to_bytes())
            ))?);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        let cert_path = dir.join(format!("{name}.pem"));
        std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
        let key_path = dir.join(format!("{name}.key"));
        let _ = std::fs::remove_file(&key_path);
        custody_hsm::write_private(&key_path, key.serialize_pem().as_bytes())
            .map_err(io(&key_path))?;
        Ok(())
    }
}

/// What a certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The holder's role.
    pub role: Role,
    /// The holder's name.
    pub name: String,
    /// The holder's protocol identity, if it has one.
    pub identity: Option<IdentityPublic>,
}

/// Reads role, name and identity from a DER certificate (no signature check).
pub fn peer_info(der: &[u8]) -> Result<PeerInfo, Error> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| Error::Certificate(e.to_string()))?;
    info_of(&cert)
}

fn info_of(cert: &X509Certificate<'_>) -> Result<PeerInfo, Error> {
    let mut role = None;
    let mut name = None;
    let mut identity = None;
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for gn in &san.general_names {
                if let GeneralName::URI(u) = gn {
                    if let Some(r) = u.strip_prefix(ROLE_PREFIX) {
                        role = Role::parse(r);
                    } else if let Some(n) = u.strip_prefix(NAME_PREFIX) {
                        name = Some(n.to_string());
                    } else if let Some(i) = u.strip_prefix(IDENTITY_PREFIX) {
                        let bytes = hex::decode(i)
                            .map_err(|_| Error::Certificate("identity is not hex".into()))?;
                        identity = Some(
                            IdentityPublic::from_bytes(&bytes)
                                .map_err(|e| Error::Certificate(format!("identity: {e}")))?,
                        );
                    }
                }
            }
        }
    }
    Ok(PeerInfo {
        role: role.ok_or_else(|| Error::Certificate("no custody role".into()))?,
        name: name.ok_or_else(|| Error::Certificate("no custody name".into()))?,
        identity,
    })
}

/// The DNS names and IP addresses a DER certificate is valid for.
pub fn hosts(der: &[u8]) -> Result<Vec<String>, Error> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| Error::Certificate(e.to_string()))?;
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for gn in &san.general_names {
                match gn {
                    GeneralName::DNSName(d) => out.push(d.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => out.push(
                            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).expect("4"))
                                .to_string(),
                        ),
                        16 => out.push(
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).expect("16"))
                                .to_string(),
                        ),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

/// Parses a PEM certificate file's first certificate into DER.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, Error> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| Error::Certificate(e.to_string()))?;
    Ok(p.contents)
}

/// SHA-256 of a DER certificate's SubjectPublicKeyInfo (what HPKP-style pins and
/// Chromium's `--ignore-certificate-errors-spki-list` name).
pub fn spki_sha256(der: &[u8]) -> Result<[u8; 32], Error> {
    use sha2::Digest;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| Error::Certificate(e.to_string()))?;
    Ok(sha2::Sha256::digest(cert.public_key().raw).into())
}

/// Checks that `der` is signed by the CA certificate `ca_der` and currently valid, and
/// returns what it says.
pub fn verify_issued_by(der: &[u8], ca_der: &[u8]) -> Result<PeerInfo, Error> {
    let (_, ca) =
        X509Certificate::from_der(ca_der).map_err(|e| Error::Certificate(e.to_string()))?;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| Error::Certificate(e.to_string()))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| Error::NotIssuedByCa)?;
    if !cert.validity().is_valid() {
        return Err(Error::Certificate(
            "certificate is expired or not yet valid".into(),
        ));
    }
    info_of(&cert)
}

/// The mTLS files of one member of a cluster (the `[tls]` table of a daemon config).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// This member's certificate (PEM).
    pub cert: PathBuf,
    /// This member's private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of `name` in the directory `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }

    fn identity(&self) -> Result<tonic::transport::Identity, Error> {
        Ok(tonic::transport::Identity::from_pem(
            read(&self.cert)?,
            read(&self.key)?,
        ))
    }

    /// Server side: our certificate, and client certificates required and checked
    /// against the CA.
    pub fn server(&self) -> Result<tonic::transport::ServerTlsConfig, Error> {
        Ok(tonic::transport::ServerTlsConfig::new()
            .identity(self.identity()?)
            .client_ca_root(tonic::transport::Certificate::from_pem(read(&self.ca)?)))
    }

    /// Client side: trust only the CA, present our certificate. The server's
    /// certificate is checked against the host dialled (a DNS name or an IP address in
    /// its subject alternative names), on top of the role and name checks per RPC.
    pub fn client(&self) -> Result<tonic::transport::ClientTlsConfig, Error> {
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&self.ca)?))
            .identity(self.identity()?))
    }

    /// Our certificate, DER.
    pub fn cert_der(&self) -> Result<Vec<u8>, Error> {
        pem_to_der(&read(&self.cert)?)
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> Result<Vec<u8>, Error> {
        pem_to_der(&read(&self.ca)?)
    }
}

/// The caller of an RPC, from its TLS client certificate. `UNAUTHENTICATED` without a
/// certificate; `PERMISSION_DENIED` when its role is not in `allowed`.
pub fn authorize<T>(req: &tonic::Request<T>, allowed: &[Role]) -> Result<PeerInfo, tonic::Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| tonic::Status::unauthenticated("a client certificate is required"))?;
    let der = certs
        .first()
        .ok_or_else(|| tonic::Status::unauthenticated("a client certificate is required"))?;
    let info = cached_peer_info(der.as_ref())
        .map_err(|e| tonic::Status::permission_denied(format!("client certificate: {e}")))?;
    if !allowed.contains(&info.role) {
        return Err(tonic::Status::permission_denied(format!(
            "role {} may not call this method",
            info.role
        )));
    }
    Ok(info)
}

/// [`peer_info`], remembered by the exact certificate bytes. The TLS handshake has
/// already checked the certificate against the CA; this only saves re-parsing it on
/// every call. Bounded: the cache is cleared when it reaches 1024 entries.
fn cached_peer_info(der: &[u8]) -> Result<PeerInfo, Error> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<Vec<u8>, PeerInfo>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(info) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(der) {
        return Ok(info.clone());
    }
    let info = peer_info(der)?;
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= 1024 {
        c.clear();
    }
    c.insert(der.to_vec(), info.clone());
    Ok(info)
}

/// Loads a process's protocol identity from `path` (sealed by `sealer` under `aad`), or
/// creates and stores a fresh one. The file holds only the sealed blob.
pub fn load_or_create_identity(
    path: &Path,
    sealer: &dyn custody_hsm::Sealer,
    aad: &[u8],
) -> Result<custody_protocol::IdentityKey, Error> {
    if path.exists() {
        let blob = std::fs::read(path).map_err(io(path))?;
        let secret = sealer
            .unseal(aad, &blob)
            .map_err(|e| Error::Certificate(format!("identity {}: {e}", path.display())))?;
        let bytes: &[u8; 64] = secret[..].try_into().map_err(|_| {
            Error::Certificate(format!("identity {}: wrong length", path.display()))
        })?;
        Ok(custody_protocol::IdentityKey::from_secret_bytes(bytes))
    } else {
        let key = custody_protocol::IdentityKey::generate(&mut rand_core::OsRng);
        let blob = sealer
            .seal(aad, &key.to_secret_bytes()[..])
            .map_err(|e| Error::Certificate(format!("identity {}: {e}", path.display())))?;
        custody_hsm::write_private(path, &blob).map_err(io(path))?;
        Ok(key)
    }
}

/// Binds `listen`. With port 0, first tries the address recorded in `addr_file` by a
/// previous run (so peers find a restarted daemon where it was), then any free port.
/// Records the bound address in `addr_file`.
pub async fn bind_reusing(
    listen: std::net::SocketAddr,
    addr_file: &Path,
) -> std::io::Result<tokio::net::TcpListener> {
    let mut listener = None;
    if listen.port() == 0 {
        if let Ok(prev) = std::fs::read_to_string(addr_file) {
            if let Ok(prev) = prev.trim().parse::<std::net::SocketAddr>() {
                if prev.ip() == listen.ip() {
                    listener = tokio::net::TcpListener::bind(prev).await.ok();
                }
            }
        }
    }
    let listener = match listener {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(listen).await?,
    };
    std::fs::write(addr_file, listener.local_addr()?.to_string())?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_protocol::Identity;

    #[test]
    fn issue_parse_and_verify() {
        let dir = std::env::temp_dir().join(format!("custody-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::create(&dir, "test").unwrap();
        let id = IdentityPublic {
            verify: custody_protocol::IdentityKey::from_secret_bytes(&[1; 64])
                .public()
                .verify,
            encrypt: [2; 32],
        };
        ca.issue(&dir, "signer-1", Role::Signer, Some(&id)).unwrap();
        let files = TlsFiles::in_dir(&dir, "signer-1");
        let der = files.cert_der().unwrap();
        let info = verify_issued_by(&der, &files.ca_der().unwrap()).unwrap();
        assert_eq!(info.role, Role::Signer);
        assert_eq!(info.name, "signer-1");
        assert_eq!(info.identity, Some(id));

        // A certificate from another CA is refused.
        let other = dir.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let ca2 = Ca::create(&other, "other").unwrap();
        ca2.issue(&other, "signer-1", Role::Signer, Some(&id))
            .unwrap();
        let der2 = TlsFiles::in_dir(&other, "signer-1").cert_der().unwrap();
        assert!(matches!(
            verify_issued_by(&der2, &files.ca_der().unwrap()),
            Err(Error::NotIssuedByCa)
        ));
        // Reloading the CA issues certificates the old CA cert verifies.
        let again = Ca::load(&dir).unwrap();
        again.issue(&dir, "op", Role::Operator, None).unwrap();
        let op = TlsFiles::in_dir(&dir, "op").cert_der().unwrap();
        assert_eq!(
            verify_issued_by(&op, &files.ca_der().unwrap())
                .unwrap()
                .role,
            Role::Operator
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
