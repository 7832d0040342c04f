//! The configuration reference matches the code: the production examples parse with
//! each daemon's own parser (unknown keys are refused there), and every key they use,
//! and every key `custody dev` writes, is documented in docs/configuration.md.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every key of a TOML document, at any depth (tables and arrays of tables).
fn keys(v: &toml::Value, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                out.insert(k.clone());
                keys(v, out);
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

fn documented(text: &str, docs: &str, what: &str) {
    let v: toml::Value = toml::from_str(text).expect("toml");
    let mut all = BTreeSet::new();
    keys(&v, &mut all);
    // Free-form: environment variables for a PKCS#11 module.
    let free: BTreeSet<&str> = ["ChrystokiConfigurationPath", "SOFTHSM2_CONF"].into();
    for k in all.iter().filter(|k| !free.contains(k.as_str())) {
        assert!(
            docs.contains(&format!("`{k}`"))
                || docs.contains(&format!(".{k}`"))
                || docs.contains(&format!("[{k}]"))
                || docs.contains(&format!("[[{k}]]")),
            "{what}: key `{k}` is not in docs/configuration.md"
        );
    }
}

#[test]
fn production_examples_parse_and_every_key_is_documented() {
    let docs = std::fs::read_to_string(root().join("docs/configuration.md")).expect("docs");
    let ex = root().join("examples/production");
    let read = |f: &str| std::fs::read_to_string(ex.join(f)).expect(f);

    let s = read("signer-1.toml");
    let c = custody_signer::Config::parse(&s).expect("signer-1.toml");
    assert!(c.metrics_listen.is_some() && c.fault_injection.is_none());
    documented(&s, &docs, "signer-1.toml");

    let s = read("coordinator.toml");
    let c = custody_coordinator::Config::parse(&s).expect("coordinator.toml");
    assert_eq!(c.signers.len(), 5, "a 3-of-5 layout");
    assert_eq!(c.default_threshold, 3);
    assert!(c.console_listen.is_some());
    documented(&s, &docs, "coordinator.toml");
    // Out-of-range timeouts are refused with the key's name.
    for (from, to, key) in [
        ("sign_ms = 2000", "sign_ms = 0", "timeouts.sign_ms"),
        ("dkg_ms = 30000", "dkg_ms = 3600001", "timeouts.dkg_ms"),
    ] {
        assert!(s.contains(from), "{from}");
        let e = custody_coordinator::Config::parse(&s.replace(from, to))
            .expect_err("out-of-range timeout");
        assert!(e.contains(key), "{e}");
    }

    let s = read("payments.toml");
    let c = custody_payments::Config::parse(&s).expect("payments.toml");
    assert!(c.settlement.is_some());
    documented(&s, &docs, "payments.toml");
    // Settlement: exactly one address source, an id and a 32-byte pinned key, at load.
    let coord = "coordinator = \"coordinator.custody.internal:7443\"";
    assert!(s.contains(coord));
    for (text, key) in [
        (
            s.replace(coord, &format!("{coord}\ncoordinator_addr_file = \"/x\"")),
            "exactly one of coordinator and coordinator_addr_file",
        ),
        (
            s.replace(coord, ""),
            "exactly one of coordinator and coordinator_addr_file",
        ),
        (
            s.replace("k-00112233445566778899aabbccddeeff", "k 1"),
            "settlement.key_id",
        ),
        (
            s.replacen(
                &c.settlement.as_ref().unwrap().public_key.clone().unwrap(),
                "abcd",
                1,
            ),
            "settlement.public_key",
        ),
    ] {
        let e = custody_payments::Config::parse(&text).expect_err(key);
        assert!(e.contains(key), "{e}");
    }
    // A `[batch]` table with one key keeps the other's default.
    let ages = "max_age_secs = 60\n";
    assert!(s.contains(ages));
    let partial = s
        .replace(ages, "")
        .replace("max_count = 10000", "max_count = 500");
    let b = custody_payments::Config::parse(&partial)
        .expect("partial [batch]")
        .batch;
    assert_eq!((b.max_count, b.max_age_secs), (500, 60));

    // Production examples never use the development sealer.
    let insecure = |c: &custody_hsm::SealerConfig| {
        matches!(c, custody_hsm::SealerConfig::InsecureSoftware { .. })
    };
    assert!(!insecure(
        &custody_signer::Config::parse(&read("signer-1.toml"))
            .unwrap()
            .sealer
    ));
    assert!(!insecure(
        &custody_coordinator::Config::parse(&read("coordinator.toml"))
            .unwrap()
            .sealer
    ));
    assert!(!insecure(&c.sealer));
}

#[test]
fn every_key_custody_dev_writes_is_documented() {
    let docs = std::fs::read_to_string(root().join("docs/configuration.md")).expect("docs");
    let dir = std::env::temp_dir().join(format!("custody-config-ref-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // `custody dev --init-only` writes the configs and starts nothing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_custody"))
        .args(["dev", "--dir"])
        .arg(&dir)
        .args(["--signers", "2", "--threshold", "2", "--init-only"])
        .output()
        .expect("custody dev --init-only");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "signer-1/signer.toml",
        "coordinator/coordinator.toml",
        "payments/payments.toml",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).expect(f);
        documented(&text, &docs, f);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
