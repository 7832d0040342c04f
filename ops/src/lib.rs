//! Operations for the custody daemons.
//!
//! - [`Exporter`]: a Prometheus registry (OpenMetrics text) plus hooks that refresh
//!   gauges read from elsewhere (pool levels, reachability, the audit log's counts) just
//!   before each scrape; [`serve_metrics`] serves it at `GET /metrics` on a listener of
//!   its own, never the gRPC port. Metric names start with `custody_`, carry their unit
//!   (`_seconds`), and counters end in `_total` (added by the client library).
//! - [`serve_https`]: serves an axum router over TLS (the operator console), one task
//!   per connection, so a slow or failing handshake holds up nobody else.
//!
//! - [`clock`]: the one clock every daemon reads time from (tests move it).
//!
//! Labels are low-cardinality on purpose (suite, tier, outcome, signer name): no key
//! ids, request ids or amounts, so a scrape reveals volumes, not business.

pub mod clock;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use prometheus_client;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tracing::{info, warn};

type Hook = Box<dyn Fn() + Send + Sync>;

/// A daemon's metrics: its registry and its refresh hooks.
pub struct Exporter {
    registry: Registry,
    hooks: Vec<Hook>,
    scrapes: Counter,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

/// Latency buckets, seconds: 0.5 ms to about 33 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 17)
}

/// A histogram with [`latency_buckets`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// A family of latency histograms, one per label set.
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A new [`LatencyFamily`].
pub fn latency_family<L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug>(
) -> LatencyFamily<L> {
    Family::new_with_constructor(latency_histogram as fn() -> Histogram)
}

impl Exporter {
    /// An empty registry with the `custody` prefix, the `daemon` label on nothing (each
    /// process is one target), and `custody_build_info`.
    pub fn new(daemon: &str) -> Exporter {
        let mut registry = Registry::with_prefix("custody");
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Build {
            daemon: String,
            version: String,
        }
        let build: Family<Build, Gauge> = Family::default();
        build
            .get_or_create(&Build {
                daemon: daemon.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "Which daemon and version this is", build);
        let scrapes = Counter::default();
        registry.register(
            "metrics_scrapes",
            "Scrapes of this endpoint",
            scrapes.clone(),
        );
        Exporter {
            registry,
            hooks: Vec::new(),
            scrapes,
        }
    }

    /// Registers a metric (`custody_<name>`; counters get `_total`).
    pub fn register(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.register(name, help, metric);
    }

    /// Registers a metric whose name ends in its unit (`custody_<name>_seconds`).
    pub fn register_seconds(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .register_with_unit(name, help, Unit::Seconds, metric);
    }

    /// Runs `hook` before every scrape (to set gauges read from elsewhere).
    pub fn on_scrape(&mut self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks.push(Box::new(hook));
    }

    /// `custody_audit_appends_total` and `custody_audit_append_failures_total`, read
    /// at each scrape from `counts` (entries written durably, appends refused).
    pub fn audit_log(&mut self, counts: impl Fn() -> (u64, u64) + Send + Sync + 'static) {
        let appends = Counter::<u64>::default();
        let failures = Counter::<u64>::default();
        self.register(
            "audit_appends",
            "Audit log entries written durably",
            appends.clone(),
        );
        self.register(
            "audit_append_failures",
            "Audit log appends refused (disk error or a log that failed closed); each refused the action it recorded",
            failures.clone(),
        );
        self.on_scrape(move || {
            let (a, f) = counts();
            appends
                .inner()
                .store(a, std::sync::atomic::Ordering::Relaxed);
            failures
                .inner()
                .store(f, std::sync::atomic::Ordering::Relaxed);
        });
    }

    /// The OpenMetrics text of every metric, hooks run first.
    pub fn render(&self) -> String {
        self.scrapes.inc();
        for h in &self.hooks {
            h();
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!("metrics: {e}");
        }
        out
    }
}

/// The content type of [`Exporter::render`].
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A render of the metrics and when it was made.
type Rendered = (std::time::Instant, Arc<String>);

/// Most connections a listener serves at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;

/// Serves `GET /metrics` (plain HTTP: metrics carry no secret, and Prometheus scrapes
/// them) on `listen`, until the process ends. Returns the bound address (port 0 picks
/// one). Only `/metrics` answers; anything else is 404. One render at a time, reused
/// for a second (so a flood of scrapes costs one render a second, off the async
/// threads), at most [`MAX_CONNECTIONS`] connections, each with a header deadline.
pub async fn serve_metrics(
    listen: SocketAddr,
    exporter: Arc<Mutex<Exporter>>,
) -> std::io::Result<SocketAddr> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let cache: Arc<tokio::sync::Mutex<Option<Rendered>>> = Arc::new(tokio::sync::Mutex::new(None));
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let (exporter, cache) = (exporter.clone(), cache.clone());
            async move {
                let mut cached = cache.lock().await;
                let fresh = cached
                    .as_ref()
                    .filter(|(at, _)| at.elapsed() < Duration::from_secs(1))
                    .map(|(_, t)| t.clone());
                let text = match fresh {
                    Some(t) => t,
                    None => {
                        let rendered = tokio::task::spawn_blocking(move || {
                            exporter.lock().map(|e| e.render()).ok()
                        })
                        .await
                        .ok()
                        .flatten();
                        let Some(text) = rendered else {
                            return (
                                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                                [(axum::http::header::CONTENT_TYPE, "text/plain")],
                                String::from("metrics unavailable"),
                            );
                        };
                        let text = Arc::new(text);
                        *cached = Some((std::time::Instant::now(), text.clone()));
                        text
                    }
                };
                (
                    axum::http::StatusCode::OK,
                    [(axum::http::header::CONTENT_TYPE, OPENMETRICS)],
                    text.as_ref().clone(),
                )
            }
        }),
    );
    serve_connections(listener, None, app);
    info!(%addr, "metrics at http://{addr}/metrics");
    Ok(addr)
}

