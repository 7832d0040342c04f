//! The `custody.v1.Payments` service and the daemon around it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use custody_hsm::Sealer;
use custody_pki::{Role, StartError};
use custody_protocol::proto::payments_server::{Payments, PaymentsServer};
use custody_protocol::proto::*;
use prometheus_client::metrics::counter::Counter;
use rand_core::{OsRng, RngCore};
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use zeroize::Zeroize;

use crate::config::Config;
use crate::model::{check_clear, NewPayment, Payment};
use crate::proof;
use crate::store::{Created, Store, StoreError};

struct Inner {
    store: Store,
    sealer: Arc<dyn Sealer>,
    metrics: Metrics,
}

/// What the payments daemon counts (`custody_payments_ingested_total` and the rest:
/// see [`exporter`]).
struct Metrics {
    ingested: Counter,
    replayed: Counter,
    rejected: Counter,
    ingest_seconds: prometheus_client::metrics::histogram::Histogram,
    batches_closed: Counter,
    batches_settled: Counter,
    settle_failures: Counter,
}

fn exporter(inner: &Arc<Inner>) -> custody_ops::Exporter {
    use prometheus_client::metrics::gauge::Gauge;
    let m = &inner.metrics;
    let mut e = custody_ops::Exporter::new("payments");
    e.register(
        "payments_ingested",
        "Payments acknowledged (durable) for the first time",
        m.ingested.clone(),
    );
    e.register(
        "payments_replayed",
        "Repeated requests answered with the payment their idempotency key made",
        m.replayed.clone(),
    );
    e.register(
        "payments_rejected",
        "Payment requests refused (invalid field, unknown token, idempotency conflict)",
        m.rejected.clone(),
    );
    e.register_seconds(
        "payment_ingest_duration",
        "CreatePayment, from the request to the durable answer",
        m.ingest_seconds.clone(),
    );
    e.register(
        "batches_closed",
        "Batches closed (by count or age)",
        m.batches_closed.clone(),
    );
    e.register(
        "batches_settled",
        "Batches whose header the threshold key signed",
        m.batches_settled.clone(),
    );
    e.register(
        "settle_failures",
        "Attempts to have a batch signed that did not end signed (retried)",
        m.settle_failures.clone(),
    );
    let pending = Gauge::<i64>::default();
    e.register(
        "payments_pending",
        "Payments acknowledged and not yet in a batch",
        pending.clone(),
    );
    let weak = Arc::downgrade(inner);
    e.on_scrape(move || {
        if let Some(i) = weak.upgrade() {
            pending.set(i.store.pending_count() as i64);
        }
    });
    e
}

#[derive(Clone)]
struct PaymentsService(Arc<Inner>);

fn token_aad(token: &str) -> Vec<u8> {
    format!("custody/v1/payment-token\0{token}").into_bytes()
}

fn store_err(e: StoreError) -> Status {
    warn!("payments store: {e}");
    Status::unavailable(format!("payments storage: {e}"))
}

fn record(p: &Payment, replayed: bool) -> PaymentRecord {
    PaymentRecord {
        id: p.id.clone(),
        token: p.token.clone(),
        amount: p.amount,
        currency: p.currency.clone(),
        merchant: p.merchant.clone(),
        idempotency_key: p.idempotency_key.clone(),
        created_at_ms: p.created_at_ms,
        batch: p.batch.clone().unwrap_or_default(),
        replayed,
    }
}

