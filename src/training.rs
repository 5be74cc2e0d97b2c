//! Training a site's model: reading a server's AuditEvent history (with progress on a
//! terminal), the site's feature context, and training with the baselines written beside
//! the weights. Used by `train`, by the demo and by the daemon at the end of learning.

use std::path::Path;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::config::Config;

/// A fresh feature context for the site: its time zone and its watch list, each from its
/// flag, else from the config (time zone UTC and no watch list without either), and the
/// care context of `context` files (FHIR resources as NDJSON, tagged with a key that lives
/// as long as the process: nothing of them is written anywhere).
pub(crate) fn site_context(
    timezone: Option<&str>,
    watch_list: Option<&Path>,
    context: &[std::path::PathBuf],
    cfg: Option<&Config>,
) -> anyhow::Result<fhir_edge_core::detector::features::Context> {
    let tz = match timezone {
        Some(t) => t
            .parse()
            .map_err(|_| anyhow::anyhow!("--timezone: unknown time zone {t:?}"))?,
        None => cfg.map_or(chrono_tz::UTC, Config::timezone),
    };
    let path = watch_list
        .map(Path::to_path_buf)
        .or_else(|| cfg.and_then(|c| c.detector.watch_list.clone()));
    let watch = match &path {
        Some(p) => fhir_edge_core::detector::read_watch_list(p)
            .map_err(|e| anyhow::anyhow!("watch list {}: {e}", p.display()))?,
        None => Vec::new(),
    };
    let mut ctx = fhir_edge_core::detector::features::Context::new(tz);
    ctx.set_watch_list(watch.iter().map(String::as_str));
    if !context.is_empty() {
        use fhir_edge_core::care;
        let key = care::CareKey::ephemeral()?;
        let (set, read) = care::FactSet::read_ndjson(context, &key)?;
        let index = set.index(key);
        let c = index.counts();
        eprintln!(
            "care context: {} resources read ({} of other types, {} lines not JSON): {} practitioners, \
             {} patients ({} with a known relationship, {} of them staff, {} marked to watch), {} relationships, \
             {} related persons",
            read.read, read.skipped, read.unreadable, c.practitioners, c.patients,
            c.patients_with_care, c.staff_as_patients, c.marked_patients, c.relationships, c.related_persons
        );
        ctx.set_care(Some(std::sync::Arc::new(index)));
    }
    Ok(ctx)
}

/// Why a training run has no care context the daemon followed.
enum NotFollowed {
    /// `[context] enabled = false`.
    Off,
    /// The daemon has not read it yet (no key, or no facts): said why.
    NotYet(String),
    /// The key or the state database cannot be read: said why.
    Unreadable(String),
}

/// The care context the daemon has followed from the server: the state directory's facts,
/// tagged with the install's key.
fn followed_index(cfg: &Config) -> Result<fhir_edge_core::care::Index, NotFollowed> {
    use fhir_edge_core::care::CareKey;
    if !cfg.context.enabled {
        return Err(NotFollowed::Off);
    }
    // Only the daemon makes the key (as its own user): a training command run by another
    // user must not leave a key the daemon cannot read.
    let path = cfg.care_key_file();
    let key = match CareKey::load(&path) {
        Ok(Some(k)) => k,
        Ok(None) => {
            return Err(NotFollowed::NotYet(format!(
                "no key at {} yet (the daemon makes it and reads the context)",
                path.display()
            )))
        }
        Err(e) => return Err(NotFollowed::Unreadable(e.to_string())),
    };
    match fhir_edge_core::state::Reader::open(&cfg.state_dir()).and_then(|r| r.care_facts()) {
        Ok(f) if !f.is_empty() => Ok(f.index(key)),
        Ok(_) => Err(NotFollowed::NotYet(
            "none read from the server yet (the daemon reads it)".into(),
        )),
        Err(e) => Err(NotFollowed::Unreadable(format!(
            "the state database cannot be read: {e}"
        ))),
    }
}

