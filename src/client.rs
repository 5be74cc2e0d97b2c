//! HTTP access to the FHIR server: searches, paging, auth, and fault classification.
//! Credentials never appear in errors or logs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER,
};
use reqwest::StatusCode;
use tokio::sync::Mutex;
use url::Url;

use crate::config::{read_secret, AuthConfig, FhirConfig, SecretError};
use fhir_edge_core::fhir::{Page, ParseError};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect to the FHIR server: {0}")]
    Connect(String),
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    #[error("server answered HTTP {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("server is rate limiting (HTTP 429); retry after {retry_after:?}")]
    RateLimited { retry_after: Option<Duration> },
    #[error("server answered HTTP {status} (service unavailable); retry after {retry_after:?}")]
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("server refused our credentials (HTTP 401) after one refresh")]
    Unauthorized,
    #[error("paging link expired (HTTP {0}); the search restarts from the cursor")]
    PageExpired(u16),
    #[error("refused next link to another origin: {0}")]
    ForeignNext(String),
    #[error("page body exceeds {0} bytes")]
    TooLarge(u64),
    #[error("reading the body failed: {0}")]
    Body(String),
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("authentication setup failed: {0}")]
    Auth(String),
    #[error("authentication setup failed: {0}")]
    Secret(#[from] SecretError),
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

impl FetchError {
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Connect(_) => "connect",
            FetchError::Timeout(_) => "timeout",
            FetchError::Status { status, .. } if *status >= 500 => "http_5xx",
            FetchError::Status { .. } => "http_4xx",
            FetchError::RateLimited { .. } => "rate_limited",
            FetchError::Unavailable { .. } => "unavailable",
            FetchError::Unauthorized => "unauthorized",
            FetchError::PageExpired(_) => "page_expired",
            FetchError::ForeignNext(_) => "foreign_next_link",
            FetchError::TooLarge(_) => "body_too_large",
            FetchError::Body(_) => "truncated_body",
            FetchError::Parse(p) => p.kind(),
            FetchError::Auth(_) | FetchError::Secret(_) => "auth_setup",
            FetchError::Setup(_) => "client_setup",
        }
    }

    /// Retrying the same request cannot help: a page too large (ask for fewer), an expired
    /// or foreign paging link, refused credentials, a setup error.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            FetchError::TooLarge(_)
                | FetchError::PageExpired(_)
                | FetchError::ForeignNext(_)
                | FetchError::Auth(_)
                | FetchError::Secret(_)
                | FetchError::Setup(_)
        )
    }

    /// A server-requested delay before retrying, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::RateLimited { retry_after }
            | FetchError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let t = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((t - now).to_std().unwrap_or(Duration::ZERO))
}

/// `{base}/{resource_type}`, whether the base ends in a slash or not.
fn type_url(base: &Url, resource_type: &str) -> Url {
    let mut u = base.clone();
    u.path_segments_mut()
        .expect("http(s) base URL")
        .pop_if_empty()
        .push(resource_type);
    u
}

/// The first search URL: `_lastUpdated=ge{since}&_sort=_lastUpdated&_count={n}`, full precision.
pub fn search_url(base: &Url, resource_type: &str, since: DateTime<Utc>, page_size: u32) -> Url {
    let mut u = type_url(base, resource_type);
    u.query_pairs_mut()
        .append_pair(
            "_lastUpdated",
            &format!("ge{}", fhir_edge_core::clock::fmt_ms(since)),
        )
        .append_pair("_sort", "_lastUpdated")
        .append_pair("_count", &page_size.to_string());
    u
}

