//! `custody payments`: the payments daemon (`--config`), and its client commands.

use std::path::PathBuf;
use std::time::Duration;

use custody_protocol::proto::payments_client::PaymentsClient;
use custody_protocol::proto::*;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

use super::client::status;
use super::cluster::Layout;
use super::daemon::{self, DaemonArgs};
use super::Error;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// The daemon's TOML config (runs the payments daemon).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write the listening address to this file once the daemon accepts connections.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Also stop when standard input closes (used by `custody dev`).
    #[arg(long)]
    stop_on_stdin_eof: bool,
}

/// How a client finds the payments daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct PConn {
    /// Cluster directory (as created by `custody dev`).
    #[arg(long, default_value = "custody-dev")]
    cluster: PathBuf,
    /// Which client certificate of the cluster to present.
    #[arg(long = "as", default_value = "payment-backend")]
    identity: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Replace card or account data by a token (the data is sealed, never logged).
    Tokenize {
        #[command(flatten)]
        conn: PConn,
        /// card or account.
        #[arg(long)]
        kind: String,
        /// The card number or account identifier; `-` reads it from standard input (so
        /// it stays out of the process list and the shell history).
        #[arg(long)]
        data: String,
    },
    /// The data behind a token (detokenizer role only).
    Detokenize {
        #[command(flatten)]
        conn: PConn,
        token: String,
    },
    /// Make a payment (acknowledged once durable; the idempotency key makes retries safe).
    Pay {
        #[command(flatten)]
        conn: PConn,
        #[arg(long)]
        token: String,
        /// Minor units.
        #[arg(long)]
        amount: u64,
        /// ISO 4217.
        #[arg(long)]
        currency: String,
        #[arg(long)]
        merchant: String,
        #[arg(long)]
        idempotency_key: String,
    },
    /// One payment.
    Get {
        #[command(flatten)]
        conn: PConn,
        id: String,
    },
    /// Recent payments.
    List {
        #[command(flatten)]
        conn: PConn,
        #[arg(long, default_value = "")]
        merchant: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Settlement batches.
    Batches {
        #[command(flatten)]
        conn: PConn,
    },
    /// The inclusion proof of a batched payment (write it to a file for verify-proof).
    Proof {
        #[command(flatten)]
        conn: PConn,
        payment_id: String,
    },
    /// Check an inclusion proof offline: the payment is in the batch, and the batch
    /// header's settlement signature verifies.
    VerifyProof {
        /// The proof file.
        file: PathBuf,
        /// The settlement key's public key (hex) to require; without it the key the
        /// proof names is used (and said so).
        #[arg(long)]
        public_key: Option<String>,
    },
}

