//! `custody demo`: a whole ceremony in one process.
//!
//! Every participant runs the real protocol rounds; messages are encoded, signed,
//! sealed and relayed in memory. Useful to see the engine work before the daemons are
//! up, and as a smoke test of a build.

use std::time::Instant;

use custody_protocol::sim::{self, Participants};
use custody_protocol::{with_suite, EngineSuite, ParticipantId, SessionId, Suite};
use rand_chacha::rand_core::{OsRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::{parse_hex, Error};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ciphersuite: secp256k1-tr or ed25519.
    #[arg(long, default_value = "secp256k1-tr")]
    suite: Suite,
    /// Number of signers n.
    #[arg(long, default_value_t = 5)]
    signers: u16,
    /// Threshold t.
    #[arg(long, default_value_t = 3)]
    threshold: u16,
    /// Message to sign, hex (default: "hello custody").
    #[arg(long)]
    message: Option<String>,
    /// Seed for a reproducible run (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<(), Error> {
    if a.signers < 2 || a.signers > 1024 {
        return Err(format!("--signers {}: must be between 2 and 1024", a.signers).into());
    }
    if a.threshold < 2 || a.threshold > a.signers {
        return Err(format!(
            "--threshold {}: must be between 2 and --signers ({})",
            a.threshold, a.signers
        )
        .into());
    }
    let message = match &a.message {
        Some(h) => parse_hex("--message", h)?,
        None => b"hello custody".to_vec(),
    };
    let seed = a.seed.unwrap_or_else(|| OsRng.next_u64());
    with_suite!(a.suite, C => demo::<C>(&a, &message, seed))
}

fn demo<C: EngineSuite>(a: &Args, message: &[u8], seed: u64) -> Result<(), Error> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let parts = Participants::generate(a.signers, &mut rng);
    let t0 = Instant::now();
    let shares = sim::dkg::<C, _>(
        &parts,
        a.threshold,
        SessionId::random(&mut rng),
        &mut rng,
        &mut sim::honest,
    )
    .shares()?;
    let dkg_ms = t0.elapsed().as_secs_f64() * 1e3;
    let public = shares[&parts.ids()[0]].public().clone();
    let quorum: Vec<ParticipantId> = parts.ids().into_iter().take(a.threshold as usize).collect();
    let t1 = Instant::now();
    let sig = sim::sign(
        &parts,
        &public,
        &shares,
        &quorum,
        message,
        SessionId::random(&mut rng),
        &mut rng,
        &mut sim::honest,
    )?;
    let sign_ms = t1.elapsed().as_secs_f64() * 1e3;
    let pk = public.public_key();
    let valid = custody_protocol::verify_signature(C::SUITE, &pk, message, &sig);
    if a.json {
        let v = serde_json::json!({
            "suite": C::SUITE.name(),
            "threshold": a.threshold,
            "signers": a.signers,
            "public_key": hex::encode(pk),
            "message": hex::encode(message),
            "signature": hex::encode(sig),
            "quorum": quorum.iter().map(|p| p.get()).collect::<Vec<_>>(),
            "valid": valid,
            "dkg_ms": dkg_ms,
            "sign_ms": sign_ms,
            "seed": seed,
        });
        println!("{v}");
    } else {
        println!("suite       {}", C::SUITE);
        println!(
            "key         {}-of-{} (DKG {:.1} ms, no dealer)",
            a.threshold, a.signers, dkg_ms
        );
        println!("public key  {}", hex::encode(pk));
        println!("message     {}", hex::encode(message));
        println!("signers     {:?}", quorum);
        println!("signature   {} ({:.2} ms)", hex::encode(sig), sign_ms);
        println!("valid       {valid}");
        println!("seed        {seed}");
    }
    if valid {
        Ok(())
    } else {
        Err("signature did not verify".into())
    }
}
