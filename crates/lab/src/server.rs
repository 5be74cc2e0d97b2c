//! A small in-memory FHIR R4 AuditEvent endpoint: `_lastUpdated` (ge/gt/le/lt), `_sort`,
//! `_count` and offset `next` links like a real server, `POST` to create, `metadata` with a
//! `Date` header; care context resources (Practitioner, Encounter…) searched the same way
//! when given (`insert_context`), a 404 for a type it has none of. The demo, the benchmarks and the tests run the real daemon against it
//! over HTTP. Faults can be injected to imitate real servers misbehaving.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};

use fhir_edge_core::clock::{fmt_ms, SharedClock};

/// One stored resource: its `meta.lastUpdated` and serialised JSON.
#[derive(Clone)]
struct Stored {
    last_updated_ms: i64,
    id: String,
    json: Arc<str>,
}

/// Something to do to the next matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status, optional Retry-After seconds, and body.
    Status {
        code: u16,
        retry_after: Option<u64>,
        body: String,
        content_type: &'static str,
    },
    /// Answer 200 with the first `n` bytes of the real page.
    Truncate(usize),
    /// Answer 200 with this raw body.
    Body(String),
    /// Wait before answering.
    Delay(Duration),
    /// Put this URL in the page's next link.
    NextLink(String),
}

/// Who may use the endpoint, like a real server's access control (to test the client).
#[derive(Debug, Clone, Default)]
pub enum Access {
    /// Anyone.
    #[default]
    Open,
    /// `Authorization: Bearer <token>` with exactly this token.
    Bearer(String),
    /// HTTP basic with this user and password.
    Basic { user: String, password: String },
    /// SMART Backend Services: tokens from `POST /fhir/token`, issued for a client assertion
    /// signed by the key whose public half (SPKI PEM) is given.
    Smart {
        client_id: String,
        public_key_pem: String,
        /// `RS384` or `ES384`.
        algorithm: String,
        /// `expires_in` of issued tokens.
        lifetime_secs: u64,
    },
}

#[derive(Default)]
struct Inner {
    events: Vec<Stored>,
    /// Faults applied in order to search requests (one per request).
    faults: VecDeque<Fault>,
    ignore_sort: bool,
    /// Like a server that keeps no search totals: `_summary=count` ignored, no `total`.
    no_count: bool,
    searches: u64,
    access: Access,
    /// Access tokens issued and still honoured.
    tokens: Vec<String>,
    /// Every token ever issued (for leak checks).
    issued: Vec<String>,
    token_requests: u64,
    refused: u64,
    next_id: u64,
    /// Last assigned lastUpdated, to keep it strictly increasing like a real server.
    last_assigned_ms: i64,
    /// Care context resources by type (the demo's Practitioners, Encounters…), each
    /// type in `lastUpdated` order. Types with none answer 404, as a server that does not
    /// offer them.
    context: std::collections::HashMap<String, Vec<Stored>>,
}