/// The count of events with `meta.lastUpdated` in `[from, to)`:
/// `_lastUpdated=ge{from}&_lastUpdated=lt{to}&_summary=count&_total=accurate`.
pub fn count_url(base: &Url, resource_type: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Url {
    let mut u = type_url(base, resource_type);
    u.query_pairs_mut()
        .append_pair(
            "_lastUpdated",
            &format!("ge{}", fhir_edge_core::clock::fmt_ms(from)),
        )
        .append_pair(
            "_lastUpdated",
            &format!("lt{}", fhir_edge_core::clock::fmt_ms(to)),
        )
        .append_pair("_summary", "count")
        .append_pair("_total", "accurate");
    u
}

/// A `next` link must stay on the server's origin (scheme, host, port).
pub fn check_next(base: &Url, next: &str) -> Result<Url, FetchError> {
    let u = base
        .join(next)
        .map_err(|_| FetchError::ForeignNext(redact_url(next)))?;
    if u.origin() != base.origin() {
        return Err(FetchError::ForeignNext(redact_url(next)));
    }
    Ok(u)
}

/// Drop userinfo and query from a URL for logs.
pub fn redact_url(s: &str) -> String {
    match Url::parse(s) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "(unparseable URL)".to_string(),
    }
}

#[derive(Debug, Clone)]
struct CachedToken {
    value: String,
    valid_until: Instant,
}

enum Auth {
    None,
    Bearer {
        file: std::path::PathBuf,
        token: Mutex<String>,
    },
    Basic {
        header: HeaderValue,
    },
    Smart(SmartAuth),
}

struct SmartAuth {
    token_url: String,
    client_id: String,
    key: jsonwebtoken::EncodingKey,
    alg: jsonwebtoken::Algorithm,
    key_id: Option<String>,
    scope: String,
    cached: Mutex<Option<CachedToken>>,
}

#[derive(serde::Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    jti: String,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl SmartAuth {
    async fn token(&self, http: &reqwest::Client, force: bool) -> Result<String, FetchError> {
        let mut cached = self.cached.lock().await;
        if !force {
            if let Some(c) = cached.as_ref() {
                if Instant::now() < c.valid_until {
                    return Ok(c.value.clone());
                }
            }
        }
        let now = Utc::now().timestamp();
        let claims = AssertionClaims {
            iss: &self.client_id,
            sub: &self.client_id,
            aud: &self.token_url,
            exp: now + 240,
            iat: now,
            jti: format!(
                "{:016x}{:016x}",
                fhir_edge_core::rng::seed_from_time(),
                fhir_edge_core::rng::seed_from_time().rotate_left(17)
            ),
        };
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = self.key_id.clone();
        header.typ = Some("JWT".into());
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| FetchError::Auth(format!("cannot sign client assertion: {e}")))?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", self.scope.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ];
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let resp = http
            .post(&self.token_url)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| classify_reqwest(&e, Duration::from_secs(30)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Auth(format!(
                "token endpoint answered HTTP {}",
                status.as_u16()
            )));
        }
        let tr: TokenResponse = resp.json().await.map_err(|_| {
            FetchError::Auth("token endpoint answered without an access_token".into())
        })?;
        let life = tr.expires_in.unwrap_or(300);
        // Refresh a little before expiry: 30 s or a tenth of the lifetime, whichever is less.
        let margin = (life / 10).min(30);
        *cached = Some(CachedToken {
            value: tr.access_token.clone(),
            valid_until: Instant::now() + Duration::from_secs(life.saturating_sub(margin)),
        });
        Ok(tr.access_token)
    }
}

fn classify_reqwest(e: &reqwest::Error, timeout: Duration) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout(timeout)
    } else if e.is_connect() {
        FetchError::Connect(without_url(e))
    } else if e.is_body() || e.is_decode() {
        FetchError::Body(without_url(e))
    } else {
        FetchError::Connect(without_url(e))
    }
}

/// reqwest's Display includes the URL (with its query); keep only the cause chain.
fn without_url(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    if parts.is_empty() {
        "request failed".to_string()
    } else {
        parts.join(": ")
    }
}

/// A FHIR client for one server and resource type. Cheap to clone.
#[derive(Clone)]
pub struct FhirClient {
    http: reqwest::Client,
    base: Url,
    resource_type: String,
    timeout: Duration,
    max_page_bytes: u64,
    auth: Arc<Auth>,
}