/// Runs the payments daemon until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(std::net::SocketAddr) + Send,
) -> Result<(), StartError> {
    let cfg_err = StartError::Config;
    if matches!(
        config.sealer,
        custody_hsm::SealerConfig::InsecureSoftware { .. }
    ) {
        warn!("INSECURE software sealer: card and account data are sealed with a key file beside them (development only; use kind = \"pkcs11\")");
    }
    let sealer = config
        .sealer
        .open()
        .map_err(|e| cfg_err(format!("sealer: {e}")))?;
    let store = Store::open(&config.data_dir.join("db")).map_err(|e| cfg_err(e.to_string()))?;
    let recovered = store
        .recover_committed()
        .map_err(|e| cfg_err(e.to_string()))?;
    if recovered > 0 {
        info!(recovered, "batches recorded before a stop are now signable");
    }
    let inner = Arc::new(Inner {
        store,
        sealer,
        metrics: Metrics {
            ingested: Counter::default(),
            replayed: Counter::default(),
            rejected: Counter::default(),
            ingest_seconds: custody_ops::latency_histogram(),
            batches_closed: Counter::default(),
            batches_settled: Counter::default(),
            settle_failures: Counter::default(),
        },
    });
    if let Some(listen) = config.metrics_listen {
        custody_ops::start_metrics(listen, exporter(&inner), &config.data_dir)
            .await
            .map_err(cfg_err)?;
    }
    spawn_batcher(inner.clone(), config.batch);
    match config.settlement.clone() {
        Some(s) => spawn_settler(inner.clone(), s),
        None => warn!("no settlement key configured: batches are committed but not signed"),
    }
    let tls = config.tls.server().map_err(|e| cfg_err(e.to_string()))?;
    let (listener, addr) = custody_pki::server::listen(config.listen, &config.data_dir).await?;
    info!(payments = %config.name, %addr, pending = inner.store.pending_count(), "payments listening");
    on_ready(addr);
    let svc = PaymentsServer::new(PaymentsService(inner))
        .max_decoding_message_size(64 << 10)
        .max_encoding_message_size(64 << 20);
    custody_pki::server::serve(
        tls,
        listener,
        Duration::from_secs(60),
        <PaymentsServer<PaymentsService> as tonic::server::NamedService>::NAME,
        |r| r.add_service(svc),
        shutdown,
    )
    .await?;
    info!(payments = %config.name, "payments stopped");
    Ok(())
}

/// Closes batches by count or by age.
fn spawn_batcher(inner: Arc<Inner>, cfg: crate::config::BatchConfig) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let due = inner.store.pending_count() >= cfg.max_count
                || inner
                    .store
                    .oldest_pending_ms()
                    .ok()
                    .flatten()
                    .is_some_and(|t| {
                        now.saturating_sub(t) >= cfg.max_age_secs.saturating_mul(1000)
                    });
            if !due {
                continue;
            }
            let store = inner.store.clone();
            let max = cfg.max_count;
            match tokio::task::spawn_blocking(move || store.close_batch(max)).await {
                Ok(Ok(Some(b))) => {
                    inner.metrics.batches_closed.inc();
                    info!(batch = %b.id, count = b.count, root = %b.root, "batch closed")
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => warn!("closing a batch: {e}"),
                Err(e) => warn!("batcher: {e}"),
            }
        }
    });
}

/// Signs closed batches with the settlement key, through the coordinator (request id
/// `settle-<batch>`: a retry after a crash gets the same signature, never a second
/// settlement), checks the signature itself, then records it.
fn spawn_settler(inner: Arc<Inner>, cfg: crate::config::SettlementConfig) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = String::new();
        loop {
            tick.tick().await;
            let store = inner.store.clone();
            let Ok(Ok(batches)) =
                tokio::task::spawn_blocking(move || store.unsigned_batches()).await
            else {
                continue;
            };
            // Oldest first; one that fails does not hold back the others.
            for mut b in batches.into_iter().filter(|b| b.state == "closed") {
                match settle(&cfg, &mut b).await {
                    Ok(()) => {
                        let store = inner.store.clone();
                        let b2 = b.clone();
                        match tokio::task::spawn_blocking(move || store.put_batch(&b2)).await {
                            Ok(Ok(())) => {
                                inner.metrics.batches_settled.inc();
                                info!(batch = %b.id, "batch signed")
                            }
                            Ok(Err(e)) => warn!(batch = %b.id, "signed but not stored: {e}"),
                            Err(e) => warn!("settler: {e}"),
                        }
                        last_error.clear();
                    }
                    Err(e) => {
                        inner.metrics.settle_failures.inc();
                        if e != last_error {
                            warn!(batch = %b.id, "settlement not signed yet: {e}");
                            last_error = e;
                        }
                    }
                }
            }
        }
    });
}