/// Say which followed context a training run uses.
fn say_followed(index: &fhir_edge_core::care::Index) {
    let c = index.counts();
    eprintln!(
        "care context: the daemon's, {} practitioners, {} patients, {} relationships",
        c.practitioners, c.patients, c.relationships
    );
}

/// The care context the daemon has followed from the server, for the daemon's own training
/// at the end of learning; `None` when `[context]` is off or nothing has been read yet
/// (then training goes without, and says so).
pub(crate) fn followed_care(cfg: &Config) -> Option<std::sync::Arc<fhir_edge_core::care::Index>> {
    match followed_index(cfg) {
        Ok(index) => {
            say_followed(&index);
            Some(std::sync::Arc::new(index))
        }
        Err(NotFollowed::Off) => None,
        Err(NotFollowed::NotYet(why) | NotFollowed::Unreadable(why)) => {
            eprintln!("care context: {why}; training without it");
            None
        }
    }
}

/// The care context for `train --from-server`: the daemon's when it has followed one,
/// else the server's own, read now (before the daemon's first start: a site that starts
/// warm gets a model that knows its care signals). What is read now is tagged with a key
/// that lives as long as the process and written nowhere; the daemon reads the context
/// again at its start, and polls only once it has (`PollerActor::holding_until`).
/// A type the server refuses is left out, as the daemon leaves it out; any other failure
/// stops the training, naming the type.
pub(crate) fn care_for_training(
    cfg: &Config,
) -> anyhow::Result<Option<std::sync::Arc<fhir_edge_core::care::Index>>> {
    match followed_index(cfg) {
        Ok(index) => {
            say_followed(&index);
            Ok(Some(std::sync::Arc::new(index)))
        }
        Err(NotFollowed::Off) => Ok(None),
        Err(NotFollowed::Unreadable(why)) => {
            eprintln!("care context: {why}; training without it");
            Ok(None)
        }
        Err(NotFollowed::NotYet(why)) => {
            eprintln!("care context: {why}; reading it from the server now");
            Ok(server_care(cfg)?.map(std::sync::Arc::new))
        }
    }
}

/// Read the followed care context types from the configured server to the end of their
/// paging (a spinner on a terminal says the type, pages and resources so far); `None` when
/// the server holds none of them.
fn server_care(cfg: &Config) -> anyhow::Result<Option<fhir_edge_core::care::Index>> {
    use fhir_edge_core::care::{CareKey, FactSet};
    let client = crate::client::FhirClient::new(&cfg.fhir, cfg.poller.max_page_bytes)?;
    let key = CareKey::ephemeral()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let spinner = indicatif::ProgressBar::new_spinner();
    let mut plain = PlainProgress::beside(&spinner);
    let mut facts = FactSet::default();
    for ty in cfg.context.types() {
        let mut paging = crate::context::TypePages::new(
            &client,
            &key,
            ty,
            fhir_edge_core::clock::from_ms(0),
            cfg.context.page_size,
        );
        let mut read = 0usize;
        loop {
            let page = match rt.block_on(paging.next()) {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(crate::context::PageError::Refused(why)) => {
                    eprintln!("care context: the server refuses {ty} ({why}); left out");
                    break;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "reading the care context's {ty} from {} (retry, or set \
                             [context] enabled = false to train without it)",
                            crate::client::redact_url(&cfg.fhir.base_url)
                        )
                    })
                }
            };
            read += page.resources;
            let said = format!(
                "reading the care context: {ty}, {} pages, {read} resources",
                paging.pages()
            );
            plain.say(|| said.clone());
            spinner.set_message(said);
            spinner.tick();
            page.facts.into_iter().for_each(|f| facts.upsert(f));
        }
        if paging.pages() > 0 {
            let pages = paging.pages();
            spinner.suspend(|| eprintln!("care context: {read} {ty} resources in {pages} pages"));
        }
    }
    spinner.finish_and_clear();
    if facts.is_empty() {
        eprintln!("care context: the server holds none of the followed types; training without it");
        return Ok(None);
    }
    let index = facts.index(key);
    let c = index.counts();
    eprintln!(
        "care context: the server's, {} practitioners, {} patients, {} relationships",
        c.practitioners, c.patients, c.relationships
    );
    Ok(Some(index))
}

