//! Connecting to the coordinator as a client, and reporting its errors in one line.

use std::path::PathBuf;
use std::time::Duration;

use custody_protocol::proto::custody_client::CustodyClient;
use tonic::transport::{Channel, Endpoint};

use super::cluster::Layout;
use super::Error;

/// How a client command finds and authenticates to the coordinator.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// Cluster directory (as created by `custody dev`).
    #[arg(long, default_value = "custody-dev")]
    pub cluster: PathBuf,
    /// Which client certificate of the cluster to present (operator, auditor,
    /// payment-backend).
    #[arg(long = "as", default_value = "operator")]
    pub identity: String,
    /// Coordinator address (default: where the cluster's coordinator listens).
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Request timeout, seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

impl Conn {
    /// A connected client.
    pub async fn connect(&self) -> Result<CustodyClient<Channel>, Error> {
        let layout = Layout::new(&self.cluster);
        if layout.load()?.is_none() {
            return Err(format!(
                "{}: no cluster here (create one with `custody dev --dir {}`)",
                self.cluster.display(),
                self.cluster.display()
            )
            .into());
        }
        let addr = match &self.coordinator {
            Some(a) => a.clone(),
            None => layout.coordinator_addr()?,
        };
        let tls = layout.tls(&self.identity);
        if !tls.cert.exists() {
            return Err(format!(
                "--as {}: no certificate {} in the cluster",
                self.identity,
                tls.cert.display()
            )
            .into());
        }
        let channel = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls.client()?)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(self.timeout))
            .connect()
            .await
            .map_err(|e| {
                format!(
                    "cannot reach the coordinator at {addr}: {}",
                    source_chain(&e)
                )
            })?;
        Ok(CustodyClient::new(channel)
            .max_decoding_message_size(4 << 20)
            .max_encoding_message_size(4 << 20))
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A gRPC status as a one-line error: `UNAVAILABLE: <message>`.
pub fn status(st: tonic::Status) -> Error {
    let code = format!("{:?}", st.code());
    let mut name = String::new();
    for (i, ch) in code.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(ch.to_ascii_uppercase());
    }
    format!("{name}: {}", st.message()).into()
}