/// Handle to the endpoint's data; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct FhirStore {
    inner: Arc<RwLock<Inner>>,
    clock: SharedClock,
    /// The lower `_lastUpdated` bound of the latest search that had one (ms; `i64::MIN`
    /// before any): how far back a client still reads.
    read_from_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl FhirStore {
    pub fn new(clock: SharedClock) -> Self {
        FhirStore {
            inner: Arc::new(RwLock::new(Inner::default())),
            clock,
            read_from_ms: Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN)),
        }
    }

    /// Record that a client read from `ms` on (each search with a lower bound does).
    pub fn note_read_from(&self, ms: i64) {
        self.read_from_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The lower `_lastUpdated` bound of the latest search that had one.
    pub fn read_from_ms(&self) -> Option<i64> {
        Some(self.read_from_ms.load(std::sync::atomic::Ordering::Relaxed))
            .filter(|ms| *ms != i64::MIN)
    }

    pub fn set_access(&self, a: Access) {
        self.inner.write().unwrap().access = a;
    }

    /// Stop honouring every issued SMART token (as if they expired server-side).
    pub fn revoke_tokens(&self) {
        self.inner.write().unwrap().tokens.clear();
    }

    /// Token requests answered with a token.
    pub fn token_requests(&self) -> u64 {
        self.inner.read().unwrap().token_requests
    }

    /// Every access token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.read().unwrap().issued.clone()
    }

    /// Requests refused with 401.
    pub fn refused(&self) -> u64 {
        self.inner.read().unwrap().refused
    }

    /// Check a request's credentials against the configured access.
    fn authorized(&self, req: &HttpRequest) -> bool {
        let header = req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let ok = {
            let r = self.inner.read().unwrap();
            match &r.access {
                Access::Open => return true,
                Access::Bearer(t) => header.strip_prefix("Bearer ") == Some(t.as_str()),
                Access::Basic { user, password } => {
                    use base64::Engine as _;
                    let want = base64::engine::general_purpose::STANDARD
                        .encode(format!("{user}:{password}"));
                    header.strip_prefix("Basic ") == Some(want.as_str())
                }
                Access::Smart { .. } => header
                    .strip_prefix("Bearer ")
                    .is_some_and(|t| r.tokens.iter().any(|x| x == t)),
            }
        };
        if !ok {
            self.inner.write().unwrap().refused += 1;
        }
        ok
    }

    /// Insert events as given; each must carry `id` and `meta.lastUpdated`.
    /// Serve these care context resources (any types but AuditEvent), stamped now; every
    /// type the daemon follows is offered from then on (an empty Bundle when it has none).
    pub fn insert_context(&self, resources: impl IntoIterator<Item = serde_json::Value>) {
        let now = self.clock.now().timestamp_millis();
        let mut w = self.inner.write().unwrap();
        // A server with a care context offers every type of it, some perhaps empty.
        for t in fhir_edge_core::care::resources::TYPES {
            w.context.entry(t.to_string()).or_default();
        }
        for mut r in resources {
            let (Some(ty), Some(id)) = (
                r["resourceType"].as_str().map(str::to_string),
                r["id"].as_str().map(str::to_string),
            ) else {
                continue;
            };
            r["meta"]["lastUpdated"] = fmt_ms(fhir_edge_core::clock::from_ms(now)).into();
            w.context.entry(ty).or_default().push(Stored {
                last_updated_ms: now,
                id,
                json: r.to_string().into(),
            });
        }
    }

    pub fn insert_raw(&self, events: impl IntoIterator<Item = serde_json::Value>) {
        let mut w = self.inner.write().unwrap();
        for ev in events {
            let id = ev["id"].as_str().unwrap_or_default().to_string();
            let lu = ev["meta"]["lastUpdated"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_millis())
                .unwrap_or(0);
            let json: Arc<str> = serde_json::to_string(&ev).expect("json").into();
            w.events.push(Stored {
                last_updated_ms: lu,
                id,
                json,
            });
            w.last_assigned_ms = w.last_assigned_ms.max(lu);
        }
        w.events.sort_by(|a, b| {
            a.last_updated_ms
                .cmp(&b.last_updated_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
    }

    /// Insert already serialised events: (lastUpdated ms, id, JSON).
    pub fn insert_serialized(&self, events: Vec<(i64, String, Arc<str>)>) {
        let mut w = self.inner.write().unwrap();
        for (lu, id, json) in events {
            w.last_assigned_ms = w.last_assigned_ms.max(lu);
            w.events.push(Stored {
                last_updated_ms: lu,
                id,
                json,
            });
        }
        w.events.sort_by(|a, b| {
            a.last_updated_ms
                .cmp(&b.last_updated_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
    }

    /// Append `n` events created now, like `create` but pre-serialised: `make(i, lu)` gives the
    /// id and JSON of the i-th event for its assigned `lastUpdated` (ms, strictly increasing).
    pub fn append_now(&self, n: usize, mut make: impl FnMut(usize, i64) -> (String, Arc<str>)) {
        let now = self.clock.now().timestamp_millis();
        let mut w = self.inner.write().unwrap();
        for i in 0..n {
            let lu = now.max(w.last_assigned_ms + 1);
            w.last_assigned_ms = lu;
            let (id, json) = make(i, lu);
            w.events.push(Stored {
                last_updated_ms: lu,
                id,
                json,
            });
        }
    }

    /// Forget events last updated before `ms` (a server with limited retention).
    pub fn prune_before(&self, ms: i64) -> usize {
        let mut w = self.inner.write().unwrap();
        let k = w.events.partition_point(|e| e.last_updated_ms < ms);
        w.events.drain(..k);
        k
    }

    /// Create like a server: assign id (if missing), versionId 1 and lastUpdated = now
    /// (strictly after the previous one). Returns the id.
    pub fn create(&self, mut ev: serde_json::Value) -> String {
        let mut w = self.inner.write().unwrap();
        let now = self
            .clock
            .now()
            .timestamp_millis()
            .max(w.last_assigned_ms + 1);
        w.last_assigned_ms = now;
        w.next_id += 1;
        let id = match ev["id"].as_str() {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => format!("ae-{}", w.next_id),
        };
        ev["id"] = id.clone().into();
        ev["meta"] = serde_json::json!({"versionId": "1", "lastUpdated": fmt_ms(fhir_edge_core::clock::from_ms(now))});
        let json: Arc<str> = serde_json::to_string(&ev).expect("json").into();
        w.events.push(Stored {
            last_updated_ms: now,
            id: id.clone(),
            json,
        });
        id
    }

    /// Create with an explicit lastUpdated (a transaction that commits late).
    pub fn create_at(&self, mut ev: serde_json::Value, last_updated: DateTime<Utc>) -> String {
        let id = ev["id"].as_str().map(str::to_string).unwrap_or_else(|| {
            let mut w = self.inner.write().unwrap();
            w.next_id += 1;
            format!("ae-{}", w.next_id)
        });
        ev["id"] = id.clone().into();
        ev["meta"] = serde_json::json!({"versionId": "1", "lastUpdated": fmt_ms(last_updated)});
        self.insert_raw([ev]);
        id
    }

    /// The stored JSON of one resource.
    pub fn get(&self, id: &str) -> Option<serde_json::Value> {
        let r = self.inner.read().unwrap();
        r.events
            .iter()
            .find(|e| e.id == id)
            .map(|e| serde_json::from_str(&e.json).expect("stored JSON"))
    }

    /// The newest `meta.lastUpdated` held.
    pub fn newest_last_updated(&self) -> Option<DateTime<Utc>> {
        self.inner
            .read()
            .unwrap()
            .events
            .last()
            .map(|e| fhir_edge_core::clock::from_ms(e.last_updated_ms))
    }

    /// How many events are held with `lastUpdated` at or after `ms`.
    pub fn len_from(&self, ms: i64) -> usize {
        let r = self.inner.read().unwrap();
        r.events.len() - r.events.partition_point(|e| e.last_updated_ms < ms)
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn ids(&self) -> Vec<String> {
        self.inner
            .read()
            .unwrap()
            .events
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }

    pub fn push_fault(&self, f: Fault) {
        self.inner.write().unwrap().faults.push_back(f);
    }

    pub fn set_ignore_sort(&self, on: bool) {
        self.inner.write().unwrap().ignore_sort = on;
    }

    /// Answer like a server that keeps no search totals (see `Inner::no_count`).
    pub fn set_no_count(&self, on: bool) {
        self.inner.write().unwrap().no_count = on;
    }

    pub fn searches(&self) -> u64 {
        self.inner.read().unwrap().searches
    }
}

#[derive(serde::Deserialize, Default)]
struct SearchParams {
    #[serde(rename = "_lastUpdated", default)]
    last_updated: Vec<String>,
    #[serde(rename = "_count")]
    count: Option<usize>,
    #[serde(rename = "_offset")]
    offset: Option<usize>,
    /// `_summary=count`: the total only, no entries (unless `FhirStore::set_no_count`).
    #[serde(skip)]
    summary_count: bool,
}

fn parse_bound(v: &str) -> Option<(&str, i64)> {
    let (op, t) = if v.len() > 2 && v.as_bytes()[..2].iter().all(|b| b.is_ascii_lowercase()) {
        v.split_at(2)
    } else {
        ("eq", v)
    };
    let t = DateTime::parse_from_rfc3339(t).ok()?.timestamp_millis();
    Some((op, t))
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header(("WWW-Authenticate", "Bearer"))
        .content_type("application/fhir+json")
        .body(r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login","diagnostics":"authentication required"}]}"#)
}

#[derive(serde::Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
}

/// `POST /fhir/token`: SMART Backend Services client_credentials with a signed assertion.
async fn token(req: HttpRequest, store: web::Data<FhirStore>, body: web::Bytes) -> HttpResponse {
    let Access::Smart {
        client_id,
        public_key_pem,
        algorithm,
        lifetime_secs,
    } = store.inner.read().unwrap().access.clone()
    else {
        return HttpResponse::NotFound().finish();
    };
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let bad = |why: &str| {
        HttpResponse::BadRequest()
            .json(serde_json::json!({"error": "invalid_client", "error_description": why}))
    };
    if field("grant_type") != "client_credentials"
        || field("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        return bad("wrong grant_type or client_assertion_type");
    }
    let (alg, key) = match algorithm.as_str() {
        "RS384" => (
            jsonwebtoken::Algorithm::RS384,
            jsonwebtoken::DecodingKey::from_rsa_pem(public_key_pem.as_bytes()),
        ),
        "ES384" => (
            jsonwebtoken::Algorithm::ES384,
            jsonwebtoken::DecodingKey::from_ec_pem(public_key_pem.as_bytes()),
        ),
        _ => return bad("unsupported algorithm"),
    };
    let Ok(key) = key else {
        return bad("server key unreadable");
    };
    let info = req.connection_info();
    let aud = format!("{}://{}{}", info.scheme(), info.host(), req.path());
    let mut v = jsonwebtoken::Validation::new(alg);
    v.set_audience(&[aud]);
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let claims = match jsonwebtoken::decode::<AssertionClaims>(field("client_assertion"), &key, &v)
    {
        Ok(d) => d.claims,
        Err(e) => return bad(&format!("client assertion rejected: {e}")),
    };
    if claims.iss != client_id || claims.sub != client_id {
        return bad("unknown client");
    }
    let mut w = store.inner.write().unwrap();
    w.token_requests += 1;
    let t = format!(
        "at-{:016x}-{}",
        fhir_edge_core::rng::seed_from_time(),
        w.token_requests
    );
    w.tokens.push(t.clone());
    w.issued.push(t.clone());
    HttpResponse::Ok().json(serde_json::json!({
        "access_token": t, "token_type": "bearer", "expires_in": lifetime_secs, "scope": field("scope")
    }))
}

async fn metadata(store: web::Data<FhirStore>) -> HttpResponse {
    let now = store.clock.now();
    HttpResponse::Ok()
        .insert_header(("Date", now.to_rfc2822().replace("+0000", "GMT")))
        .content_type("application/fhir+json")
        .body(r#"{"resourceType":"CapabilityStatement","status":"active","kind":"instance","fhirVersion":"4.0.1","format":["json"],"rest":[{"mode":"server","resource":[{"type":"AuditEvent","interaction":[{"code":"read"},{"code":"create"},{"code":"search-type"}],"searchParam":[{"name":"_lastUpdated","type":"date"}]}]}]}"#)
}

async fn search(req: HttpRequest, store: web::Data<FhirStore>) -> HttpResponse {
    if !store.authorized(&req) {
        return unauthorized();
    }
    let q: SearchParams = serde_html_form_lite(req.query_string());
    let fault = {
        let mut w = store.inner.write().unwrap();
        w.searches += 1;
        w.faults.pop_front()
    };
    let mut next_override = None;
    let mut truncate = None;
    match fault {
        Some(Fault::Status {
            code,
            retry_after,
            body,
            content_type,
        }) => {
            let mut r = HttpResponse::build(
                actix_web::http::StatusCode::from_u16(code)
                    .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
            );
            if let Some(s) = retry_after {
                r.insert_header(("Retry-After", s.to_string()));
            }
            return r.content_type(content_type).body(body);
        }
        Some(Fault::Body(b)) => {
            return HttpResponse::Ok()
                .content_type("application/fhir+json")
                .body(b)
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::NextLink(u)) => next_override = Some(u),
        Some(Fault::Truncate(n)) => truncate = Some(n),
        None => {}
    }
    let count = q.count.unwrap_or(20).clamp(1, 1000);
    let offset = q.offset.unwrap_or(0);
    let mut lo = i64::MIN;
    let mut hi = i64::MAX;
    for b in &q.last_updated {
        match parse_bound(b) {
            Some(("ge", t)) => lo = lo.max(t),
            Some(("gt", t)) => lo = lo.max(t + 1),
            Some(("le", t)) => hi = hi.min(t),
            Some(("lt", t)) => hi = hi.min(t - 1),
            Some(("eq", t)) => {
                lo = t;
                hi = t + 999;
            }
            _ => {
                return HttpResponse::BadRequest().content_type("application/fhir+json").body(
                    r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"bad _lastUpdated"}]}"#,
                )
            }
        }
    }
    if lo != i64::MIN {
        store.note_read_from(lo);
    }
    let (page, total, ignore_sort, no_count): (Vec<Arc<str>>, usize, bool, bool) = {
        let r = store.inner.read().unwrap();
        let start = r.events.partition_point(|e| e.last_updated_ms < lo);
        let end = r.events.partition_point(|e| e.last_updated_ms <= hi);
        let total = end.saturating_sub(start);
        let from = (start + offset).min(end);
        let to = (from + count).min(end);
        (
            r.events[from..to].iter().map(|e| e.json.clone()).collect(),
            total,
            r.ignore_sort,
            r.no_count,
        )
    };
    if q.summary_count && !no_count {
        return HttpResponse::Ok()
            .content_type("application/fhir+json")
            .body(format!(
                r#"{{"resourceType":"Bundle","type":"searchset","total":{total}}}"#
            ));
    }
    let mut page = page;
    if ignore_sort {
        // A server that ignores _sort: a stable but scrambled order within the page.
        page.reverse();
    }
    let conn = req.connection_info();
    let base = format!("{}://{}{}", conn.scheme(), conn.host(), req.path());
    let self_url = format!("{base}?{}", req.query_string());
    let mut links = format!(
        r#"[{{"relation":"self","url":{}}}"#,
        serde_json::to_string(&self_url).unwrap()
    );
    let next = next_override.or_else(|| {
        (offset + page.len() < total).then(|| {
            let mut qs: Vec<String> = q
                .last_updated
                .iter()
                .map(|b| format!("_lastUpdated={}", urlencode(b)))
                .collect();
            qs.push("_sort=_lastUpdated".into());
            qs.push(format!("_count={count}"));
            qs.push(format!("_offset={}", offset + page.len()));
            format!("{base}?{}", qs.join("&"))
        })
    });
    if let Some(n) = next {
        links.push_str(&format!(
            r#",{{"relation":"next","url":{}}}"#,
            serde_json::to_string(&n).unwrap()
        ));
    }
    links.push(']');
    let mut body = String::with_capacity(page.iter().map(|p| p.len() + 16).sum::<usize>() + 256);
    body.push_str(&format!(
        r#"{{"resourceType":"Bundle","type":"searchset",{}"link":{links},"entry":["#,
        match no_count {
            true => String::new(),
            false => format!(r#""total":{total},"#),
        }
    ));
    for (i, e) in page.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"resource":"#);
        body.push_str(e);
        body.push_str(r#","search":{"mode":"match"}}"#);
    }
    body.push_str("]}");
    if let Some(n) = truncate {
        body.truncate(body.floor_char_boundary(n));
    }
    HttpResponse::Ok()
        .content_type("application/fhir+json")
        .body(body)
}

/// A search of a care context type: `_lastUpdated=ge…`, `_count`, `_offset`, in
/// `lastUpdated` order (the demo's context is small); 404 for a type the store has none of.
async fn context_search(
    req: HttpRequest,
    path: web::Path<String>,
    store: web::Data<FhirStore>,
) -> HttpResponse {
    if !store.authorized(&req) {
        return unauthorized();
    }
    let q: SearchParams = serde_html_form_lite(req.query_string());
    let lo = q
        .last_updated
        .iter()
        .filter_map(|b| parse_bound(b))
        .filter(|(op, _)| *op == "ge")
        .map(|(_, t)| t)
        .max()
        .unwrap_or(i64::MIN);
    let (count, offset) = (q.count.unwrap_or(20).clamp(1, 1000), q.offset.unwrap_or(0));
    let page: Option<(Vec<Arc<str>>, usize)> = {
        let r = store.inner.read().unwrap();
        r.context.get(path.as_str()).map(|all| {
            let matching: Vec<&Stored> = all.iter().filter(|e| e.last_updated_ms >= lo).collect();
            let total = matching.len();
            (
                matching
                    .iter()
                    .skip(offset)
                    .take(count)
                    .map(|e| e.json.clone())
                    .collect(),
                total,
            )
        })
    };
    let Some((page, total)) = page else {
        return HttpResponse::NotFound().content_type("application/fhir+json").body(
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-supported","diagnostics":"unknown resource type"}]}"#,
        );
    };
    let conn = req.connection_info();
    let base = format!("{}://{}{}", conn.scheme(), conn.host(), req.path());
    let mut links = vec![
        serde_json::json!({"relation": "self", "url": format!("{base}?{}", req.query_string())}),
    ];
    if offset + page.len() < total {
        let mut qs: Vec<String> = q
            .last_updated
            .iter()
            .map(|b| format!("_lastUpdated={}", urlencode(b)))
            .collect();
        qs.push(format!("_count={count}"));
        qs.push(format!("_offset={}", offset + page.len()));
        links.push(
            serde_json::json!({"relation": "next", "url": format!("{base}?{}", qs.join("&"))}),
        );
    }
    let entries: Vec<serde_json::Value> = page
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .map(|r| serde_json::json!({"resource": r}))
        .collect();
    HttpResponse::Ok().content_type("application/fhir+json").body(
        serde_json::json!({"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries})
            .to_string(),
    )
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Minimal query-string reader (repeated `_lastUpdated` allowed).
fn serde_html_form_lite(qs: &str) -> SearchParams {
    let mut p = SearchParams::default();
    for (k, v) in url::form_urlencoded::parse(qs.as_bytes()) {
        match k.as_ref() {
            "_lastUpdated" => p.last_updated.push(v.into_owned()),
            "_count" => p.count = v.parse().ok(),
            "_offset" => p.offset = v.parse().ok(),
            "_summary" => p.summary_count = v == "count",
            _ => {}
        }
    }
    p
}

async fn create(req: HttpRequest, store: web::Data<FhirStore>, body: web::Bytes) -> HttpResponse {
    if !store.authorized(&req) {
        return unauthorized();
    }
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return HttpResponse::BadRequest().body(format!("invalid JSON: {e}")),
    };
    if v["resourceType"] != "AuditEvent" {
        return HttpResponse::BadRequest().body("expected an AuditEvent");
    }
    let id = store.create(v);
    let loc = format!("AuditEvent/{id}/_history/1");
    HttpResponse::Created()
        .insert_header(("Location", loc))
        .content_type("application/fhir+json")
        .body(format!(r#"{{"resourceType":"AuditEvent","id":"{id}"}}"#))
}

/// Routes under `/fhir`.
pub fn configure(cfg: &mut web::ServiceConfig, store: FhirStore) {
    cfg.app_data(web::Data::new(store))
        .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
        .service(
            web::scope("/fhir")
                .route("/metadata", web::get().to(metadata))
                .route("/AuditEvent", web::get().to(search))
                .route("/AuditEvent", web::post().to(create))
                .route("/token", web::post().to(token))
                .route("/{resource_type}", web::get().to(context_search)),
        );
}

/// Bind the endpoint on `addr` (use port 0 for any) in the current actix System; returns
/// the bound address and the server handle.
pub fn serve(
    store: FhirStore,
    addr: std::net::SocketAddr,
    workers: usize,
) -> std::io::Result<(std::net::SocketAddr, actix_web::dev::ServerHandle)> {
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new().configure(|c| configure(c, store.clone()))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)?;
    let bound = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((bound, handle))
}

/// Run the endpoint on its own thread (own actix System); for tests and the benchmark.
pub fn spawn_thread(store: FhirStore, workers: usize) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sys = actix_rt::System::new();
        sys.block_on(async move {
            let (addr, _h) = serve(store, "127.0.0.1:0".parse().unwrap(), workers)
                .expect("bind test FHIR server");
            tx.send(addr).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("test FHIR server started")
}
