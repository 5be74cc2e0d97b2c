//! `fhir-edge fleet`: one read-only view of many sites. It follows the JetStream stream the
//! edges export to through a durable pull consumer and serves the same dashboard and the
//! read side of the API (`/api/cases`, `/api/cases/{site:id}`, `/api/alerts`, …) with a
//! `site` on every item and `key` = `<site>:<id>` (ids repeat across sites).
//!
//! It keeps no state of its own beyond the consumer's position: the view lives in memory
//! (`fhir_edge_core::fleet`), rebuilt from the stream's start at every start (the consumer
//! is recreated then); within a run, a broker restart or a network cut resumes from the
//! consumer's position. Decisions are taken at each site's own dashboard: the view has no
//! write endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use fhir_edge_core::cases::CaseScope;
use fhir_edge_core::fleet::{FleetFilter, FleetView, StatusFilter};

/// What `fhir-edge fleet` is given on its command line.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetOptions {
    /// NATS server URLs (nats:// or tls://), comma-separated or repeated.
    #[arg(
        long = "nats",
        value_delimiter = ',',
        required = true,
        value_name = "URL"
    )]
    pub servers: Vec<String>,
    /// The stream the edges export to.
    #[arg(long, default_value = "FHIR_EDGE")]
    pub stream: String,
    /// The durable consumer's name (recreated at every start: the view is rebuilt from the
    /// stream's start).
    #[arg(long, default_value = "fhir-edge-fleet")]
    pub consumer: String,
    /// A file holding the NATS token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A NATS credentials file (JWT and NKey seed).
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// PEM CA certificates for the servers' TLS (then TLS is required).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Where the view's dashboard and API listen; beyond loopback only with --api-token-file.
    #[arg(long, default_value = "127.0.0.1:8788")]
    pub listen: SocketAddr,
    /// A file holding the bearer token every request to the view must carry.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Alerts (and cases) kept in memory; beyond it the longest unchanged are forgotten
    /// (logged when it begins, counted in /api/health).
    #[arg(long, default_value_t = 200_000)]
    pub max_items: usize,
}

/// Why the fleet view cannot follow the stream (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetFollowError {
    #[error("connecting to NATS: {0}")]
    Connect(String),
    #[error("the stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("the consumer: {0}")]
    Consumer(String),
}

impl FleetFollowError {
    fn kind(&self) -> &'static str {
        match self {
            FleetFollowError::Connect(_) => "fleet_connect",
            FleetFollowError::Stream { .. } => "fleet_stream",
            FleetFollowError::Consumer(_) => "fleet_consumer",
        }
    }
}

/// The view and how following it goes, shared with the API.
struct Shared {
    view: FleetView,
    following: bool,
    last_error: Option<String>,
    skipped: u64,
}

#[derive(Clone)]
struct FleetState {
    shared: Arc<Mutex<Shared>>,
    opts: Arc<FleetOptions>,
    token: Option<Arc<String>>,
}

async fn connect(o: &FleetOptions) -> Result<async_nats::jetstream::Context, FleetFollowError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("fhir-edge fleet")
        .connection_timeout(Duration::from_secs(10));
    if let Some(t) = &o.token_file {
        let token = crate::config::read_secret(t)
            .map_err(|e| FleetFollowError::Connect(format!("token_file: {e}")))?;
        opts = opts.token(token);
    }
    if let Some(c) = &o.credentials_file {
        opts = opts
            .credentials_file(c)
            .await
            .map_err(|e| FleetFollowError::Connect(format!("{}: {e}", c.display())))?;
    }
    if let Some(ca) = &o.ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client = opts
        .connect(o.servers.as_slice())
        .await
        .map_err(|e| FleetFollowError::Connect(e.to_string()))?;
    Ok(async_nats::jetstream::new(client))
}

/// Follow the stream until the process ends: the first connection recreates the durable
/// consumer at the stream's start; later ones resume from its position.
async fn follow(state: FleetState) {
    let mut fresh = true;
    let mut failures = 0u32;
    loop {
        match follow_once(&state, &mut fresh).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                let retry = crate::export::retry_delay(failures, false);
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        actor = "fleet",
                        error_kind = e.kind(),
                        "cannot follow the stream, retrying in {retry:?}: {e}"
                    );
                }
                {
                    let mut s = crate::sync::lock(&state.shared);
                    s.following = false;
                    s.last_error = Some(e.to_string());
                }
                tokio::time::sleep(retry).await;
            }
        }
    }
}