/// A progress bar for reading history from `since` to `now` on a terminal (drawn on
/// stderr, hidden when stderr is not a terminal): the time covered so far as the position,
/// so the percentage and time left hold for a server that returns `_lastUpdated` order.
fn history_bar(since: DateTime<Utc>, now: DateTime<Utc>, server: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new((now - since).num_seconds().max(1) as u64);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {percent:>3}% · {msg} · about {eta} left",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("reading {server}"));
    bar
}

/// Move the bar to a history read's progress.
fn history_tick(
    bar: &indicatif::ProgressBar,
    since: DateTime<Utc>,
    p: crate::client::HistoryProgress,
) {
    if let Some(newest) = p.newest {
        bar.set_position((newest - since).num_seconds().max(0) as u64);
    }
    let secs = bar.elapsed().as_secs_f64().max(1e-3);
    bar.set_message(format!(
        "{} events, {} pages, {:.0} events/s",
        p.events,
        p.pages,
        p.events as f64 / secs
    ));
}

/// How often progress is said in plain lines where no terminal draws the bar.
const SAY_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Progress for a reader without a terminal (the daemon's journal, a pipe, a cron mail):
/// a line on stderr at most every [`SAY_EVERY`], where the bar, hidden, draws nothing.
struct PlainProgress {
    on: bool,
    last: std::time::Instant,
}

impl PlainProgress {
    fn beside(bar: &indicatif::ProgressBar) -> Self {
        PlainProgress {
            on: bar.is_hidden(),
            last: std::time::Instant::now(),
        }
    }

    fn say(&mut self, line: impl FnOnce() -> String) {
        if self.on && self.last.elapsed() >= SAY_EVERY {
            eprintln!("{}", line());
            self.last = std::time::Instant::now();
        }
    }
}

/// The configured server's AuditEvents since `since` (`train --from-server`); with
/// `max_events`, the oldest that many (by `lastUpdated`, to the end of a page), said when
/// the bound stopped the read.
pub(crate) fn server_history(
    cfg: &crate::config::Config,
    since: DateTime<Utc>,
    max_events: Option<usize>,
) -> anyhow::Result<Vec<fhir_edge_core::fhir::AuditRecord>> {
    let client = crate::client::FhirClient::new(&cfg.fhir, cfg.poller.max_page_bytes)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = crate::client::redact_url(&cfg.fhir.base_url);
    let bar = history_bar(since, Utc::now(), &server);
    let mut plain = PlainProgress::beside(&bar);
    let (records, skipped) = rt
        .block_on(
            client.history(since, cfg.poller.page_size, max_events, |p| {
                plain.say(|| {
                    format!(
                        "reading {server}: {} events, {} pages so far",
                        p.events, p.pages
                    )
                });
                history_tick(&bar, since, p)
            }),
        )
        .with_context(|| format!("reading AuditEvents from {server}"))?;
    bar.finish_and_clear();
    eprintln!(
        "read {} events from {server} since {}{}",
        records.len(),
        since.to_rfc3339(),
        match max_events {
            Some(m) if crate::client::history_cut(records.len(), m) => format!(
                ", the oldest {m} or so and no more (the bound of this read); the newest read was recorded at {}",
                records.last().map_or_else(String::new, |r| r.recorded.to_rfc3339())
            ),
            _ => String::new(),
        }
    );
    if let Some((id, why)) = skipped.first() {
        eprintln!(
            "skipped {} unreadable entries (first: {id} — {why})",
            skipped.len()
        );
    }
    if records.is_empty() {
        return Err(NoHistory {
            server,
            since: since.to_rfc3339(),
        }
        .into());
    }
    Ok(records)
}

/// The server holds no AuditEvents in the window asked for ([`server_history`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "{server} holds no AuditEvents since {since}: nothing to learn from (try a longer --since)"
)]
pub(crate) struct NoHistory {
    server: String,
    since: String,
}