async fn settle(
    cfg: &crate::config::SettlementConfig,
    b: &mut crate::model::Batch,
) -> Result<(), String> {
    use custody_protocol::proto::custody_client::CustodyClient;
    let addr = match (&cfg.coordinator, &cfg.coordinator_addr_file) {
        (Some(a), _) => a.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("coordinator address {}: {e}", f.display()))?,
        (None, None) => return Err("settlement: no coordinator address".into()),
    };
    let tls = cfg.client_tls.client().map_err(|e| e.to_string())?;
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .connect()
        .await
        .map_err(|e| format!("coordinator {addr}: {e}"))?;
    let mut c = CustodyClient::new(ch);
    let key = c
        .get_key(GetKeyRequest {
            key_id: cfg.key_id.clone(),
        })
        .await
        .map_err(|st| format!("{:?}: {}", st.code(), st.message()))?
        .into_inner();
    let s = b.settlement()?;
    let r = c
        .sign(SignRequest {
            key_id: cfg.key_id.clone(),
            message: vec![],
            request_id: b.request_id(),
            transfer: None,
            settlement: Some(Settlement {
                batch_id: s.batch_id.clone(),
                root: s.root.to_vec(),
                count: s.count,
                totals: s
                    .totals
                    .iter()
                    .map(|(c, t)| SettlementTotal {
                        currency: c.clone(),
                        amount: t.to_string(),
                    })
                    .collect(),
                period_start_ms: s.period_start_ms,
                period_end_ms: s.period_end_ms,
            }),
        })
        .await
        .map_err(|st| format!("{:?}: {}", st.code(), st.message()))?
        .into_inner();
    if r.state != "signed" {
        // A warm settlement key: the header waits for its approvers.
        return Err(match &r.pending {
            Some(p) => format!(
                "settlement request {} is {}: {} of {} approvals (approvers: custody approve {})",
                p.request_id, p.state, p.approvals, p.required, p.request_id
            ),
            None => format!("the settlement request is {}", r.state),
        });
    }
    let suite: custody_protocol::Suite = key.suite.parse().map_err(|e| format!("{e}"))?;
    let pk: [u8; 32] = key
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| "settlement key: not 32 bytes")?;
    if let Some(pin) = &cfg.public_key {
        if !pin.eq_ignore_ascii_case(&hex::encode(pk)) {
            return Err("the coordinator reports another public key for the settlement key than the pinned one".into());
        }
    }
    if !custody_protocol::verify_signature(suite, &pk, &s.message(&cfg.key_id), &r.signature) {
        return Err("the coordinator returned a signature that does not verify".into());
    }
    b.signature = hex::encode(&r.signature);
    b.signed_by = Some(crate::model::SignedBy {
        key_id: cfg.key_id.clone(),
        suite: key.suite,
        public_key: hex::encode(pk),
    });
    b.state = "signed".into();
    Ok(())
}

impl PaymentsService {
    async fn create(&self, r: CreatePaymentRequest) -> Result<PaymentRecord, Status> {
        let p = NewPayment {
            token: r.token,
            amount: r.amount,
            currency: r.currency,
            merchant: r.merchant,
            idempotency_key: r.idempotency_key,
        };
        p.check()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.0.store.token(&p.token).map_err(store_err)?.is_none() {
            return Err(Status::invalid_argument(format!(
                "token: {} is not a token issued here",
                p.token
            )));
        }
        match self.0.store.create(p).await.map_err(store_err)? {
            Created::New(p) => Ok(record(&p, false)),
            Created::Existing(p) => Ok(record(&p, true)),
            Created::Conflict(id) => Err(Status::already_exists(format!(
                "idempotency_key: already used for payment {id} with another body"
            ))),
        }
    }
}

