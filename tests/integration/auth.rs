//! Authentication and TLS against the embedded endpoint acting as a protected server, with
//! the real binary logging at `trace`; afterwards no secret may appear in its logs:
//! - bearer token from a file, rotated on the server and in the file (401 → re-read once);
//! - HTTP basic;
//! - SMART Backend Services with RS384 and ES384 keys (made by `openssl` for the test):
//!   tokens cached until shortly before expiry, a revoked token refreshed once;
//! - TLS through a `socat` terminator with a private CA: trusted with `ca_file`, refused
//!   without it.
//!
//! Also the API token: wrong and right tokens, and neither appears in the logs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fhir_edge_lab::server::Access;

use crate::common::*;
use crate::pipeline::reqwest::get;

const BIN: &str = env!("CARGO_BIN_EXE_fhir-edge");
const T: Duration = Duration::from_secs(60);

fn tool(name: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("REQUIRE_REAL_FHIR_SERVER").as_deref() == Ok("1") {
        panic!("{name} is needed for the auth/TLS tests (apt-get install {name})");
    }
    ok
}

fn sh(cmd: &str, dir: &Path) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Daemon {
    child: Child,
    log: PathBuf,
    state: PathBuf,
}

impl Daemon {
    /// The binary with `[fhir]` settings `fhir_extra` (TOML lines after base_url).
    fn start(dir: &Path, base_url: &str, fhir_extra: &str, api_extra: &str) -> Daemon {
        let state = dir.join("state");
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "[fhir]\nbase_url = \"{base_url}\"\ntimeout_secs = 5\n{fhir_extra}\n\
                 [poller]\ninterval_secs = 1\npage_size = 50\ninitial_lookback_secs = 604800\nmax_backoff_secs = 1\n\
                 [detector]\nmodel_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n{api_extra}\n[state]\ndir = \"{}\"\n",
                tiny_model().display(),
                state.display()
            ),
        )
        .unwrap();
        let log = dir.join("daemon.log");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .env_remove("NOTIFY_SOCKET")
            .env("FHIR_EDGE_LOG", "trace")
            .env("CREDENTIALS_DIRECTORY", dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log, state }
    }

    fn scored(&self) -> u64 {
        status(&self.state).events_scored
    }

    fn wait_scored(&self, n: u64) {
        wait_until(T, &format!("{n} events scored"), || self.scored() >= n);
        assert_eq!(self.scored(), n);
    }

    fn api(&self) -> String {
        let mut addr = None;
        wait_until(T, "the API address in the log", || {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            addr = text.lines().find_map(|l| {
                let i = l.find("api=")?;
                let rest = &l[i + 4..];
                Some(
                    rest.split_whitespace()
                        .next()?
                        .trim_matches('"')
                        .to_string(),
                )
            });
            addr.is_some()
        });
        format!("http://{}", addr.unwrap())
    }

    /// Stop and return the whole log.
    fn stop(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Daemon {
    /// A failed assertion must not leave the daemon running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// No secret (nor any JWT: `eyJ` starts every base64url JSON header) in the log.
fn assert_no_secrets(log: &str, secrets: &[&str]) {
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(
            !log.contains(s),
            "secret {:?}… leaked into the log",
            &s[..s.len().min(6)]
        );
    }
    assert!(!log.contains("eyJ"), "a JWT leaked into the log");
    assert!(
        log.len() > 2_000,
        "the trace log is substantial ({} bytes)",
        log.len()
    );
}

#[test]
fn bearer_token_rotates_and_basic_auth_works_and_neither_is_logged() {
    let s = seeded_server(120, "bearer", 71, chrono::Duration::hours(1), 1);
    s.store.set_access(Access::Bearer("tok-A-5f1c2e".into()));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fhir-token"), "tok-A-5f1c2e\n").unwrap();
    std::fs::write(dir.path().join("api-token"), "API-SECRET-4f9d1a\n").unwrap();
    let d = Daemon::start(
        dir.path(),
        &s.base_url,
        "[fhir.auth]\nkind = \"bearer\"\ntoken_file = \"fhir-token\"",
        "token_file = \"api-token\"",
    );
    d.wait_scored(120);
    // The API: a wrong token is refused, the right one works.
    let api = d.api();
    assert_eq!(
        get(&format!("{api}/api/stats"), Some("API-SECRET-wrong")).0,
        401
    );
    assert_eq!(
        get(&format!("{api}/api/stats"), Some("API-SECRET-4f9d1a")).0,
        200
    );
    // Rotation: the server moves to a new token, the file follows; one 401 re-reads it.
    std::fs::write(dir.path().join("fhir-token"), "tok-B-77aa01\n").unwrap();
    s.store.set_access(Access::Bearer("tok-B-77aa01".into()));
    arrive(&s, 30, "after-rotation", 72);
    d.wait_scored(150);
    assert!(s.store.refused() >= 1, "the old token was refused once");
    let log = d.stop();
    assert_no_secrets(&log, &["tok-A-5f1c2e", "tok-B-77aa01", "API-SECRET-4f9d1a"]);

    // Basic.
    let s = seeded_server(60, "basic", 73, chrono::Duration::hours(1), 1);
    s.store.set_access(Access::Basic {
        user: "svc-audit".into(),
        password: "BASIC-PASS-9c3e7b".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fhir-password"), "BASIC-PASS-9c3e7b\n").unwrap();
    let d = Daemon::start(
        dir.path(),
        &s.base_url,
        "[fhir.auth]\nkind = \"basic\"\nusername = \"svc-audit\"\npassword_file = \"fhir-password\"",
        "",
    );
    d.wait_scored(60);
    let log = d.stop();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode("svc-audit:BASIC-PASS-9c3e7b");
    assert_no_secrets(&log, &["BASIC-PASS-9c3e7b", &b64]);
}

fn smart_round(alg: &str, genpkey: &str) {
    let s = seeded_server(
        80,
        &format!("smart-{alg}"),
        74,
        chrono::Duration::hours(1),
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    sh(
        &format!("openssl genpkey {genpkey} -out key.pem 2>/dev/null && openssl pkey -in key.pem -pubout -out pub.pem"),
        dir.path(),
    );
    let key_pem = std::fs::read_to_string(dir.path().join("key.pem")).unwrap();
    s.store.set_access(Access::Smart {
        client_id: "fhir-edge-test".into(),
        public_key_pem: std::fs::read_to_string(dir.path().join("pub.pem")).unwrap(),
        algorithm: alg.into(),
        lifetime_secs: 4,
    });
    let d = Daemon::start(
        dir.path(),
        &s.base_url,
        &format!(
            "[fhir.auth]\nkind = \"smart-backend\"\ntoken_url = \"{}/token\"\nclient_id = \"fhir-edge-test\"\n\
             private_key_file = \"key.pem\"\nalgorithm = \"{alg}\"\nscope = \"system/AuditEvent.read\"",
            s.base_url
        ),
        "",
    );
    d.wait_scored(80);
    // Polls every second; a 4 s token is reused until shortly before expiry.
    std::thread::sleep(Duration::from_secs(6));
    let requests = s.store.token_requests();
    assert!(
        (2..=4).contains(&requests),
        "{alg}: tokens cached, then renewed: {requests} token requests in ~8 s of 1 s polls"
    );
    // Revoked server-side: one 401, one fresh token, and polling goes on.
    s.store.revoke_tokens();
    arrive(&s, 20, &format!("smart-late-{alg}"), 75);
    d.wait_scored(100);
    assert!(s.store.refused() >= 1);
    let log = d.stop();
    let issued = s.store.issued_tokens();
    let key_body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let mut secrets: Vec<&str> = issued.iter().map(String::as_str).collect();
    secrets.extend(key_body);
    assert_no_secrets(&log, &secrets);
}

#[test]
fn smart_backend_services_rs384_and_es384_cache_refresh_and_are_not_logged() {
    if !tool("openssl") {
        eprintln!("SKIP: no openssl");
        return;
    }
    smart_round("RS384", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048");
    smart_round("ES384", "-algorithm EC -pkeyopt ec_paramgen_curve:P-384");
}

#[test]
fn tls_with_a_private_ca_needs_ca_file() {
    if !tool("openssl") || !tool("socat") {
        eprintln!("SKIP: no openssl or socat");
        return;
    }
    let s = seeded_server(50, "tls", 76, chrono::Duration::hours(1), 1);
    let dir = tempfile::tempdir().unwrap();
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=fhir-edge-test-ca 2>/dev/null && \
         openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null && \
         printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext && \
         openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile san.ext 2>/dev/null && \
         cat srv.pem srv.key > srv-bundle.pem",
        dir.path(),
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut socat = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},verify=0",
            dir.path().join("srv-bundle.pem").display()
        ))
        .arg(format!("TCP:{}", s.addr))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(T, "socat listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let https = format!("https://127.0.0.1:{port}/fhir");

    // Without the CA: refused, with a clear error kind; nothing scored.
    let no_ca = tempfile::tempdir().unwrap();
    let d = Daemon::start(no_ca.path(), &https, "", "");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(d.scored(), 0);
    let log = d.stop();
    assert!(
        log.lines()
            .any(|l| l.contains("certificate") || l.contains("UnknownIssuer")),
        "the log says the certificate is not trusted"
    );

    // With ca_file: every event.
    let d = Daemon::start(
        dir.path(),
        &https,
        &format!("ca_file = \"{}\"", dir.path().join("ca.pem").display()),
        "",
    );
    d.wait_scored(50);
    d.stop();
    let _ = socat.kill();
    let _ = socat.wait();
}