/// What `train` was asked for.
pub(crate) struct TrainRun<'a> {
    pub output: &'a Path,
    pub epochs: usize,
    pub seed: u64,
    pub percentile: f32,
    /// Learn only from events recorded before this.
    pub until: Option<DateTime<Utc>>,
    /// The server's base URL (without credentials) with `--from-server`.
    pub server: Option<&'a str>,
    /// The case rule and the queue budget the threshold is fitted to (`[alerts]
    /// case_window_hours`, `case_budget`; 0: not fitted).
    pub case_rule: fhir_edge_core::cases::CaseRule,
    pub case_budget: f64,
}

impl TrainRun<'_> {
    /// The case rule and queue budget of `cfg`, else the defaults.
    pub fn queue_of(cfg: Option<&Config>) -> (fhir_edge_core::cases::CaseRule, f64) {
        match cfg {
            Some(c) => (c.alerts.case_rule(), c.alerts.case_budget),
            None => (
                fhir_edge_core::cases::CaseRule::default(),
                fhir_edge_core::detector::budget::DEFAULT_CASE_BUDGET,
            ),
        }
    }
}

/// Train on `records` and write the model with its baselines (the context at the end of
/// the window, and that end as a mark) to `run.output`.
pub(crate) fn train_cmd(
    mut records: Vec<fhir_edge_core::fhir::AuditRecord>,
    names: Vec<String>,
    mut ctx: fhir_edge_core::detector::features::Context,
    run: &TrainRun<'_>,
) -> anyhow::Result<()> {
    use fhir_edge_core::detector::{baselines, sift};
    let TrainRun {
        output,
        percentile,
        until,
        server,
        case_rule,
        case_budget,
        ..
    } = *run;
    // Where the events read but not learned (recorded from `until` on) begin, for the mark.
    let mut unlearned_from = None;
    if let Some(u) = until {
        unlearned_from = baselines::oldest_written(records.iter().filter(|r| r.recorded >= u));
        records.retain(|r| r.recorded < u);
    }
    // Users whose events name no department are read with their peer group as one (both
    // passes, and the baselines saved: `detector::peers`).
    let grouping = std::time::Instant::now();
    let peers = fhir_edge_core::detector::peers::infer(&records);
    ctx.set_peer_groups(&peers);
    if peers.grouped() + peers.alone.len() > 0 {
        eprintln!(
            "peer groups: of {} users whose events name no department, {} are in {} groups \
             (users who open the same patients), read as their departments; {} in none \
             ({:.1} s)",
            peers.grouped() + peers.alone.len(),
            peers.grouped(),
            peers.groups.len(),
            peers.alone.len(),
            grouping.elapsed().as_secs_f32()
        );
        if peers.crowded_records > 0 {
            eprintln!(
                "peer groups: {} records opened by more than {} of these users tie no one \
                 (everyone's patients, or a crowd's)",
                peers.crowded_records,
                fhir_edge_core::detector::peers::MAX_RECORD_USERS
            );
        }
        if !peers.settled {
            eprintln!(
                "peer groups: the grouping had not settled after its last sweep; the groups \
                 are that sweep's"
            );
        }
    }
    // A fresh context for the second pass (`detector::sift`), before the first learns.
    let fresh = ctx.clone();
    // First pass: each event's feature row and the facts beside it that make evidence
    // twice over (the queue budget's replay queues such a case at once:
    // `detector::evidence`), and what the audit trail holds (the department the care
    // context gave an event is the one its row was computed with).
    let mut coverage = fhir_edge_core::coverage::Coverage::default();
    let (mut rows, mut circumstances): (Vec<_>, Vec<_>) = records
        .iter()
        .map(|r| {
            coverage.observe(r);
            let (row, facts) = ctx.observe(r);
            coverage.department_from_context += facts.dept_from_care as u64;
            coverage.department_from_peers += facts.dept_from_peers as u64;
            (row, fhir_edge_core::detector::Circumstances::of(&facts))
        })
        .unzip();
    eprintln!("the audit trail: {}", coverage.summary());
    // The loudest user-hours count as the site's busy ones in the calibration of both
    // passes (`detector::calibration`), so a bulk hour in the history does not set the
    // threshold.
    let weights = fhir_edge_core::detector::calibration::user_hour_weights(&records);
    let cap = weights.cap;
    eprintln!(
        "calibration: {} user-hours over {} events ({} events) count as {} each",
        cap.user_hours_capped,
        cap.events_per_user_hour,
        cap.events_capped,
        cap.events_per_user_hour
    );
    let mut model = fit_model(&rows, &weights, run, names.clone(), "first pass")?;
    // Second pass: what the first model alerts on is left out of the context, so the
    // baselines do not learn it, and the model is trained again on every row as that
    // context gives it (`detector::sift`).
    let started = std::time::Instant::now();
    eprintln!(
        "second pass: scoring the {} events of the history with the first model",
        records.len()
    );
    let left_out = sift::alerted(&model, fresh.clone(), &records)?;
    let n_out = left_out.iter().filter(|x| **x).count();
    if n_out == 0 {
        eprintln!("second pass: the first model alerts on none of them; its model is kept");
    } else {
        let first_seconds = model.meta.training.seconds;
        ctx = fresh;
        (rows, circumstances) = sift::features_without(&mut ctx, &records, &left_out);
        eprintln!(
            "second pass: the {n_out} events the first model alerts on ({:.2}%) are left out \
             of the baselines",
            100.0 * n_out as f64 / records.len() as f64
        );
        model = fit_model(&rows, &weights, run, names, "second pass")?;
        model.meta.training.seconds = first_seconds + started.elapsed().as_secs_f32();
        model.meta.training.left_out = Some(n_out);
    }
    model.meta.training.care_context = ctx.care().is_some();
    if case_budget > 0.0 {
        fit_queue_budget(
            &mut model,
            &rows,
            &circumstances,
            &records,
            case_rule,
            case_budget,
        )?;
    }
    model.save(output)?;
    let mark = baselines::Mark::at_end_of(
        &records,
        ctx.timezone(),
        server,
        model.meta.training.trained_at.clone(),
    )
    .with_unlearned_from(unlearned_from);
    baselines::save(output, &mark, &ctx)?;
    println!(
        "trained on {} events in {:.1} s (final loss {:.4}); threshold {:.4} at p{}; saved to {} \
         with the baselines of {} users as of {} ({})",
        model.meta.training.events,
        model.meta.training.seconds,
        model.meta.training.final_loss,
        model.meta.threshold,
        percentile,
        output.display(),
        ctx.users(),
        fhir_edge_core::clock::fmt_ms(fhir_edge_core::clock::from_ms(mark.recorded_ms)),
        mark.timezone
    );
    Ok(())
}

