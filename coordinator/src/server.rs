//! The coordinator's process edge: open its state (identity, certificate, store, audit
//! log, keys, links to the signers), serve the gRPC API over mTLS, and wire the
//! metrics, the console and the signers' probe.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use custody_ops::Exporter;
use custody_pki::Role;
use custody_protocol::proto::custody_server::CustodyServer;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tracing::info;

use crate::config::Config;
use crate::core::Core;
use crate::link::{GrpcLink, LinkError, SignerLink};
use crate::metrics::{KeyLabel, SignerLabel, StateLabel};
use crate::signers::SignerHandle;
use crate::StartError;

pub(crate) async fn serve(
    config: Config,
    links: Option<Vec<(String, Arc<dyn SignerLink>)>>,
    clock: Arc<dyn custody_ops::clock::Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(std::net::SocketAddr) + Send,
) -> Result<(), StartError> {
    let cfg_err = StartError::Config;
    config.check().map_err(cfg_err)?;
    let identity = crate::core::load_identity(&config)?;
    let files = config.tls.clone();
    let (cert_der, ca_der) = custody_pki::server::check_own_certificate(
        &files,
        Role::Coordinator,
        &config.name,
        &identity.public(),
    )?;
    let client_tls = files.client().map_err(|e| cfg_err(e.to_string()))?;
    let signers: Vec<Arc<SignerHandle>> = match links {
        Some(links) => links
            .into_iter()
            .map(|(name, link)| {
                Arc::new(SignerHandle::new(
                    &name,
                    link,
                    config.timeouts,
                    clock.clone(),
                ))
            })
            .collect(),
        None => config
            .signers
            .iter()
            .map(|s| {
                let link = Arc::new(GrpcLink::new(
                    s.clone(),
                    client_tls.clone(),
                    config.timeouts,
                ));
                Arc::new(SignerHandle::new(
                    &s.name,
                    link,
                    config.timeouts,
                    clock.clone(),
                ))
            })
            .collect(),
    };
    let store = crate::store::Store::open(&config.data_dir.join("db"))
        .map_err(|e| cfg_err(e.to_string()))?;
    let transcripts = config.data_dir.join("transcripts");
    std::fs::create_dir_all(&transcripts)
        .map_err(|e| cfg_err(format!("{}: {e}", transcripts.display())))?;
    let audit = crate::audit::open(&config.data_dir, &config.name, identity.clone(), &store)
        .map_err(cfg_err)?;
    let console = Arc::new(crate::console::Console::new(clock.clone()));
    let core = Arc::new(Core {
        name: config.name.clone(),
        cert_der,
        audit,
        identity_public: identity.public(),
        identity,
        ca_der,
        store,
        signers,
        timeouts: config.timeouts,
        default_threshold: config.default_threshold,
        keys: RwLock::new(HashMap::new()),
        inflight: Mutex::new(HashMap::new()),
        rotation: AtomicUsize::new(0),
        transcripts,
        metrics: crate::metrics::Metrics::new(clock.clone()),
        clock,
    });
    let metas = core.store.keys().map_err(|e| cfg_err(e.to_string()))?;
    let n_keys = metas.len();
    for meta in metas {
        let id = meta.key_id.clone();
        let k = core.load_key(meta).map_err(cfg_err)?;
        core.keys.write().expect("lock").insert(id, k);
    }

    let tls = files.server().map_err(|e| cfg_err(e.to_string()))?;
    let (listener, addr) = custody_pki::server::listen(config.listen, &config.data_dir).await?;
    info!(coordinator = %config.name, %addr, keys = n_keys, signers = core.signers.len(), "coordinator listening");
    if let Some(listen) = config.metrics_listen {
        custody_ops::start_metrics(listen, exporter(&core), &config.data_dir)
            .await
            .map_err(cfg_err)?;
    }
    if let Some(listen) = config.console_listen {
        let bound = crate::console::serve(&core, &console, listen, &config.tls)
            .await
            .map_err(cfg_err)?;
        custody_ops::write_addr(&config.data_dir.join("console-addr"), bound)
            .map_err(|e| cfg_err(format!("console-addr: {e}")))?;
    }
    if config.metrics_listen.is_some() || config.console_listen.is_some() {
        spawn_prober(core.clone());
    }
    on_ready(addr);
    crate::requests::spawn_ticker(core.clone());
    let svc = CustodyServer::new(crate::service::CustodyService(core, console))
        .max_decoding_message_size(2 << 20)
        .max_encoding_message_size(4 << 20);
    custody_pki::server::serve(
        tls,
        listener,
        Duration::from_secs(300),
        <CustodyServer<crate::service::CustodyService> as tonic::server::NamedService>::NAME,
        |r| r.add_service(svc),
        shutdown,
    )
    .await?;
    info!(coordinator = %config.name, "coordinator stopped");
    Ok(())
}

