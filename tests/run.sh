#!/usr/bin/env bash
# The one test command (README, .ci/run): unit tests and the integration suite, including
# the daemon against a real third-party FHIR server (sekmet-fhir, installed here on first
# use into a cache outside the clone). Installs missing Debian packages when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
    cache=/var/cache/fhir-edge
else
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/fhir-edge"
fi
mkdir -p "$cache"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

# System packages: a C/C++ toolchain for the bundled SQLite and crypto, Python for the
# real FHIR server, Chromium and Node.js for the dashboard browser test, openssl and
# socat for the auth and TLS tests (test keys, a TLS terminator in front of the server),
# nats-server for the export tests (Debian's, with JetStream).
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
for pkg in gcc g++ make python3-venv ca-certificates chromium openssl socat nats-server; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "tests/run.sh: installing ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "tests/run.sh: please install: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi
command -v cargo >/dev/null || { echo "tests/run.sh: Rust (cargo ≥ 1.91) is needed: https://rustup.rs" >&2; exit 1; }

# The real FHIR server, pinned (tests/sekmet-constraints.txt).
venv="$cache/sekmet-0.1.1"
if [ ! -x "$venv/bin/sekmet" ]; then
    echo "tests/run.sh: installing sekmet-fhir 0.1.1 into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q sekmet-fhir==0.1.1 -c tests/sekmet-constraints.txt
fi
export SEKMET_EXE="$venv/bin/sekmet"
export REQUIRE_REAL_FHIR_SERVER=1

# The browser driver for the dashboard test (playwright-core, pinned in package-lock.json;
# it drives Debian's /usr/bin/chromium and downloads no browser of its own).
if [ ! -d tests/browser/node_modules/playwright-core ]; then
    echo "tests/run.sh: installing playwright-core into tests/browser/node_modules" >&2
    (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi
export REQUIRE_BROWSER=1
# The export tests start their own nats-server (the package's service is not used).
export REQUIRE_NATS=1
# As root, the local-fault test mounts a small tmpfs to fill up and make read-only.
if [ "$(id -u)" = 0 ]; then
    export REQUIRE_LOCAL_FAULTS=1
fi

# Formatting and lints first (a cold clippy check adds a few minutes to CI). rustfmt and
# clippy come with rustup's default profile; they are added if a minimal one left them out.
for tool in fmt:rustfmt clippy:clippy; do
    cargo "${tool%%:*}" --version >/dev/null 2>&1 && continue
    command -v rustup >/dev/null || {
        echo "tests/run.sh: cargo ${tool%%:*} is needed (rustup component add ${tool#*:})" >&2
        exit 1
    }
    rustup component add "${tool#*:}"
done
cargo fmt --check
cargo clippy --release --locked --all-targets -- -D warnings
# The installed daemon is built without the lab (packaging/build-deb.sh): it must lint alone.
cargo clippy --release --locked -p fhir-edge --no-default-features -- -D warnings
# Dependencies run one way: crates, and modules inside each crate (ARCHITECTURE.md).
python3 tests/check-structure.py
# The crates' docs build without a warning (a broken link is a reader's dead end).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --workspace --quiet

cargo test --release --locked "$@"

# Coverage-guided fuzzing of the parsers and the detector: a short run per target.
if [ $# -eq 0 ]; then
    tests/fuzz/run.sh "${FUZZ_SECS:-40}"
fi

# The package in a booted systemd (Debian 12 under systemd-nspawn): install, READY,
# journal, watchdog restart, upgrade, purge. Root only; says SKIP (never pass) when the
# machine cannot boot a container.
if [ $# -eq 0 ]; then
    packaging/e2e-systemd.sh
fi