async fn follow_once(state: &FleetState, fresh: &mut bool) -> Result<(), FleetFollowError> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let o = &state.opts;
    let js = connect(o).await?;
    let stream = js
        .get_stream(&o.stream)
        .await
        .map_err(|e| FleetFollowError::Stream {
            stream: o.stream.clone(),
            reason: e.to_string(),
        })?;
    if *fresh {
        // A new view starts from the stream's first message.
        let _ = stream.delete_consumer(&o.consumer).await;
    }
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &o.consumer,
            pull::Config {
                durable_name: Some(o.consumer.clone()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                description: Some("fhir-edge fleet view".into()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| FleetFollowError::Consumer(e.to_string()))?;
    *fresh = false;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| FleetFollowError::Consumer(e.to_string()))?;
    {
        let mut s = crate::sync::lock(&state.shared);
        s.following = true;
        s.last_error = None;
    }
    tracing::info!(actor = "fleet", stream = %o.stream, consumer = %o.consumer, "following the stream");
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| FleetFollowError::Consumer(e.to_string()))?;
        let mut s = crate::sync::lock(&state.shared);
        let forgotten = s.view.forgotten;
        let applied = s.view.apply(&m.payload);
        if forgotten == 0 && s.view.forgotten > 0 {
            tracing::warn!(
                actor = "fleet",
                max_items = o.max_items,
                "the view holds --max-items alerts and cases: the longest unchanged are forgotten \
                 from now on (counted as `forgotten` in /api/health)"
            );
        }
        if let Err(e) = applied {
            s.skipped += 1;
            tracing::warn!(
                actor = "fleet",
                error_kind = e.kind(),
                subject = %m.subject,
                "a message the view cannot read was skipped: {e}"
            );
        }
    }
    Err(FleetFollowError::Consumer(
        "the message stream ended".into(),
    ))
}

#[derive(Deserialize)]
struct ListQuery {
    site: Option<String>,
    status: Option<String>,
    severity: Option<String>,
    user: Option<String>,
    limit: Option<usize>,
    cursor: Option<u64>,
}

/// Which listing a query is for: its statuses are named differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Cases,
    Alerts,
}

impl ListQuery {
    /// The view's filter, or what is wrong with the query (for a 400), with the names the
    /// edge's own API takes.
    fn filter(&self, listing: Listing) -> Result<FleetFilter, String> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=fhir_edge_core::state::MAX_ALERTS_PAGE as usize).contains(&limit) {
            return Err(format!(
                "limit must be 1–{} (got {limit}); follow next_cursor for more",
                fhir_edge_core::state::MAX_ALERTS_PAGE
            ));
        }
        // An empty value is no filter (the dashboard's "any").
        let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        let status = given(&self.status);
        let status = match listing {
            Listing::Cases => {
                let (scope, one) =
                    CaseScope::parse(status.as_deref()).map_err(|e| e.to_string())?;
                StatusFilter::Cases(scope, one)
            }
            Listing::Alerts => StatusFilter::Alerts(crate::api::parse_name(&status)?),
        };
        Ok(FleetFilter {
            site: given(&self.site),
            status,
            severity: crate::api::parse_name(&given(&self.severity))?,
            user: given(&self.user),
            cursor: self.cursor,
            limit,
        })
    }
}

fn bad(m: String) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": m}))
}

async fn health(s: web::Data<FleetState>) -> HttpResponse {
    let sh = crate::sync::lock(&s.shared);
    let status = if sh.following { "ok" } else { "degraded" };
    let body = json!({
        "status": status,
        "mode": "fleet",
        "read_only": true,
        "stream": s.opts.stream,
        "consumer": s.opts.consumer,
        "degraded": sh.last_error,
        "sites": sh.view.sites(),
        "skipped_messages": sh.skipped,
        "forgotten": sh.view.forgotten,
        "status_line": format!("fleet view of {} site(s) from stream {}", sh.view.sites().len(), s.opts.stream),
    });
    match sh.following {
        true => HttpResponse::Ok().json(body),
        false => HttpResponse::ServiceUnavailable().json(body),
    }
}

