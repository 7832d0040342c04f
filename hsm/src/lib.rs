//! # custody-hsm: sealing secrets at rest
//!
//! A signer never writes a key share or identity key to disk in clear: it *seals* it
//! through a [`Sealer`], with associated data that binds the blob to its purpose (key
//! id, signer, version), so a sealed blob cannot be moved to another key or signer.
//!
//! Backends:
//! - [`InsecureSoftwareSealer`]: XChaCha20-Poly1305 under a key kept in a file next to
//!   the data. **For development only**: anyone who copies the data directory copies
//!   the key too. It says so in its name, its description and at start.
//! - [`Pkcs11Sealer`]: AES-256-GCM inside a PKCS#11 token (any HSM with a PKCS#11
//!   module; SoftHSM2 in tests), under a sensitive, non-extractable key.

mod pkcs11;

use std::path::{Path, PathBuf};

pub use pkcs11::{Pkcs11Options, Pkcs11Sealer, TokenIdentity};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

/// Errors of a sealing backend.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The blob is malformed, was tampered with, belongs to another purpose (wrong
    /// associated data) or was sealed under another key.
    #[error("sealed blob rejected: tampered, moved, or sealed under another key")]
    Unseal,
    /// The backend's key could not be read or created.
    #[error("sealing key {path}: {reason}")]
    Key {
        /// Where the key lives.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Encryption failed.
    #[error("sealing failed")]
    Seal,
    /// The HSM (PKCS#11 module, token, session, PIN or key) failed or is unavailable.
    #[error("HSM: {0}")]
    Hsm(String),
    /// The configuration is incomplete or contradictory.
    #[error("sealer configuration: {0}")]
    Config(String),
}

/// Seals and unseals secrets at rest.
pub trait Sealer: Send + Sync + std::fmt::Debug {
    /// Encrypts `plaintext`, authenticating `aad` with it.
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error>;
    /// Decrypts a blob from [`Sealer::seal`] under the same `aad`.
    fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error>;
    /// One line for logs and status: which backend, and whether it is fit for
    /// production.
    fn describe(&self) -> String;
    /// Whether this backend is only for development.
    fn is_insecure(&self) -> bool;
}

const BLOB_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

/// Software sealing for development: XChaCha20-Poly1305 with a 256-bit key in a file.
///
/// # Security
/// NOT FOR PRODUCTION. The key sits in a file beside the data it protects, so a copy
/// of the data directory is a copy of every secret in it. Use it for `custody dev` and
/// tests; use an HSM backend anywhere keys matter.
pub struct InsecureSoftwareSealer {
    cipher: XChaCha20Poly1305,
    path: String,
}

impl std::fmt::Debug for InsecureSoftwareSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InsecureSoftwareSealer")
            .field("path", &self.path)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl InsecureSoftwareSealer {
    /// Opens the key file at `path`, creating it (mode 0600, 32 random bytes) if absent.
    pub fn open_or_create(path: &Path) -> Result<Self, Error> {
        let err = |reason: String| Error::Key {
            path: path.display().to_string(),
            reason,
        };
        let key = if path.exists() {
            let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| err(e.to_string()))?);
            if bytes.len() != 32 {
                return Err(err(format!("expected 32 bytes, found {}", bytes.len())));
            }
            let mut k = Zeroizing::new([0u8; 32]);
            k.copy_from_slice(&bytes);
            k
        } else {
            let mut k = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(&mut k[..]);
            write_private(path, &k[..]).map_err(|e| err(e.to_string()))?;
            k
        };
        Ok(Self::from_key(&key, path.display().to_string()))
    }

    /// A sealer with the given key (tests).
    pub fn from_key(key: &[u8; 32], label: String) -> Self {
        InsecureSoftwareSealer {
            cipher: XChaCha20Poly1305::new(key.into()),
            path: label,
        }
    }
}

impl Sealer for InsecureSoftwareSealer {
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| Error::Seal)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(BLOB_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != BLOB_VERSION {
            return Err(Error::Unseal);
        }
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        self.cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| Error::Unseal)
    }

    fn describe(&self) -> String {
        format!(
            "INSECURE software sealer (key file {}; development only, not for production)",
            self.path
        )
    }

    fn is_insecure(&self) -> bool {
        true
    }
}

