//! Sealing inside a PKCS#11 token (an HSM, or SoftHSM2 for tests), through `cryptoki`.
//!
//! A non-extractable, sensitive AES-256 key lives in the token under a label; every
//! seal and unseal is `CKM_AES_GCM` inside the token, with the caller's associated data
//! (key id, signer, share version) authenticated, so a sealed blob cannot be moved to
//! another key or signer. The key never leaves the token: a copy of the data directory
//! without the token reveals nothing.
//!
//! Blob layout: `0x02 ‖ 12-byte IV ‖ ciphertext ‖ 16-byte tag`.
//!
//! Sessions come from a small pool, so concurrent callers do not share a session (the
//! PKCS#11 rule). A call that fails because the session, the login or the token went
//! away drops the pool and retries once on a fresh session (finding the slot by token
//! label again: slot ids can change); if the token is still gone the error says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::{Error, Sealer};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};

const BLOB_VERSION: u8 = 2;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Most idle sessions kept open.
const MAX_IDLE: usize = 8;

/// Where the token is and how to log in.
#[derive(Clone)]
pub struct Pkcs11Options {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Label of the token.
    pub token_label: String,
    /// Label of the AES key (created on first use if absent).
    pub key_label: String,
    /// The user PIN.
    pub pin: AuthPin,
}

impl std::fmt::Debug for Pkcs11Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Options")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .field("pin", &"<redacted>")
            .finish()
    }
}

/// Each module is initialized once per process and shared by every sealer on it; the
/// generation counts re-initializations (see [`reinitialize`]).
type Contexts = Mutex<HashMap<PathBuf, (u64, Pkcs11)>>;

fn contexts() -> &'static Contexts {
    static CONTEXTS: OnceLock<Contexts> = OnceLock::new();
    CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn load(module: &Path) -> Result<Pkcs11, Error> {
    let ctx = Pkcs11::new(module)
        .map_err(|e| Error::Hsm(format!("PKCS#11 module {}: {e}", module.display())))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(ctx),
        Err(e) => Err(Error::Hsm(format!(
            "PKCS#11 module {}: initialize: {}",
            module.display(),
            short(&e)
        ))),
    }
}

/// The module's current context and its generation.
fn context(module: &Path) -> Result<(u64, Pkcs11), Error> {
    let mut map = contexts().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = map.get(module) {
        return Ok(c.clone());
    }
    let ctx = load(module)?;
    map.insert(module.to_path_buf(), (0, ctx.clone()));
    Ok((0, ctx))
}

/// Finalizes and re-initializes the module, unless someone already did since
/// generation `seen`: some modules (SoftHSM2 among them) only enumerate their tokens at
/// initialization, so a token that went away and came back is found only this way.
/// Sessions of the old context fail from then on and are replaced by their owners.
fn reinitialize(module: &Path, seen: u64) -> Result<(u64, Pkcs11), Error> {
    let mut map = contexts().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((generation, ctx)) = map.get(module) {
        if *generation != seen {
            return Ok((*generation, ctx.clone()));
        }
        let _ = ctx.clone().finalize();
    }
    let ctx = load(module)?;
    map.insert(module.to_path_buf(), (seen + 1, ctx.clone()));
    Ok((seen + 1, ctx))
}

/// A PKCS#11 error in one line (cryptoki's own messages quote the whole standard).
fn short(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => format!("{f:?}: {rv:?}"),
        other => other.to_string(),
    }
}

/// Whether an error means the session, the login or the token is gone (worth one
/// retry on a fresh session).
fn is_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::SlotIdInvalid
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid,
            _
        )
    )
}

struct Conn {
    session: Session,
    key: ObjectHandle,
    /// Ed25519 private keys found in this session, by label.
    signing_keys: HashMap<String, ObjectHandle>,
}

