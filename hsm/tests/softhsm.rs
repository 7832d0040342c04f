//! The PKCS#11 sealer against a real SoftHSM2 token.
//!
//! Needs `softhsm2` (`apt-get install softhsm2`). Without it the tests fail when `CI`
//! is set (CI installs it) and are skipped with a message otherwise.

use std::sync::Arc;

use custody_hsm::{Error, Pkcs11Sealer, Sealer, SealerConfig};

mod common;

use common::{softhsm, token, PIN};

/// Every token these tests use (created before the module is initialized).
const TOKENS: &[&str] = &[
    "seal-basic",
    "seal-a",
    "seal-b",
    "seal-concurrent",
    "seal-reconnect",
    "seal-errors",
    "identity",
];

#[test]
fn seals_inside_the_token_and_binds_associated_data() {
    let Some(opts) = token("seal-basic") else {
        return;
    };
    let s = Pkcs11Sealer::open(opts.clone()).expect("open");
    assert!(!s.is_insecure());
    assert!(s.describe().contains("seal-basic"));
    assert!(
        s.key_is_protected().expect("attributes"),
        "key must be sensitive and non-extractable"
    );

    let aad = b"custody/v1/key-share\0signer-1\0k-1\0v1";
    let blob = s.seal(aad, b"a key share").expect("seal");
    assert!(
        !blob.windows(11).any(|w| w == b"a key share"),
        "plaintext in the blob"
    );
    assert_eq!(&s.unseal(aad, &blob).expect("unseal")[..], b"a key share");
    // Same plaintext twice: different blobs (fresh IV).
    assert_ne!(blob, s.seal(aad, b"a key share").expect("seal"));
    // Moved to another key or signer: refused.
    assert!(matches!(
        s.unseal(b"custody/v1/key-share\0signer-2\0k-1\0v1", &blob),
        Err(Error::Unseal)
    ));
    // Any flipped byte: refused.
    for i in 0..blob.len() {
        let mut b = blob.clone();
        b[i] ^= 0x01;
        assert!(s.unseal(aad, &b).is_err(), "flipped byte {i} accepted");
    }
    assert!(matches!(s.unseal(aad, &blob[..10]), Err(Error::Unseal)));

    // The key persists in the token: a new sealer (a restarted signer) unseals.
    let again = Pkcs11Sealer::open(opts).expect("reopen");
    assert_eq!(
        &again.unseal(aad, &blob).expect("unseal after reopen")[..],
        b"a key share"
    );
}

#[test]
fn another_token_cannot_unseal() {
    let (Some(a), Some(b)) = (token("seal-a"), token("seal-b")) else {
        return;
    };
    let a = Pkcs11Sealer::open(a).expect("a");
    let b = Pkcs11Sealer::open(b).expect("b");
    let blob = a.seal(b"aad", b"secret").expect("seal");
    let r = b.unseal(b"aad", &blob);
    assert!(matches!(r, Err(Error::Unseal)), "{r:?}");
}

#[test]
fn concurrent_use_shares_a_session_pool() {
    let Some(opts) = token("seal-concurrent") else {
        return;
    };
    let s = Arc::new(Pkcs11Sealer::open(opts).expect("open"));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let aad = format!("thread {t} item {i}");
                    let pt = format!("secret {t}/{i}");
                    let blob = s.seal(aad.as_bytes(), pt.as_bytes()).expect("seal");
                    assert_eq!(
                        &s.unseal(aad.as_bytes(), &blob).expect("unseal")[..],
                        pt.as_bytes()
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

#[test]
fn recovers_when_the_login_is_lost() {
    let Some(opts) = token("seal-reconnect") else {
        return;
    };
    let s = Pkcs11Sealer::open(opts.clone()).expect("open");
    let blob = s.seal(b"x", b"before").expect("seal");
    // Log the application out of the token behind the sealer's back (as a token reset
    // would): every pooled session loses its login.
    let ctx = cryptoki::context::Pkcs11::new(&opts.module).expect("module");
    let _ = ctx.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ));
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|sl| {
            ctx.get_token_info(*sl)
                .map(|i| i.label().trim_end() == "seal-reconnect")
                .unwrap_or(false)
        })
        .expect("slot");
    let session = ctx.open_rw_session(slot).expect("session");
    session.logout().expect("logout");
    assert!(
        s.seal(b"z", b"while logged out").is_ok(),
        "the sealer logs in again"
    );
    assert_eq!(
        &s.unseal(b"x", &blob).expect("unseal after reconnect")[..],
        b"before"
    );
    let blob2 = s.seal(b"y", b"after").expect("seal after reconnect");
    assert_eq!(&s.unseal(b"y", &blob2).expect("unseal")[..], b"after");
}