/// Starts [`serve_metrics`] and writes the bound address to `data_dir/metrics-addr`.
pub async fn start_metrics(
    listen: SocketAddr,
    exporter: Exporter,
    data_dir: &std::path::Path,
) -> Result<SocketAddr, String> {
    let bound = serve_metrics(listen, Arc::new(Mutex::new(exporter)))
        .await
        .map_err(|e| format!("metrics_listen {listen}: {e}"))?;
    write_addr(&data_dir.join("metrics-addr"), bound).map_err(|e| format!("metrics-addr: {e}"))?;
    Ok(bound)
}

/// Serves `app` over TLS on `listener` (the operator console). See
/// [`serve_connections`].
pub fn serve_https(
    listener: tokio::net::TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    app: axum::Router,
) {
    serve_connections(listener, Some(tokio_rustls::TlsAcceptor::from(tls)), app);
}

/// Serves `app` (HTTP/1.1, over TLS when `tls` is given) on `listener`, one task per
/// connection, at most [`MAX_CONNECTIONS`] at once; TLS handshakes that fail or take
/// longer than 10 s and requests whose headers take longer than 30 s are dropped
/// (logged at debug level only: scanners are noisy). Runs until the process ends.
pub fn serve_connections(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (tls, app) = (tls.clone(), app.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper_util::service::TowerToHyperService::new(app);
                let builder = {
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.header_read_timeout(Duration::from_secs(30))
                        .timer(hyper_util::rt::TokioTimer::new());
                    b
                };
                let served = match tls {
                    Some(acceptor) => {
                        let stream = match tokio::time::timeout(
                            Duration::from_secs(10),
                            acceptor.accept(tcp),
                        )
                        .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, "TLS handshake: {e}");
                                return;
                            }
                            Err(_) => return,
                        };
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                    None => {
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                            .await
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, "connection: {e}");
                }
            });
        }
    });
}

/// Writes `addr` to `path` (for tools that find a daemon's port chosen by the OS),
/// replacing it atomically.
pub fn write_addr(path: &std::path::Path, addr: SocketAddr) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, path)
}
