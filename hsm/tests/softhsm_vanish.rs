//! A token that disappears while a sealer uses it, then comes back. In a process of
//! its own: bringing the token back re-initializes the PKCS#11 module, which would
//! disturb the other tests' sessions.

mod common;

use common::{softhsm, token};
use custody_hsm::{Error, Pkcs11Sealer, Sealer};

const TOKENS: &[&str] = &["vanishing"];

#[test]
fn token_disappearing_gives_errors_then_recovers() {
    let Some(opts) = token("vanishing") else {
        return;
    };
    let s = Pkcs11Sealer::open(opts).expect("open");
    let blob = s.seal(b"a", b"kept").expect("seal");
    let dir = softhsm().expect("softhsm").join("tokens");
    let hidden = dir.with_extension("hidden");
    std::fs::rename(&dir, &hidden).expect("hide the token");
    // Errors, not a crash, and they name the token.
    for r in [
        s.seal(b"a", b"x").map(|_| ()),
        s.unseal(b"a", &blob).map(|_| ()),
    ] {
        match r {
            Err(Error::Hsm(m)) => assert!(m.contains("vanishing"), "{m}"),
            other => panic!("expected an HSM error while the token is gone, got {other:?}"),
        }
    }
    std::fs::rename(&hidden, &dir).expect("bring the token back");
    assert_eq!(
        &s.unseal(b"a", &blob)
            .expect("unseal after the token returns")[..],
        b"kept"
    );
    let again = s.seal(b"b", b"new").expect("seal after the token returns");
    assert_eq!(&s.unseal(b"b", &again).expect("unseal")[..], b"new");
}
