//! Configuration: built-in defaults, then a TOML file, then `FHIR_EDGE_<SECTION>__<KEY>`
//! environment variables. Every error names the key and where its value came from, and
//! never echoes the value of a secret-bearing key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::{Figment, Metadata, Source};

use serde::{Deserialize, Serialize};

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fhir-edge/config.toml";
/// Prefix of environment overrides: `FHIR_EDGE_POLLER__INTERVAL_SECS=10`.
pub const ENV_PREFIX: &str = "FHIR_EDGE_";
/// Fallback state directory when neither `[state] dir` nor `$STATE_DIRECTORY` is set.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fhir-edge";
/// Where the packaged default model lives.
pub const DEFAULT_MODEL_DIR: &str = "/usr/share/fhir-edge/models/default";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: key `{key}`: {problem}")]
    Invalid {
        key: String,
        source_name: String,
        problem: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
}

impl ConfigError {
    /// Stable machine-readable kind, used in logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Invalid { .. } => "config_invalid",
            ConfigError::Unreadable { .. } => "config_unreadable",
        }
    }

    /// The dotted key the error is about, when there is one.
    #[cfg(test)]
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The whole configuration. See `etc/config.toml` for the documented example.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The FHIR server to follow.
    pub fhir: FhirConfig,
    /// How the AuditEvent stream is polled.
    #[serde(default)]
    pub poller: PollerConfig,
    /// The anomaly detector.
    #[serde(default)]
    pub detector: DetectorConfig,
    /// Alert storage.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The local HTTP API and dashboard.
    #[serde(default)]
    pub api: ApiConfig,
    /// Durable state (SQLite database).
    #[serde(default)]
    pub state: StateConfig,
    /// The care context followed from the same FHIR server.
    #[serde(default)]
    pub context: ContextConfig,
    /// This edge among a health system's others.
    #[serde(default)]
    pub site: SiteConfig,
    /// Alerts, cases and decisions sent on to NATS JetStream and/or a SIEM over syslog.
    #[serde(default)]
    pub export: ExportConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// The site's name in every exported message and NATS subject: letters, digits, `-`
    /// and `_` (at most 64). Default: the machine's host name, with any other character
    /// made `-`.
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Items the outbox holds for exporters that cannot send (the broker or the SIEM is
    /// down) before new ones are refused — the oldest are kept, every refusal is logged and
    /// counted (`export_refused`), the alerts themselves are stored all the same. About 1 KB
    /// each on disk.
    pub max_items: u64,
    /// Items sent per batch (NATS: published, then every acknowledgement awaited).
    pub batch: u32,
    /// NATS JetStream; on when this table is present.
    pub nats: Option<NatsExportConfig>,
    /// RFC 5424 syslog over TCP or TLS to a SIEM; on when this table is present.
    pub syslog: Option<SyslogExportConfig>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            max_items: 1_000_000,
            batch: 256,
            nats: None,
            syslog: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsExportConfig {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); the client fails over among them.
    pub servers: Vec<String>,
    /// The JetStream stream the messages go to; created when missing (with the subjects
    /// below) if the account may, else checked and the command to create it said.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Subjects are `<subject_prefix>.alert`, `.case` and `.status`. Default
    /// `fhir-edge.<site name>`.
    #[serde(default)]
    pub subject_prefix: Option<String>,
    /// A file holding the server's auth token (or a systemd credential name).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A NATS credentials file (JWT and NKey seed), for operator-mode accounts.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// PEM CA certificates to trust for the servers' TLS (then TLS is required).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The stream's duplicate window when fhir-edge creates it: a message re-sent after a
    /// crash within this many seconds of the first send is dropped by the server. Longer
    /// than any restart; messages are re-sent only when their acknowledgement was not yet
    /// recorded.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window_secs: u64,
    /// Seconds to wait for the server (connecting, each publish acknowledgement).
    #[serde(default = "default_nats_timeout")]
    pub timeout_secs: u64,
}

fn default_stream() -> String {
    "FHIR_EDGE".into()
}
fn default_duplicate_window() -> u64 {
    3600
}
fn default_nats_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogExportConfig {
    /// The receiver, `host:port` (TCP, octet-counted frames, RFC 6587; 6514 is TLS's port).
    pub address: String,
    /// Connect with TLS (RFC 5425), checking the receiver's certificate.
    #[serde(default)]
    pub tls: bool,
    /// PEM CA certificates to trust for the receiver (with `tls`; default: the system's).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `auth`, `authpriv` or `local0`–`local7`.
    #[serde(default = "default_facility")]
    pub facility: String,
    /// APP-NAME in each message.
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// What each message carries after the header: `json` (the JSON message, its routing
    /// fields also as RFC 5424 structured data), `cef` (one ArcSight CEF line, for
    /// collectors that parse CEF: Sentinel's `CommonSecurityLog`, QRadar, ArcSight; field
    /// mapping in `fhir_edge_core::export::cef`) or `ocsf` (one OCSF 1.3 Detection Finding
    /// as JSON, for Security Lake and OCSF pipelines; mapping in
    /// `fhir_edge_core::export::ocsf`).
    #[serde(default)]
    pub format: fhir_edge_core::export::syslog::Payload,
    /// Seconds to wait for connecting and for each batch's write.
    #[serde(default = "default_nats_timeout")]
    pub timeout_secs: u64,
}