impl FhirClient {
    pub fn new(cfg: &FhirConfig, max_page_bytes: u64) -> Result<Self, FetchError> {
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/fhir+json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let mut b = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("fhir-edge/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(4);
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                FetchError::Setup(format!("cannot read ca_file {}: {e}", ca.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                FetchError::Setup(format!("ca_file {} is not PEM: {e}", ca.display()))
            })?;
            b = b.tls_certs_merge(certs);
        }
        let http = b
            .build()
            .map_err(|e| {
                let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
                FetchError::Setup(format!(
                    "{e}{cause} (TLS roots come from the system: is the ca-certificates package installed?)"
                ))
            })?;
        let auth = match &cfg.auth {
            AuthConfig::None => Auth::None,
            AuthConfig::Bearer { token_file } => {
                let t = read_secret(token_file)?;
                Auth::Bearer {
                    file: token_file.clone(),
                    token: Mutex::new(t),
                }
            }
            AuthConfig::Basic {
                username,
                password_file,
            } => {
                use base64::Engine as _;
                let pw = read_secret(password_file)?;
                let enc =
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{pw}"));
                let mut h = HeaderValue::from_str(&format!("Basic {enc}")).map_err(|_| {
                    FetchError::Auth("basic credentials are not a valid header".into())
                })?;
                h.set_sensitive(true);
                Auth::Basic { header: h }
            }
            AuthConfig::SmartBackend {
                token_url,
                client_id,
                private_key_file,
                algorithm,
                key_id,
                scope,
            } => {
                let pem = read_secret(private_key_file)?;
                let (alg, key) = match algorithm.as_str() {
                    "ES384" => (
                        jsonwebtoken::Algorithm::ES384,
                        jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()),
                    ),
                    _ => (
                        jsonwebtoken::Algorithm::RS384,
                        jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()),
                    ),
                };
                let key = key.map_err(|_| {
                    FetchError::Auth(format!(
                        "fhir.auth.private_key_file is not a PEM {algorithm} private key"
                    ))
                })?;
                Auth::Smart(SmartAuth {
                    token_url: token_url.clone(),
                    client_id: client_id.clone(),
                    key,
                    alg,
                    key_id: key_id.clone(),
                    scope: scope.clone(),
                    cached: Mutex::new(None),
                })
            }
        };
        let mut base = Url::parse(&cfg.base_url)
            .map_err(|e| FetchError::Setup(format!("fhir.base_url: {e}")))?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        Ok(FhirClient {
            http,
            base,
            resource_type: cfg.resource_type.clone(),
            timeout,
            max_page_bytes,
            auth: Arc::new(auth),
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }

    async fn auth_header(&self, refresh: bool) -> Result<Option<HeaderValue>, FetchError> {
        match &*self.auth {
            Auth::None => Ok(None),
            Auth::Basic { header } => Ok(Some(header.clone())),
            Auth::Bearer { file, token } => {
                let mut t = token.lock().await;
                if refresh {
                    // Token rotation: the file may hold a new token.
                    *t = read_secret(file)?;
                }
                bearer(&t).map(Some)
            }
            Auth::Smart(s) => bearer(&s.token(&self.http, refresh).await?).map(Some),
        }
    }

    /// GET with auth; a 401 refreshes the credentials once and retries.
    async fn get(&self, url: &Url) -> Result<reqwest::Response, FetchError> {
        let mut refreshed = false;
        loop {
            let mut req = self.http.get(url.clone());
            if let Some(h) = self.auth_header(refreshed).await? {
                req = req.header(AUTHORIZATION, h);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| classify_reqwest(&e, self.timeout))?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                if refreshed || matches!(*self.auth, Auth::None | Auth::Basic { .. }) {
                    return Err(FetchError::Unauthorized);
                }
                refreshed = true;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Read a body up to the size limit.
    async fn body(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, FetchError> {
        if let Some(len) = resp.content_length() {
            if len > self.max_page_bytes {
                return Err(FetchError::TooLarge(self.max_page_bytes));
            }
        }
        let mut buf = Vec::with_capacity(
            resp.content_length()
                .unwrap_or(64 * 1024)
                .min(self.max_page_bytes) as usize,
        );
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| classify_reqwest(&e, self.timeout))?
        {
            if buf.len() as u64 + chunk.len() as u64 > self.max_page_bytes {
                return Err(FetchError::TooLarge(self.max_page_bytes));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }

    /// Fetch and parse one searchset page. `is_next` marks a server-given paging link,
    /// whose 404/410 means the paging state expired.
    pub async fn fetch_page(&self, url: &Url, is_next: bool) -> Result<Page, FetchError> {
        let body = self.fetch_body(url, is_next).await?;
        self.parse_body(body).await
    }

    /// Parse a page body off the async threads (~10 ms per 1000 events), so the detector's
    /// and the API's futures keep running meanwhile.
    pub async fn parse_body(&self, body: Vec<u8>) -> Result<Page, FetchError> {
        let rt = self.resource_type.clone();
        let parsed =
            tokio::task::spawn_blocking(move || fhir_edge_core::fhir::parse_page_owned(body, &rt))
                .await
                .map_err(|e| FetchError::Body(format!("page parser task failed: {e}")))?;
        Ok(parsed?)
    }

    /// The body of one searchset page, unparsed (HTTP errors already classified).
    pub async fn fetch_body(&self, url: &Url, is_next: bool) -> Result<Vec<u8>, FetchError> {
        let resp = self.get(url).await?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        if !status.is_success() {
            let code = status.as_u16();
            let body = self.body(resp).await.unwrap_or_default();
            let detail = describe_error_body(&body);
            return Err(match code {
                429 => FetchError::RateLimited { retry_after },
                503 => FetchError::Unavailable {
                    status: code,
                    retry_after,
                },
                404 | 410 if is_next => FetchError::PageExpired(code),
                _ => FetchError::Status {
                    status: code,
                    detail,
                },
            });
        }
        self.body(resp).await
    }

    /// Every event the server holds from `since` on, for training on a site's history:
    /// all pages (following `next` links, retrying transient faults a few times), the
    /// overlap of ties de-duplicated by key, in `recorded` order; with the entries that
    /// could not be read. `progress` is told the running count after each page. With
    /// `max_events`, reading stops after the page that reaches it (the oldest events by
    /// `lastUpdated`; the last progress says how far it came).
    pub async fn history(
        &self,
        since: DateTime<Utc>,
        page_size: u32,
        max_events: Option<usize>,
        mut progress: impl FnMut(HistoryProgress),
    ) -> Result<
        (
            Vec<fhir_edge_core::fhir::AuditRecord>,
            Vec<(String, String)>,
        ),
        FetchError,
    > {
        let mut keys = std::collections::HashSet::new();
        let mut records = Vec::new();
        let mut skipped = Vec::new();
        let mut url = self.first_url(since, page_size);
        let mut is_next = false;
        let mut pages = 0u64;
        let mut newest: Option<DateTime<Utc>> = None;
        loop {
            let mut attempt = 0u32;
            let page = loop {
                match self.fetch_page(&url, is_next).await {
                    Ok(p) => break p,
                    Err(e) => {
                        attempt += 1;
                        if e.is_permanent() || attempt >= 5 {
                            return Err(e);
                        }
                        let delay = e
                            .retry_after()
                            .unwrap_or(Duration::from_secs(1 << attempt))
                            .min(Duration::from_secs(30));
                        tracing::warn!(
                            error_kind = e.kind(),
                            retry_in_ms = delay.as_millis() as u64,
                            "page fetch failed, retrying: {e}"
                        );
                        tokio::time::sleep(delay).await;
                    }
                }
            };
            skipped.extend(page.skipped);
            pages += 1;
            for f in page.events {
                newest = newest.max(f.record.last_updated);
                if keys.insert(f.record.key.clone()) {
                    records.push(f.record);
                }
            }
            progress(HistoryProgress {
                events: records.len() as u64,
                pages,
                newest,
            });
            if max_events.is_some_and(|m| history_cut(records.len(), m)) {
                break;
            }
            match page.next {
                Some(n) => {
                    url = check_next(&self.base, &n)?;
                    is_next = true;
                }
                None => break,
            }
        }
        records.sort_by_key(|r| r.recorded);
        Ok((records, skipped))
    }

    /// The first page of a search from `since`.
    pub fn first_url(&self, since: DateTime<Utc>, page_size: u32) -> Url {
        search_url(&self.base, &self.resource_type, since, page_size)
    }

    /// How many events the server holds with `meta.lastUpdated` in `[from, to)` (the
    /// searchset's `total`); `None` when it gives no total, or refuses the count (a 4xx):
    /// the caller reads the events instead.
    pub async fn count(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<u64>, FetchError> {
        let url = count_url(&self.base, &self.resource_type, from, to);
        match self.fetch_page(&url, false).await {
            Ok(page) => Ok(page.total),
            Err(FetchError::Status { status, .. }) if (400..500).contains(&status) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The server's clock, from the `Date` header of `GET metadata` (falls back to None).
    pub async fn server_time(&self) -> Result<Option<DateTime<Utc>>, FetchError> {
        let url = self.base.join("metadata").expect("relative join");
        let resp = self.get(&url).await?;
        let t = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
            .map(|t| t.with_timezone(&Utc));
        Ok(t)
    }

    /// POST a resource of our type; returns the id the server assigned.
    pub async fn create(&self, body: &serde_json::Value) -> Result<String, FetchError> {
        let url = self.base.join(&self.resource_type).expect("relative join");
        let mut req = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(serde_json::to_vec(body).expect("serialisable"));
        if let Some(h) = self.auth_header(false).await? {
            req = req.header(AUTHORIZATION, h);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| classify_reqwest(&e, self.timeout))?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = self.body(resp).await?;
        if !status.is_success() {
            return Err(FetchError::Status {
                status: status.as_u16(),
                detail: describe_error_body(&body),
            });
        }
        #[derive(serde::Deserialize)]
        struct Created {
            id: Option<String>,
        }
        let id = serde_json::from_slice::<Created>(&body)
            .ok()
            .and_then(|c| c.id)
            .or_else(|| {
                // Location: .../AuditEvent/{id}/_history/{v}
                let loc = location?;
                let mut parts = loc.split('/').collect::<Vec<_>>();
                if let Some(i) = parts.iter().position(|p| *p == "_history") {
                    parts.truncate(i);
                }
                parts.last().map(|s| s.to_string())
            })
            .unwrap_or_default();
        Ok(id)
    }
}

fn bearer(token: &str) -> Result<HeaderValue, FetchError> {
    let mut h = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        FetchError::Auth("token contains characters not allowed in a header".into())
    })?;
    h.set_sensitive(true);
    Ok(h)
}

/// A short description of an error body: OperationOutcome text, an HTML title, or a prefix.
fn describe_error_body(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    if s.contains("\"OperationOutcome\"") {
        return fhir_edge_core::fhir::operation_outcome_text(&s);
    }
    if let Some(start) = s.find("<title>") {
        if let Some(end) = s[start..].find("</title>") {
            return format!("HTML page: {}", s[start + 7..start + end].trim());
        }
    }
    let t: String = s.chars().take(120).filter(|c| !c.is_control()).collect();
    if t.is_empty() {
        "(empty body)".to_string()
    } else {
        t
    }
}

/// How far a history read (`FhirClient::history`) has come, after each page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryProgress {
    /// Distinct events read so far.
    pub events: u64,
    pub pages: u64,
    /// The newest `meta.lastUpdated` read so far: against the window asked for, how far
    /// the read has come when the server returns pages in `_lastUpdated` order.
    pub newest: Option<DateTime<Utc>>,
}

/// A valid BALP-style patient-read AuditEvent for `send-test-event`.
pub fn sample_event(now: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read", "display": "read"}],
        "action": "R",
        "recorded": fhir_edge_core::clock::fmt_ms(now),
        "outcome": "0",
        "agent": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
             "who": {"reference": "Practitioner/fhir-edge-test", "display": "fhir-edge test user"}, "requestor": true,
             "network": {"address": "127.0.0.1", "type": "2"}},
            {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
             "who": {"reference": "Device/fhir-edge-send-test-event"}, "requestor": false}
        ],
        "source": {"site": "fhir-edge", "observer": {"display": "fhir-edge send-test-event"}},
        "entity": [{"what": {"reference": "Patient/fhir-edge-test"},
                    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}}]
    })
}