/// Train a model on feature `rows` with `run`'s epochs, seed and percentile, each row
/// counted in the calibration by its `weights` (`detector::calibration`, index for
/// index), with the epochs on a terminal (indicatif draws nothing when stderr is not
/// one) and said once in a while elsewhere; `label` names the pass.
fn fit_model(
    rows: &[[f32; fhir_edge_core::detector::features::N_FEATURES]],
    weights: &fhir_edge_core::detector::calibration::Weights,
    run: &TrainRun<'_>,
    names: Vec<String>,
    label: &str,
) -> anyhow::Result<fhir_edge_core::detector::model::Model> {
    let epochs = run.epochs;
    let opts = fhir_edge_core::detector::model::TrainOptions {
        epochs,
        seed: run.seed,
        threshold_percentile: run.percentile,
        calibration: Some(weights.clone()),
        ..Default::default()
    };
    let bar = indicatif::ProgressBar::new(epochs as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "training, {prefix} [{elapsed_precise}] {wide_bar} epoch {pos}/{len} · {msg} · about {eta} left",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    bar.set_message(format!("{} events", rows.len()));
    let mut plain = PlainProgress::beside(&bar);
    let model = fhir_edge_core::detector::model::train(rows, &opts, names, |epoch, loss| {
        plain.say(|| format!("training, {label}: epoch {epoch} of {epochs}, loss {loss:.4}"));
        bar.set_position(epoch as u64);
        bar.set_message(format!("{} events, loss {loss:.4}", rows.len()));
    })?;
    bar.finish_and_clear();
    Ok(model)
}

/// Fit the model's thresholds to the queue budget on the second half of the training
/// window (its events' feature `rows`, `detector::Circumstances` and `records`, index for
/// index; see `detector::budget`), and say what it did.
fn fit_queue_budget(
    model: &mut fhir_edge_core::detector::model::Model,
    rows: &[[f32; fhir_edge_core::detector::features::N_FEATURES]],
    circumstances: &[fhir_edge_core::detector::Circumstances],
    records: &[fhir_edge_core::fhir::AuditRecord],
    rule: fhir_edge_core::cases::CaseRule,
    budget: f64,
) -> anyhow::Result<()> {
    use fhir_edge_core::detector::budget;
    let Some((candidates, days, users)) = budget::candidates(model, rows, circumstances, records)?
    else {
        eprintln!(
            "queue budget: not fitted, the training window's second half spans under {} days \
             or names no user; the percentile's threshold is kept",
            budget::MIN_DAYS
        );
        return Ok(());
    };
    let (fit, raises) = budget::fit(&candidates, rule, budget, days, users);
    let at = format!(
        "{:.2} cases a day per 100 users would have been queued in the last {:.1} days ({} users active)",
        fit.before, days, users
    );
    let loud = || {
        budget::loudest_users(&candidates, &raises, rule, 5)
            .into_iter()
            .map(|(u, n)| format!("{u} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (raises.is_empty(), fit.met()) {
        (true, true) => eprintln!("queue budget {budget}: {at}; the thresholds are kept"),
        (true, false) => eprintln!(
            "queue budget {budget}: {at}; NOT MET, and the thresholds are kept: what fills the \
             queue is episodes of a day spread over many users, not work flagged day after day \
             that a raise would trim, and raising their thresholds would hide the next such \
             episode. If the history holds misuse, these cases are worth opening; if it is \
             routine, allow-list it or set [alerts] case_budget higher. Most of those cases \
             are of: {}",
            loud()
        ),
        (false, true) => eprintln!(
            "queue budget {budget}: {at}; thresholds raised for {}, for {:.2}",
            raises.describe(),
            fit.after
        ),
        (false, false) => eprintln!(
            "queue budget {budget}: {at}; NOT MET: {:.2} with thresholds raised for {}, and what \
             still fills the queue is at the largest raise, or episodes of a day that keep their \
             threshold. Most of those cases are of: {}. Look at what their work looks like and \
             allow-list what is routine, or set [alerts] case_budget higher",
            fit.after,
            raises.describe(),
            loud()
        ),
    }
    model.meta.raises = raises;
    model.meta.training.queue_budget = Some(fit);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_progress_moves_by_the_time_covered() {
        let since = DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let now = since + chrono::Duration::days(30);
        let bar = history_bar(since, now, "http://fhir.example/fhir");
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        assert_eq!(bar.length(), Some(30 * 86_400));
        let p = crate::client::HistoryProgress {
            events: 1200,
            pages: 6,
            newest: Some(since + chrono::Duration::days(12)),
        };
        history_tick(&bar, since, p);
        assert_eq!(bar.position(), 12 * 86_400, "40% of the window read");
        assert!(
            bar.message().starts_with("1200 events, 6 pages"),
            "{}",
            bar.message()
        );
    }
}