/// Which sealing backend a daemon uses (the `[sealer]` table of its TOML config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum SealerConfig {
    /// Development only: a key file next to the data (see [`InsecureSoftwareSealer`]).
    InsecureSoftware {
        /// The key file (created, mode 0600, if absent).
        key_file: PathBuf,
    },
    /// An AES-256 key inside a PKCS#11 token (see [`Pkcs11Sealer`]). The PIN comes
    /// from a file or an environment variable, never from the config or a command line.
    Pkcs11 {
        /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
        module: PathBuf,
        /// Label of the token.
        token_label: String,
        /// Label of the sealing key (created in the token on first use).
        #[serde(default = "default_key_label")]
        key_label: String,
        /// A file holding the user PIN (trailing newline ignored; keep it 0600).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin_file: Option<PathBuf>,
        /// Or: the environment variable holding the user PIN.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin_env: Option<String>,
        /// Environment variables the module reads when it loads (SoftHSM2:
        /// `SOFTHSM2_CONF`; Luna: `ChrystokiConfigurationPath`). The daemon sets them
        /// at start, before any thread exists ([`SealerConfig::apply_module_env`]).
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        module_env: std::collections::BTreeMap<String, String>,
    },
}

/// An opened sealing backend, by kind.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The INSECURE software sealer.
    Software(std::sync::Arc<dyn Sealer>),
    /// A PKCS#11 token.
    Pkcs11(std::sync::Arc<Pkcs11Sealer>),
}

fn default_key_label() -> String {
    "custody-sealing-key".into()
}

impl SealerConfig {
    /// Sets the module's environment variables (see `module_env`). Call it at process
    /// start, before threads exist: the environment is process-wide.
    pub fn apply_module_env(&self) {
        if let SealerConfig::Pkcs11 { module_env, .. } = self {
            for (k, v) in module_env {
                std::env::set_var(k, v);
            }
        }
    }

    /// Opens the backend.
    pub fn open(&self) -> Result<std::sync::Arc<dyn Sealer>, Error> {
        Ok(match self.open_backend()? {
            Backend::Software(s) => s,
            Backend::Pkcs11(s) => s,
        })
    }

    /// Opens the backend, keeping its concrete kind (a PKCS#11 token can also hold the
    /// daemon's identity signing key).
    pub fn open_backend(&self) -> Result<Backend, Error> {
        match self {
            SealerConfig::InsecureSoftware { key_file } => Ok(Backend::Software(
                std::sync::Arc::new(InsecureSoftwareSealer::open_or_create(key_file)?),
            )),
            SealerConfig::Pkcs11 {
                module,
                token_label,
                key_label,
                pin_file,
                pin_env,
                module_env,
            } => {
                for (k, v) in module_env {
                    if std::env::var(k).ok().as_deref() != Some(v.as_str()) {
                        return Err(Error::Config(format!(
                            "module_env: {k} is not set to {v:?} in this process (apply_module_env must run at start)"
                        )));
                    }
                }
                let pin = match (pin_file, pin_env) {
                    (Some(f), None) => {
                        let text = Zeroizing::new(std::fs::read_to_string(f).map_err(|e| {
                            Error::Config(format!("pin_file {}: {e}", f.display()))
                        })?);
                        text.trim_end_matches(['\n', '\r']).to_string()
                    }
                    (None, Some(v)) => std::env::var(v).map_err(|_| {
                        Error::Config(format!("pin_env: environment variable {v} is not set"))
                    })?,
                    _ => {
                        return Err(Error::Config(
                            "pkcs11: give exactly one of pin_file and pin_env".into(),
                        ))
                    }
                };
                Ok(Backend::Pkcs11(std::sync::Arc::new(Pkcs11Sealer::open(
                    Pkcs11Options {
                        module: module.clone(),
                        token_label: token_label.clone(),
                        key_label: key_label.clone(),
                        pin: pin.into(),
                    },
                )?)))
            }
        }
    }
}

/// Writes `data` to a new file readable only by its owner (0600 on Unix).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_binding() {
        let s = InsecureSoftwareSealer::from_key(&[7; 32], "test".into());
        let blob = s.seal(b"key-1/signer-1/v1", b"secret share").unwrap();
        assert_eq!(
            &s.unseal(b"key-1/signer-1/v1", &blob).unwrap()[..],
            b"secret share"
        );
        // Moved to another key id: refused.
        assert!(matches!(
            s.unseal(b"key-2/signer-1/v1", &blob),
            Err(Error::Unseal)
        ));
        // Any flipped byte: refused.
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0x40;
            assert!(s.unseal(b"key-1/signer-1/v1", &b).is_err(), "byte {i}");
        }
        // Another sealer's key: refused.
        let other = InsecureSoftwareSealer::from_key(&[8; 32], "other".into());
        assert!(other.unseal(b"key-1/signer-1/v1", &blob).is_err());
        assert!(s.describe().contains("INSECURE"));
        assert!(!format!("{s:?}").contains("07070707"));
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("custody-hsm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sealing.key");
        let _ = std::fs::remove_file(&path);
        let a = InsecureSoftwareSealer::open_or_create(&path).unwrap();
        let blob = a.seal(b"x", b"y").unwrap();
        let b = InsecureSoftwareSealer::open_or_create(&path).unwrap();
        assert_eq!(&b.unseal(b"x", &blob).unwrap()[..], b"y");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            InsecureSoftwareSealer::open_or_create(&path),
            Err(Error::Key { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
