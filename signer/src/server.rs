//! The signer daemon's process edge: open the core, serve gRPC over mTLS on its
//! listener, and the Prometheus metrics on their own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use custody_protocol::proto::signer_server::SignerServer;
use tracing::info;

use crate::config::Config;
use crate::core::Core;
use crate::grpc::SignerService;
use crate::StartError;

/// Opens the signer and serves until `shutdown` resolves.
pub(crate) async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(std::net::SocketAddr) + Send,
) -> Result<(), StartError> {
    let cfg_err = StartError::Config;
    let core = Arc::new(Core::open(&config, custody_ops::clock::system())?);
    let loaded = core.keys().len();
    if let Some(listen) = config.metrics_listen {
        custody_ops::start_metrics(listen, exporter(&core), &config.data_dir)
            .await
            .map_err(cfg_err)?;
    }
    let tls = config.tls.server().map_err(|e| cfg_err(e.to_string()))?;
    let (listener, addr) = custody_pki::server::listen(config.listen, &config.data_dir).await?;
    info!(signer = %config.name, %addr, keys = loaded, sealer = %core.sealer.describe(), "signer listening");
    on_ready(addr);
    let svc = SignerService(crate::grpc::SignerApi(core));
    custody_pki::server::serve(
        tls,
        listener,
        Duration::from_secs(60),
        <SignerServer<SignerService> as tonic::server::NamedService>::NAME,
        |r| r.add_service(SignerServer::new(svc).max_decoding_message_size(8 << 20)),
        shutdown,
    )
    .await?;
    info!(signer = %config.name, "signer stopped");
    Ok(())
}

/// The signer's metrics: `custody_shares_issued_total`, `custody_sign_refused_total`
/// (by this signer's policy), `custody_nonces_pooled` (unused nonces in memory, all
/// keys), `custody_keys{state}`, and the audit log's counts.
fn exporter(core: &Arc<Core>) -> custody_ops::Exporter {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct StateLabel {
        state: String,
    }
    let mut e = custody_ops::Exporter::new("signer");
    e.register(
        "shares_issued",
        "Signature shares issued (each recorded in the audit log first)",
        core.counters.shares_issued.clone(),
    );
    e.register(
        "sign_refused",
        "Requests this signer's policy refused",
        core.counters.refused.clone(),
    );
    let nonces = Gauge::<i64>::default();
    let keys: Family<StateLabel, Gauge> = Family::default();
    e.register(
        "nonces_pooled",
        "Unused signing nonces held in memory (all keys); each is used at most once",
        nonces.clone(),
    );
    e.register("keys", "Key shares held, by lifecycle state", keys.clone());
    let weak = Arc::downgrade(core);
    e.on_scrape(move || {
        let Some(c) = weak.upgrade() else { return };
        let all = c.keys();
        nonces.set(all.iter().map(|k| k.nonces_pooled()).sum::<usize>() as i64);
        keys.clear();
        for k in &all {
            keys.get_or_create(&StateLabel {
                state: k.state().name().to_string(),
            })
            .inc();
        }
    });
    let weak = Arc::downgrade(core);
    e.audit_log(move || weak.upgrade().map_or((0, 0), |c| c.audit.counts()));
    e
}
