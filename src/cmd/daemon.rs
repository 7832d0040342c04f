//! What `custody signer` and `custody coordinator` share: logging, the shutdown signal
//! and the ready file.

use std::path::PathBuf;

use super::Error;

/// Options every daemon takes.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// The daemon's TOML config.
    #[arg(long)]
    pub config: PathBuf,
    /// Write the listening address to this file once the daemon accepts connections.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Also stop when standard input closes (used by `custody dev`, so its children
    /// never outlive it).
    #[arg(long)]
    pub stop_on_stdin_eof: bool,
    /// Create (or load) the daemon's sealed identity, print its public keys (hex: the
    /// Ed25519 key then the X25519 key) and exit, so the CA can certify it.
    #[arg(long)]
    pub print_identity: bool,
}

/// Logs to stderr; `RUST_LOG` overrides the default level (info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn,sled=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Resolves on SIGINT, SIGTERM, or (if asked) end of standard input.
pub async fn shutdown_signal(watch_stdin: bool) {
    let stdin_eof = async move {
        if !watch_stdin {
            return std::future::pending::<()>().await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
        let _ = rx.await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
        _ = stdin_eof => tracing::info!("standard input closed: shutting down"),
    }
}

/// A callback that writes the ready file (atomically: temp file then rename).
pub fn ready_writer(path: Option<PathBuf>) -> impl FnOnce(std::net::SocketAddr) + Send {
    move |addr| {
        if let Some(p) = path {
            let tmp = p.with_extension("tmp");
            if std::fs::write(&tmp, addr.to_string())
                .and_then(|_| std::fs::rename(&tmp, &p))
                .is_err()
            {
                tracing::warn!("could not write ready file {}", p.display());
            }
        }
    }
}

/// A multi-threaded runtime for a daemon or a client.
pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
