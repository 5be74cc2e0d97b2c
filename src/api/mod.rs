//! The local HTTP API (actix-web): health, stats, metrics, alerts with their status and
//! the allow-list, cases (`cases.rs`), the `/fhir/notify` push endpoint, and the embedded dashboard.

mod cases;
pub(crate) mod dashboard;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use actix::Recipient;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};

use serde::Deserialize;
use serde_json::json;

use crate::health::{ActorReport, Counter, Health};
use crate::pipeline::AllowListChanged;
use crate::pipeline::EventsFetched;
use crate::state::actor::{AddAllowRule, RemoveAllowRule, SetStatus};
use fhir_edge_core::alerts::{AlertFilter, AllowRule, Severity, Status, UnknownName};
use fhir_edge_core::clock::SharedClock;
use fhir_edge_core::state::{Reader, StateError};

/// Largest accepted `/fhir/notify` body.
pub const NOTIFY_LIMIT: usize = 8 * 1024 * 1024;

/// The latest watchdog round, shared with `/api/health`.
#[derive(Debug, Clone, Default)]
pub struct HealthRound {
    pub healthy: bool,
    pub reports: Vec<ActorReport>,
    pub at: String,
}

#[derive(Clone)]
pub struct ApiState {
    /// Read connections to the state database.
    pub readers: Arc<ReaderPool>,
    pub health: Health,
    pub round: Arc<Mutex<HealthRound>>,
    pub token: Option<Arc<String>>,
    pub clock: SharedClock,
    pub started_ms: i64,
    pub detector: Recipient<EventsFetched>,
    pub set_status: Recipient<SetStatus>,
    pub set_case_status: Recipient<crate::state::actor::SetCaseStatus>,
    pub user_card: Recipient<crate::detector::actor::UserCard>,
    pub add_rule: Recipient<AddAllowRule>,
    pub remove_rule: Recipient<RemoveAllowRule>,
    pub backfill: Recipient<crate::state::actor::BackfillExport>,
    /// Set while a back-fill of the export runs (one at a time).
    pub backfilling: Arc<std::sync::atomic::AtomicBool>,
    pub rules_changed: Recipient<AllowListChanged>,
    /// The configured exporters (`nats`, `syslog`), whose standing `/api/health` shows.
    pub exporters: Vec<&'static str>,
}

/// Compare without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

/// The 401 for a request without the right bearer token, when one is required: the one
/// check the API and the fleet view share.
pub(crate) fn bearer_refused(
    req: &actix_web::HttpRequest,
    token: Option<&str>,
) -> Option<actix_web::Error> {
    let token = token?;
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return None;
    }
    Some(
        actix_web::error::InternalError::from_response(
            "unauthorized",
            HttpResponse::Unauthorized()
                .insert_header(("WWW-Authenticate", "Bearer"))
                .json(json!({"error": "missing or wrong bearer token"})),
        )
        .into(),
    )
}

async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let token = req
        .app_data::<web::Data<ApiState>>()
        .and_then(|s| s.token.clone());
    if let Some(refused) = bearer_refused(req.request(), token.as_deref().map(String::as_str)) {
        return Err(refused);
    }
    next.call(req).await
}

fn err_json(status: actix_web::http::StatusCode, msg: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": msg.into()}))
}

fn state_err(e: StateError) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    match e {
        StateError::NotFound => err_json(S::NOT_FOUND, "not found"),
        StateError::Invalid(m) => err_json(S::BAD_REQUEST, m),
        StateError::Decision(e) => err_json(S::BAD_REQUEST, e.to_string()),
        e => {
            tracing::warn!(
                actor = "api",
                error_kind = e.kind(),
                "state read failed: {e}"
            );
            err_json(
                S::SERVICE_UNAVAILABLE,
                format!("state unavailable ({})", e.kind()),
            )
        }
    }
}

/// Read-only connections to the state database, kept between requests: opening one reads
/// the schema, about a third of a small request's cost (`GET /api/alerts?limit=50` under
/// the soak's load: ~1.1 → ~0.7 ms of CPU; BENCHMARKS.md).
pub struct ReaderPool {
    dir: PathBuf,
    idle: Mutex<Vec<Reader>>,
}

