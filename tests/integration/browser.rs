//! The dashboard in a real browser: Debian's headless Chromium driven by Playwright
//! (`tests/browser/dashboard.mjs`) against a running daemon with seeded alerts.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`) and `npm ci` run in `tests/browser`; tests/run.sh
//! arranges both and sets REQUIRE_BROWSER=1, where anything missing is a failure. Elsewhere the
//! test says it skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::api::{export_event, request};
use crate::common::*;
use crate::pipeline::reqwest::blocking_free_post;

pub(crate) fn browser_kit() -> Option<(PathBuf, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let ready = chromium.exists() && dir.join("node_modules/playwright-core").is_dir();
    if ready {
        return Some((dir, chromium));
    }
    if std::env::var("REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!(
            "REQUIRE_BROWSER=1 but {} or {}/node_modules/playwright-core is missing \
             (apt-get install chromium; npm ci --prefix tests/browser)",
            chromium.display(),
            dir.display()
        );
    }
    eprintln!("SKIP dashboard browser test: no chromium or playwright-core (see tests/run.sh)");
    None
}

/// Run a Playwright script of `tests/browser` with `args`; its last stdout line, a JSON
/// report. Fails the test with the script's output when it fails.
pub(crate) fn run_script(
    kit: &Path,
    chromium: &Path,
    script: &str,
    args: &[&std::ffi::OsStr],
) -> serde_json::Value {
    let out = Command::new("node")
        .current_dir(kit)
        .arg(script)
        .args(args)
        .env("CHROMIUM", chromium)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a JSON report line")
}

#[test]
fn dashboard_lists_cases_and_alerts_decides_them_and_updates_live() {
    let Some((kit, chromium)) = browser_kit() else {
        return;
    };
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(config(&s.base_url, dir.path()));
    let api = format!("http://{}", d.api);
    for (id, user) in [("b1", "Practitioner/alice"), ("b2", "Practitioner/bob")] {
        let (code, body) = blocking_free_post(
            &format!("{api}/fhir/notify"),
            export_event(id, user).to_string(),
        );
        assert_eq!(code, 200, "{body}");
    }
    let live = dir.path().join("live-event.json");
    std::fs::write(&live, export_event("b3", "Practitioner/carol").to_string()).unwrap();
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");

    let report = run_script(
        &kit,
        &chromium,
        "dashboard.mjs",
        &[api.as_ref(), live.as_ref(), shot.as_ref()],
    );

    // What the click did is what the API says.
    let id = report["false_positive_id"].as_i64().unwrap();
    let (code, a) = request("GET", &format!("{api}/api/alerts/{id}"), None, None);
    assert_eq!(code, 200);
    assert_eq!(a["status"], "false_positive", "{a}");
    let (_, rules) = request("GET", &format!("{api}/api/allowlist"), None, None);
    let rules = rules["rules"].as_array().cloned().unwrap_or_default();
    let from_alert: Vec<_> = rules.iter().filter(|r| r["from_alert"] == id).collect();
    assert_eq!(
        from_alert.len(),
        1,
        "the checked 'allow this pair' box made one rule: {rules:?}"
    );
    assert_eq!(from_alert[0]["user"], a["user"]);
    // The case closed in the page is closed in the store, with its note, and the rules it
    // implied were added.
    let case_id = report["closed_case_id"].as_i64().unwrap();
    let (code, c) = request("GET", &format!("{api}/api/cases/{case_id}"), None, None);
    assert_eq!(code, 200);
    assert_eq!(
        (c["status"].as_str(), c["resolution"].as_str()),
        (Some("closed"), Some("appropriate")),
        "{c}"
    );
    assert_eq!(c["status_note"], "approved export for the quality registry");
    assert!(
        rules
            .iter()
            .any(|r| r["user"] == c["user"] && r["note"] == c["status_note"]),
        "the case's implied rules were added: {rules:?}"
    );
    // The live event is stored too.
    let (_, list) = request("GET", &format!("{api}/api/alerts"), None, None);
    assert!(list["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["event_id"] == "b3"));
    eprintln!("dashboard screenshot: {}", shot.display());
}
