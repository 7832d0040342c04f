//! The operator console: read-only HTML pages served by the coordinator over HTTPS
//! with its own certificate (the cluster CA's), for operators and auditors.
//!
//! Sign-in: `custody console` (mTLS, role operator or auditor) calls `ConsoleLogin`,
//! which returns a one-time link valid for a minute; following it trades the link for
//! a session cookie (`__Host-`, Secure, HttpOnly, SameSite=Strict, 8 hours, in memory
//! only: a restart signs everyone out). Pages carry no script at all and a strict
//! Content-Security-Policy; every value is HTML-escaped; charts are inline SVG drawn
//! here. Nothing is fetched from outside, so the console works on an isolated network.
//!
//! Ceremonies shown are read from the coordinator's own audit log as it grows: the
//! whole chain is checked entry by entry ([`custody_audit::Follower`]), and each shown
//! ceremony is replayed ([`custody_audit::replay_dkg`], [`custody_audit::replay_signing`])
//! with identities pinned to the signers' CA-checked keys. An auditor's own check is
//! `custody audit verify` on `custody audit export` (with the auditor's own nonce).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use custody_audit::export::{KeyCreated, Signature, KEY_CREATED, KEY_REFRESHED, SIGNATURE};
use custody_audit::transcript::{SignedRequest, Trust};
use custody_pki::Role;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::core::Core;

/// How long a sign-in link works.
const LOGIN_TTL: Duration = Duration::from_secs(60);
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// The session cookie (the `__Host-` prefix: Secure, path /, no domain).
const COOKIE: &str = "__Host-custody-console";
/// Ceremonies kept for the page.
const RECENT: usize = 50;
/// At most this many sign-in links or sessions at once (oldest dropped).
const MAX_TOKENS: usize = 1024;

#[derive(Clone, Debug)]
struct Who {
    role: Role,
    name: String,
    expires: u64,
}

/// The console's state, beside the coordinator's.
#[derive(Debug)]
pub(crate) struct Console {
    /// The coordinator's clock (link and session expiry).
    clock: Arc<dyn custody_ops::clock::Clock>,
    /// SHA-256 of a sign-in token → who asked for it.
    logins: Mutex<HashMap<[u8; 32], Who>>,
    /// SHA-256 of a session cookie → who.
    sessions: Mutex<HashMap<[u8; 32], Who>>,
    /// Where the console listens, once it does.
    addr: Mutex<Option<std::net::SocketAddr>>,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo.
    spki: Mutex<Option<[u8; 32]>>,
    log: Mutex<LogView>,
}

fn token() -> (String, [u8; 32]) {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    let t = hex::encode(b);
    let h = Sha256::digest(t.as_bytes()).into();
    (t, h)
}

fn insert(map: &Mutex<HashMap<[u8; 32], Who>>, h: [u8; 32], who: Who, t: u64) {
    let mut m = map.lock().expect("lock");
    m.retain(|_, w| w.expires > t);
    if m.len() >= MAX_TOKENS {
        if let Some(oldest) = m.iter().min_by_key(|(_, w)| w.expires).map(|(k, _)| *k) {
            m.remove(&oldest);
        }
    }
    m.insert(h, who);
}

impl Console {
    /// An empty console reading time from `clock`.
    pub fn new(clock: Arc<dyn custody_ops::clock::Clock>) -> Console {
        Console {
            clock,
            logins: Mutex::default(),
            sessions: Mutex::default(),
            addr: Mutex::default(),
            spki: Mutex::default(),
            log: Mutex::default(),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_secs()
    }

    /// A one-time sign-in link for `name` (`role`), or `None` when the console is off.
    pub fn login_link(&self, role: Role, name: &str) -> Option<(String, u64, Option<[u8; 32]>)> {
        let addr = (*self.addr.lock().expect("lock"))?;
        let (t, h) = token();
        let expires = self.now() + LOGIN_TTL.as_secs();
        insert(
            &self.logins,
            h,
            Who {
                role,
                name: name.to_string(),
                expires,
            },
            self.now(),
        );
        Some((
            format!("https://{addr}/login?token={t}"),
            expires,
            *self.spki.lock().expect("lock"),
        ))
    }

    fn session(&self, headers: &HeaderMap) -> Option<Who> {
        let s = self.sessions.lock().expect("lock");
        session_hashes(headers)
            .into_iter()
            .find_map(|h| s.get(&h).filter(|w| w.expires > self.now()).cloned())
    }
}

/// SHA-256 of every session cookie the request carries.
fn session_hashes(headers: &HeaderMap) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    for c in headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for part in c.split(';') {
            if let Some(v) = part.trim().strip_prefix(&format!("{COOKIE}=")) {
                out.push(Sha256::digest(v.as_bytes()).into());
            }
        }
    }
    out
}