pub fn run(a: Args) -> Result<(), Error> {
    let Some(cmd) = a.cmd else {
        return daemon_run(DaemonArgs {
            config: a
                .config
                .ok_or("--config: the payments daemon's TOML config is required")?,
            ready_file: a.ready_file,
            stop_on_stdin_eof: a.stop_on_stdin_eof,
            print_identity: false,
        });
    };
    if let Cmd::VerifyProof { file, public_key } = &cmd {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let p: custody_payments::proof::Proof = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a payment proof: {e}", file.display()))?;
        custody_payments::proof::verify(&p, public_key.as_deref())
            .map_err(|e| format!("proof FAILED: {e}"))?;
        let signer = p.batch.signed_by.as_ref();
        println!(
            "payment {} ({} {} to {}) is payment {} of batch {} (root {}, {} payments){}",
            p.payment.id,
            p.payment.amount,
            p.payment.currency,
            p.payment.merchant,
            p.index,
            p.batch.id,
            p.batch.root,
            p.batch.count,
            match (signer, public_key) {
                (None, _) => "; the batch header is not signed yet".to_string(),
                (Some(k), Some(_)) => format!("; header signed by settlement key {} (pinned)", k.key_id),
                (Some(k), None) => format!(
                    "; header signed by settlement key {} ({}, public key {} as the proof names it: pin it with --public-key)",
                    k.key_id, k.suite, k.public_key
                ),
            }
        );
        return Ok(());
    }
    daemon::runtime()?.block_on(async move {
        match cmd {
            Cmd::Tokenize { conn, kind, data } => {
                let data = if data == "-" {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(|e| format!("--data -: reading standard input: {e}"))?;
                    line.trim_end_matches(['\n', '\r']).to_string()
                } else {
                    data
                };
                let r = client(&conn).await?.tokenize(TokenizeRequest { kind, data }).await.map_err(status)?.into_inner();
                if conn.json {
                    println!("{}", json!({ "token": r.token }));
                } else {
                    println!("{}", r.token);
                }
            }
            Cmd::Detokenize { conn, token } => {
                let r = client(&conn).await?.detokenize(DetokenizeRequest { token }).await.map_err(status)?.into_inner();
                println!("{}", r.data);
            }
            Cmd::Pay { conn, token, amount, currency, merchant, idempotency_key } => {
                let r = client(&conn)
                    .await?
                    .create_payment(CreatePaymentRequest { token, amount, currency, merchant, idempotency_key })
                    .await
                    .map_err(status)?
                    .into_inner();
                print_payment(&r, conn.json);
            }
            Cmd::Get { conn, id } => {
                let r = client(&conn).await?.get_payment(GetPaymentRequest { id }).await.map_err(status)?.into_inner();
                print_payment(&r, conn.json);
            }
            Cmd::List { conn, merchant, limit } => {
                let r = client(&conn)
                    .await?
                    .list_payments(ListPaymentsRequest { merchant, limit })
                    .await
                    .map_err(status)?
                    .into_inner();
                for p in &r.payments {
                    print_payment(p, conn.json);
                }
            }
            Cmd::Batches { conn } => {
                let r = client(&conn).await?.list_batches(ListBatchesRequest { limit: 0 }).await.map_err(status)?.into_inner();
                for b in &r.batches {
                    if conn.json {
                        println!(
                            "{}",
                            json!({ "id": b.id, "root": hex::encode(&b.root), "count": b.count, "totals": b.totals,
                                    "state": b.state, "closed_at_ms": b.closed_at_ms, "signature": hex::encode(&b.signature) })
                        );
                    } else {
                        println!("{}  {}  {} payments  {}  root {}", b.id, b.state, b.count, b.totals.join(" "), hex::encode(&b.root));
                    }
                }
            }
            Cmd::Proof { conn, payment_id } => {
                let r = client(&conn).await?.get_proof(GetProofRequest { payment_id }).await.map_err(status)?.into_inner();
                println!("{}", r.proof);
            }
            Cmd::VerifyProof { .. } => unreachable!("handled above"),
        }
        Ok(())
    })
}

fn print_payment(p: &PaymentRecord, json: bool) {
    if json {
        println!(
            "{}",
            json!({ "id": p.id, "token": p.token, "amount": p.amount, "currency": p.currency, "merchant": p.merchant,
                    "idempotency_key": p.idempotency_key, "created_at_ms": p.created_at_ms, "batch": p.batch, "replayed": p.replayed })
        );
    } else {
        println!(
            "{}  {} {}  {}  {}{}",
            p.id,
            p.amount,
            p.currency,
            p.merchant,
            if p.batch.is_empty() {
                "pending".to_string()
            } else {
                format!("batch {}", p.batch)
            },
            if p.replayed {
                "  (existing payment for this idempotency key)"
            } else {
                ""
            }
        );
    }
}

async fn client(c: &PConn) -> Result<PaymentsClient<Channel>, Error> {
    let layout = Layout::new(&c.cluster);
    let addr = layout.payments_addr()?;
    let tls = layout.tls(&c.identity);
    if !tls.cert.exists() {
        return Err(format!(
            "--as {}: no certificate {} in the cluster",
            c.identity,
            tls.cert.display()
        )
        .into());
    }
    let ch = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls.client()?)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .map_err(|e| format!("cannot reach the payments daemon at {addr}: {e}"))?;
    Ok(PaymentsClient::new(ch))
}

fn daemon_run(a: DaemonArgs) -> Result<(), Error> {
    daemon::init_tracing();
    let config = custody_payments::Config::load(&a.config)?;
    config.sealer.apply_module_env();
    custody_pki::server::harden_and_log("payments");
    daemon::runtime()?.block_on(custody_payments::run(
        config,
        daemon::shutdown_signal(a.stop_on_stdin_eof),
        daemon::ready_writer(a.ready_file),
    ))?;
    Ok(())
}