fn default_facility() -> String {
    "authpriv".into()
}
fn default_app_name() -> String {
    "fhir-edge".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContextConfig {
    /// Follow the server's Practitioner, PractitionerRole, Patient, RelatedPerson,
    /// Encounter, EpisodeOfCare, CareTeam and Appointment resources, so a treatment
    /// relationship explains an access and a personal link (the patient is the user, a
    /// relative, a co-worker) raises it. Only references, periods and keyed hashes are kept.
    pub enabled: bool,
    /// Seconds between two rounds over the types (each type from its own cursor).
    pub interval_secs: u64,
    /// Resources asked for per page (`_count`).
    pub page_size: u32,
    /// The types to follow: any of the eight above (default all). A type the server
    /// refuses (403, 404, unsupported) is logged once, marked in `status`, and retried at
    /// the next start.
    pub types: Vec<String>,
    /// The per-install key behind the keyed hashes: a file of 32 random bytes, made at the
    /// first start when missing. Default: the systemd credential `care-key` when one is
    /// passed, else `care.key` in the state directory. Losing it makes the daemon re-read the
    /// context.
    pub key_file: Option<PathBuf>,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            enabled: true,
            interval_secs: 300,
            page_size: 500,
            types: fhir_edge_core::care::resources::TYPES
                .iter()
                .map(|t| t.to_string())
                .collect(),
            key_file: None,
        }
    }
}