/// Starts the console on `listen` with the coordinator's certificate; records where.
pub(crate) async fn serve(
    core: &Arc<Core>,
    console: &Arc<Console>,
    listen: std::net::SocketAddr,
    tls: &custody_pki::TlsFiles,
) -> Result<std::net::SocketAddr, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("{}: {e}", tls.key.display()))?;
    let spki = certs
        .first()
        .and_then(|c| custody_pki::spki_sha256(c.as_ref()).ok())
        .ok_or("console certificate: no SubjectPublicKeyInfo")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("console certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("console_listen {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    *console.addr.lock().expect("lock") = Some(addr);
    *console.spki.lock().expect("lock") = Some(spki);
    let app = axum::Router::new()
        .route("/", get(overview))
        .route("/login", get(login))
        .route("/logout", get(logout))
        .route("/console.css", get(css))
        .route("/ceremony/{seq}", get(ceremony))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state((Arc::downgrade(core), console.clone()));
    custody_ops::serve_https(listener, Arc::new(config), app);
    info!(%addr, "operator console at https://{addr}/ (sign in: custody console)");
    Ok(addr)
}

type St = State<(Weak<Core>, Arc<Console>)>;

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    r
}

/// HTML-escapes `s`.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn page(title: &str, refresh: bool, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>{}<link rel=\"stylesheet\" href=\"/console.css\"></head><body>{body}</body></html>\n",
        esc(title),
        if refresh {
            "<meta http-equiv=\"refresh\" content=\"5\">"
        } else {
            ""
        },
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn signed_out() -> Response {
    let mut r = page(
        "custody console: sign in",
        false,
        "<main><h1>custody console</h1><p id=\"signed-out\">Not signed in. Ask for a link with <code>custody console --cluster DIR</code> (operators and auditors).</p></main>",
    );
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r
}