/// A failed login by the test user (`send-test-event --failed-logins`): a burst of them
/// raises a `failed_logins` alert, one that needs no site baseline, so it shows that alerts
/// reach the journal even while the daemon is learning.
pub fn sample_failed_login(now: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"},
        "subtype": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110122", "display": "Login"}],
        "action": "E",
        "recorded": fhir_edge_core::clock::fmt_ms(now),
        "outcome": "4",
        "agent": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
             "who": {"reference": "Practitioner/fhir-edge-test", "display": "fhir-edge test user"}, "requestor": true,
             "network": {"address": "127.0.0.1", "type": "2"}}
        ],
        "source": {"site": "fhir-edge", "observer": {"display": "fhir-edge send-test-event"}}
    })
}

/// Whether a read of the server's history ([`FhirClient::history`]) that returned `read`
/// events stopped at its bound of `max_events`: the oldest of the window, not all of it.
pub fn history_cut(read: usize, max_events: usize) -> bool {
    read >= max_events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_failed_login_reads_as_one() {
        let mut e = sample_failed_login(Utc::now());
        e["id"] = "1".into();
        let raw = serde_json::value::to_raw_value(&e).unwrap();
        let r = fhir_edge_core::fhir::parse_audit_event(&raw).unwrap();
        assert_eq!(r.interaction, fhir_edge_core::fhir::Interaction::Login);
        assert!(r.outcome > 0);
    }

    #[test]
    fn search_url_has_full_precision_and_sort() {
        let base = Url::parse("http://h:1/fhir/").unwrap();
        let t = DateTime::parse_from_rfc3339("2024-01-02T03:04:05.678Z")
            .unwrap()
            .with_timezone(&Utc);
        let u = search_url(&base, "AuditEvent", t, 200);
        assert_eq!(
            u.as_str(),
            "http://h:1/fhir/AuditEvent?_lastUpdated=ge2024-01-02T03%3A04%3A05.678Z&_sort=_lastUpdated&_count=200"
        );
        // The overlap recheck's count: both bounds at full precision, no base slash needed.
        let c = count_url(
            &Url::parse("http://h:1/fhir").unwrap(),
            "AuditEvent",
            t,
            t + chrono::Duration::seconds(120),
        );
        assert_eq!(
            c.as_str(),
            "http://h:1/fhir/AuditEvent?_lastUpdated=ge2024-01-02T03%3A04%3A05.678Z\
             &_lastUpdated=lt2024-01-02T03%3A06%3A05.678Z&_summary=count&_total=accurate"
        );
    }

    #[test]
    fn next_links_stay_on_origin() {
        let base = Url::parse("http://h:1/fhir/").unwrap();
        assert!(check_next(&base, "http://h:1/fhir?_getpages=x").is_ok());
        assert!(check_next(&base, "/fhir?_getpages=x").is_ok());
        assert_eq!(
            check_next(&base, "http://evil:1/fhir?x")
                .unwrap_err()
                .kind(),
            "foreign_next_link"
        );
        assert_eq!(
            check_next(&base, "https://h:1/fhir?x").unwrap_err().kind(),
            "foreign_next_link"
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn error_bodies_are_summarised() {
        assert_eq!(
            describe_error_body(b"<html><head><title>502 Bad Gateway</title>"),
            "HTML page: 502 Bad Gateway"
        );
    }

    #[test]
    fn sample_event_parses() {
        let raw = serde_json::value::to_raw_value(&sample_event(chrono::Utc::now())).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
        v["id"] = "x".into();
        let raw = serde_json::value::to_raw_value(&v).unwrap();
        let r = fhir_edge_core::fhir::parse_audit_event(&raw).unwrap();
        assert_eq!(r.patient.as_deref(), Some("Patient/fhir-edge-test"));
    }
}