impl ContextConfig {
    /// The followed types, as the care module names them (validated at load).
    pub fn types(&self) -> Vec<&'static str> {
        fhir_edge_core::care::resources::TYPES
            .iter()
            .copied()
            .filter(|t| self.types.iter().any(|c| c == t))
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FhirConfig {
    /// Base URL of the FHIR R4 endpoint, e.g. `https://fhir.example.org/fhir`.
    pub base_url: String,
    /// Resource type to follow. Almost always `AuditEvent`.
    #[serde(default = "default_resource_type")]
    pub resource_type: String,
    /// Per-request timeout (connect + whole response), in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Extra PEM CA certificate(s) to trust for the server (added to the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How to authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
}

/// Authentication to the FHIR server. Secret values are never inline: each `*_file` is either
/// an absolute path, or a bare name looked up in `$CREDENTIALS_DIRECTORY` (systemd
/// `LoadCredential=`).
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AuthConfig {
    /// No authentication.
    #[default]
    None,
    /// A static bearer token.
    Bearer {
        /// File holding the token (one line).
        token_file: PathBuf,
    },
    /// HTTP basic authentication.
    Basic {
        /// User name.
        username: String,
        /// File holding the password (one line).
        password_file: PathBuf,
    },
    /// SMART Backend Services (client_credentials + private_key_jwt).
    SmartBackend {
        /// OAuth2 token endpoint.
        token_url: String,
        /// Registered client id.
        client_id: String,
        /// PEM private key (PKCS#8) used to sign the client assertion.
        private_key_file: PathBuf,
        /// `RS384` or `ES384`.
        #[serde(default = "default_smart_alg")]
        algorithm: String,
        /// `kid` header of the client assertion, if the server needs it.
        #[serde(default)]
        key_id: Option<String>,
        /// Requested scope.
        #[serde(default = "default_smart_scope")]
        scope: String,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollerConfig {
    /// Seconds between the end of one complete poll and the start of the next.
    pub interval_secs: u64,
    /// `_count` asked of the server per page.
    pub page_size: u32,
    /// On first start (empty state), how far back from the server's time to begin. A model
    /// with baselines starts at its mark instead (trained from files: its newest recorded
    /// time, at most 30 days back; `detector::file_mark_cursor`).
    pub initial_lookback_secs: u64,
    /// Polls re-read this many seconds before the cursor, to catch late commits.
    pub overlap_secs: u64,
    /// The whole overlap is re-read at most this often; polls in between start at the cursor
    /// (ties re-read). Late commits visible up to `overlap_secs - recheck_secs` after their
    /// `lastUpdated` are caught. At or below `interval_secs`, every poll re-reads it all.
    /// Default: the smaller of 30 s and half of `overlap_secs` (see `recheck_secs()`).
    pub recheck_secs: Option<u64>,
    /// A recheck first asks the server how many events the overlap holds (`_summary=count`,
    /// then halves of the overlap down to an eighth) and re-reads only from the earliest part
    /// whose count differs from the events scored there; nothing when none does. A server
    /// that gives no count (or refuses it) has the whole overlap re-read, as with `false`.
    /// Set `false` for a server whose search totals are estimates.
    pub recheck_by_count: bool,
    /// Upper bound of the exponential backoff after errors, in seconds.
    pub max_backoff_secs: u64,
    /// Largest page body accepted, in bytes; a larger page is refused and retried later.
    pub max_page_bytes: u64,
    /// Commit the cursor with the detector's snapshot at most this often: inside a long poll
    /// (a catch-up) over a server that honours `_sort`, and across short polls (encoding a
    /// snapshot holds the detector). A snapshot of 8 MB or more (a large site) is taken
    /// across short polls only after 50,000 new events or 30 times this, whichever comes
    /// first; the end of a catch-up always takes one (so the polls after it do not wait for
    /// it). A crash re-reads what came after the last snapshot, and replays it into the
    /// baselines without scoring it again.
    pub checkpoint_secs: u64,
}

impl PollerConfig {
    /// `recheck_secs` as set, else the smaller of 30 s and half of `overlap_secs` (so the
    /// default is valid for every valid overlap: below it, and 0 when it is 0 or 1).
    pub fn recheck_secs(&self) -> u64 {
        self.recheck_secs
            .unwrap_or_else(|| (self.overlap_secs / 2).min(30))
    }
}

impl Default for PollerConfig {
    fn default() -> Self {
        PollerConfig {
            interval_secs: 30,
            page_size: 200,
            initial_lookback_secs: 3600,
            overlap_secs: 120,
            recheck_secs: None,
            recheck_by_count: true,
            max_backoff_secs: 300,
            max_page_bytes: 16 * 1024 * 1024,
            checkpoint_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Folder holding `model.safetensors` and `model.json`.
    pub model_dir: PathBuf,
    /// Site time zone (IANA name) for hour-of-day and weekday features.
    #[serde(with = "tz_name")]
    pub timezone: chrono_tz::Tz,
    /// Optional file of watched patient records (public figures, board members, staff who
    /// are patients): one `Patient/<id>` per line, `#` comments. Opening a watched record
    /// without a working relationship raises the score. Records the server labels
    /// restricted (R, V) or celebrity/employee (CEL, VIP, EMP), on the AuditEvent's entity
    /// or in the Patient resource's `meta.security`, records a user broke the glass to open
    /// (purpose of use BTG), Patients with HL7's `patient-importance` extension and those
    /// admitted with the special courtesy VIP or staff (read with the care context,
    /// `[context]`), are watched without being listed. Read at start: restart to apply
    /// changes.
    pub watch_list: Option<PathBuf>,
    /// While the model in `model_dir` was not trained on this site (it carries no site
    /// baselines, like the shipped default), the daemon is *learning*: it follows the
    /// stream and builds the site's baselines, but raises only the alerts that need no
    /// baseline (failed-login bursts, bulk data exports). After this many days of learning
    /// it trains the site's model from the server's history of those days (off the
    /// pipeline's threads, into `<state dir>/model`) and switches to it without a restart.
    /// At a first start (empty state), when the server's AuditEvents of the last 30 days
    /// (or of `learn_days`, if longer) already cover this many days, the daemon trains the
    /// site's model from their first `learn_days` before its first poll, starts warm
    /// instead of learning and scores the rest of that history (as if it had been
    /// installed when the history began). 28 where the server keeps four weeks: a model
    /// of two weeks queued a quarter to a half more false cases (BENCHMARKS.md).
    /// 0: never train automatically (learn until `fhir-edge train --from-server` gives a
    /// site model).
    pub learn_days: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            model_dir: PathBuf::from(DEFAULT_MODEL_DIR),
            timezone: chrono_tz::UTC,
            watch_list: None,
            learn_days: 14,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Alerts older than this many days are deleted (a case goes with its last alert).
    pub retention_days: u32,
    /// Alerts of one user this many hours apart or closer are one case (an episode); an
    /// alert further from the user's open case opens a new one.
    pub case_window_hours: u32,
    /// A case in the queue (not closed) takes the user's later episodes that would reach
    /// the queue on their own for this many days after its last alert, so the user's
    /// repeated incidents are one case to open, their narrative counting the episodes; a
    /// watched episode waits in its own case. 0: every episode is its own case.
    pub case_follow_days: u32,
    /// The queue budget: cases a day per 100 active users that training fits the alert
    /// thresholds to. Training (the daemon's own at the end of learning, and `fhir-edge
    /// train` with this config) replays the case rule over the second half of its window
    /// — the site's own normal work — and raises the thresholds of the behaviours that
    /// fill its queue, one step at a time, until at most this many cases a day per 100
    /// users would have reached it; a quiet site keeps the percentile's threshold. Only
    /// behaviours whose cases come back (their users flagged again 12 hours or more later)
    /// are raised, never one-off episodes (`detector::budget::fit`); training says when the budget is missed.
    /// Applies to models trained after a change: retrain to apply it. 0: no fitting (the
    /// percentile's threshold as it is).
    pub case_budget: f64,
}

impl AlertsConfig {
    /// How alerts group into cases.
    pub fn case_rule(&self) -> fhir_edge_core::cases::CaseRule {
        fhir_edge_core::cases::CaseRule::new(self.case_window_hours, self.case_follow_days)
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            retention_days: 365,
            case_window_hours: fhir_edge_core::cases::DEFAULT_JOIN_WITHIN_HOURS,
            case_follow_days: fhir_edge_core::cases::DEFAULT_FOLLOW_DAYS,
            case_budget: fhir_edge_core::detector::budget::DEFAULT_CASE_BUDGET,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the HTTP API and dashboard. Non-loopback needs `token_file`.
    #[serde(with = "socket_addr")]
    pub listen: SocketAddr,
    /// File holding the bearer token every API request must carry.
    pub token_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// State directory; default `$STATE_DIRECTORY`, else `/var/lib/fhir-edge`.
    pub dir: Option<PathBuf>,
}

fn default_resource_type() -> String {
    "AuditEvent".to_string()
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_smart_alg() -> String {
    "RS384".to_string()
}
fn default_smart_scope() -> String {
    "system/AuditEvent.read".to_string()
}

/// Keys whose values must never be echoed in an error message.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if k.starts_with("fhir.auth") {
        return true;
    }
    ["token", "password", "secret", "private_key", "credential"]
        .iter()
        .any(|s| k.contains(s))
}

/// A loaded configuration plus the figment it came from (to name sources in later errors).
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    figment: Figment,
}

impl Loaded {
    /// Name of the source that provided `key` (a file path, an environment variable, or
    /// "built-in default").
    pub fn source_of(&self, key: &str) -> String {
        describe_source(self.figment.find_metadata(key), key)
    }

    fn invalid(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            source_name: self.source_of(key),
            problem: problem.into(),
        }
    }
}

fn describe_source(meta: Option<&Metadata>, key: &str) -> String {
    let Some(meta) = meta else {
        return "built-in default".to_string();
    };
    match &meta.source {
        Some(Source::File(p)) => p.display().to_string(),
        _ if meta.name.contains("environment") => format!("environment variable {}", env_name(key)),
        _ => meta.name.to_string(),
    }
}

/// Build the figment: file (if present) then environment.
fn figment_for(path: &Path, require_file: bool) -> Result<Figment, ConfigError> {
    let mut fig = Figment::new();
    match std::fs::metadata(path) {
        Ok(_) => {
            // Read it ourselves so an unreadable file gives a plain message.
            std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            fig = fig.merge(Toml::file_exact(path));
        }
        Err(e) if require_file || e.kind() != std::io::ErrorKind::NotFound => {
            return Err(ConfigError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
        Err(_) => {}
    }
    let env = Env::prefixed(ENV_PREFIX)
        .split("__")
        // FHIR_EDGE_LOG is the log filter, not a config key.
        .ignore(&["log"]);
    Ok(fig.merge(env))
}

/// Load and validate. `explicit` is the `--config` argument: when given, the file must exist.
pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    let path = explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let figment = figment_for(&path, explicit.is_some())?;
    let config: Config = figment
        .extract()
        .map_err(|e| translate(&figment, &path, e))?;
    let loaded = Loaded {
        config,
        path,
        figment,
    };
    validate(&loaded)?;
    Ok(loaded)
}

/// Turn a figment error into one that names the key and its source, without secret values.
fn translate(fig: &Figment, path: &Path, err: figment::Error) -> ConfigError {
    use figment::error::Kind;
    // Report the first error; figment chains them.
    let err = err
        .into_iter()
        .next()
        .expect("figment error has at least one entry");
    let mut key_parts = err.path.clone();
    let problem = match &err.kind {
        Kind::UnknownField(field, expected) => {
            if key_parts.last() != Some(field) {
                key_parts.push(field.clone());
            }
            if expected.is_empty() {
                "unknown key".to_string()
            } else {
                format!("unknown key; expected one of: {}", expected.join(", "))
            }
        }
        Kind::MissingField(field) => {
            key_parts.push(field.to_string());
            if key_parts == ["fhir"] {
                // The whole section is missing; name the key that must be set.
                key_parts.push("base_url".into());
            }
            let key = key_parts.join(".");
            let where_ = if path.exists() {
                path.display().to_string()
            } else {
                format!("{} (file not found)", path.display())
            };
            return ConfigError::Invalid {
                source_name: where_,
                problem: format!(
                    "required key is missing: set `{key}` in the config file or {}",
                    env_name(&key)
                ),
                key,
            };
        }
        Kind::UnknownVariant(v, expected) => {
            format!(
                "unknown value \"{v}\"; expected one of: {}",
                expected.join(", ")
            )
        }
        // Values are shown only for keys that cannot hold a secret.
        kind => {
            let secret = is_secret_key(&key_parts.join("."));
            match kind {
                Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) if secret => {
                    format!("invalid value (not shown); expected {expected}")
                }
                Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                    format!("invalid value {actual}; expected {expected}")
                }
                _ if secret => "invalid value (not shown)".to_string(),
                Kind::Message(m) => m.clone(),
                other => other.to_string(),
            }
        }
    };
    let key = key_parts.join(".");
    let source_name = fig
        .find_metadata(&key)
        .map(|m| describe_source(Some(m), &key))
        .or_else(|| {
            err.metadata
                .as_ref()
                .map(|m| describe_source(Some(m), &key))
        })
        .unwrap_or_else(|| path.display().to_string());
    ConfigError::Invalid {
        key,
        source_name,
        problem,
    }
}

/// The environment variable that overrides a dotted key.
pub fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// Why a secret (token, password, private key) could not be read. Never holds the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "\"{0}\" is not an absolute path and $CREDENTIALS_DIRECTORY is not set \
         (use an absolute path, or LoadCredential= in the unit)"
    )]
    NoCredentialsDirectory(PathBuf),
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{0} is empty")]
    Empty(PathBuf),
}

