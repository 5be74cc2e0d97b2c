#!/usr/bin/env bash
# End-to-end test of the package in a booted systemd: Debian 12 with systemd as PID 1
# under systemd-nspawn. Builds two packages (the same build as versions 1 and 2), boots a
# container from a cached rootfs (/var/cache/fhir-edge, keyed by this script's prep step),
# and runs packaging/e2e-inside.sh in it. Prints "SKIP systemd e2e: <reason>" when this
# machine cannot boot a container — never a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
skip() { echo "SKIP systemd e2e: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (systemd-nspawn, debootstrap)"

cache=/var/cache/fhir-edge
mkdir -p "$cache"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
need=()
for pkg in systemd systemd-container debootstrap zstd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Static checks of the unit, on the host.
# --threshold is the exposure score ×10 (2.0 "OK" → 20).
out=$(systemd-analyze security --offline=yes --threshold=20 systemd/fhir-edge.service 2>&1) || {
    echo "$out" | tail -n 30; echo "FAIL: systemd-analyze security rates the unit above 2.0"; exit 1; }
echo "$out" | grep -E "Overall exposure level" || true

# Packages: version 1 and version 2 of the same build (for the upgrade test). cargo-deb
# removes older packages from its output folder, so each is copied away at once.
work=$(mktemp -d)
# The FHIR server inside the container is the lab's simulated endpoint, from a development
# build: the package's own binary has no lab commands (checked inside).
cargo build --release --locked >&2
cp "$CARGO_TARGET_DIR/release/fhir-edge" "$work/fhir-edge-lab"
v1=$(packaging/build-deb.sh | tail -n 1)
[ -f "$v1" ] && cp "$v1" "$work/v1.deb" || { echo "FAIL: package not built"; exit 1; }
v2=$(cargo deb --no-build --strip --locked --deb-version 0.1.0-2 2>/dev/null | tail -n 1)
[ -f "$v2" ] && cp "$v2" "$work/v2.deb" || { echo "FAIL: upgrade package not built"; exit 1; }

# Cached Debian 12 rootfs with systemd.
prep_hash=$(sed -n '/^# PREP-BEGIN/,/^# PREP-END/p' "$0" | sha256sum | cut -c1-16)
tarball="$cache/rootfs-bookworm-$prep_hash.tar.zst"
if [ ! -f "$tarball" ]; then
    echo "e2e: bootstrapping a Debian 12 rootfs (a few minutes, cached in $tarball)"
    R=$(mktemp -d)
    # The mirror this machine's own apt uses.
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
# PREP-BEGIN
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps,adduser,jq,sqlite3,ca-certificates \
        bookworm "$R" "$mirror" >/dev/null
    rm -f "$R"/var/cache/apt/archives/*.deb
    chmod 0755 "$R"
    echo fhir-edge-e2e > "$R/etc/hostname"
# PREP-END
    tar --numeric-owner -C "$R" -cf - . | zstd -q -T0 -3 -o "$tarball.tmp"
    mv "$tarball.tmp" "$tarball"
    rm -rf "$R"
fi

R=$(mktemp -d /var/tmp/fhir-edge-e2e.XXXXXX)
cleanup() {
    [ -n "${NS:-}" ] && kill -TERM "$NS" 2>/dev/null && wait "$NS" 2>/dev/null || true
    rm -rf /run/systemd/nspawn/propagate/fhir-edge-e2e "$R" "$work"
}
trap cleanup EXIT
zstd -dc "$tarball" | tar --numeric-owner -C "$R" -xf -
chmod 0755 "$R"   # mktemp made it 0700: the service user must be able to traverse /
cp packaging/e2e-inside.sh "$work/"

systemd-nspawn -q -D "$R" -b --register=no --keep-unit --private-network --console=pipe \
    -M fhir-edge-e2e --bind-ro="$work:/mnt/e2e" </dev/null >"$work/boot.log" 2>&1 &
NS=$!
# The container's PID 1 is nspawn's child; an intermediate child may show up first, so the
# leader is looked up again on every try until systemd answers on its private socket.
IN() { nsenter -t "$leader" -m -u -i -n -p -C -r -w "$@"; }
leader=""
booted=""
for _ in $(seq 1 600); do
    kill -0 "$NS" 2>/dev/null || skip "systemd-nspawn exited: $(tail -n 5 "$work/boot.log" | tr '\n' ' ')"
    leader=$( (ps -o pid= --ppid "$NS" || true) | tr -d ' ' | head -n1)
    if [ -n "$leader" ] && IN test -S /run/systemd/private 2>/dev/null; then
        booted=1
        break
    fi
    sleep 0.1
done
[ -n "$booted" ] || skip "systemd in the container did not answer within 60 s: $(tail -n 5 "$work/boot.log" | tr '\n' ' ')"
state=$(IN timeout 15 systemctl is-system-running --wait 2>/dev/null || true)
echo "e2e: container booted (system ${state:-starting})"
IN /bin/bash /mnt/e2e/e2e-inside.sh
