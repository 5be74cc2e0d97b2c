//! Benchmark traffic: many distinct events made from a simulated fortnight, served by the
//! fault-injecting endpoint (`fhir-edge bench-server`), optionally with live creation at a
//! steady rate. Used by `fhir-edge bench`/`soak`, the crash test and the pipeline benchmark.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fhir_edge_core::clock::{fmt_ms, SystemClock};

use crate::server::FhirStore;
use crate::simulate::{simulate, SimOptions};

/// How big the benchmark's hospital is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub staff: usize,
    pub patients: usize,
}

impl Size {
    /// The simulated hospital as `simulate` makes it by default.
    pub const DEFAULT: Size = Size {
        staff: 150,
        patients: 3000,
    };
}

/// Generate `n` distinct events of the default hospital (`Size::DEFAULT`).
pub fn bench_events_json(
    n: usize,
    seed: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(i64, String, Arc<str>)> {
    bench_events_sized(n, seed, now, Size::DEFAULT)
}

/// Generate `n` distinct events of a hospital of `size`: a simulated fortnight replicated
/// with fresh ids and shifted times, `lastUpdated` increasing (with ties) over the 24 h
/// before `now`. Each is serialised as it is made, so a million events take about their
/// JSON size in memory.
///
/// Up to 150 staff the fortnight is simulated at that size. A larger hospital is made of
/// `ceil(staff / 150)` units, each a copy of the 150-staff hospital with its own staff,
/// departments (renamed per unit) and patients (`patients / units` each, at most the 3,000
/// a unit's simulation names); the events interleave the units, each unit's in its own
/// order, so `n` events give each unit `n / units` of its fortnight.
pub fn bench_events_sized(
    n: usize,
    seed: u64,
    now: chrono::DateTime<chrono::Utc>,
    size: Size,
) -> Vec<(i64, String, Arc<str>)> {
    let made = BenchEvents::new(n, seed, now, size);
    (0..n).map(|i| made.event(i)).collect()
}

/// The benchmark's `n` events of a hospital (`bench_events_sized`), each made on its own:
/// event `i` depends on `i` alone, so they can be made in order, a chunk at a time.
pub struct BenchEvents {
    base: Vec<crate::simulate::SimEvent>,
    units: usize,
    unit_patients: usize,
    start: chrono::DateTime<chrono::Utc>,
    step_us: i64,
}

impl BenchEvents {
    pub fn new(n: usize, seed: u64, now: chrono::DateTime<chrono::Utc>, size: Size) -> Self {
        let mut o = SimOptions::new(14, seed);
        o.anomalies_from_day = 7;
        let units = size.staff.div_ceil(o.users).max(1);
        if units == 1 {
            o.users = size.staff.max(1);
        }
        let unit_patients = (size.patients / units).max(1);
        o.patients = match units {
            1 => size.patients.max(1),
            _ => unit_patients.min(o.patients),
        };
        let (staff, patients) = (units * o.users, units * o.patients);
        if (staff, patients) != (size.staff, size.patients) {
            eprintln!(
                "bench: {} staff and {} patients asked; made as {units} unit(s) of {} staff and \
                 {} patients: {staff} staff, at most {patients} distinct patients",
                size.staff, size.patients, o.users, o.patients
            );
        }
        BenchEvents {
            base: simulate(&o),
            units,
            unit_patients,
            start: now - chrono::Duration::hours(24),
            step_us: (24 * 3_600_000_000i64 / n.max(1) as i64).max(1),
        }
    }

    /// Event `i`: (lastUpdated ms, id, JSON).
    pub fn event(&self, i: usize) -> (i64, String, Arc<str>) {
        let span = chrono::Duration::days(14);
        let (unit, k) = (i % self.units, i / self.units);
        let copy = k / self.base.len();
        let e = &self.base[k % self.base.len()];
        let mut j = e.json();
        let id = match self.units {
            1 => format!("b{copy}-{}", e.id),
            _ => format!("b{copy}-g{unit}-{}", e.id),
        };
        j["id"] = id.clone().into();
        j["recorded"] = fmt_ms(e.recorded + span * copy as i32).into();
        if self.units > 1 {
            into_unit(&mut j, unit, self.unit_patients);
        }
        // Groups of three share a lastUpdated: ties across page boundaries.
        let lu = self.start + chrono::Duration::microseconds((i as i64 / 3) * 3 * self.step_us);
        j["meta"] = serde_json::json!({"versionId": "1", "lastUpdated": fmt_ms(lu)});
        (
            lu.timestamp_millis(),
            id,
            serde_json::to_string(&j).expect("json").into(),
        )
    }
}

/// Make a simulated event one of unit `unit`'s: its staff, department and patients.
fn into_unit(j: &mut serde_json::Value, unit: usize, unit_patients: usize) {
    let patient = |r: &str| -> Option<String> {
        let n: usize = r.strip_prefix("Patient/p")?.parse().ok()?;
        Some(format!("Patient/g{unit}p{}", n % unit_patients))
    };
    if let Some(agents) = j["agent"].as_array_mut() {
        for a in agents {
            if let Some(r) = a["who"]["reference"].as_str() {
                if let Some(u) = r.strip_prefix("Practitioner/") {
                    a["who"]["reference"] = format!("Practitioner/g{unit}{u}").into();
                }
            }
            let loc = &mut a["location"];
            if let Some(d) = loc["display"].as_str() {
                loc["display"] = format!("{d} {unit}").into();
            }
            if let Some(r) = loc["reference"].as_str() {
                loc["reference"] = format!("{r}-{unit}").into();
            }
        }
    }
    if let Some(entities) = j["entity"].as_array_mut() {
        for e in entities {
            if let Some(p) = e["what"]["reference"].as_str().and_then(patient) {
                e["what"]["reference"] = p.into();
            }
        }
    }
}

/// As `bench_events_json`, as JSON values (small n).
pub fn bench_events(
    n: usize,
    seed: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<serde_json::Value> {
    bench_events_json(n, seed, now)
        .into_iter()
        .map(|(_, _, s)| serde_json::from_str(&s).expect("json"))
        .collect()
}

/// Traffic for `bench-server --rate`: a simulated fortnight replayed in a loop, `recorded`
/// kept in simulated time (shifted by 14 days per loop, as in `bench_events_json`, so the
/// detector sees a normal hospital's day compressed), `lastUpdated` = created now.
struct Generator {
    /// (`recorded` ms, the event's JSON without `id`, `meta`, `recorded` and opening brace).
    templates: Vec<(i64, String)>,
    next: u64,
}

impl Generator {
    fn new(seed: u64) -> Self {
        let templates = simulate(&SimOptions::new(14, seed))
            .into_iter()
            .map(|e| {
                let mut j = e.json();
                if let Some(o) = j.as_object_mut() {
                    for k in ["id", "meta", "recorded"] {
                        o.remove(k);
                    }
                }
                let s = j.to_string();
                (e.recorded.timestamp_millis(), s[1..].to_string())
            })
            .collect();
        Generator { templates, next: 0 }
    }

    fn make(&mut self, lu_ms: i64) -> (String, Arc<str>) {
        let n = self.templates.len() as u64;
        let (recorded, t) = &self.templates[(self.next % n) as usize];
        let cycle = (self.next / n) as i64;
        let recorded = fmt_ms(fhir_edge_core::clock::from_ms(
            recorded + cycle * 14 * 86_400_000,
        ));
        let id = format!("g{}", self.next);
        self.next += 1;
        let when = fmt_ms(fhir_edge_core::clock::from_ms(lu_ms));
        let json = format!(
            r#"{{"id":"{id}","meta":{{"versionId":"1","lastUpdated":"{when}"}},"recorded":"{recorded}",{t}"#
        );
        (id, json.into())
    }
}

/// `fhir-edge bench-server --rate R --rate-secs S`: after the address, create R events per
/// second for S seconds (keeping `retain_secs` of them), then print `generated N`.
fn generate(store: &FhirStore, seed: u64, rate: f64, secs: u64, retain_secs: u64) -> u64 {
    let mut g = Generator::new(seed);
    let start = Instant::now();
    let tick = Duration::from_millis(20);
    let mut last_prune = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        let n = due.saturating_sub(g.next) as usize;
        if n > 0 {
            store.append_now(n, |_, lu| g.make(lu));
        }
        if last_prune.elapsed() > Duration::from_secs(5) {
            let cut = chrono::Utc::now() - chrono::Duration::seconds(retain_secs as i64);
            store.prune_before(cut.timestamp_millis());
            last_prune = Instant::now();
        }
        std::thread::sleep(tick);
    }
    g.next
}

/// More events than this are not all held at once (about 2.5 KB each): the first this many
/// are, and the rest are added as the client reads, the ones it has read long since
/// forgotten — like a server whose events arrive while it is followed.
pub const FEED_ABOVE: usize = 2_000_000;

/// What is kept behind the client's read point (ms of `lastUpdated`): more than any overlap
/// or checkpoint lag.
const FEED_KEEP_BEHIND_MS: i64 = 3_600_000;

/// Add events `next..n` in chunks while fewer than `window` are held ahead of what the
/// client reads (`FhirStore::read_from_ms`), forgetting what lies an hour behind it.
fn feed(store: &FhirStore, made: &BenchEvents, mut next: usize, n: usize, window: usize) {
    let chunk = window.clamp(1, 100_000);
    let started = Instant::now();
    while next < n {
        let read_from = store.read_from_ms().unwrap_or(i64::MIN);
        let ahead = store.len_from(read_from);
        if ahead < window {
            let to = (next + chunk).min(n);
            store.insert_serialized((next..to).map(|i| made.event(i)).collect());
            next = to;
            if read_from != i64::MIN {
                store.prune_before(read_from.saturating_sub(FEED_KEEP_BEHIND_MS));
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "bench-server: all {n} events added ({:.1} s after the first were ready)",
        started.elapsed().as_secs_f32()
    );
}

/// `fhir-edge bench-server`: serve N events until stdin closes; prints the address. With
/// `rate`, also creates events at that rate for `rate_secs` and prints `generated N`.
pub fn serve(
    n: usize,
    seed: u64,
    size: Size,
    rate: Option<f64>,
    rate_secs: u64,
    retain_secs: u64,
) -> std::io::Result<()> {
    let store = FhirStore::new(Arc::new(SystemClock));
    let started = Instant::now();
    let made = BenchEvents::new(n, seed, chrono::Utc::now(), size);
    let held = n.min(FEED_ABOVE);
    store.insert_serialized((0..held).map(|i| made.event(i)).collect());
    eprintln!(
        "bench-server: {} events ready in {:.1} s{}",
        store.len(),
        started.elapsed().as_secs_f32(),
        match n > held {
            true => format!("; the other {} are added as they are read", n - held),
            false => String::new(),
        }
    );
    let addr = crate::server::spawn_thread(store.clone(), 1);
    println!("http://{addr}/fhir");
    std::io::stdout().flush()?;
    if n > held {
        feed(&store, &made, held, n, FEED_ABOVE);
    }
    if let Some(r) = rate {
        let total = generate(&store, seed, r, rate_secs, retain_secs);
        println!("generated {total}");
        std::io::stdout().flush()?;
    }
    // Run until the parent closes our stdin.
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink)? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events beyond the window are added as the client reads on, in the order they would
    /// have been held, and what lies an hour behind its read point is forgotten.
    #[test]
    fn fed_events_arrive_as_they_are_read_and_old_ones_are_forgotten() {
        let n = 3_000;
        let now = chrono::Utc::now();
        let made = BenchEvents::new(n, 7, now, Size::DEFAULT);
        let all: Vec<_> = (0..n).map(|i| made.event(i)).collect();
        let store = FhirStore::new(Arc::new(SystemClock));
        store.insert_serialized(all[..1_000].to_vec());
        let fed = {
            let store = store.clone();
            std::thread::spawn(move || feed(&store, &made, 1_000, n, 1_000))
        };
        // Nothing read yet: the feeder holds its window and waits.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(store.len(), 1_000);
        // The client reads from the last of the held events on: the rest follow, and the
        // events more than an hour (of lastUpdated) behind that point are forgotten.
        let mut read = 1_000;
        while !fed.is_finished() {
            store.note_read_from(all[read - 1].0);
            read = (read + 500).min(n);
            std::thread::sleep(Duration::from_millis(20));
        }
        let held = store.ids();
        assert_eq!(held.last(), Some(&all[n - 1].1));
        let kept_from = store.read_from_ms().unwrap() - FEED_KEEP_BEHIND_MS;
        let within = all.iter().filter(|e| e.0 >= kept_from).count();
        assert!(
            held.len() < n && held.len() >= within,
            "{} of {n} held, {within} within an hour of the read point",
            held.len()
        );
    }
}