#[test]
fn clear_errors_for_wrong_pin_token_and_config() {
    let Some(mut opts) = token("seal-errors") else {
        return;
    };
    opts.pin = "wrong-pin".to_string().into();
    let e = Pkcs11Sealer::open(opts.clone()).expect_err("wrong PIN");
    assert!(e.to_string().contains("PIN is incorrect"), "{e}");
    opts.token_label = "no-such-token".into();
    let e = Pkcs11Sealer::open(opts.clone()).expect_err("no token");
    assert!(
        e.to_string()
            .contains("no token labelled \"no-such-token\""),
        "{e}"
    );

    // The config path: PIN from a file, from the environment, never both.
    let dir = softhsm().expect("softhsm");
    let pin_file = dir.join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).expect("pin file");
    let cfg = SealerConfig::Pkcs11 {
        module: opts.module.clone(),
        token_label: "seal-errors".into(),
        key_label: "custody-sealing-key".into(),
        pin_file: Some(pin_file.clone()),
        pin_env: None,
        module_env: Default::default(),
    };
    let s = cfg.open().expect("open from config");
    let blob = s.seal(b"a", b"b").expect("seal");
    std::env::set_var("CUSTODY_TEST_PIN", PIN);
    let by_env = SealerConfig::Pkcs11 {
        module: opts.module.clone(),
        token_label: "seal-errors".into(),
        key_label: "custody-sealing-key".into(),
        pin_file: None,
        pin_env: Some("CUSTODY_TEST_PIN".into()),
        module_env: Default::default(),
    };
    assert_eq!(
        &by_env
            .open()
            .expect("open by env")
            .unseal(b"a", &blob)
            .expect("unseal")[..],
        b"b"
    );
    let both = SealerConfig::Pkcs11 {
        module: opts.module.clone(),
        token_label: "seal-errors".into(),
        key_label: "custody-sealing-key".into(),
        pin_file: Some(pin_file),
        pin_env: Some("CUSTODY_TEST_PIN".into()),
        module_env: Default::default(),
    };
    assert!(matches!(both.open(), Err(Error::Config(_))));
    let text = toml::to_string(&cfg).expect("toml");
    assert!(text.contains("kind = \"pkcs11\""), "{text}");
    assert!(!text.contains(PIN));
    let missing = SealerConfig::Pkcs11 {
        module: "/nonexistent/libpkcs11.so".into(),
        token_label: "x".into(),
        key_label: "k".into(),
        pin_file: None,
        pin_env: Some("CUSTODY_TEST_PIN".into()),
        module_env: Default::default(),
    };
    let unapplied = SealerConfig::Pkcs11 {
        module: opts.module.clone(),
        token_label: "seal-errors".into(),
        key_label: "custody-sealing-key".into(),
        pin_file: None,
        pin_env: Some("CUSTODY_TEST_PIN".into()),
        module_env: [("CUSTODY_TEST_NEVER_SET".to_string(), "x".to_string())].into(),
    };
    assert!(matches!(unapplied.open(), Err(Error::Config(_))));
    let e = missing.open().expect_err("missing module");
    assert!(e.to_string().contains("/nonexistent/libpkcs11.so"), "{e}");
}

#[test]
fn identity_signing_key_lives_in_the_token() {
    use custody_protocol::identity::{open_envelope, seal_envelope, OpeningKey};
    use custody_protocol::{Identity, ParticipantId, Roster};

    let Some(opts) = token("identity") else {
        return;
    };
    let sealer = Arc::new(Pkcs11Sealer::open(opts.clone()).expect("open"));
    let opening = OpeningKey::from_secret_bytes(&[7; 32]);
    let id = custody_hsm::TokenIdentity::open(sealer.clone(), "custody-identity/signer-1", opening)
        .expect("identity");
    let public = id.public();

    // Signatures made in the token verify under RFC 8032 strict rules.
    let msg = b"custody/v1/envelope\0hello";
    let sig = id.sign_raw(msg).expect("sign");
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&public.verify).expect("key");
    vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig))
        .expect("valid signature");
    assert!(vk
        .verify_strict(b"other", &ed25519_dalek::Signature::from_bytes(&sig))
        .is_err());

    // Envelopes signed through the token open with the roster entry.
    let header = custody_protocol::wire::Header {
        suite: custody_protocol::Suite::Ed25519,
        kind: custody_protocol::wire::Kind::DkgEcho,
        session: custody_protocol::SessionId([1; 32]),
        from: ParticipantId::new(1).expect("id"),
        to: None,
    };
    let mut body = header.to_bytes();
    body.extend_from_slice(&[9; 32]);
    let env = seal_envelope(&id, &body).expect("envelope");
    let mut roster = Roster::new();
    roster.insert(ParticipantId::new(1).expect("id"), public);
    assert_eq!(open_envelope(&roster, &env).expect("opens").body, &body[..]);

    // The same label after a restart is the same key; the private half is not readable.
    let again = custody_hsm::TokenIdentity::open(
        sealer.clone(),
        "custody-identity/signer-1",
        OpeningKey::from_secret_bytes(&[7; 32]),
    )
    .expect("reopen");
    assert_eq!(again.public(), public);
    let other = custody_hsm::TokenIdentity::open(
        sealer,
        "custody-identity/signer-2",
        OpeningKey::from_secret_bytes(&[8; 32]),
    )
    .expect("another identity");
    assert_ne!(other.public().verify, public.verify);
    assert!(
        !format!("{id:?}").contains("0707"),
        "the opening secret is not printed"
    );
}
