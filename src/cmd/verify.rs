//! `custody verify`: offline signature check.

use custody_protocol::Suite;

use super::{parse_hex, Error};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ciphersuite: secp256k1-tr or ed25519.
    #[arg(long)]
    suite: Suite,
    /// 32-byte public key, hex (x-only for secp256k1-tr).
    #[arg(long)]
    public_key: String,
    /// Signed message, hex.
    #[arg(long)]
    message: String,
    /// 64-byte signature, hex.
    #[arg(long)]
    signature: String,
}

pub fn run(a: Args) -> Result<(), Error> {
    let pk: [u8; 32] = parse_hex("--public-key", &a.public_key)?
        .try_into()
        .map_err(|_| "--public-key: must be 32 bytes")?;
    let msg = parse_hex("--message", &a.message)?;
    let sig = parse_hex("--signature", &a.signature)?;
    if sig.len() != 64 {
        return Err("--signature: must be 64 bytes".into());
    }
    if custody_protocol::verify_signature(a.suite, &pk, &msg, &sig) {
        println!("valid");
        Ok(())
    } else {
        Err("signature is not valid for this key and message".into())
    }
}