/// Registers the coordinator's metrics; gauges are read from `core` at each scrape.
pub(crate) fn exporter(core: &Arc<Core>) -> Exporter {
    let mut e = Exporter::new("coordinator");
    let m = &core.metrics;
    e.register_seconds(
        "sign_duration",
        "Signatures, from the request to the durable result",
        m.sign_seconds.clone(),
    );
    e.register_seconds(
        "dkg_duration",
        "Key creations (DKG), from the request to the recorded key",
        m.dkg_seconds.clone(),
    );
    e.register(
        "sign_requests",
        "Sign requests by outcome (refused: a signer's policy, with its reason)",
        m.sign_requests.clone(),
    );
    let culprits: Family<SignerLabel, Counter> = Family::default();
    let up: Family<SignerLabel, Gauge> = Family::default();
    let last_seen: Family<SignerLabel, Gauge> = Family::default();
    let pooled: Family<SignerLabel, Gauge> = Family::default();
    let keys: Family<KeyLabel, Gauge> = Family::default();
    let waiting: Family<StateLabel, Gauge> = Family::default();
    e.register(
        "signer_culprits",
        "Times a signer was named as a culprit (a share or message that failed its check)",
        culprits.clone(),
    );
    e.register(
        "signer_up",
        "1 if the signer answered the coordinator's last call or probe",
        up.clone(),
    );
    e.register_seconds(
        "signer_last_seen",
        "Unix time of the signer's last answer",
        last_seen.clone(),
    );
    e.register(
        "commitments_pooled",
        "Signing commitments drawn ahead from the signer (all keys), each usable once",
        pooled.clone(),
    );
    e.register("keys", "Keys by tier and lifecycle state", keys.clone());
    e.register(
        "requests_waiting",
        "Requests of warm and cold keys by state",
        waiting.clone(),
    );
    let weak: Weak<Core> = Arc::downgrade(core);
    e.on_scrape(move || {
        let Some(core) = weak.upgrade() else { return };
        for h in &core.signers {
            let l = SignerLabel {
                signer: h.name.clone(),
            };
            let health = h.health();
            up.get_or_create(&l).set(i64::from(health.reachable));
            last_seen
                .get_or_create(&l)
                .set((health.last_seen_ms / 1000) as i64);
            culprits.get_or_create(&l).inner().store(
                h.culprits.load(std::sync::atomic::Ordering::Relaxed),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let mut per_signer = std::collections::BTreeMap::<String, i64>::new();
        for h in &core.signers {
            per_signer.insert(h.name.clone(), 0);
        }
        keys.clear();
        for k in core.keys.read().expect("lock").values() {
            let meta = k.meta();
            keys.get_or_create(&KeyLabel {
                tier: meta.tier.name().into(),
                state: meta.state.name().into(),
            })
            .inc();
            for (name, n) in k.pool_levels() {
                *per_signer.entry(name).or_default() += n as i64;
            }
        }
        for (signer, n) in per_signer {
            pooled.get_or_create(&SignerLabel { signer }).set(n);
        }
        waiting.clear();
        if let Ok(all) = core.store.open_waiting() {
            for w in all
                .into_iter()
                .filter(crate::store::WaitingRequest::is_open)
            {
                waiting
                    .get_or_create(&StateLabel {
                        state: w.state.name().into(),
                    })
                    .inc();
            }
        }
    });
    let weak: Weak<Core> = Arc::downgrade(core);
    e.audit_log(move || weak.upgrade().map_or((0, 0), |c| c.audit.counts()));
    e
}

/// How often every signer is asked who it is (so an idle cluster still shows a signer
/// that went away, and the console shows each one's sealing backend), and how long
/// one probe may take.
const PROBE: std::time::Duration = std::time::Duration::from_secs(2);
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Probes every signer in the background, until the coordinator stops.
pub(crate) fn spawn_prober(core: std::sync::Arc<crate::core::Core>) {
    let weak = std::sync::Arc::downgrade(&core);
    drop(core);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(core) = weak.upgrade() else { return };
            let timeout = PROBE_TIMEOUT.max(core.timeouts.connect());
            let mut tasks = Vec::new();
            for h in core.signers.iter().cloned() {
                tasks.push(tokio::spawn(async move {
                    let r = match tokio::time::timeout(timeout, h.link().identity()).await {
                        Ok(r) => r,
                        Err(_) => Err(LinkError::timed_out("no answer")),
                    };
                    h.observe_probe(&r);
                    if let Ok(id) = r {
                        *h.sealer.lock().expect("lock") = id.sealer;
                    }
                }));
            }
            drop(core);
            for t in tasks {
                let _ = t.await;
            }
        }
    });
}
