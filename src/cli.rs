//! Command line: parsing (clap) and dispatch. Errors go back to `main` as `anyhow` chains.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use fhir_edge_core::alerts::{AlertFilter, Severity, Status};
use fhir_edge_core::clock::SystemClock;

#[derive(Parser, Debug)]
#[command(
    name = "fhir-edge",
    version,
    about = "Watches a FHIR R4 server's AuditEvent stream and raises explainable alerts about inappropriate record access",
    long_about = "fhir-edge follows the AuditEvent stream of a FHIR R4 server, scores every event with an autoencoder \
                  trained on the site's normal activity, and raises alerts that say in plain words why an access looks \
                  inappropriate. Configuration: /etc/fhir-edge/config.toml (or --config), overridden by \
                  FHIR_EDGE_<SECTION>__<KEY> environment variables."
)]
pub struct Cli {
    /// Configuration file (default /etc/fhir-edge/config.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (the default when no command is given).
    Run {
        /// Start the first poll at this time instead of the stored cursor (backfill), e.g. 2024-05-01T00:00:00Z.
        #[arg(long, value_name = "RFC3339")]
        since: Option<DateTime<Utc>>,
    },
    /// Validate the configuration and exit 0 (valid) or 1 (with what to fix).
    CheckConfig,
    /// Show the cursor, counters and alerts from the state database (safe while the daemon runs).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List alerts from the local store.
    Alerts {
        /// Only alerts recorded at or after this time (RFC 3339) or this long ago (e.g. 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Minimum severity: low, medium, high, critical.
        #[arg(long)]
        severity: Option<Severity>,
        /// Only alerts with this status: new, acknowledged, false_positive, confirmed.
        #[arg(long)]
        status: Option<Status>,
        /// The newest this many alerts (any number: they are read page by page).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print a JSON array of alert objects.
        #[arg(long)]
        json: bool,
    },
    /// List cases (alerts of one user's episode, with a title and a narrative), newest first.
    Cases {
        /// Only cases active at or after this time (RFC 3339) or this long ago (e.g. 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only cases with this status: watching, new, in_review, closed; or `any`. Without
        /// it every case but the watched ones (weak alerts waiting for corroboration).
        #[arg(long, conflicts_with = "queue")]
        status: Option<String>,
        /// Only the review queue: new and in-review cases.
        #[arg(long)]
        queue: bool,
        /// Minimum severity: low, medium, high, critical.
        #[arg(long)]
        severity: Option<Severity>,
        /// The newest this many cases (any number: they are read page by page).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print a JSON array of case objects.
        #[arg(long)]
        json: bool,
    },
    /// Train a model on AuditEvents (NDJSON or Bundle JSON, auto-detected).
    Train {
        /// NDJSON of AuditEvents or FHIR Bundle JSON files (auto-detected).
        #[arg(long, required_unless_present = "from_server", num_args = 1.., value_name = "PATH")]
        input: Vec<PathBuf>,
        /// Learn from the configured FHIR server's AuditEvents (see --since) instead of files.
        #[arg(long, conflicts_with = "input")]
        from_server: bool,
        /// With --from-server: how far back, e.g. 30d or 12h, or an RFC 3339 time.
        #[arg(
            long,
            requires = "from_server",
            default_value = "30d",
            value_name = "DURATION"
        )]
        since: String,
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Threshold percentile of the training scores.
        #[arg(long, default_value_t = 99.5)]
        percentile: f32,
        /// Site time zone (default: the config's, else UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// Learn only from events recorded before this time (RFC 3339), e.g. the baseline days.
        #[arg(long, value_name = "RFC3339")]
        until: Option<DateTime<Utc>>,
        /// Watched patient records, one per line (default: the config's detector.watch_list).
        #[arg(long, value_name = "FILE")]
        watch_list: Option<PathBuf>,
        /// The site's care context: FHIR Practitioner, PractitionerRole, Patient,
        /// RelatedPerson, Encounter, EpisodeOfCare, CareTeam and Appointment resources as
        /// NDJSON (a resource or a Bundle per line), as `simulate` writes `context.ndjson`.
        #[arg(long, num_args = 1.., value_name = "FILE")]
        context: Vec<PathBuf>,
        /// Forget patients at this many instead of the built-in bound (200,000; the least
        /// recently seen half each time): a small hospital read as one whose records
        /// outnumber the bound, to measure what forgetting costs detection.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_patients: Option<u32>,
        /// Fit the thresholds of the behaviours that fill the queue to this many queued
        /// cases a day per 100 active users on the second half of the window (default: the
        /// config's `[alerts] case_budget`, else 2.5; 0: the percentile's threshold as it is).
        #[arg(long, value_name = "N", value_parser = parse_budget)]
        case_budget: Option<f64>,
    },
    /// Score every event of a file in order and write id,score,severity,kind,case,case_queued,explanation as CSV.
    Score {
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        #[arg(long, value_name = "PATH")]
        input: PathBuf,
        #[arg(long, value_name = "CSV")]
        output: PathBuf,
        #[arg(long)]
        timezone: Option<String>,
        /// Also write each event's raw feature row (CSV) for comparisons with other detectors.
        #[arg(long, value_name = "CSV")]
        features_out: Option<PathBuf>,
        /// Watched patient records, one per line (default: the config's detector.watch_list).
        #[arg(long, value_name = "FILE")]
        watch_list: Option<PathBuf>,
        /// The site's care context: FHIR Practitioner, PractitionerRole, Patient,
        /// RelatedPerson, Encounter, EpisodeOfCare, CareTeam and Appointment resources as
        /// NDJSON (a resource or a Bundle per line), as `simulate` writes `context.ndjson`.
        #[arg(long, num_args = 1.., value_name = "FILE")]
        context: Vec<PathBuf>,
        /// Forget patients at this many instead of the built-in bound (200,000; the least
        /// recently seen half each time): a small hospital read as one whose records
        /// outnumber the bound, to measure what forgetting costs detection.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_patients: Option<u32>,
    },
    /// POST a valid sample AuditEvent to the configured server and print its id.
    SendTestEvent {
        /// Instead, POST this many failed logins by the test user within seconds: from 3
        /// on they raise a `failed_logins` alert, even while the daemon is learning.
        #[arg(long, value_name = "N")]
        failed_logins: Option<u32>,
    },
    /// Serve one read-only view of many sites' cases and alerts, followed from the NATS
    /// JetStream stream their edges export to ([export.nats]), with a site column.
    Fleet(crate::fleet::FleetOptions),
    #[cfg(feature = "lab")]
    #[command(flatten)]
    Lab(crate::lab::LabCommand),
}