#[tonic::async_trait]
impl Payments for PaymentsService {
    async fn tokenize(
        &self,
        req: Request<TokenizeRequest>,
    ) -> Result<Response<TokenizeResponse>, Status> {
        custody_pki::authorize(&req, &[Role::PaymentBackend])?;
        let mut r = req.into_inner();
        // Our copies of the clear data are wiped when dropped (the request's too, below).
        let clear = check_clear(&r.kind, &r.data).map(zeroize::Zeroizing::new);
        r.data.zeroize();
        let clear = clear.map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut b = [0u8; 16];
        OsRng.fill_bytes(&mut b);
        let token = format!("tok_{}", hex::encode(b));
        let plain = zeroize::Zeroizing::new(format!("{}:{}", r.kind, clear.as_str()));
        let sealed = self
            .0
            .sealer
            .seal(&token_aad(&token), plain.as_bytes())
            .map_err(|e| Status::unavailable(format!("sealing: {e}")))?;
        let (store, t) = (self.0.store.clone(), token.clone());
        tokio::task::spawn_blocking(move || store.put_token(&t, &sealed))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_err)?;
        // Never log the data.
        info!(kind = %r.kind, %token, "tokenized");
        Ok(Response::new(TokenizeResponse { token }))
    }

    async fn detokenize(
        &self,
        req: Request<DetokenizeRequest>,
    ) -> Result<Response<DetokenizeResponse>, Status> {
        let caller = custody_pki::authorize(&req, &[Role::Detokenizer])?;
        let r = req.into_inner();
        let sealed = self
            .0
            .store
            .token(&r.token)
            .map_err(store_err)?
            .ok_or_else(|| Status::not_found(format!("token {}: no such token", r.token)))?;
        let clear = self
            .0
            .sealer
            .unseal(&token_aad(&r.token), &sealed)
            .map_err(|e| Status::internal(format!("unsealing: {e}")))?;
        let text = zeroize::Zeroizing::new(String::from_utf8_lossy(&clear).to_string());
        let data = text
            .split_once(':')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        warn!(caller = %caller.name, token = %r.token, "detokenized");
        Ok(Response::new(DetokenizeResponse { data }))
    }

    async fn create_payment(
        &self,
        req: Request<CreatePaymentRequest>,
    ) -> Result<Response<PaymentRecord>, Status> {
        custody_pki::authorize(&req, &[Role::PaymentBackend])?;
        let t0 = std::time::Instant::now();
        let r = self.create(req.into_inner()).await;
        let m = &self.0.metrics;
        match &r {
            Ok(p) if p.replayed => m.replayed.inc(),
            Ok(_) => {
                m.ingest_seconds.observe(t0.elapsed().as_secs_f64());
                m.ingested.inc()
            }
            Err(_) => m.rejected.inc(),
        };
        r.map(Response::new)
    }

    async fn get_payment(
        &self,
        req: Request<GetPaymentRequest>,
    ) -> Result<Response<PaymentRecord>, Status> {
        custody_pki::authorize(&req, &[Role::PaymentBackend, Role::Auditor, Role::Operator])?;
        let id = req.into_inner().id;
        let p = self
            .0
            .store
            .payment(&id)
            .map_err(store_err)?
            .ok_or_else(|| Status::not_found(format!("payment {id}: no such payment")))?;
        Ok(Response::new(record(&p, false)))
    }

    async fn list_payments(
        &self,
        req: Request<ListPaymentsRequest>,
    ) -> Result<Response<ListPaymentsResponse>, Status> {
        custody_pki::authorize(&req, &[Role::PaymentBackend, Role::Auditor, Role::Operator])?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            100
        } else {
            r.limit.min(100_000)
        } as usize;
        let merchant = (!r.merchant.is_empty()).then_some(r.merchant.as_str());
        let list = self.0.store.payments(merchant, limit).map_err(store_err)?;
        Ok(Response::new(ListPaymentsResponse {
            payments: list.iter().map(|p| record(p, false)).collect(),
        }))
    }

    async fn list_batches(
        &self,
        req: Request<ListBatchesRequest>,
    ) -> Result<Response<ListBatchesResponse>, Status> {
        custody_pki::authorize(&req, &[Role::PaymentBackend, Role::Auditor, Role::Operator])?;
        let limit = match req.into_inner().limit {
            0 => 10_000,
            n => n.min(10_000),
        } as usize;
        let store = self.0.store.clone();
        let batches = tokio::task::spawn_blocking(move || store.recent_batches(limit))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_err)?;
        Ok(Response::new(ListBatchesResponse {
            batches: batches
                .iter()
                .map(|b| BatchRecord {
                    id: b.id.clone(),
                    root: hex::decode(&b.root).unwrap_or_default(),
                    count: b.count,
                    totals: b.totals.iter().map(|(c, t)| format!("{c}={t}")).collect(),
                    period_start_ms: b.period_start_ms,
                    period_end_ms: b.period_end_ms,
                    closed_at_ms: b.closed_at_ms,
                    state: b.state.clone(),
                    signature: hex::decode(&b.signature).unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn get_proof(
        &self,
        req: Request<GetProofRequest>,
    ) -> Result<Response<GetProofResponse>, Status> {
        custody_pki::authorize(&req, &[Role::PaymentBackend, Role::Auditor, Role::Operator])?;
        let id = req.into_inner().payment_id;
        let store = self.0.store.clone();
        let p = tokio::task::spawn_blocking(move || proof::make(&store, &id))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(GetProofResponse {
            proof: serde_json::to_string_pretty(&p).map_err(|e| Status::internal(e.to_string()))?,
        }))
    }
}
