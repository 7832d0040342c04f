//! Shared setup of the SoftHSM2 tests: one configuration and token directory per test
//! process (the module reads `SOFTHSM2_CONF` and finds its tokens once, when it is
//! initialized), with every token of the test file's `TOKENS` created up front.
//!
//! Without `softhsm2` the tests fail when `CI` is set (CI installs it) and are skipped
//! with a message otherwise.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use custody_hsm::Pkcs11Options;

const SO_PIN: &str = "0000-so";
pub const PIN: &str = "1234-user";

pub fn module() -> Option<PathBuf> {
    let m = std::env::var_os("CUSTODY_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    if m.exists() {
        return Some(m);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "PKCS#11 module {} is missing: CI must install softhsm2",
            m.display()
        );
    }
    eprintln!(
        "skipping: PKCS#11 module {} not installed (apt-get install softhsm2)",
        m.display()
    );
    None
}

/// One SoftHSM2 configuration and token directory for the whole test process.
pub fn softhsm() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        module()?;
        let dir = std::env::temp_dir().join(format!("custody-softhsm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tokens")).expect("token dir");
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.join("tokens").display()
            ),
        )
        .expect("conf");
        std::env::set_var("SOFTHSM2_CONF", &conf);
        for label in crate::TOKENS {
            let out = Command::new("softhsm2-util")
                .args([
                    "--init-token",
                    "--free",
                    "--label",
                    label,
                    "--so-pin",
                    SO_PIN,
                    "--pin",
                    PIN,
                ])
                .env("SOFTHSM2_CONF", &conf)
                .output()
                .expect("softhsm2-util");
            assert!(
                out.status.success(),
                "init token {label}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(dir)
    })
    .as_ref()
}

/// The options of the test token `label` (one of [`TOKENS`]).
pub fn token(label: &str) -> Option<Pkcs11Options> {
    assert!(crate::TOKENS.contains(&label), "add {label} to TOKENS");
    softhsm()?;
    Some(Pkcs11Options {
        module: module()?,
        token_label: label.to_string(),
        key_label: "custody-sealing-key".into(),
        pin: PIN.to_string().into(),
    })
}