/// DER of the Ed25519 curve OID (1.3.101.112), as `CKA_EC_PARAMS`.
const ED25519_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// Sealing by an AES-256 key inside a PKCS#11 token.
///
/// # Security
/// The key is generated in the token as `CKA_SENSITIVE`, non-extractable, and only
/// ever used there. The PIN is held in a `SecretString` and never printed.
pub struct Pkcs11Sealer {
    opts: Pkcs11Options,
    pool: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for Pkcs11Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Sealer")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Sealer {
    /// Opens the token, logs in, and finds (or creates) the sealing key. Fails with a
    /// clear error when the module, the token, the PIN or the key is wrong.
    pub fn open(opts: Pkcs11Options) -> Result<Self, Error> {
        let sealer = Pkcs11Sealer {
            opts,
            pool: Mutex::new(Vec::new()),
        };
        let conn = sealer.connect(true, false)?;
        sealer.put_back(conn);
        Ok(sealer)
    }

    fn hsm(&self, what: &str, e: &CkError) -> Error {
        Error::Hsm(format!(
            "token {:?}: {what}: {}",
            self.opts.token_label,
            short(e)
        ))
    }

    /// A fresh logged-in session with the key found (created if `create` and absent).
    /// With `rescan`, a token that is not found makes the module re-initialize once (it
    /// may have come back since the module last enumerated its tokens).
    fn connect(&self, create: bool, rescan: bool) -> Result<Conn, Error> {
        let label = &self.opts.token_label;
        let find = |ctx: &Pkcs11| -> Option<cryptoki::slot::Slot> {
            ctx.get_slots_with_token().ok()?.into_iter().find(|s| {
                ctx.get_token_info(*s)
                    .map(|i| i.label().trim_end() == label)
                    .unwrap_or(false)
            })
        };
        let (generation, mut ctx) = context(&self.opts.module)?;
        let mut slot = find(&ctx);
        if slot.is_none() && rescan {
            // The token may have come back after the module last looked.
            ctx = reinitialize(&self.opts.module, generation)
                .map_err(|e| Error::Hsm(format!("no token labelled {label:?} ({e})")))?
                .1;
            slot = find(&ctx);
        }
        let slot = slot.ok_or_else(|| {
            Error::Hsm(format!(
                "no token labelled {label:?} in module {}",
                self.opts.module.display()
            ))
        })?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| self.hsm("open session", &e))?;
        match session.login(UserType::User, Some(&self.opts.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(Error::Hsm(format!("token {label:?}: the PIN is incorrect")))
            }
            Err(e) => return Err(self.hsm("login", &e)),
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(self.opts.key_label.as_bytes().to_vec()),
        ];
        let found = session
            .find_objects(&template)
            .map_err(|e| self.hsm("find key", &e))?;
        let key = match found.as_slice() {
            [k] => *k,
            [] if create => self.generate(&session)?,
            [] => {
                return Err(Error::Hsm(format!(
                    "token {label:?}: no AES key labelled {:?}",
                    self.opts.key_label
                )))
            }
            _ => {
                return Err(Error::Hsm(format!(
                    "token {label:?}: {} keys labelled {:?}; expected one",
                    found.len(),
                    self.opts.key_label
                )))
            }
        };
        Ok(Conn {
            session,
            key,
            signing_keys: HashMap::new(),
        })
    }

    fn generate(&self, session: &Session) -> Result<ObjectHandle, Error> {
        let template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::ValueLen(32.into()),
            Attribute::Label(self.opts.key_label.as_bytes().to_vec()),
        ];
        session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| self.hsm("generate AES-256 key", &e))
    }

    fn take(&self) -> Result<Conn, Error> {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match pooled {
            Some(c) => Ok(c),
            None => self.connect(false, true),
        }
    }

    fn put_back(&self, c: Conn) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_IDLE {
            pool.push(c);
        }
    }

    /// Runs `op` on a pooled session; on a lost session or token, drops every pooled
    /// session and retries once on a fresh one.
    fn with_session<T>(
        &self,
        op: impl Fn(&mut Conn) -> Result<T, CkError>,
    ) -> Result<Result<T, CkError>, Error> {
        let mut conn = self.take()?;
        match op(&mut conn) {
            Err(e) if is_lost(&e) => {
                drop(conn);
                self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
                let mut fresh = self.connect(false, true)?;
                let r = op(&mut fresh);
                if r.is_ok() {
                    self.put_back(fresh);
                }
                Ok(r)
            }
            r => {
                self.put_back(conn);
                Ok(r)
            }
        }
    }

    /// The public key of the Ed25519 key pair labelled `label` in the token, generating
    /// the pair there (private half sensitive, non-extractable) if it does not exist.
    pub fn ed25519_key(&self, label: &str) -> Result<[u8; 32], Error> {
        let found = self
            .with_session(|c| find_ed25519(&c.session, label, ObjectClass::PUBLIC_KEY))?
            .map_err(|e| self.hsm("find Ed25519 key", &e))?;
        let public = match found {
            Some(h) => h,
            None => {
                let public = [
                    Attribute::Token(true),
                    Attribute::Verify(true),
                    Attribute::EcParams(ED25519_PARAMS.to_vec()),
                    Attribute::Label(label.as_bytes().to_vec()),
                ];
                let private = [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                ];
                self.with_session(|c| {
                    c.session
                        .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
                })?
                .map_err(|e| self.hsm("generate Ed25519 key pair", &e))?
                .0
            }
        };
        let attrs = self
            .with_session(|c| c.session.get_attributes(public, &[AttributeType::EcPoint]))?
            .map_err(|e| self.hsm("read Ed25519 public key", &e))?;
        let point = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| Error::Hsm("Ed25519 public key without CKA_EC_POINT".into()))?;
        // CKA_EC_POINT is the DER OCTET STRING `04 20 ‖ key` (some modules give the raw key).
        let raw = match point.as_slice() {
            [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
            raw if raw.len() == 32 => raw,
            _ => {
                return Err(Error::Hsm(format!(
                    "Ed25519 public key of {} bytes",
                    point.len()
                )))
            }
        };
        let mut out = [0u8; 32];
        out.copy_from_slice(raw);
        Ok(out)
    }

    /// An Ed25519 (RFC 8032, pure) signature by the token's key labelled `label`.
    pub fn sign_ed25519(&self, label: &str, msg: &[u8]) -> Result<[u8; 64], Error> {
        let sig = self
            .with_session(|c| {
                let key = match c.signing_keys.get(label) {
                    Some(k) => *k,
                    None => {
                        let k = find_ed25519(&c.session, label, ObjectClass::PRIVATE_KEY)?.ok_or(
                            CkError::Pkcs11(
                                RvError::KeyHandleInvalid,
                                cryptoki::context::Function::FindObjects,
                            ),
                        )?;
                        c.signing_keys.insert(label.to_string(), k);
                        k
                    }
                };
                c.session.sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    key,
                    msg,
                )
            })?
            .map_err(|e| self.hsm("Ed25519 sign", &e))?;
        sig.as_slice()
            .try_into()
            .map_err(|_| Error::Hsm(format!("Ed25519 signature of {} bytes", sig.len())))
    }

    /// Reads a key attribute (for tests and status): whether the sealing key is
    /// sensitive and non-extractable.
    pub fn key_is_protected(&self) -> Result<bool, Error> {
        let attrs = self
            .with_session(|c| {
                c.session.get_attributes(
                    c.key,
                    &[AttributeType::Sensitive, AttributeType::Extractable],
                )
            })?
            .map_err(|e| self.hsm("read key attributes", &e))?;
        let mut sensitive = false;
        let mut extractable = true;
        for a in attrs {
            match a {
                Attribute::Sensitive(v) => sensitive = v,
                Attribute::Extractable(v) => extractable = v,
                _ => {}
            }
        }
        Ok(sensitive && !extractable)
    }
}