/// Resolve a secret file reference: an absolute path as is, a bare name inside
/// `$CREDENTIALS_DIRECTORY`.
pub fn resolve_secret_path(p: &Path) -> Result<PathBuf, SecretError> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) => Ok(Path::new(&dir).join(p)),
        None => Err(SecretError::NoCredentialsDirectory(p.to_path_buf())),
    }
}

/// Read a secret (trimmed). The error never contains the secret.
pub fn read_secret(p: &Path) -> Result<String, SecretError> {
    let path = resolve_secret_path(p)?;
    let s = std::fs::read_to_string(&path).map_err(|e| SecretError::Unreadable {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(SecretError::Empty(path));
    }
    Ok(s)
}

fn validate(l: &Loaded) -> Result<(), ConfigError> {
    let c = &l.config;
    let url = url::Url::parse(&c.fhir.base_url).map_err(|e| {
        l.invalid(
            "fhir.base_url",
            format!("not a URL ({e}); e.g. https://fhir.example.org/fhir"),
        )
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(l.invalid("fhir.base_url", "scheme must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(l.invalid(
            "fhir.base_url",
            "must not carry credentials; use [fhir.auth] kind = \"basic\" with password_file",
        ));
    }
    if c.fhir.resource_type.is_empty()
        || !c
            .fhir
            .resource_type
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric())
    {
        return Err(l.invalid(
            "fhir.resource_type",
            "must be a FHIR resource type name like AuditEvent",
        ));
    }
    range(l, "fhir.timeout_secs", c.fhir.timeout_secs, 1, 600)?;
    if let Some(ca) = &c.fhir.ca_file {
        if let Err(e) = std::fs::read(ca) {
            return Err(l.invalid("fhir.ca_file", format!("cannot read {}: {e}", ca.display())));
        }
    }
    match &c.fhir.auth {
        AuthConfig::None => {}
        AuthConfig::Bearer { token_file } => secret_file(l, "fhir.auth.token_file", token_file)?,
        AuthConfig::Basic {
            username,
            password_file,
        } => {
            if username.is_empty() {
                return Err(l.invalid("fhir.auth.username", "must not be empty"));
            }
            secret_file(l, "fhir.auth.password_file", password_file)?
        }
        AuthConfig::SmartBackend {
            token_url,
            client_id,
            private_key_file,
            algorithm,
            ..
        } => {
            url::Url::parse(token_url)
                .map_err(|e| l.invalid("fhir.auth.token_url", format!("not a URL ({e})")))?;
            if client_id.is_empty() {
                return Err(l.invalid("fhir.auth.client_id", "must not be empty"));
            }
            if algorithm != "RS384" && algorithm != "ES384" {
                return Err(l.invalid("fhir.auth.algorithm", "must be RS384 or ES384"));
            }
            secret_file(l, "fhir.auth.private_key_file", private_key_file)?
        }
    }
    let p = &c.poller;
    range(l, "poller.interval_secs", p.interval_secs, 1, 86_400)?;
    range(l, "poller.page_size", p.page_size as u64, 1, 10_000)?;
    range(
        l,
        "poller.initial_lookback_secs",
        p.initial_lookback_secs,
        0,
        10 * 365 * 86_400,
    )?;
    range(l, "poller.overlap_secs", p.overlap_secs, 0, 86_400)?;
    // Checked only when set: the default follows overlap_secs and is always valid.
    if let Some(recheck) = p.recheck_secs {
        range(l, "poller.recheck_secs", recheck, 0, 86_400)?;
    }
    if p.overlap_secs > 0 && p.recheck_secs() >= p.overlap_secs {
        return Err(l.invalid(
            "poller.recheck_secs",
            format!(
                "must be less than poller.overlap_secs ({}): late commits are caught only up to overlap_secs - recheck_secs",
                p.overlap_secs
            ),
        ));
    }
    range(l, "poller.max_backoff_secs", p.max_backoff_secs, 1, 86_400)?;
    range(l, "poller.max_page_bytes", p.max_page_bytes, 4096, 1 << 32)?;
    range(l, "poller.checkpoint_secs", p.checkpoint_secs, 1, 86_400)?;
    if let Some(w) = &c.detector.watch_list {
        fhir_edge_core::detector::read_watch_list(w)
            .map_err(|e| l.invalid("detector.watch_list", format!("{}: {e}", w.display())))?;
    }
    range(
        l,
        "detector.learn_days",
        c.detector.learn_days as u64,
        0,
        365,
    )?;
    range(
        l,
        "alerts.retention_days",
        c.alerts.retention_days as u64,
        1,
        36_500,
    )?;
    range(
        l,
        "alerts.case_window_hours",
        c.alerts.case_window_hours as u64,
        1,
        24 * 30,
    )?;
    range(
        l,
        "alerts.case_follow_days",
        c.alerts.case_follow_days as u64,
        0,
        fhir_edge_core::cases::HISTORY_DAYS as u64,
    )?;
    fhir_edge_core::detector::budget::check_budget(c.alerts.case_budget)
        .map_err(|e| l.invalid("alerts.case_budget", e.to_string()))?;
    range(
        l,
        "context.interval_secs",
        c.context.interval_secs,
        10,
        86_400,
    )?;
    range(l, "context.page_size", c.context.page_size as u64, 1, 1_000)?;
    if let Some(t) = c
        .context
        .types
        .iter()
        .find(|t| !fhir_edge_core::care::resources::TYPES.contains(&t.as_str()))
    {
        return Err(l.invalid(
            "context.types",
            format!(
                "{t:?} is not a followed type; use any of {}",
                fhir_edge_core::care::resources::TYPES.join(", ")
            ),
        ));
    }
    if let Some(n) = &c.site.name {
        if !fhir_edge_core::export::valid_site(n) {
            return Err(l.invalid(
                "site.name",
                "use 1–64 letters, digits, - or _ (it becomes a NATS subject token)",
            ));
        }
    }
    validate_export(l)?;
    let addr = c.api.listen;
    match &c.api.token_file {
        Some(t) => secret_file(l, "api.token_file", t)?,
        None if !addr.ip().is_loopback() => {
            return Err(l.invalid(
                "api.listen",
                format!(
                    "{addr} is not a loopback address; set api.token_file so the API \
                     requires a bearer token, or listen on 127.0.0.1"
                ),
            ))
        }
        None => {}
    }
    Ok(())
}

fn validate_export(l: &Loaded) -> Result<(), ConfigError> {
    let e = &l.config.export;
    range(l, "export.max_items", e.max_items, 1_000, 100_000_000)?;
    range(l, "export.batch", e.batch as u64, 1, 10_000)?;
    if let Some(n) = &e.nats {
        if n.servers.is_empty() {
            return Err(l.invalid(
                "export.nats.servers",
                "name at least one server, e.g. [\"nats://127.0.0.1:4222\"]",
            ));
        }
        for srv in &n.servers {
            let ok = url::Url::parse(srv)
                .is_ok_and(|u| matches!(u.scheme(), "nats" | "tls") && u.host_str().is_some());
            if !ok {
                return Err(l.invalid(
                    "export.nats.servers",
                    format!("{srv:?} is not a nats:// or tls:// URL with a host"),
                ));
            }
        }
        if !fhir_edge_core::export::valid_site(&n.stream) {
            return Err(l.invalid(
                "export.nats.stream",
                "a stream name is letters, digits, - or _",
            ));
        }
        if let Some(p) = &n.subject_prefix {
            if p.is_empty() || !p.split('.').all(fhir_edge_core::export::valid_site) {
                return Err(l.invalid(
                    "export.nats.subject_prefix",
                    "dot-separated tokens of letters, digits, - or _ (no wildcards)",
                ));
            }
        }
        match (&n.token_file, &n.credentials_file) {
            (Some(_), Some(_)) => {
                return Err(l.invalid(
                    "export.nats.credentials_file",
                    "give token_file or credentials_file, not both",
                ))
            }
            (Some(t), None) => secret_file(l, "export.nats.token_file", t)?,
            (None, Some(c)) => secret_file(l, "export.nats.credentials_file", c)?,
            (None, None) => {}
        }
        if let Some(ca) = &n.ca_file {
            std::fs::read(ca).map_err(|err| {
                l.invalid(
                    "export.nats.ca_file",
                    format!("cannot read {}: {err}", ca.display()),
                )
            })?;
        }
        range(
            l,
            "export.nats.duplicate_window_secs",
            n.duplicate_window_secs,
            60,
            7 * 86_400,
        )?;
        range(l, "export.nats.timeout_secs", n.timeout_secs, 1, 300)?;
    }
    if let Some(s) = &e.syslog {
        let port_ok = s
            .address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(l.invalid(
                "export.syslog.address",
                format!(
                    "{:?} is not host:port, e.g. siem.example.org:6514",
                    s.address
                ),
            ));
        }
        if fhir_edge_core::export::syslog::Facility::parse(&s.facility).is_none() {
            return Err(l.invalid(
                "export.syslog.facility",
                "use auth, authpriv or local0–local7",
            ));
        }
        if s.app_name.is_empty()
            || s.app_name.len() > 48
            || !s.app_name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(l.invalid(
                "export.syslog.app_name",
                "1–48 printable ASCII characters without spaces",
            ));
        }
        if let Some(ca) = &s.ca_file {
            if !s.tls {
                return Err(l.invalid("export.syslog.ca_file", "is used only with tls = true"));
            }
            std::fs::read(ca).map_err(|err| {
                l.invalid(
                    "export.syslog.ca_file",
                    format!("cannot read {}: {err}", ca.display()),
                )
            })?;
        }
        range(l, "export.syslog.timeout_secs", s.timeout_secs, 1, 300)?;
    }
    Ok(())
}

