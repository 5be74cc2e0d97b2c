#!/usr/bin/env bash
# Build the .deb in one command. Installs its own tools when missing (as root: Debian
# packages; always: cargo-deb into ~/.cargo). Prints the package path as its last line.
#   packaging/build-deb.sh [--deb-version 0.1.0-2]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then cache=/var/cache/fhir-edge; else cache="${XDG_CACHE_HOME:-$HOME/.cache}/fhir-edge"; fi
mkdir -p "$cache"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

missing=()
for pkg in help2man lintian dpkg-dev gzip; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    else
        echo "build-deb.sh: please install: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi
if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb.sh: installing cargo-deb" >&2
    cargo install cargo-deb --locked --version 3.8.0 >&2
fi

# The installed daemon: without the lab (simulator, fault-injecting endpoint, embedded
# model; see ARCHITECTURE.md).
cargo build --release --locked -p fhir-edge --no-default-features >&2
bin="$CARGO_TARGET_DIR/release/fhir-edge"
mkdir -p packaging/generated
help2man --no-info --name "explainable alerts on FHIR AuditEvent record access" \
    --version-string "$("$bin" --version | cut -d' ' -f2)" "$bin" > packaging/generated/fhir-edge.1
gzip -9nf packaging/generated/fhir-edge.1

deb=$(cargo deb --no-build --strip --locked "$@" | tail -n 1)
[ -f "$deb" ] || { echo "build-deb.sh: cargo deb did not produce a package" >&2; exit 1; }
# Errors fail the build; warnings are listed (justified ones are overridden in debian/).
lintian --fail-on error --tag-display-limit 0 "$deb" >&2
echo "$deb"