/// What the dashboard's counters read (`durable` as an edge's `/api/stats` names it).
async fn stats(s: web::Data<FleetState>) -> HttpResponse {
    let sh = crate::sync::lock(&s.shared);
    let (by_severity, new) = sh.view.alert_counts();
    HttpResponse::Ok().json(json!({
        "durable": {"alerts_by_severity": by_severity, "alerts_new": new, "events_scored": null},
        "coverage": {"blind": []},
        "sites": sh.view.sites(),
    }))
}

async fn cases(s: web::Data<FleetState>, q: web::Query<ListQuery>) -> HttpResponse {
    let f = match q.filter(Listing::Cases) {
        Ok(f) => f,
        Err(m) => return bad(m),
    };
    let sh = crate::sync::lock(&s.shared);
    let (cases, next) = sh.view.cases(&f);
    HttpResponse::Ok()
        .json(json!({"cases": cases, "counts": sh.view.case_counts(), "next_cursor": next}))
}

async fn case(s: web::Data<FleetState>, key: web::Path<String>) -> HttpResponse {
    let sh = crate::sync::lock(&s.shared);
    match sh.view.case(&key) {
        Some((mut case, alerts)) => {
            let ids: Vec<&serde_json::Value> = alerts.iter().map(|a| &a["event_id"]).collect();
            case["event_ids"] = json!(ids);
            case["alerts"] = json!(alerts);
            HttpResponse::Ok().json(case)
        }
        None => HttpResponse::NotFound()
            .json(json!({"error": format!("no case {key} (use <site>:<id>)")})),
    }
}

async fn alerts(s: web::Data<FleetState>, q: web::Query<ListQuery>) -> HttpResponse {
    let f = match q.filter(Listing::Alerts) {
        Ok(f) => f,
        Err(m) => return bad(m),
    };
    let sh = crate::sync::lock(&s.shared);
    let (alerts, next) = sh.view.alerts(&f);
    HttpResponse::Ok().json(json!({"alerts": alerts, "next_cursor": next}))
}

async fn alert(s: web::Data<FleetState>, key: web::Path<String>) -> HttpResponse {
    let sh = crate::sync::lock(&s.shared);
    match sh.view.alert(&key) {
        Some(a) => HttpResponse::Ok().json(a),
        None => HttpResponse::NotFound()
            .json(json!({"error": format!("no alert {key} (use <site>:<id>)")})),
    }
}

/// Serve the view until a signal.
pub(crate) fn run(opts: FleetOptions) -> anyhow::Result<()> {
    if !opts.listen.ip().is_loopback() && opts.api_token_file.is_none() {
        anyhow::bail!(
            "--listen {} is not a loopback address; give --api-token-file so every request \
             needs a bearer token, or listen on 127.0.0.1",
            opts.listen
        );
    }
    let token = opts
        .api_token_file
        .as_deref()
        .map(crate::config::read_secret)
        .transpose()?
        .map(Arc::new);
    let state = FleetState {
        shared: Arc::new(Mutex::new(Shared {
            view: FleetView::new(opts.max_items),
            following: false,
            last_error: None,
            skipped: 0,
        })),
        opts: Arc::new(opts),
        token,
    };
    let sys = actix_rt::System::new();
    sys.block_on(async move {
        actix_rt::spawn(follow(state.clone()));
        let listen = state.opts.listen;
        let data = web::Data::new(state);
        let server = actix_web::HttpServer::new(move || {
            let token = data.token.clone();
            actix_web::App::new()
                .app_data(data.clone())
                .wrap(actix_web::middleware::from_fn(
                    move |req: actix_web::dev::ServiceRequest,
                          next: actix_web::middleware::Next<_>| {
                        let refused = crate::api::bearer_refused(
                            req.request(),
                            token.as_deref().map(String::as_str),
                        );
                        async move {
                            match refused {
                                Some(e) => Err(e),
                                None => next.call(req).await,
                            }
                        }
                    },
                ))
                .route("/", web::get().to(crate::api::dashboard::index))
                .route("/api/health", web::get().to(health))
                .route("/api/stats", web::get().to(stats))
                .route("/api/cases", web::get().to(cases))
                .route("/api/cases/{key}", web::get().to(case))
                .route("/api/alerts", web::get().to(alerts))
                .route("/api/alerts/{key}", web::get().to(alert))
        })
        .workers(1)
        .disable_signals()
        .bind(listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        let addr = server.addrs().first().copied().unwrap_or(listen);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        tracing::info!(actor = "fleet", api = %addr, "fleet view ready");
        crate::app::wait_for_signal().await;
        handle.stop(true).await;
        Ok(())
    })
}