fn range(l: &Loaded, key: &str, v: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(l.invalid(
            key,
            format!("{v} is out of range; must be between {lo} and {hi}"),
        ));
    }
    Ok(())
}

fn secret_file(l: &Loaded, key: &str, p: &Path) -> Result<(), ConfigError> {
    read_secret(p)
        .map(|_| ())
        .map_err(|e| l.invalid(key, e.to_string()))
}

impl Config {
    /// The state directory: `[state] dir`, else `$STATE_DIRECTORY` (first entry), else the default.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(d) = &self.state.dir {
            return d.clone();
        }
        if let Some(sd) = std::env::var_os("STATE_DIRECTORY") {
            if let Some(first) = sd.to_string_lossy().split(':').next() {
                if !first.is_empty() {
                    return PathBuf::from(first);
                }
            }
        }
        PathBuf::from(DEFAULT_STATE_DIR)
    }

    /// The care key's file: `[context] key_file`, else the systemd credential `care-key`,
    /// else `care.key` in the state directory.
    pub fn care_key_file(&self) -> PathBuf {
        if let Some(k) = &self.context.key_file {
            return k.clone();
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = PathBuf::from(dir).join("care-key");
            if p.is_file() {
                return p;
            }
        }
        self.state_dir().join("care.key")
    }

    /// The site's name: `[site] name`, else the host name made a valid one.
    pub fn site_name(&self) -> String {
        if let Some(n) = &self.site.name {
            return n.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        fhir_edge_core::export::site_from_host(host.trim())
    }

    /// The NATS subject prefix: `[export.nats] subject_prefix`, else `fhir-edge.<site>`.
    pub fn nats_subject_prefix(&self) -> Option<String> {
        let n = self.export.nats.as_ref()?;
        Some(
            n.subject_prefix
                .clone()
                .unwrap_or_else(|| format!("fhir-edge.{}", self.site_name())),
        )
    }

    /// The site time zone (`[detector] timezone`).
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.detector.timezone
    }

    /// A config for a given server with everything else at defaults (demo, tests, bench).
    pub fn for_server(base_url: &str, state_dir: &Path) -> Config {
        Config {
            fhir: FhirConfig {
                base_url: base_url.to_string(),
                resource_type: default_resource_type(),
                timeout_secs: default_timeout_secs(),
                ca_file: None,
                auth: AuthConfig::None,
            },
            poller: PollerConfig::default(),
            detector: DetectorConfig::default(),
            alerts: AlertsConfig::default(),
            api: ApiConfig::default(),
            state: StateConfig {
                dir: Some(state_dir.to_path_buf()),
            },
            context: ContextConfig::default(),
            site: SiteConfig::default(),
            export: ExportConfig::default(),
        }
    }
}