/// Connections kept idle at most (one per request served at once, up to this).
const IDLE_READERS: usize = 4;

impl ReaderPool {
    pub fn new(dir: PathBuf) -> Self {
        ReaderPool {
            dir,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Run `f` on a kept connection, or a new one; the connection is kept again unless `f`
    /// failed (a connection that saw an error is not trusted with the next request).
    fn with<T>(&self, f: impl FnOnce(&Reader) -> Result<T, StateError>) -> Result<T, StateError> {
        let kept = crate::sync::lock(&self.idle).pop();
        let r = match kept {
            Some(r) => r,
            None => Reader::open(&self.dir)?,
        };
        let res = f(&r);
        if res.is_ok() {
            let mut idle = crate::sync::lock(&self.idle);
            if idle.len() < IDLE_READERS {
                idle.push(r);
            }
        }
        res
    }
}

async fn with_reader<T: Send + 'static>(
    readers: Arc<ReaderPool>,
    f: impl FnOnce(&Reader) -> Result<T, StateError> + Send + 'static,
) -> Result<T, HttpResponse> {
    web::block(move || readers.with(f))
        .await
        .map_err(|e| {
            err_json(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            )
        })?
        .map_err(state_err)
}

async fn health(s: web::Data<ApiState>) -> HttpResponse {
    let round = crate::sync::lock(&s.round).clone();
    let failing = s.health.export_failing();
    // Where each exporter stands (its backlog read from the outbox), when any is set up.
    let export = match s.exporters.is_empty() {
        true => Vec::new(),
        false => {
            let names = s.exporters.clone();
            with_reader(s.readers.clone(), move |r| r.export_status(&names))
                .await
                .unwrap_or_default()
        }
    };
    let export: Vec<serde_json::Value> = export
        .into_iter()
        .filter(|e| s.exporters.contains(&e.exporter.as_str()))
        .map(|e| {
            let error = failing
                .iter()
                .find(|(n, _)| *n == e.exporter)
                .map(|(_, err)| err.clone());
            json!({
                "exporter": e.exporter,
                "state": if error.is_some() { "failing" } else { "ok" },
                "backlog": e.backlog,
                "oldest_waiting": e.oldest_waiting,
                "acked_seq": e.acked_seq,
                "error": error,
            })
        })
        .collect();
    let degraded = s.health.degraded().or_else(|| {
        (!failing.is_empty()).then(|| {
            failing
                .iter()
                .map(|(n, e)| format!("{n} export failing, items kept in the outbox: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    });
    let status = if !round.healthy {
        "unhealthy"
    } else if degraded.is_some() {
        "degraded"
    } else {
        "ok"
    };
    let body = json!({
        "status": status,
        "healthy": round.healthy && degraded.is_none(),
        "degraded": degraded,
        "learning": s.health.learning(),
        "checked_at": round.at,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": (s.clock.now().timestamp_millis() - s.started_ms) / 1000,
        "actors": round.reports,
        "export": export,
        "status_line": s.health.status_line(),
    });
    if status == "ok" {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

fn counters_json(h: &Health) -> serde_json::Value {
    let c = &h.counters;
    let ms = |a: &std::sync::atomic::AtomicI64| {
        let v = a.load(Ordering::Relaxed);
        (v > 0).then(|| fhir_edge_core::clock::fmt_ms(fhir_edge_core::clock::from_ms(v)))
    };
    let mut out = serde_json::Map::new();
    for k in Counter::ALL {
        out.insert(k.name().into(), c.get(k).into());
    }
    let by_severity: serde_json::Map<String, serde_json::Value> = Severity::ALL
        .iter()
        .map(|sev| (sev.as_str().to_string(), c.alerts_of(*sev).into()))
        .collect();
    out.insert("alerts_by_severity".into(), by_severity.into());
    out.insert("last_poll".into(), json!(ms(&c.last_poll_ms)));
    out.insert("cursor".into(), json!(ms(&c.cursor_ms)));
    out.insert("newest_event".into(), json!(ms(&c.newest_event_ms)));
    out.into()
}

async fn stats(s: web::Data<ApiState>) -> HttpResponse {
    let now = s.clock.now().timestamp_millis();
    let newest = s.health.counters.newest_event_ms.load(Ordering::Relaxed);
    let durable = with_reader(s.readers.clone(), |r| r.status()).await;
    let mut body = json!({ "process": counters_json(&s.health) });
    body["poll_lag_secs"] = json!((newest > 0).then(|| (now - newest) as f64 / 1000.0));
    let coverage = s.health.coverage();
    body["coverage"] =
        json!({"counts": coverage, "blind": coverage.blind(), "summary": coverage.summary()});
    match durable {
        Ok(d) => body["durable"] = serde_json::to_value(d).unwrap_or_default(),
        Err(resp) => return resp,
    }
    HttpResponse::Ok().json(body)
}

async fn metrics(s: web::Data<ApiState>) -> HttpResponse {
    let c = &s.health.counters;
    let mut out = String::new();
    for k in Counter::ALL {
        let name = k.name();
        out.push_str(&format!(
            "# HELP fhir_edge_{name}_total {}\n# TYPE fhir_edge_{name}_total counter\nfhir_edge_{name}_total {}\n",
            k.help(),
            c.get(k)
        ));
    }
    out.push_str("# HELP fhir_edge_alerts_total Alerts raised by this process, by severity.\n# TYPE fhir_edge_alerts_total counter\n");
    for sev in Severity::ALL {
        out.push_str(&format!(
            "fhir_edge_alerts_total{{severity=\"{}\"}} {}\n",
            sev.as_str(),
            c.alerts_of(sev)
        ));
    }
    let newest = c.newest_event_ms.load(Ordering::Relaxed);
    if newest > 0 {
        let lag = (s.clock.now().timestamp_millis() - newest) as f64 / 1000.0;
        out.push_str(&format!("# HELP fhir_edge_poll_lag_seconds Age of the newest event seen.\n# TYPE fhir_edge_poll_lag_seconds gauge\nfhir_edge_poll_lag_seconds {lag}\n"));
    }
    c.poll_duration.render(
        "fhir_edge_poll_duration_seconds",
        "Duration of complete polls (every page read and committed).",
        &mut out,
    );
    c.page_fetch_duration.render(
        "fhir_edge_page_fetch_duration_seconds",
        "Duration of one search page fetch (request, body, parse).",
        &mut out,
    );
    c.batch_size.render(
        "fhir_edge_batch_size_events",
        "Events per page handed to the detector (incl. duplicates).",
        &mut out,
    );
    c.scoring_duration.render(
        "fhir_edge_scoring_duration_seconds",
        "Duration to de-duplicate and score one page.",
        &mut out,
    );
    c.commit_duration.render(
        "fhir_edge_commit_duration_seconds",
        "Duration of one SQLite commit of a scored page with its alerts and cursor keys.",
        &mut out,
    );
    c.snapshot_encode_duration.render(
        "fhir_edge_snapshot_encode_duration_seconds",
        "Duration to encode the detector's context for a snapshot (scoring waits).",
        &mut out,
    );
    c.snapshot_write_duration.render(
        "fhir_edge_snapshot_write_duration_seconds",
        "Duration to write a snapshot's file and commit it with the cursor (scoring goes on).",
        &mut out,
    );
    if let Ok(counts) = with_reader(s.readers.clone(), |r| r.case_counts()).await {
        out.push_str(
            "# HELP fhir_edge_cases Cases in the store, by status.\n# TYPE fhir_edge_cases gauge\n",
        );
        for (status, n) in counts {
            out.push_str(&format!("fhir_edge_cases{{status=\"{status}\"}} {n}\n"));
        }
    }
    if !s.exporters.is_empty() {
        let names = s.exporters.clone();
        if let Ok(export) = with_reader(s.readers.clone(), move |r| r.export_status(&names)).await {
            out.push_str("# HELP fhir_edge_export_backlog Outbox items the exporter has not had acknowledged yet.\n# TYPE fhir_edge_export_backlog gauge\n");
            for e in export
                .iter()
                .filter(|e| s.exporters.contains(&e.exporter.as_str()))
            {
                out.push_str(&format!(
                    "fhir_edge_export_backlog{{exporter=\"{}\"}} {}\n",
                    e.exporter, e.backlog
                ));
            }
        }
    }
    let healthy = crate::sync::lock(&s.round).healthy && s.health.degraded().is_none();
    out.push_str(&format!("# HELP fhir_edge_healthy 1 when every actor makes progress.\n# TYPE fhir_edge_healthy gauge\nfhir_edge_healthy {}\n", healthy as u8));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

#[derive(Deserialize)]
struct AlertQuery {
    since: Option<String>,
    until: Option<String>,
    severity: Option<String>,
    status: Option<String>,
    user: Option<String>,
    patient: Option<String>,
    limit: Option<u32>,
    cursor: Option<i64>,
}

fn parse_time(key: &str, v: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("{key} must be an RFC 3339 time like 2024-05-01T00:00:00Z"))
}

/// An optional name from a closed list (severity, status), or what is wrong with it.
pub(crate) fn parse_name<T: std::str::FromStr<Err = UnknownName>>(
    v: &Option<String>,
) -> Result<Option<T>, String> {
    v.as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: UnknownName| e.to_string())
}

/// The most alerts (or cases) one page of `/api/alerts` (`/api/cases`) holds (the store's
/// own cap).
const MAX_PAGE: u32 = fhir_edge_core::state::MAX_ALERTS_PAGE;

/// A page's `limit` (default 50), or what is wrong with it: more than a page is refused,
/// never cut without a word.
fn page_limit(limit: Option<u32>) -> Result<u32, String> {
    match limit.unwrap_or(50) {
        l @ 1..=MAX_PAGE => Ok(l),
        l => Err(format!(
            "limit must be 1–{MAX_PAGE} (got {l}); follow next_cursor for more"
        )),
    }
}

impl AlertQuery {
    /// The store's filter, or what is wrong with the query (for a 400).
    fn filter(&self) -> Result<AlertFilter, String> {
        Ok(AlertFilter {
            since_ms: self
                .since
                .as_deref()
                .map(|v| parse_time("since", v))
                .transpose()?,
            until_ms: self
                .until
                .as_deref()
                .map(|v| parse_time("until", v))
                .transpose()?,
            min_severity: parse_name(&self.severity)?,
            status: parse_name(&self.status)?,
            user: self.user.clone(),
            patient: self.patient.clone(),
            before_id: self.cursor,
            limit: page_limit(self.limit)?,
        })
    }
}

async fn list_alerts(s: web::Data<ApiState>, q: web::Query<AlertQuery>) -> HttpResponse {
    let f = match q.filter() {
        Ok(f) => f,
        Err(m) => return err_json(actix_web::http::StatusCode::BAD_REQUEST, m),
    };
    let limit = f.limit as usize;
    match with_reader(s.readers.clone(), move |r| r.alerts(&f)).await {
        Ok(alerts) => {
            let next = (alerts.len() == limit)
                .then(|| alerts.last().map(|a| a.id))
                .flatten();
            HttpResponse::Ok().json(json!({"alerts": alerts, "next_cursor": next}))
        }
        Err(r) => r,
    }
}

async fn get_alert(s: web::Data<ApiState>, id: web::Path<i64>) -> HttpResponse {
    let id = id.into_inner();
    match with_reader(s.readers.clone(), move |r| r.alert(id)).await {
        Ok(a) => HttpResponse::Ok().json(a),
        Err(r) => r,
    }
}

/// Which fields of the alert a false-positive allow-list rule should pin.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AllowFrom {
    #[serde(default)]
    user: bool,
    #[serde(default)]
    patient: bool,
    #[serde(default)]
    source_ip: bool,
    #[serde(default)]
    client_app: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    by: Option<String>,
    /// With `false_positive`: add an allow-list rule from these fields of the alert.
    #[serde(default)]
    allow: Option<AllowFrom>,
}

async fn set_status(
    s: web::Data<ApiState>,
    id: web::Path<i64>,
    body: web::Json<StatusBody>,
) -> HttpResponse {
    let id = id.into_inner();
    let body = body.into_inner();
    let status: Status = match body.status.parse() {
        Ok(st) if st != Status::New => st,
        Ok(_) => {
            return err_json(
                actix_web::http::StatusCode::BAD_REQUEST,
                "status must be acknowledged, false_positive or confirmed",
            )
        }
        Err(e) => return err_json(actix_web::http::StatusCode::BAD_REQUEST, e.to_string()),
    };
    let alert = match with_reader(s.readers.clone(), move |r| r.alert(id)).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let allow = match (&body.allow, status) {
        (Some(a), Status::FalsePositive) => Some(AllowRule {
            user: a.user.then(|| alert.user.clone()).flatten(),
            patient: a.patient.then(|| alert.patient.clone()).flatten(),
            source_ip: a.source_ip.then(|| alert.source_ip.clone()).flatten(),
            client_app: a.client_app.then(|| alert.client_app.clone()).flatten(),
            note: body.note.clone(),
            created_by: body.by.clone(),
            from_alert: Some(id),
            ..Default::default()
        }),
        (Some(_), _) => {
            return err_json(
                actix_web::http::StatusCode::BAD_REQUEST,
                "allow is only valid with status false_positive",
            )
        }
        _ => None,
    };
    let msg = SetStatus {
        id,
        status,
        by: body.by,
        note: body.note,
        allow,
    };
    match s.set_status.send(msg).await {
        Ok(Ok(rules)) => {
            s.rules_changed.do_send(AllowListChanged(rules));
            get_alert(s, web::Path::from(id)).await
        }
        Ok(Err(e)) => state_err(e),
        Err(e) => err_json(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        ),
    }
}

async fn list_allow(s: web::Data<ApiState>) -> HttpResponse {
    match with_reader(s.readers.clone(), |r| r.allowlist()).await {
        Ok(rules) => HttpResponse::Ok().json(json!({"rules": rules})),
        Err(r) => r,
    }
}

async fn add_allow(s: web::Data<ApiState>, rule: web::Json<AllowRule>) -> HttpResponse {
    match s.add_rule.send(AddAllowRule(rule.into_inner())).await {
        Ok(Ok(rules)) => {
            s.rules_changed.do_send(AllowListChanged(rules.clone()));
            HttpResponse::Created().json(json!({"rules": rules}))
        }
        Ok(Err(e)) => state_err(e),
        Err(e) => err_json(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        ),
    }
}

async fn remove_allow(s: web::Data<ApiState>, id: web::Path<i64>) -> HttpResponse {
    match s.remove_rule.send(RemoveAllowRule(id.into_inner())).await {
        Ok(Ok(rules)) => {
            s.rules_changed.do_send(AllowListChanged(rules.clone()));
            HttpResponse::Ok().json(json!({"rules": rules}))
        }
        Ok(Err(e)) => state_err(e),
        Err(e) => err_json(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillBody {
    /// RFC 3339: alerts stored and cases active from then on.
    since: String,
}

/// Send again what was stored since a time to every configured exporter (an exporter
/// added later, a SIEM that lost its index): `{"since": "2024-05-01T00:00:00Z"}` →
/// `{"alerts": n, "cases": m}` once written; 400 when export is off or the outbox has no
/// room for all, 409 while another runs. It runs to its end (in steps, logged) even when
/// the client stops waiting.
async fn backfill_export(s: web::Data<ApiState>, body: web::Json<BackfillBody>) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    let since_ms = match parse_time("since", &body.since) {
        Ok(t) => t,
        Err(m) => return err_json(S::BAD_REQUEST, m),
    };
    if s.backfilling
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return err_json(
            S::CONFLICT,
            "a back-fill is running: wait for its end (the journal logs its progress)",
        );
    }
    let (state, running) = (s.backfill.clone(), s.backfilling.clone());
    let run = actix_web::rt::spawn(async move {
        let res = crate::state::actor::run_backfill(&state, since_ms).await;
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        res
    });
    match run.await {
        Ok(Ok(b)) => HttpResponse::Ok().json(b),
        Ok(Err((e, written))) if written.items() == 0 => state_err(e),
        Ok(Err((e, written))) => {
            // run_backfill logged where it stopped.
            HttpResponse::ServiceUnavailable().json(json!({
                "error": e.to_string(),
                "alerts": written.alerts,
                "cases": written.cases,
            }))
        }
        Err(e) => err_json(
            S::INTERNAL_SERVER_ERROR,
            format!("the back-fill failed: {e}"),
        ),
    }
}

/// Push: an AuditEvent, a Bundle of them, or a subscription notification Bundle. Runs the
/// same pipeline as polling (de-duplicated against it) and answers once committed.
async fn notify(s: web::Data<ApiState>, body: web::Bytes) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    let page = match fhir_edge_core::fhir::parse_push(&body) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                actor = "api",
                error_kind = e.kind(),
                "rejected /fhir/notify body: {e}"
            );
            return HttpResponse::BadRequest().json(json!({
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "invalid", "diagnostics": e.to_string()}]
            }));
        }
    };
    let unkeyable = |e: &fhir_edge_core::fhir::Fetched| {
        e.record.id.is_empty() || (e.record.version_id.is_none() && e.record.last_updated.is_none())
    };
    if page.events.iter().any(unkeyable) {
        return err_json(
            S::UNPROCESSABLE_ENTITY,
            "every AuditEvent needs an id and meta.versionId or meta.lastUpdated (the de-duplication key \
             shared with polling); send the resource as the server stored it (full-resource notifications)",
        );
    }
    let received = page.events.len();
    s.health
        .counters
        .add(Counter::NotifyReceived, received as u64);
    let skipped = page.skipped.len() as u64;
    let committed = match s
        .detector
        .send(EventsFetched {
            events: page.events,
            skipped,
        })
        .await
    {
        Ok(Ok(ticket)) => ticket.committed().await.map_err(|e| e.kind()),
        Ok(Err(e)) => Err(e.kind()),
        Err(_) => Err("mailbox"),
    };
    match committed {
        Ok(r) => HttpResponse::Ok().json(json!({
            "received": received, "scored": r.scored, "duplicates": r.duplicates, "alerts": r.alerts, "skipped": skipped
        })),
        Err(kind) => err_json(S::SERVICE_UNAVAILABLE, format!("not committed, retry later ({kind})")),
    }
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    err_json(
        actix_web::http::StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", req.path()),
    )
}

/// Register every route on an actix-web app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("")
            .wrap(actix_web::middleware::from_fn(require_token))
            .app_data(
                web::JsonConfig::default()
                    .limit(64 * 1024)
                    .error_handler(|e, _| {
                        let msg = e.to_string();
                        actix_web::error::InternalError::from_response(
                            e,
                            err_json(actix_web::http::StatusCode::BAD_REQUEST, msg),
                        )
                        .into()
                    }),
            )
            .app_data(web::PayloadConfig::new(NOTIFY_LIMIT))
            .route("/", web::get().to(dashboard::index))
            .route("/api/health", web::get().to(health))
            .route("/api/stats", web::get().to(stats))
            .route("/metrics", web::get().to(metrics))
            .route("/api/alerts", web::get().to(list_alerts))
            .route("/api/alerts/{id}", web::get().to(get_alert))
            .route("/api/alerts/{id}/status", web::post().to(set_status))
            .route("/api/cases", web::get().to(cases::list))
            .route("/api/cases/{id}", web::get().to(cases::get))
            .route("/api/cases/{id}/status", web::post().to(cases::set_status))
            .route("/api/user", web::get().to(cases::user))
            .route("/api/allowlist", web::get().to(list_allow))
            .route("/api/allowlist", web::post().to(add_allow))
            .route("/api/allowlist/{id}", web::delete().to(remove_allow))
            .route("/api/export/backfill", web::post().to(backfill_export))
            .route("/fhir/notify", web::post().to(notify))
            .default_service(web::to(not_found)),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_works() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
        assert!(!super::constant_time_eq(b"", b"a"));
    }
}