async fn not_found() -> Response {
    let mut r = page("not found", false, "<main><p>Not found.</p></main>");
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

async fn login(State((core, console)): St, Query(q): Query<BTreeMap<String, String>>) -> Response {
    // The coordinator stopped: nobody signs in.
    if core.upgrade().is_none() {
        return signed_out();
    }
    let Some(t) = q.get("token") else {
        return signed_out();
    };
    let h: [u8; 32] = Sha256::digest(t.as_bytes()).into();
    let who = console.logins.lock().expect("lock").remove(&h);
    let Some(who) = who.filter(|w| w.expires > console.now()) else {
        warn!("console: a sign-in link that is unknown, used or expired");
        let mut r = page(
            "custody console: link expired",
            false,
            "<main><h1>custody console</h1><p id=\"signed-out\">This sign-in link is unknown, already used or expired. Ask for another with <code>custody console</code>.</p></main>",
        );
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    };
    let (session, sh) = token();
    info!(caller = %who.name, role = %who.role, "console: signed in");
    insert(
        &console.sessions,
        sh,
        Who {
            expires: console.now() + SESSION_TTL.as_secs(),
            ..who
        },
        console.now(),
    );
    // A page (not a redirect) moves on to the console, so the next request is a
    // same-site navigation that carries the SameSite=Strict cookie.
    let mut r = page(
        "custody console: signed in",
        false,
        "<main><p>Signed in. <a href=\"/\">Open the console</a>.</p></main>",
    );
    let cookie = format!(
        "{COOKIE}={session}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::REFRESH, HeaderValue::from_static("0; url=/"));
    r
}

async fn logout(State((_, console)): St, headers: HeaderMap) -> Response {
    {
        let mut sessions = console.sessions.lock().expect("lock");
        for h in session_hashes(&headers) {
            sessions.remove(&h);
        }
    }
    let mut r = signed_out();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A ceremony of the coordinator's audit log.
#[derive(Clone, Debug)]
struct Ceremony {
    seq: u64,
    time_ms: u64,
    kind: String,
    key_id: String,
    /// Request id (signatures) or DKG session.
    what: String,
    body: Arc<Vec<u8>>,
    /// The key's public key set when it was made (signatures).
    expected_set: Option<String>,
    /// A settlement: batch id, count, totals.
    settlement: Option<(String, u64, BTreeMap<String, String>)>,
    /// The replay's verdict, once computed.
    verdict: Option<Result<String, String>>,
}

/// The coordinator's audit log as followed so far.
#[derive(Debug, Default)]
struct LogView {
    follower: Option<custody_audit::Follower>,
    offset: u64,
    /// The log does not verify (sticky: a broken chain stays broken).
    problem: Option<String>,
    /// The log could not be read this time (retried on the next look).
    unreadable: Option<String>,
    sets: HashMap<String, String>,
    recent: VecDeque<Ceremony>,
}

/// Most bytes read from the log per look (a record is at most about `MAX_BODY`).
const READ_PER_LOOK: usize = 2 * custody_audit::entry::MAX_BODY + (1 << 20);

impl LogView {
    /// Reads and checks what was appended since the last look (at most
    /// [`READ_PER_LOOK`] bytes: a long log is caught up over several looks).
    fn update(&mut self, core: &Core) {
        if self.problem.is_some() {
            return;
        }
        let f = self
            .follower
            .get_or_insert_with(|| custody_audit::Follower::new(core.identity_public.verify));
        let path = core.audit.path();
        let opened = std::fs::File::open(path).and_then(|file| {
            let len = file.metadata()?.len();
            Ok((len, file))
        });
        let (len, mut file) = match opened {
            Ok(v) => v,
            Err(e) => {
                self.unreadable = Some(format!("{}: {e}", path.display()));
                return;
            }
        };
        if len < self.offset {
            self.problem = Some(format!(
                "the log is shorter ({len} bytes) than the {} bytes already checked: it was cut or replaced",
                self.offset
            ));
            return;
        }
        let mut buf = Vec::new();
        let read = file
            .seek(SeekFrom::Start(self.offset))
            .and_then(|_| (&mut file).take(READ_PER_LOOK as u64).read_to_end(&mut buf));
        if let Err(e) = read {
            self.unreadable = Some(format!("{}: {e}", path.display()));
            return;
        }
        self.unreadable = None;
        let mut at = 0usize;
        while at < buf.len() {
            let (e, used) = match custody_audit::Entry::from_record(&buf[at..]) {
                Ok(v) => v,
                // The last record is being written (or straddles this look's end).
                Err(custody_audit::entry::FormatError::Truncated { .. }) => break,
                Err(err) => {
                    self.problem = Some(format!("entry {}: {err}", f.count()));
                    return;
                }
            };
            if let Err(p) = f.check(&e) {
                self.problem = Some(p.to_string());
                return;
            }
            at += used;
            let c = match e.kind.as_str() {
                KEY_CREATED | KEY_REFRESHED => {
                    let Ok(k) = serde_json::from_slice::<KeyCreated>(&e.body) else {
                        continue;
                    };
                    self.sets.insert(
                        k.transcript.key_id.clone(),
                        k.transcript.public_key_set.clone(),
                    );
                    Ceremony {
                        seq: e.seq,
                        time_ms: e.time_ms,
                        kind: e.kind.clone(),
                        key_id: k.transcript.key_id.clone(),
                        what: k.transcript.session.clone(),
                        body: Arc::new(e.body),
                        expected_set: None,
                        settlement: None,
                        verdict: None,
                    }
                }
                SIGNATURE => {
                    let Ok(s) = serde_json::from_slice::<Signature>(&e.body) else {
                        continue;
                    };
                    let t = &s.transcript;
                    Ceremony {
                        seq: e.seq,
                        time_ms: e.time_ms,
                        kind: e.kind.clone(),
                        key_id: t.key_id.clone(),
                        what: t.request_id.clone(),
                        expected_set: self.sets.get(&t.key_id).cloned(),
                        settlement: match &t.request {
                            SignedRequest::Settlement {
                                batch_id,
                                count,
                                totals,
                                ..
                            } => Some((batch_id.clone(), *count, totals.clone())),
                            _ => None,
                        },
                        body: Arc::new(e.body),
                        verdict: None,
                    }
                }
                _ => continue,
            };
            self.recent.push_back(c);
            while self.recent.len() > RECENT {
                self.recent.pop_front();
            }
        }
        self.offset += at as u64;
    }
}

/// The identities a ceremony of `key_id` is replayed against: the coordinator's own,
/// and those of the key's signers as the coordinator recorded them when the key was
/// made (each checked against the cluster CA then).
fn trust(core: &Core, key_id: &str) -> Option<Trust> {
    let key = core.keys.read().expect("lock").get(key_id).cloned()?;
    let meta = key.meta();
    let mut m = BTreeMap::new();
    m.insert(core.name.clone(), core.identity_public.to_bytes());
    for (name, id) in meta.signers.iter().zip(&meta.identities) {
        let id: [u8; 64] = hex::decode(id).ok()?.try_into().ok()?;
        m.insert(name.clone(), id);
    }
    Some(Trust::Pinned(m))
}

fn verdict(core: &Core, c: &Ceremony) -> Result<String, String> {
    let trust = trust(core, &c.key_id)
        .ok_or_else(|| format!("key {} is not known to this coordinator", c.key_id))?;
    let trust = &trust;
    match c.kind.as_str() {
        KEY_CREATED | KEY_REFRESHED => {
            let k: KeyCreated = serde_json::from_slice(&c.body).map_err(|e| e.to_string())?;
            custody_audit::replay_dkg(&k.transcript, trust).map(|r| {
                format!(
                    "replayed: {}-of-{} key set re-derived",
                    r.threshold,
                    r.participants.len()
                )
            })
        }
        _ => {
            let s: Signature = serde_json::from_slice(&c.body).map_err(|e| e.to_string())?;
            let set = c.expected_set.as_deref().ok_or(
                "the key's creation is not in this log, so its key set cannot be checked here",
            )?;
            custody_audit::replay_signing(&s.transcript, trust, Some(set))
                .map(|r| format!("replayed: shares of {} check", r.signers.join(", ")))
        }
    }
}

fn ms_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (d, s) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = d as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        (s % 3600) / 60,
        s % 60
    )
}

async fn overview(State((core, console)): St, headers: HeaderMap) -> Response {
    let Some(core) = core.upgrade() else {
        return signed_out();
    };
    let Some(who) = console.session(&headers) else {
        return signed_out();
    };
    let c2 = core.clone();
    match tokio::task::spawn_blocking(move || render(&c2, &console, &who)).await {
        Ok(body) => page("custody console", true, &body),
        Err(e) => {
            let mut r = page("error", false, &format!("<p>{}</p>", esc(&e.to_string())));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

fn render(core: &Arc<Core>, console: &Console, who: &Who) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<header><h1>custody console</h1><p>coordinator <b>{}</b> · signed in as {} ({}) · <a href=\"/logout\">sign out</a> · refreshes every 5 s</p></header><main>",
        esc(&core.name),
        esc(&who.name),
        esc(who.role.as_str())
    );
    signers_section(core, &mut o);
    keys_section(core, &mut o);
    requests_section(core, &mut o);
    // Catch up with the log under its lock; replay outside it; keep good verdicts only
    // (a failure is computed again next time).
    let (mut ceremonies, problem, checked) = {
        let mut log = console.log.lock().expect("lock");
        log.update(core);
        (
            log.recent.iter().rev().cloned().collect::<Vec<_>>(),
            log.problem.clone().or_else(|| {
                log.unreadable
                    .as_ref()
                    .map(|e| format!("cannot read the log now: {e}"))
            }),
            log.follower
                .as_ref()
                .map_or(0, custody_audit::Follower::count),
        )
    };
    let mut verified = Vec::new();
    for c in ceremonies.iter_mut().take(20) {
        if c.verdict.is_none() {
            let v = verdict(core, c);
            if v.is_ok() {
                verified.push((c.seq, v.clone()));
            }
            c.verdict = Some(v);
        }
    }
    if !verified.is_empty() {
        let mut log = console.log.lock().expect("lock");
        for c in log.recent.iter_mut() {
            if let Some((_, v)) = verified.iter().find(|(seq, _)| *seq == c.seq) {
                c.verdict = Some(v.clone());
            }
        }
    }
    ceremonies_section(&ceremonies, problem.as_deref(), checked, &mut o);
    settlements_section(&ceremonies, &mut o);
    charts_section(core, &mut o);
    o.push_str("</main>");
    o
}

fn signers_section(core: &Core, o: &mut String) {
    o.push_str("<section id=\"signers\"><h2>Signers</h2><table><thead><tr><th>signer</th><th>status</th><th>endpoint</th><th>last seen</th><th>HSM / sealing</th><th>culprit reports</th><th>last error</th></tr></thead><tbody>");
    for h in &core.signers {
        let health = h.health();
        let status = if health.reachable { "up" } else { "down" };
        let _ = write!(
            o,
            "<tr class=\"signer\" data-signer=\"{n}\" data-status=\"{status}\"><td>{n}</td><td class=\"{status}\">{status}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&h.endpoint()),
            if health.last_seen_ms == 0 {
                "never".to_string()
            } else {
                ms_time(health.last_seen_ms)
            },
            esc(&h.sealer.lock().expect("lock")),
            h.culprits.load(std::sync::atomic::Ordering::Relaxed),
            esc(&health.last_error),
            n = esc(&h.name),
        );
    }
    o.push_str("</tbody></table></section>");
}

fn policy_summary(p: &hot_warm_cold::Policy) -> String {
    let mut parts = Vec::new();
    if p.assets.is_empty() {
        parts.push("no asset limits".to_string());
    }
    for (a, l) in p.assets.iter().take(3) {
        parts.push(format!(
            "{a}: ≤{} per request, ≤{} per {} s",
            l.per_request, l.per_window, l.window_secs
        ));
    }
    if p.assets.len() > 3 {
        parts.push(format!("and {} more assets", p.assets.len() - 3));
    }
    if let Some(al) = &p.allowlist {
        parts.push(format!("{} allowed destinations", al.len()));
    }
    parts.push(if p.allow_raw {
        "raw messages allowed".into()
    } else {
        "no raw messages".into()
    });
    if let Some(r) = &p.approvals {
        parts.push(format!("{} of {} approvals", r.required, r.approvers.len()));
    }
    if p.time_lock_secs > 0 {
        parts.push(format!("time lock {} s", p.time_lock_secs));
    }
    if let Some(a) = p.max_age_secs {
        parts.push(format!("max age {a} s"));
    }
    if let Some(n) = p.max_signatures {
        parts.push(format!("max {n} signatures"));
    }
    if let Some(r) = &p.admins {
        parts.push(format!(
            "changes by {} of {} admins",
            r.required,
            r.approvers.len()
        ));
    }
    parts.join("; ")
}

fn keys_section(core: &Core, o: &mut String) {
    let mut keys = core.key_metas();
    keys.sort_by_key(|k| std::cmp::Reverse(k.created_at));
    let _ = write!(
        o,
        "<section id=\"keys\"><h2>Keys ({})</h2><table><thead><tr><th>key</th><th>name</th><th>suite</th><th>tier</th><th>state</th><th>t-of-n</th><th>public key</th><th>policy</th></tr></thead><tbody>",
        keys.len()
    );
    for k in keys {
        let _ = write!(
            o,
            "<tr class=\"key\" data-key=\"{id}\" data-tier=\"{tier}\" data-state=\"{state}\"><td><code>{id}</code></td><td>{}</td><td>{}</td><td>{tier}</td><td>{state}{}</td><td>{}-of-{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&k.name),
            esc(&k.suite),
            if k.state_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", esc(&k.state_reason))
            },
            k.threshold,
            k.signers.len(),
            esc(&hex::encode(&*k.public_key)),
            esc(&policy_summary(k.policy.get())),
            id = esc(&k.key_id),
            tier = esc(k.tier.name()),
            state = esc(k.state.name()),
        );
    }
    o.push_str("</tbody></table></section>");
}

fn requests_section(core: &Core, o: &mut String) {
    let mut open: Vec<_> = core
        .store
        .open_waiting()
        .unwrap_or_default()
        .into_iter()
        .filter(crate::store::WaitingRequest::is_open)
        .collect();
    open.sort_by_key(|w| w.created_at);
    let _ = write!(
        o,
        "<section id=\"requests\"><h2>Requests waiting ({})</h2><table><thead><tr><th>request</th><th>key</th><th>kind</th><th>state</th><th>approvals</th><th>time lock ends</th><th>last error</th></tr></thead><tbody>",
        open.len()
    );
    for w in &open {
        let p = crate::requests::to_proto(core, w);
        let kind = if p.kind == "policy-change" {
            "policy change".to_string()
        } else if let Some(s) = &p.settlement {
            format!("settlement of batch {} ({} payments)", s.batch_id, s.count)
        } else if let Some(t) = &p.transfer {
            format!("transfer {} {} to {}", t.amount, t.asset, t.destination)
        } else {
            "raw message".to_string()
        };
        let _ = write!(
            o,
            "<tr class=\"request\" data-request=\"{id}\" data-state=\"{state}\" data-approvals=\"{a}\" data-required=\"{r}\"><td><code>{id}</code></td><td><code>{}</code></td><td>{}</td><td>{state}</td><td>{a} of {r}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.key_id),
            esc(&kind),
            ms_time(p.unlocks_at.saturating_mul(1000)),
            esc(&p.last_error),
            id = esc(&p.request_id),
            state = esc(&p.state),
            a = p.approvals,
            r = p.required,
        );
    }
    o.push_str("</tbody></table></section>");
}

fn ceremonies_section(
    ceremonies: &[Ceremony],
    problem: Option<&str>,
    checked: u64,
    o: &mut String,
) {
    o.push_str("<section id=\"ceremonies\"><h2>Recent ceremonies</h2>");
    match problem {
        Some(p) => {
            let _ = write!(
                o,
                "<p class=\"bad\" id=\"log-status\">AUDIT LOG DOES NOT VERIFY: {}</p>",
                esc(p)
            );
        }
        None => {
            let _ = write!(
                o,
                "<p id=\"log-status\">The coordinator's audit log verifies: {checked} entries, hash chain and signatures checked. For an auditor's own check of every daemon's log: <code>custody audit export</code>, then <code>custody audit verify</code>.</p>"
            );
        }
    }
    o.push_str("<table><thead><tr><th>time</th><th>ceremony</th><th>key</th><th>request / session</th><th>verification</th><th>transcript</th></tr></thead><tbody>");
    for c in ceremonies.iter().take(20) {
        let (class, verdict) = match &c.verdict {
            Some(Ok(v)) => ("ok", v.clone()),
            Some(Err(e)) => ("bad", format!("FAILED: {e}")),
            None => ("", "not replayed here".to_string()),
        };
        let _ = write!(
            o,
            "<tr class=\"ceremony\" data-kind=\"{}\"><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td class=\"{class}\">{}</td><td><a href=\"/ceremony/{}\">export</a></td></tr>",
            esc(&c.kind),
            ms_time(c.time_ms),
            esc(&c.kind),
            esc(&c.key_id),
            esc(&c.what),
            esc(&verdict),
            c.seq,
        );
    }
    o.push_str("</tbody></table></section>");
}

fn settlements_section(ceremonies: &[Ceremony], o: &mut String) {
    o.push_str("<section id=\"settlements\"><h2>Settlement batches signed (recent)</h2><table><thead><tr><th>time</th><th>batch</th><th>payments</th><th>totals</th><th>key</th><th>verification</th></tr></thead><tbody>");
    for c in ceremonies {
        let Some((batch, count, totals)) = &c.settlement else {
            continue;
        };
        let _ = write!(
            o,
            "<tr class=\"settlement\" data-batch=\"{b}\"><td>{}</td><td><code>{b}</code></td><td>{count}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            ms_time(c.time_ms),
            esc(&totals
                .iter()
                .map(|(cur, t)| format!("{t} {cur}"))
                .collect::<Vec<_>>()
                .join(", ")),
            esc(&c.key_id),
            match &c.verdict {
                Some(Ok(_)) => "replayed",
                Some(Err(_)) => "FAILED",
                None => "",
            },
            b = esc(batch),
        );
    }
    o.push_str("</tbody></table></section>");
}

/// Two inline SVG bar charts over the last hour: signatures per minute, and the
/// median and maximum latency per minute.
fn charts_section(core: &Core, o: &mut String) {
    let history = core.metrics.history();
    let now_min = core.clock.now_secs() / 60;
    let minutes: Vec<Option<&crate::metrics::Minute>> = (0..crate::metrics::HISTORY as u64)
        .rev()
        .map(|ago| {
            let m = now_min.saturating_sub(ago);
            history.iter().find(|h| h.minute == m)
        })
        .collect();
    let total: u64 = history.iter().map(|m| m.count).sum();
    let _ = write!(
        o,
        "<section id=\"charts\"><h2>Signing over the last hour (since this coordinator started)</h2><p>{total} signatures.</p>"
    );
    let (w, h, bw) = (600.0, 120.0, 10.0);
    let max_count = minutes
        .iter()
        .flatten()
        .map(|m| m.count)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let _ = write!(
        o,
        "<figure><figcaption>signatures per minute (max {max_count})</figcaption><svg class=\"chart\" id=\"volume\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\">"
    );
    for (i, m) in minutes.iter().enumerate() {
        if let Some(m) = m {
            let bh = (m.count as f64 / max_count) * (h - 10.0);
            let _ = write!(
                o,
                "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{} signatures</title></rect>",
                i as f64 * bw,
                h - bh,
                bw - 1.0,
                m.count
            );
        }
    }
    o.push_str("</svg></figure>");
    let medians: Vec<Option<(f64, f64)>> = minutes
        .iter()
        .map(|m| {
            m.map(|m| {
                let mut s = m.samples.clone();
                s.sort_by(f32::total_cmp);
                (
                    f64::from(s.get(s.len() / 2).copied().unwrap_or(0.0)),
                    m.max_ms,
                )
            })
        })
        .collect();
    let max_ms = medians
        .iter()
        .flatten()
        .map(|(_, mx)| *mx)
        .fold(1.0_f64, f64::max);
    let _ = write!(
        o,
        "<figure><figcaption>latency per minute: median (dark) and maximum (light), up to {max_ms:.1} ms</figcaption><svg class=\"chart\" id=\"latency\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\">"
    );
    for (i, m) in medians.iter().enumerate() {
        if let Some((p50, mx)) = m {
            let x = i as f64 * bw;
            let hm = (mx / max_ms) * (h - 10.0);
            let hp = (p50 / max_ms) * (h - 10.0);
            let _ = write!(
                o,
                "<rect class=\"bar-max\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hm:.1}\"><title>max {mx:.1} ms</title></rect><rect class=\"bar\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hp:.1}\"><title>median {p50:.1} ms</title></rect>",
                h - hm,
                bw - 1.0,
                h - hp,
                bw - 1.0,
            );
        }
    }
    o.push_str("</svg></figure></section>");
}

async fn ceremony(
    State((core, console)): St,
    headers: HeaderMap,
    Path(seq): Path<String>,
) -> Response {
    if core.upgrade().is_none() {
        return signed_out();
    }
    if console.session(&headers).is_none() {
        return signed_out();
    }
    let Ok(seq) = seq.parse::<u64>() else {
        return not_found().await;
    };
    let body = tokio::task::spawn_blocking(move || {
        let log = console.log.lock().expect("lock");
        log.recent
            .iter()
            .find(|c| c.seq == seq)
            .map(|c| c.body.clone())
    })
    .await
    .ok()
    .flatten();
    match body {
        Some(b) => (
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"ceremony-{seq}.json\""),
                ),
            ],
            b.as_ref().clone(),
        )
            .into_response(),
        None => page(
            "not here",
            false,
            "<main><p>Only recent ceremonies are kept here; <code>custody audit export</code> has all of them.</p></main>",
        ),
    }
}