impl Sealer for Pkcs11Sealer {
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut iv = [0u8; IV_LEN];
        OsRng.fill_bytes(&mut iv);
        let ct = self
            .with_session(|c| {
                let mut iv = iv;
                let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())?;
                c.session
                    .encrypt(&Mechanism::AesGcm(params), c.key, plaintext)
            })?
            .map_err(|e| self.hsm("AES-GCM seal", &e))?;
        let mut out = Vec::with_capacity(1 + IV_LEN + ct.len());
        out.push(BLOB_VERSION);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        if sealed.len() < 1 + IV_LEN + TAG_LEN || sealed[0] != BLOB_VERSION {
            return Err(Error::Unseal);
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&sealed[1..1 + IV_LEN]);
        let body = &sealed[1 + IV_LEN..];
        match self.with_session(|c| {
            let mut iv = iv;
            let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())?;
            c.session.decrypt(&Mechanism::AesGcm(params), c.key, body)
        })? {
            Ok(pt) => Ok(Zeroizing::new(pt)),
            // A tag mismatch (tampered blob, wrong associated data, another key). The
            // standard says CKR_ENCRYPTED_DATA_INVALID; SoftHSM2 answers
            // CKR_GENERAL_ERROR from C_Decrypt once C_DecryptInit has succeeded. A token
            // that is really failing fails the next seal with a clear error.
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::GeneralError,
                cryptoki::context::Function::Decrypt,
            )) => Err(Error::Unseal),
            Err(e) => Err(self.hsm("AES-GCM unseal", &e)),
        }
    }

    fn describe(&self) -> String {
        format!(
            "PKCS#11 token {:?} (module {}), AES-256-GCM key {:?} inside the token",
            self.opts.token_label,
            self.opts.module.display(),
            self.opts.key_label
        )
    }

    fn is_insecure(&self) -> bool {
        false
    }
}