impl Cli {
    /// Whether the command only prints a report and exits (no network peers, no daemon),
    /// so a closed stdout may end it as it ends Unix tools.
    pub fn only_prints_a_report(&self) -> bool {
        matches!(
            self.command,
            Some(Command::Status { .. } | Command::Alerts { .. } | Command::Cases { .. })
        )
    }
}

pub fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg_path = cli.config.as_deref();
    match cli.command.unwrap_or(Command::Run { since: None }) {
        Command::Run { since } => {
            crate::telemetry::init();
            let loaded = config::load(cfg_path).inspect_err(|e| {
                tracing::error!(actor = "app", error_kind = e.kind(), "configuration: {e}")
            })?;
            crate::app::run(
                loaded.config,
                crate::app::RunOptions {
                    since,
                    clock: Arc::new(SystemClock),
                    notifier: crate::systemd::Notifier::from_env(),
                },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fleet(opts) => {
            crate::telemetry::init();
            crate::fleet::run(opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => match config::load(cfg_path) {
            Ok(l) => {
                // The model is part of what must be right before start (ExecStartPre).
                let model = match fhir_edge_core::detector::model::Model::load(
                    &l.config.detector.model_dir,
                ) {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("fhir-edge: {}: {e}", l.path.display());
                        return Ok(ExitCode::FAILURE);
                    }
                };
                println!(
                    "{}: configuration is valid (server {}, state {}, API {}, model {} schema {})",
                    l.path.display(),
                    crate::client::redact_url(&l.config.fhir.base_url),
                    l.config.state_dir().display(),
                    l.config.api.listen,
                    l.config.detector.model_dir.display(),
                    model.meta.schema_version
                );
                println!("export: {}", export_plan(&l.config));
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("fhir-edge: configuration error: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Status { json } => {
            let (cfg, r) = open_state(cfg_path)?;
            let s = r.status()?;
            // How the running model's thresholds stand to the queue budget (a model that
            // cannot be read is said so; the daemon would refuse it at start). While the
            // daemon learns, the shipped model's figures are not the site's.
            let site_dir = crate::app::site_model_dir(&cfg);
            let site_model = fhir_edge_core::detector::baselines::present(&site_dir);
            let budget = match fhir_edge_core::detector::model::Model::load(&site_dir) {
                Ok(_) if !site_model => {
                    "fitted to this site when its model is trained, at the end of learning".into()
                }
                Ok(m) => m.meta.queue_budget_summary(),
                Err(e) => format!("unknown: {e}"),
            };
            if json {
                let mut v = serde_json::to_value(&s)?;
                v["queue_budget"] = serde_json::Value::String(budget);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("database        {}", s.database);
                println!("cursor          {}", s.cursor.as_deref().unwrap_or("none"));
                println!(
                    "last poll       {}",
                    s.last_poll.as_deref().unwrap_or("never")
                );
                println!("events scored   {}", s.events_scored);
                println!("duplicates      {}", s.events_duplicate);
                println!("skipped entries {}", s.events_skipped);
                let sev: Vec<String> = s
                    .alerts_by_severity
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                println!(
                    "alerts          {} ({}; {} new)",
                    s.alerts,
                    sev.join(", "),
                    s.alerts_new
                );
                let cases: Vec<String> = r
                    .case_counts()?
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                println!("cases           {}", cases.join(", "));
                println!("seen keys       {}", s.seen_keys);
                match (site_model, &s.learning_since) {
                    (true, Some(since)) => println!(
                        "mode            the site's model (learned since {since}, trained on this site)"
                    ),
                    (true, None) => println!("mode            the site's model"),
                    (false, since) => {
                        let since_ms = since
                            .as_deref()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .map_or_else(|| Utc::now().timestamp_millis(), |t| t.timestamp_millis());
                        println!(
                            "mode            {}",
                            crate::learn::learning_note(since_ms, cfg.detector.learn_days)
                        );
                    }
                }
                println!("queue budget    {budget}");
                match (&s.baselines_until, &s.baselines_seeded) {
                    (Some(until), Some(seeded)) => println!(
                        "baselines       the model's, learned until {until} (started from them at {seeded}), then this daemon's"
                    ),
                    _ => println!("baselines       this daemon's own, learned since its first start"),
                }
                // The shares, then what the detector is blind to for want of evidence.
                println!("audit trail     {}", s.coverage.summary());
                let links = s.care_users_linked.zip(s.care_users_not_linked);
                println!(
                    "care context    {}",
                    care_summary(&cfg, &s.care, links, s.care_outside_rate)
                );
                println!("export          {}", export_summary(&cfg, &s));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Alerts {
            since,
            severity,
            status,
            limit,
            json,
        } => {
            let (_, r) = open_state(cfg_path)?;
            let since_ms = since_ms(since.as_deref())?;
            // Pages of the store's size until `limit` alerts (or all there are).
            let alerts = r.alerts_upto(
                &AlertFilter {
                    since_ms,
                    min_severity: severity,
                    status,
                    ..Default::default()
                },
                limit as usize,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&alerts)?);
            } else if alerts.is_empty() {
                println!("no alerts");
            } else {
                for a in &alerts {
                    println!(
                        "#{:<6} {:<8} {:5.2} {}  {} → {}  [{}]\n        {}",
                        a.id,
                        a.severity.as_str(),
                        a.score,
                        a.recorded,
                        a.user.as_deref().unwrap_or("-"),
                        a.patient.as_deref().unwrap_or("-"),
                        a.status.as_str(),
                        a.explanation.join("; ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cases {
            since,
            status,
            queue,
            severity,
            limit,
            json,
        } => {
            let (_, r) = open_state(cfg_path)?;
            let since_ms = since_ms(since.as_deref())?;
            let (scope, status) = if queue {
                (fhir_edge_core::cases::CaseScope::Queue, None)
            } else {
                fhir_edge_core::cases::CaseScope::parse(status.as_deref())
                    .with_context(|| "--status")?
            };
            let cases = r.cases_upto(
                &fhir_edge_core::cases::CaseFilter {
                    since_ms,
                    status,
                    scope,
                    min_severity: severity,
                    ..Default::default()
                },
                limit as usize,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&cases)?);
            } else if cases.is_empty() {
                println!("no cases");
            } else {
                for c in &cases {
                    println!(
                        "#{:<6} {:<8} {:<9} {}  {}  ({} alert{}{}, {} patient{})\n        {}",
                        c.id,
                        c.severity.as_str(),
                        c.status.as_str(),
                        c.user.as_deref().unwrap_or("-"),
                        c.title,
                        c.alerts,
                        if c.alerts == 1 { "" } else { "s" },
                        fhir_edge_core::cases::episodes_words(c.episodes),
                        c.patients,
                        if c.patients == 1 { "" } else { "s" },
                        c.narrative
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Train {
            input,
            from_server,
            since,
            output,
            epochs,
            seed,
            percentile,
            timezone,
            until,
            watch_list,
            context,
            max_patients,
            case_budget,
        } => {
            let (records, names, cfg, server) = if from_server {
                // The server's config is required here.
                let cfg = config::load(cfg_path)?.config;
                let since = parse_since(&since, Utc::now())?;
                let records = crate::training::server_history(&cfg, since, None)?;
                let server = crate::client::redact_url(&cfg.fhir.base_url);
                let name = format!("{server} since {}", since.to_rfc3339());
                (records, vec![name], Some(cfg), Some(server))
            } else {
                let (records, names) = read_inputs(&input)?;
                (records, names, site_config(cfg_path), None)
            };
            let mut ctx = crate::training::site_context(
                timezone.as_deref(),
                watch_list.as_deref(),
                &context,
                cfg.as_ref(),
            )?;
            if let Some(n) = max_patients {
                ctx.set_max_patients(n as usize);
            }
            // From the server without --context files: the care context the daemon follows,
            // else the server's, read now.
            if let (true, true, Some(c)) = (from_server, context.is_empty(), cfg.as_ref()) {
                ctx.set_care(crate::training::care_for_training(c)?);
            }
            let (case_rule, site_budget) = crate::training::TrainRun::queue_of(cfg.as_ref());
            let run = crate::training::TrainRun {
                output: &output,
                epochs,
                seed,
                percentile,
                until,
                server: server.as_deref(),
                case_rule,
                case_budget: case_budget.unwrap_or(site_budget),
            };
            crate::training::train_cmd(records, names, ctx, &run)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Score {
            model,
            input,
            output,
            timezone,
            features_out,
            watch_list,
            context,
            max_patients,
        } => {
            let cfg = site_config(cfg_path);
            let mut ctx = crate::training::site_context(
                timezone.as_deref(),
                watch_list.as_deref(),
                &context,
                cfg.as_ref(),
            )?;
            if let Some(n) = max_patients {
                ctx.set_max_patients(n as usize);
            }
            // Alerts are filed into cases by the site's rule, as the daemon would.
            let rule = cfg
                .as_ref()
                .map_or_else(Default::default, |c| c.alerts.case_rule());
            score_cmd(&model, &input, &output, ctx, rule, features_out.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "lab")]
        Command::Lab(c) => crate::lab::execute(c),
        Command::SendTestEvent { failed_logins } => {
            let cfg = config::load(cfg_path)?.config;
            let client = crate::client::FhirClient::new(&cfg.fhir, cfg.poller.max_page_bytes)?;
            let events: Vec<_> = match failed_logins {
                None => vec![crate::client::sample_event(Utc::now())],
                Some(n) => (0..n)
                    .map(|i| {
                        crate::client::sample_failed_login(
                            Utc::now() + chrono::Duration::milliseconds(i as i64),
                        )
                    })
                    .collect(),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            for ev in &events {
                let id = rt
                    .block_on(client.create(ev))
                    .context("posting the test event")?;
                println!("{id}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A queue budget: cases a day per 100 users, from 0 (off) to 1000.
fn parse_budget(s: &str) -> Result<f64, String> {
    let v = s
        .parse::<f64>()
        .map_err(|_| format!("{s} is not a number of cases a day per 100 users"))?;
    fhir_edge_core::detector::budget::check_budget(v).map_err(|e| e.to_string())
}

/// `--since 24h` / `7d` / `30m` or an RFC 3339 time.
pub fn parse_since(s: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| {
        anyhow::anyhow!("--since {s:?}: expected e.g. 24h, 7d or 2024-05-01T00:00:00Z")
    })?;
    let d = match unit {
        "s" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => bail!("--since {s:?}: unit must be s, m, h or d"),
    };
    Ok(now - d)
}

/// The config, when one is readable: offline commands (`train` from files, `score`) take
/// the site's settings from it, and run without one.
/// The configuration and a read-only view of its state database (for the reports).
fn open_state(cfg_path: Option<&Path>) -> anyhow::Result<(Config, fhir_edge_core::state::Reader)> {
    let cfg = config::load(cfg_path)?.config;
    let r = fhir_edge_core::state::Reader::open(&cfg.state_dir())
        .context("no state yet (has the daemon run?)")?;
    Ok((cfg, r))
}

/// `--since` (a time or a span ago) in ms, when given.
fn since_ms(since: Option<&str>) -> anyhow::Result<Option<i64>> {
    Ok(since
        .map(|s| parse_since(s, Utc::now()))
        .transpose()?
        .map(|t| t.timestamp_millis()))
}

fn site_config(cfg_path: Option<&Path>) -> Option<Config> {
    config::load(cfg_path).ok().map(|l| l.config)
}

/// Events of training files, and the files' names (for the training summary).
fn read_inputs(
    inputs: &[PathBuf],
) -> anyhow::Result<(Vec<fhir_edge_core::fhir::AuditRecord>, Vec<String>)> {
    let mut records = Vec::new();
    for p in inputs {
        // Bytes of the file read, on a terminal (indicatif draws nothing otherwise).
        let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let bar = indicatif::ProgressBar::new(size.max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} · {msg} · about {eta} left",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("reading {}", p.display()));
        let i = fhir_edge_core::detector::train::read_events_with(p, |bytes, events| {
            bar.set_position(bytes);
            bar.set_message(format!("{events} events"));
        })?;
        bar.finish_and_clear();
        if !i.skipped.is_empty() {
            eprintln!(
                "{}: skipped {} unreadable entries (first: {} — {})",
                p.display(),
                i.skipped.len(),
                i.skipped[0].0,
                i.skipped[0].1
            );
        }
        records.extend(i.records);
    }
    let names = inputs
        .iter()
        .map(|p| {
            p.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    Ok((records, names))
}

/// The care context in one line: resources kept per type, the types the server refused
/// (their signals are off), the users linked to a Practitioner, and how much of the
/// staff's work lies outside every relationship it knows.
fn care_summary(
    cfg: &crate::config::Config,
    types: &[fhir_edge_core::state::CareTypeStatus],
    links: Option<(u64, u64)>,
    outside_rate: Option<f32>,
) -> String {
    if !cfg.context.enabled {
        return "not followed ([context] enabled = false)".into();
    }
    if types.is_empty() {
        return "not read yet".into();
    }
    let kept: Vec<String> = types
        .iter()
        .filter(|t| t.refused.is_none())
        .map(|t| format!("{} {}", t.resource_type, t.resources))
        .collect();
    let refused: Vec<String> = types
        .iter()
        .filter_map(|t| Some(format!("{} ({})", t.resource_type, t.refused.as_deref()?)))
        .collect();
    let mut out = kept.join(", ");
    if !refused.is_empty() {
        out.push_str(&format!(
            "; refused by the server, so off: {}",
            refused.join(", ")
        ));
    }
    match links {
        Some((l, u)) if l + u > 0 => out.push_str(&format!(
            "; audit users linked to a Practitioner: {l} of {}",
            l + u
        )),
        _ => out.push_str("; no audit user linked to a Practitioner yet"),
    }
    match outside_rate {
        Some(r) if fhir_edge_core::detector::features::describes_nobody(r) => {
            out.push_str(&format!(
                "; {:.0}% of accesses outside every relationship it knows: it describes almost \
                 nobody's work, so a watched record is read from the department's history, as \
                 without a context (check that its Encounters and CareTeams name the audit \
                 users' Practitioners and units)",
                r * 100.0
            ))
        }
        Some(r) if r > 0.0 => out.push_str(&format!(
            "; {:.0}% of accesses outside every relationship it knows",
            r * 100.0
        )),
        _ => {}
    }
    out
}

fn score_cmd(
    model_dir: &Path,
    input: &Path,
    output: &Path,
    mut ctx: fhir_edge_core::detector::features::Context,
    case_rule: fhir_edge_core::cases::CaseRule,
    features_out: Option<&Path>,
) -> anyhow::Result<()> {
    use fhir_edge_core::detector::baselines;
    use std::io::Write;
    let model = fhir_edge_core::detector::model::Model::load(model_dir)?;
    match (ctx.care().is_some(), model.meta.training.care_context) {
        (true, false) => {
            eprintln!(
                "note: the model was trained without a care context; --context is not used \
                 (retrain with --context to use it)"
            );
            ctx.set_care(None);
        }
        (false, true) => eprintln!(
            "note: the model was trained with a care context; without --context its care signals stay quiet"
        ),
        _ => {}
    }
    // A model with baselines continues from them: what it learned is not learned twice.
    let pass_over = match baselines::load(model_dir, ctx.timezone())? {
        Some(b) => {
            let rule = baselines::PassOver::by_recorded(&b.mark);
            ctx.adopt_history(b.context);
            Some((rule, b.mark))
        }
        None => None,
    };
    let i = fhir_edge_core::detector::train::read_events(input)?;
    let scored = fhir_edge_core::detector::score_stream(
        &model,
        &mut ctx,
        &i.records,
        512,
        fhir_edge_core::detector::Explain::All,
        pass_over.as_ref().map(|(rule, _)| rule),
    )?;
    let create = |p: &Path| -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
        Ok(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        ))
    };
    if let Some(fo) = features_out {
        // The same causal feature rows the model saw, for other detectors to compare on.
        let mut w = create(fo)?;
        writeln!(
            w,
            "id,recorded_ms,{}",
            fhir_edge_core::detector::features::FEATURE_NAMES.join(",")
        )?;
        for (r, (x, _)) in i.records.iter().zip(&scored) {
            let xs: Vec<String> = x.iter().map(|v| format!("{v:.5}")).collect();
            writeln!(
                w,
                "{},{},{}",
                r.id,
                r.recorded.timestamp_millis(),
                xs.join(",")
            )?;
        }
        w.flush()?;
    }
    let mut w = create(output)?;
    // The case each alert would be filed in, by the daemon's rule (the site's
    // `alerts.case_window_hours` when a configuration is found, else the default), and
    // whether that case reaches the queue (by all its alerts: a watched case that a later
    // alert corroborates is queued).
    let mut cases = fhir_edge_core::cases::Grouper::new(case_rule);
    let case_of: Vec<Option<u64>> = i
        .records
        .iter()
        .zip(&scored)
        .map(|(r, (_, v))| {
            v.severity.map(|sev| {
                let kind = fhir_edge_core::alerts::AlertKind::strongest(&v.kinds);
                cases.assign(
                    r.user.as_deref(),
                    r.patient.as_deref(),
                    r.recorded.timestamp_millis(),
                    (sev, kind, v.evidence),
                )
            })
        })
        .collect();
    writeln!(w, "id,score,severity,kind,case,case_queued,explanation")?;
    let mut alerts = 0;
    for ((r, (_, v)), case) in i.records.iter().zip(&scored).zip(&case_of) {
        alerts += v.severity.is_some() as usize;
        let expl = v.explanation.join("; ").replace('"', "\"\"");
        writeln!(
            w,
            "{},{:.5},{},{},{},{},\"{}\"",
            r.id,
            v.score,
            v.severity.map(|s| s.as_str()).unwrap_or(""),
            v.kinds.first().map(|k| k.as_str()).unwrap_or(""),
            case.map(|c| c.to_string()).unwrap_or_default(),
            case.map(|c| u8::from(cases.is_queued(c)).to_string())
                .unwrap_or_default(),
            expl
        )?;
    }
    w.flush()?;
    let passed = match &pass_over {
        Some((rule, mark)) => format!(
            "; {} at or before the baselines' mark {} were scored but not learned again",
            i.records.iter().filter(|r| rule.passes_over(r)).count(),
            fhir_edge_core::clock::fmt_ms(fhir_edge_core::clock::from_ms(mark.recorded_ms))
        ),
        None => String::new(),
    };
    println!(
        "scored {} events ({} alerts, in {} cases of which {} queued{passed}) → {}",
        scored.len(),
        alerts,
        cases.cases(),
        (1..=cases.cases()).filter(|c| cases.is_queued(*c)).count(),
        output.display()
    );
    Ok(())
}

/// Where the configuration exports to (for `check-config`).
fn export_plan(cfg: &crate::config::Config) -> String {
    let mut parts = Vec::new();
    if let (Some(n), Some(prefix)) = (&cfg.export.nats, cfg.nats_subject_prefix()) {
        parts.push(format!(
            "NATS {} (stream {}, subjects {prefix}.alert|case|status)",
            n.servers.join(","),
            n.stream
        ));
    }
    if let Some(s) = &cfg.export.syslog {
        parts.push(format!(
            "syslog {} ({}, facility {}{})",
            s.address,
            if s.tls { "TLS" } else { "TCP" },
            s.facility,
            match s.format {
                fhir_edge_core::export::syslog::Payload::Json => "",
                fhir_edge_core::export::syslog::Payload::Cef => ", CEF",
                fhir_edge_core::export::syslog::Payload::Ocsf => ", OCSF",
            }
        ));
    }
    match parts.is_empty() {
        true => "off".into(),
        false => format!("{} as site {}", parts.join(" and "), cfg.site_name()),
    }
}

/// One line on the exporters: each one's backlog and oldest waiting item, and what the
/// full outbox refused.
fn export_summary(cfg: &crate::config::Config, s: &fhir_edge_core::state::StatusReport) -> String {
    let on = crate::export::configured(cfg);
    if on.is_empty() {
        return "off (no [export.nats] or [export.syslog])".into();
    }
    let mut parts: Vec<String> = on
        .iter()
        .map(|e| {
            let st = s.export.iter().find(|x| x.exporter == e.as_str());
            match st {
                Some(x) if x.backlog > 0 => format!(
                    "{}: {} waiting since {}",
                    e.as_str(),
                    x.backlog,
                    x.oldest_waiting.as_deref().unwrap_or("?")
                ),
                Some(_) => format!("{}: up to date", e.as_str()),
                None => format!("{}: nothing acknowledged yet", e.as_str()),
            }
        })
        .collect();
    parts.insert(0, format!("site {}", cfg.site_name()));
    if s.export_refused > 0 {
        parts.push(format!(
            "{} items REFUSED by the full outbox ([export] max_items {})",
            s.export_refused, cfg.export.max_items
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn since_forms() {
        let now = DateTime::parse_from_rfc3339("2024-05-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_since("24h", now).unwrap().to_rfc3339(),
            "2024-05-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_since("2024-01-01T00:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2024-01-01T00:00:00+00:00"
        );
        assert!(parse_since("soon", now).is_err());
    }
}
