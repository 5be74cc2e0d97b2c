#!/usr/bin/env bash
# Fuzz every target for SECS seconds each (default 40), seeded from the AuditEvent fixtures.
# Any crash fails the script; libFuzzer writes the input to tests/fuzz/artifacts/<target>/,
# to be turned into a regression test. Needs cargo-fuzz (installed if missing).
# The targets are built on stable Rust with RUSTC_BOOTSTRAP (no nightly toolchain here), and
# without a sanitizer (safe Rust; libFuzzer's coverage guidance still applies).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-40}"
cache="${FUZZ_CACHE:-/var/cache/fhir-edge}"
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$cache/fuzz-target"
seeds="$cache/fuzz-seeds"
rm -rf "$seeds" && mkdir -p "$seeds"
find tests/fixtures/fhir-r4 -name '*.json' -exec cp {} "$seeds/" \;
cargo fuzz build --fuzz-dir tests/fuzz -O --sanitizer none
for t in search_page notify_body detector; do
    corpus="$cache/fuzz-corpus/$t"
    mkdir -p "$corpus"
    log="$cache/fuzz-$t.log"
    echo "fuzz: $t for ${secs}s" >&2
    if ! cargo fuzz run --fuzz-dir tests/fuzz -O --sanitizer none "$t" "$corpus" "$seeds" -- \
        -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -E "panicked|ERROR|SUMMARY|Test unit written|^\s+at " "$log" | head -20 >&2
        echo "fuzz: $t FAILED (full log: $log)" >&2
        exit 1
    fi
    grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$log" | sed "s/^/fuzz: $t /" >&2
done
echo "fuzz: all targets ran ${secs}s each without a crash" >&2
