//! What every daemon's gRPC server shares: binding (keeping the previous address),
//! pid and address files, mTLS, health and reflection services, `TCP_NODELAY`, and a
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use custody_hsm::Sealer as _;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::{Server, ServerTlsConfig};

/// Errors that stop a daemon from starting or serving.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration or files.
    #[error("{0}")]
    Config(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed.
    #[error("server: {0}")]
    Serve(String),
}

/// The file where a running daemon writes the address it listens on.
pub fn addr_file(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("listen-addr")
}

/// A daemon's identity, wherever its keys live.
pub type SharedIdentity = std::sync::Arc<dyn custody_protocol::Identity + Send + Sync>;

/// Creates `data_dir` if needed, opens the sealing backend (warning loudly when it is
/// insecure) and loads the daemon's identity, creating it on first start:
/// - software sealer: both identity keys sealed in `data_dir/identity.sealed`;
/// - PKCS#11: the Ed25519 signing key in the token, labelled `custody-identity/<name>`,
///   and the X25519 opening key sealed by the token in `data_dir/identity-x25519.sealed`.
pub fn open_identity(
    what: &str,
    name: &str,
    data_dir: &Path,
    sealer: &custody_hsm::SealerConfig,
    aad: &[u8],
) -> Result<(SharedIdentity, std::sync::Arc<dyn custody_hsm::Sealer>), StartError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| StartError::Config(format!("{}: {e}", data_dir.display())))?;
    let cfg = |e: String| StartError::Config(e);
    match sealer.open_backend().map_err(|e| cfg(e.to_string()))? {
        custody_hsm::Backend::Software(sealer) => {
            tracing::warn!("{what} seals its secrets with the INSECURE software sealer: development only, NOT FOR PRODUCTION");
            let key = crate::load_or_create_identity(
                &data_dir.join("identity.sealed"),
                sealer.as_ref(),
                aad,
            )
            .map_err(|e| cfg(e.to_string()))?;
            Ok((std::sync::Arc::new(key), sealer))
        }
        custody_hsm::Backend::Pkcs11(token) => {
            let mut x_aad = aad.to_vec();
            x_aad.extend_from_slice(b"\0x25519");
            let path = data_dir.join("identity-x25519.sealed");
            let opening = if path.exists() {
                let blob =
                    std::fs::read(&path).map_err(|e| cfg(format!("{}: {e}", path.display())))?;
                let secret = token
                    .unseal(&x_aad, &blob)
                    .map_err(|e| cfg(format!("{}: {e}", path.display())))?;
                let bytes: [u8; 32] = secret[..]
                    .try_into()
                    .map_err(|_| cfg(format!("{}: wrong length", path.display())))?;
                custody_protocol::identity::OpeningKey::from_secret_bytes(&bytes)
            } else {
                let key = custody_protocol::identity::OpeningKey::generate(&mut rand_core::OsRng);
                let blob = token
                    .seal(&x_aad, &key.to_secret_bytes()[..])
                    .map_err(|e| cfg(e.to_string()))?;
                custody_hsm::write_private(&path, &blob)
                    .map_err(|e| cfg(format!("{}: {e}", path.display())))?;
                key
            };
            let identity = custody_hsm::TokenIdentity::open(
                token.clone(),
                &format!("custody-identity/{name}"),
                opening,
            )
            .map_err(|e| cfg(e.to_string()))?;
            Ok((std::sync::Arc::new(identity), token))
        }
    }
}

/// Checks at start that the daemon's own certificate is issued by the cluster CA and
/// certifies `role`, `name` and this identity; returns the certificate and the CA
/// certificate (DER).
pub fn check_own_certificate(
    files: &crate::TlsFiles,
    role: crate::Role,
    name: &str,
    identity: &custody_protocol::IdentityPublic,
) -> Result<(Vec<u8>, Vec<u8>), StartError> {
    let cfg = |e: String| StartError::Config(e);
    let cert_der = files.cert_der().map_err(|e| cfg(e.to_string()))?;
    let ca_der = files.ca_der().map_err(|e| cfg(e.to_string()))?;
    let info = crate::verify_issued_by(&cert_der, &ca_der).map_err(|e| cfg(e.to_string()))?;
    if info.role != role || info.name != name || info.identity.as_ref() != Some(identity) {
        return Err(cfg(format!(
            "certificate {} does not certify {role} {name} with this identity (it says {} {})",
            files.cert.display(),
            info.role,
            info.name
        )));
    }
    Ok((cert_der, ca_der))
}