/// `detector.timezone`: an IANA name in the file, a `Tz` once read.
mod tz_name {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<chrono_tz::Tz, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown time zone \"{name}\"; use an IANA name like Europe/Berlin"
            ))
        })
    }

    pub fn serialize<S: Serializer>(tz: &chrono_tz::Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }
}

/// `api.listen`: `host:port` in the file, a `SocketAddr` once read.
mod socket_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| {
            serde::de::Error::custom(format!("\"{text}\" is not an address like 127.0.0.1:8787"))
        })
    }

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    // figment::Jail serialises env access; we use our own lock because tests set env vars.
    static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("config.toml");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(body.as_bytes()).unwrap();
        p
    }

    const MINIMAL: &str = "[fhir]\nbase_url = \"http://127.0.0.1:8080/fhir\"\n";

    /// The derived default of `recheck_secs` stays valid for every valid `overlap_secs`;
    /// only a value the user set is refused, and the error names where they set it.
    #[test]
    fn recheck_default_follows_any_overlap() {
        for overlap in [0, 1, 2, 30, 59, 60, 120, 86_400] {
            let d = tempfile::tempdir().unwrap();
            let p = write(
                d.path(),
                &format!("{MINIMAL}[poller]\noverlap_secs = {overlap}\n"),
            );
            let l = load(Some(&p)).unwrap_or_else(|e| panic!("overlap {overlap}: {e}"));
            assert!(
                overlap == 0 || l.config.poller.recheck_secs() < overlap,
                "overlap {overlap}"
            );
        }
        assert_eq!(
            PollerConfig::default().recheck_secs(),
            30,
            "shipped behaviour"
        );
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            &format!("{MINIMAL}[poller]\noverlap_secs = 30\nrecheck_secs = 30\n"),
        );
        let Err(e) = load(Some(&p)) else {
            panic!("a recheck the user set at the overlap is refused")
        };
        assert_eq!(e.key(), Some("poller.recheck_secs"));
        assert!(!e.to_string().contains("built-in default"), "{e}");
    }

    #[test]
    fn export_mistakes_name_their_key_and_a_good_table_derives_its_subjects() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("t"), "tok\n").unwrap();
        let tok = d.path().join("t").display().to_string();
        let nats = |extra: &str| {
            format!("{MINIMAL}[export.nats]\nservers = [\"nats://127.0.0.1:4222\"]\n{extra}")
        };
        let bad = [
            (
                format!("{MINIMAL}[export.nats]\nservers = []\n"),
                "export.nats.servers",
            ),
            (
                format!("{MINIMAL}[export.nats]\nservers = [\"http://x:4222\"]\n"),
                "export.nats.servers",
            ),
            (nats("stream = \"a.b\"\n"), "export.nats.stream"),
            (
                nats("subject_prefix = \"a.*\"\n"),
                "export.nats.subject_prefix",
            ),
            (
                nats(&format!(
                    "token_file = \"{tok}\"\ncredentials_file = \"{tok}\"\n"
                )),
                "export.nats.credentials_file",
            ),
            (
                nats("token_file = \"/nonexistent/t\"\n"),
                "export.nats.token_file",
            ),
            (
                format!("{MINIMAL}[export.syslog]\naddress = \"siem\"\n"),
                "export.syslog.address",
            ),
            (
                format!("{MINIMAL}[export.syslog]\naddress = \"siem:514\"\nfacility = \"kern\"\n"),
                "export.syslog.facility",
            ),
            (
                format!("{MINIMAL}[export.syslog]\naddress = \"siem:514\"\nca_file = \"{tok}\"\n"),
                "export.syslog.ca_file",
            ),
            (
                format!("{MINIMAL}[export.syslog]\naddress = \"siem:514\"\nformat = \"leef\"\n"),
                "export.syslog.format",
            ),
            (
                format!("{MINIMAL}[site]\nname = \"st marys\"\n"),
                "site.name",
            ),
            (
                format!("{MINIMAL}[export]\nmax_items = 5\n"),
                "export.max_items",
            ),
        ];
        for (text, key) in bad {
            let e = load(Some(&write(d.path(), &text))).err().unwrap();
            assert_eq!(e.key(), Some(key), "{text}: {e}");
        }
        let text = format!(
            "{}[site]\nname = \"north\"\n",
            nats(&format!("token_file = \"{tok}\"\n"))
        );
        let l = load(Some(&write(d.path(), &text))).unwrap();
        assert_eq!(l.config.nats_subject_prefix().unwrap(), "fhir-edge.north");
        assert_eq!(l.config.export.nats.as_ref().unwrap().stream, "FHIR_EDGE");
        // The syslog payload: JSON unless CEF is asked for.
        use fhir_edge_core::export::syslog::Payload;
        let syslog = |extra: &str| {
            let text = format!("{MINIMAL}[export.syslog]\naddress = \"siem:514\"\n{extra}");
            load(Some(&write(d.path(), &text)))
                .unwrap()
                .config
                .export
                .syslog
                .unwrap()
                .format
        };
        assert_eq!(syslog(""), Payload::Json);
        assert_eq!(syslog("format = \"cef\"\n"), Payload::Cef);
        assert_eq!(syslog("format = \"ocsf\"\n"), Payload::Ocsf);
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let d = tempfile::tempdir().unwrap();
        let l = load(Some(&write(d.path(), MINIMAL))).unwrap();
        assert_eq!(l.config.poller.interval_secs, 30);
        assert_eq!(l.config.poller.page_size, 200);
        assert_eq!(l.config.poller.overlap_secs, 120);
        assert_eq!(l.config.fhir.resource_type, "AuditEvent");
        assert_eq!(l.config.api.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(l.config.fhir.auth, AuthConfig::None);
    }

    #[test]
    fn unknown_key_is_named_with_file() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            &format!("{MINIMAL}[poller]\nintervall_secs = 5\n"),
        );
        let e = load(Some(&p)).err().unwrap();
        assert_eq!(e.key(), Some("poller.intervall_secs"), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(
            msg.contains("interval_secs"),
            "suggests the right key: {msg}"
        );
    }

    #[test]
    fn bad_type_is_named() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            &format!("{MINIMAL}[poller]\npage_size = \"many\"\n"),
        );
        let e = load(Some(&p)).err().unwrap();
        assert_eq!(e.key(), Some("poller.page_size"), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }

    #[test]
    fn env_overrides_and_bad_env_names_variable() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), MINIMAL);
        // SAFETY: guarded by ENV_LOCK; no other test thread reads these variables concurrently.
        unsafe { std::env::set_var("FHIR_EDGE_POLLER__INTERVAL_SECS", "7") };
        let l = load(Some(&p));
        unsafe { std::env::remove_var("FHIR_EDGE_POLLER__INTERVAL_SECS") };
        let l = l.unwrap();
        assert_eq!(l.config.poller.interval_secs, 7);
        let src = l.source_of("poller.interval_secs");
        assert!(src.contains("FHIR_EDGE_POLLER__INTERVAL_SECS"), "{src}");
        // SAFETY: as above.
        unsafe { std::env::set_var("FHIR_EDGE_POLLER__INTERVAL_SECS", "abc") };
        let e = load(Some(&p)).err().unwrap();
        unsafe { std::env::remove_var("FHIR_EDGE_POLLER__INTERVAL_SECS") };
        assert_eq!(e.key(), Some("poller.interval_secs"));
        assert!(
            e.to_string().contains("FHIR_EDGE_POLLER__INTERVAL_SECS"),
            "{e}"
        );
    }

    #[test]
    fn missing_base_url_says_what_to_set() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "[poller]\ninterval_secs = 5\n");
        let e = load(Some(&p)).err().unwrap();
        assert!(e.to_string().contains("fhir"), "{e}");
    }

    #[test]
    fn validation_names_key_and_source() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), &format!("{MINIMAL}[poller]\npage_size = 0\n"));
        let e = load(Some(&p)).err().unwrap();
        assert_eq!(e.key(), Some("poller.page_size"));
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        let p = write(
            d.path(),
            &format!("{MINIMAL}[detector]\ntimezone = \"Mars/Olympus\"\n"),
        );
        assert_eq!(
            load(Some(&p)).err().unwrap().key(),
            Some("detector.timezone")
        );
        let w = d.path().join("watch.txt");
        std::fs::write(&w, "Patient/1\nnot a reference\n").unwrap();
        let p = write(
            d.path(),
            &format!("{MINIMAL}[detector]\nwatch_list = \"{}\"\n", w.display()),
        );
        let e = load(Some(&p)).err().unwrap();
        assert_eq!(e.key(), Some("detector.watch_list"));
        assert!(e.to_string().contains("line 2"), "{e}");
        std::fs::write(&w, "Patient/1\n").unwrap();
        assert!(load(Some(&p)).is_ok());
        for bad in ["-1.0", "nan", "1e9"] {
            let p = write(
                d.path(),
                &format!("{MINIMAL}[alerts]\ncase_budget = {bad}\n"),
            );
            let e = load(Some(&p)).err().unwrap();
            assert_eq!(e.key(), Some("alerts.case_budget"), "{bad}: {e}");
        }
        let p = write(d.path(), &format!("{MINIMAL}[alerts]\ncase_budget = 0\n"));
        assert_eq!(load(Some(&p)).unwrap().config.alerts.case_budget, 0.0);
    }

    #[test]
    fn non_loopback_api_needs_token() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            &format!("{MINIMAL}[api]\nlisten = \"0.0.0.0:8787\"\n"),
        );
        let e = load(Some(&p)).err().unwrap();
        assert_eq!(e.key(), Some("api.listen"));
        let tok = d.path().join("api-token");
        std::fs::write(&tok, "s3cr3t-api\n").unwrap();
        let p = write(
            d.path(),
            &format!(
                "{MINIMAL}[api]\nlisten = \"0.0.0.0:8787\"\ntoken_file = \"{}\"\n",
                tok.display()
            ),
        );
        load(Some(&p)).unwrap();
    }

    #[test]
    fn secrets_are_not_echoed() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let d = tempfile::tempdir().unwrap();
        // A secret put inline by mistake, as the wrong type: the value must not appear.
        let p = write(
            d.path(),
            &format!("{MINIMAL}[fhir.auth]\nkind = \"bearer\"\ntoken_file = 123456789\n"),
        );
        let e = load(Some(&p)).err().unwrap().to_string();
        assert!(!e.contains("123456789"), "{e}");
        // A missing token file names the key, not the contents of anything.
        let p = write(
            d.path(),
            &format!(
                "{MINIMAL}[fhir.auth]\nkind = \"bearer\"\ntoken_file = \"/nonexistent/tok\"\n"
            ),
        );
        let e = load(Some(&p)).err().unwrap();
        assert_eq!(e.key(), Some("fhir.auth.token_file"));
        // An existing token is read but never shown.
        let tok = d.path().join("tok");
        std::fs::write(&tok, "TOPSECRET-VALUE").unwrap();
        let p = write(
            d.path(),
            &format!(
                "{MINIMAL}[fhir.auth]\nkind = \"bearer\"\ntoken_file = \"{}\"\n[poller]\npage_size = 0\n",
                tok.display()
            ),
        );
        let e = load(Some(&p)).err().unwrap().to_string();
        assert!(!e.contains("TOPSECRET"), "{e}");
    }

    #[test]
    fn unknown_auth_kind_is_named() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            &format!("{MINIMAL}[fhir.auth]\nkind = \"kerberos\"\n"),
        );
        let e = load(Some(&p)).err().unwrap();
        assert!(
            e.to_string().contains("kerberos") || e.to_string().contains("bearer"),
            "{e}"
        );
    }

    #[test]
    fn shipped_example_is_valid() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/config.toml");
        load(Some(&p)).unwrap();
    }
}