fn find_ed25519(
    session: &Session,
    label: &str,
    class: ObjectClass,
) -> Result<Option<ObjectHandle>, CkError> {
    let template = [
        Attribute::Class(class),
        Attribute::KeyType(KeyType::EC_EDWARDS),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    Ok(session.find_objects(&template)?.into_iter().next())
}

/// A daemon identity whose Ed25519 envelope-signing key lives in a PKCS#11 token.
///
/// The X25519 key that opens round-2 messages is kept sealed by the same token (its
/// AES key) and held in memory while the daemon runs: PKCS#11 modules offer X25519 key
/// agreement unevenly, and HPKE needs the raw shared secret.
///
/// # Security
/// The signing key is generated in the token, sensitive and non-extractable; every
/// envelope is signed there. The opening key is zeroized on drop.
pub struct TokenIdentity {
    sealer: std::sync::Arc<Pkcs11Sealer>,
    label: String,
    verify: [u8; 32],
    opening: custody_protocol::identity::OpeningKey,
}

impl std::fmt::Debug for TokenIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIdentity")
            .field("label", &self.label)
            .field("verify", &hex_short(&self.verify))
            .finish_non_exhaustive()
    }
}

fn hex_short(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}

impl TokenIdentity {
    /// The identity labelled `label` in `sealer`'s token (its Ed25519 key pair created
    /// there on first use), with `opening` as its X25519 key.
    pub fn open(
        sealer: std::sync::Arc<Pkcs11Sealer>,
        label: &str,
        opening: custody_protocol::identity::OpeningKey,
    ) -> Result<Self, Error> {
        let verify = sealer.ed25519_key(label)?;
        Ok(TokenIdentity {
            sealer,
            label: label.to_string(),
            verify,
            opening,
        })
    }
}

impl custody_protocol::Identity for TokenIdentity {
    fn public(&self) -> custody_protocol::IdentityPublic {
        custody_protocol::IdentityPublic {
            verify: self.verify,
            encrypt: self.opening.public(),
        }
    }

    fn sign_raw(&self, msg: &[u8]) -> Result<[u8; 64], custody_protocol::Error> {
        self.sealer
            .sign_ed25519(&self.label, msg)
            .map_err(|e| custody_protocol::Error::IdentityUnavailable(e.to_string()))
    }

    fn open(
        &self,
        header: &custody_protocol::wire::Header,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, custody_protocol::Error> {
        self.opening.open(header, sealed)
    }
}