/// Binds `listen` (see [`crate::bind_reusing`]; the address goes to [`addr_file`]) and
/// writes the process id to `data_dir/pid`.
pub async fn listen(
    listen: SocketAddr,
    data_dir: &Path,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let listener = crate::bind_reusing(listen, &addr_file(data_dir))
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Serve(e.to_string()))?;
    let pid_file = data_dir.join("pid");
    std::fs::write(&pid_file, std::process::id().to_string())
        .map_err(|e| StartError::Config(format!("{}: {e}", pid_file.display())))?;
    Ok((listener, addr))
}

/// Serves over mTLS on `listener` until `shutdown` resolves: gRPC health (reporting
/// `service` as serving) and reflection, plus what `add` adds to the router.
pub async fn serve(
    tls: ServerTlsConfig,
    listener: tokio::net::TcpListener,
    request_timeout: Duration,
    service: &str,
    add: impl FnOnce(Router) -> Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status(service, tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(custody_protocol::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Serve(e.to_string()))?;
    let router = Server::builder()
        .tls_config(tls)
        .map_err(|e| StartError::Serve(e.to_string()))?
        .timeout(request_timeout)
        .add_service(health)
        .add_service(reflection);
    // A custom listener does not get the builder's `tcp_nodelay`: set it here, or small
    // answers wait for delayed ACKs (40 ms).
    add(router)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(|e| StartError::Serve(e.to_string()))
}

/// What [`harden_process`] managed to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardening {
    /// Core dumps are off (`RLIMIT_CORE` 0 and not dumpable).
    pub core_dumps_disabled: bool,
    /// All current and future memory is locked (kept out of swap).
    pub memory_locked: bool,
    /// What could not be done, and what to change to allow it.
    pub warnings: Vec<String>,
}

/// Hardening a process that holds secrets can do on Linux without a TEE: no core dumps
/// (`RLIMIT_CORE` = 0 and `PR_SET_DUMPABLE` 0, which also stops same-user `ptrace` and
/// reads of `/proc/PID/mem`), and memory locked out of swap (`mlockall`) where the
/// process may lock all it uses: as root (`CAP_IPC_LOCK`) or with an unlimited
/// `RLIMIT_MEMLOCK`. With a lower limit, locking future allocations would make them
/// fail once the limit is reached, so memory is left unlocked with a warning instead.
/// Call it at start, before secrets are loaded.
pub fn harden_process() -> Hardening {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let mut warnings = Vec::new();
    let mut core_dumps_disabled = true;
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        core_dumps_disabled = false;
        warnings.push(format!("core dumps: cannot set RLIMIT_CORE to 0: {e}"));
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        core_dumps_disabled = false;
        warnings.push(format!("core dumps: PR_SET_DUMPABLE failed: {e}"));
    }
    let may_lock_all = nix::unistd::Uid::effective().is_root()
        || getrlimit(Resource::RLIMIT_MEMLOCK).is_ok_and(|(soft, hard)| {
            soft == RLIM_INFINITY
                || (hard == RLIM_INFINITY
                    && setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_ok())
        });
    let mut memory_locked = false;
    if may_lock_all {
        use nix::sys::mman::{mlockall, MlockAllFlags};
        // MCL_ONFAULT (Linux 4.4+; value 4, which nix does not name): lock pages as they
        // are touched instead of faulting in every reserved mapping (thread stacks,
        // allocator arenas) at once, which would pin hundreds of MiB per process.
        const MCL_ONFAULT: i32 = 4;
        let flags = MlockAllFlags::MCL_CURRENT
            | MlockAllFlags::MCL_FUTURE
            | MlockAllFlags::from_bits_retain(MCL_ONFAULT);
        match mlockall(flags)
            .or_else(|_| mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE))
        {
            Ok(()) => memory_locked = true,
            Err(e) => warnings.push(format!(
                "memory is not locked (secrets may reach swap): mlockall failed: {e}"
            )),
        }
    } else {
        warnings.push(
            "memory is not locked (secrets may reach swap): RLIMIT_MEMLOCK is limited; run as root or with \
             LimitMEMLOCK=infinity (systemd) / ulimit -l unlimited, or disable swap"
                .to_string(),
        );
    }
    Hardening {
        core_dumps_disabled,
        memory_locked,
        warnings,
    }
}

/// Applies [`harden_process`] and logs the outcome.
pub fn harden_and_log(what: &str) -> Hardening {
    let h = harden_process();
    for w in &h.warnings {
        tracing::warn!("{what}: {w}");
    }
    tracing::info!(
        core_dumps_disabled = h.core_dumps_disabled,
        memory_locked = h.memory_locked,
        "{what}: process hardening"
    );
    h
}
