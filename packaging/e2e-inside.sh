#!/bin/bash
# Runs inside the booted test container (see e2e-systemd.sh). Every check that fails
# stops the test with "FAIL: ...".
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
fail() { echo "FAIL: $*"; fhir-edge status 2>&1 || true; journalctl -u fhir-edge --no-pager -n 30 || true; exit 1; }
ok() { echo "ok: $*"; }
prop() { systemctl show -p "$1" --value fhir-edge.service; }
wait_for() { # seconds, description, condition (a shell expression, re-evaluated each try)
    local t=$1 what=$2 cond=$3
    for _ in $(seq 1 $((t * 5))); do eval "$cond" >/dev/null 2>&1 && return 0; sleep 0.2; done
    fail "timed out after ${t}s waiting for $what"
}
scored() { fhir-edge status --json | jq -r .events_scored; }
alerts() { fhir-edge status --json | jq -r .alerts; }
journal_alerts() { journalctl -u fhir-edge -o json --no-pager | jq -s '[.[] | select(.FHIR_EDGE_ALERT_ID != null)] | length'; }
fhir_server() { # URL file, then bench-server arguments: a simulated FHIR server, its URL in the file
    local out=$1; shift
    (sleep infinity | /mnt/e2e/fhir-edge-lab bench-server "$@" > "$out" 2>"$out.log") &
    wait_for 120 "the FHIR server ($*)" "[ -s $out ]"
}
unit_dropin() { # a [Service] setting for the unit, in place of any earlier one
    mkdir -p /etc/systemd/system/fhir-edge.service.d
    printf '[Service]\n%s\n' "$1" > /etc/systemd/system/fhir-edge.service.d/e2e.conf
    systemctl daemon-reload
}

# 1. Install: nothing enabled or started, config readable by the service only.
dpkg -i /mnt/e2e/v1.deb >/dev/null
[ "$(systemctl is-enabled fhir-edge.service || true)" = "disabled" ] || fail "unit enabled at install"
[ "$(prop ActiveState)" = "inactive" ] || fail "unit started at install"
[ "$(stat -c '%U:%G %a' /etc/fhir-edge/config.toml)" = "root:fhir-edge 640" ] || fail "config perms $(stat -c '%U:%G %a' /etc/fhir-edge/config.toml)"
out=$(systemd-analyze verify /lib/systemd/system/fhir-edge.service 2>&1) || true
[ -z "$out" ] || fail "systemd-analyze verify printed: $out"
ok "installed; unit verified; not enabled, not started; config root:fhir-edge 0640"

# 2. The installed binary carries no lab commands; a FHIR server inside the container comes
# from a development build's simulated endpoint.
if fhir-edge bench-server --help >/dev/null 2>&1 || fhir-edge simulate --help >/dev/null 2>&1; then
    fail "the installed binary has the lab's commands (simulate, bench-server)"
fi
ok "installed binary has no lab commands"
fhir_server /tmp/fhir-url --events 3000
url=$(cat /tmp/fhir-url)
sed -i "s|^base_url = .*|base_url = \"$url\"|; /^\[poller\]/,/^\[/ s|^interval_secs = .*|interval_secs = 2|; s|^initial_lookback_secs = .*|initial_lookback_secs = 172800|" /etc/fhir-edge/config.toml
unit_dropin WatchdogSec=5s

# 3. Start: activating until READY=1, then active (running) with a status text.
systemctl start fhir-edge.service || fail "systemctl start failed"
[ "$(prop Type)" = "notify" ] || fail "Type is $(prop Type)"
[ "$(prop ActiveState)/$(prop SubState)" = "active/running" ] || fail "state $(prop ActiveState)/$(prop SubState)"
start=$(prop ExecMainStartTimestampMonotonic); active=$(prop ActiveEnterTimestampMonotonic)
[ "$active" -gt "$start" ] || fail "unit was active before READY ($active <= $start)"
ok "activating for $(( (active - start) / 1000 )) ms until READY=1, then active (running)"
wait_for 120 "3000 events scored" '[ "$(scored)" = 3000 ]'
# A fresh install runs the shipped model, trained on no site: it learns, and says so.
wait_for 15 "the learning note (now: $(prop StatusText))" '[[ "$(prop StatusText)" == *"LEARNING: learning this site"* ]]'
# grep reads to the end (not -q): under pipefail, a grep that quits at the first match
# leaves status killed by SIGPIPE mid-output, and the pipeline failing by timing alone.
fhir-edge status | grep "^mode            learning this site's normal since" >/dev/null || fail "status does not say it is learning"
fhir-edge status | grep "^queue budget    fitted to this site when its model is trained" >/dev/null || fail "status gives the shipped model's queue budget as the site's"
[ "$(alerts)" = 0 ] || fail "$(alerts) alerts while learning on the site's ordinary traffic"
ok "learning: said in StatusText and status; no alerts on the baseline traffic"
# A failed-login burst needs no baseline: it raises an alert while learning.
fhir-edge send-test-event --failed-logins 6 >/dev/null || fail "send-test-event --failed-logins"
total=3006
wait_for 60 "$total events scored" '[ "$(scored)" = $total ]'
wait_for 30 "the failed-login alert" '[ "$(alerts)" -gt 0 ]'
# STATUS= is refreshed every watchdog interval.
wait_for 15 "StatusText with live counters (now: $(prop StatusText))" '[[ "$(prop StatusText)" == *"$total events scored"* ]]'
ok "StatusText: $(prop StatusText)"

# 4. Structured journal fields and alert records.
journalctl -u fhir-edge -o json --no-pager > /tmp/journal.json
jq -e -s 'any(.[]; .ACTOR == "poller" and .MESSAGE == "poll complete" and .DURATION_MS != null)' /tmp/journal.json >/dev/null || fail "no structured poller record"
jq -e -s 'any(.[]; .FHIR_EDGE_ALERT_ID != null and .FHIR_EDGE_SEVERITY != null and .FHIR_EDGE_EVENT_ID != null and (.PRIORITY | tonumber) <= 4)' /tmp/journal.json >/dev/null || fail "no alert record at warning or above"
[ "$(journalctl -u fhir-edge -p warning -o json --no-pager | jq -s '[.[] | select(.FHIR_EDGE_ALERT_ID != null)] | length')" -gt 0 ] || fail "journalctl -p warning lists no alert"
n_alerts=$(alerts); n_journal=$(journal_alerts)
[ "$n_alerts" -gt 0 ] && [ "$n_alerts" = "$n_journal" ] || fail "alerts in store $n_alerts, in journal $n_journal"
ok "journal: structured fields; $n_journal alert records = $n_alerts alerts stored"

# 5. A hung process: SIGSTOP → the watchdog restarts it; it resumes from its cursor.
pid=$(prop MainPID); restarts=$(prop NRestarts)
kill -STOP "$pid"
wait_for 60 "a watchdog restart" '[ "$(prop NRestarts)" -gt "$restarts" ]'
wait_for 30 "the restarted daemon" '[ "$(prop ActiveState)" = active ]'
[ "$(prop MainPID)" != "$pid" ] || fail "same MainPID after restart"
# (grep reads the whole journal: with `grep -q` and pipefail, journalctl's SIGPIPE on a long
# journal would count as a failure; the journal may also lag the restart a little.)
wait_for 10 "the watchdog timeout in the journal" \
    '[ "$(journalctl -u fhir-edge --no-pager | grep -c "Watchdog timeout")" -gt 0 ]'
before=$(fhir-edge status --json | jq -r .last_poll)
wait_for 30 "a poll after the restart" '[ "$(fhir-edge status --json | jq -r .last_poll)" != "$before" ]'
sleep 3
[ "$(scored)" = $total ] || fail "events scored changed after restart: $(scored)"
[ "$(alerts)" = "$n_alerts" ] && [ "$(journal_alerts)" = "$n_journal" ] || fail "re-alerted after restart: $(alerts) stored, $(journal_alerts) journaled"
ok "SIGSTOP → watchdog restart (NRestarts $restarts → $(prop NRestarts)); resumed without re-alerting"

# 6. Stop ends cleanly.
systemctl stop fhir-edge.service
[ "$(prop ActiveState)" = "inactive" ] && [ "$(prop Result)" = "success" ] || fail "stop: $(prop ActiveState) $(prop Result)"
ok "systemctl stop: inactive, result success"

# 7. Upgrade over a running service: restarted, state and modified conffile kept.
systemctl start fhir-edge.service || fail "systemctl start failed"
pid=$(prop MainPID)
dpkg -i --force-confold /mnt/e2e/v2.deb >/dev/null
[ "$(dpkg-query -W -f='${Version}' fhir-edge)" = "0.1.0-2" ] || fail "version after upgrade"
wait_for 30 "active after upgrade" '[ "$(prop ActiveState)" = active ]'
[ "$(prop MainPID)" != "$pid" ] || fail "service not restarted by the upgrade"
grep -q "base_url = \"$url\"" /etc/fhir-edge/config.toml || fail "modified conffile lost"
[ "$(scored)" = $total ] && [ "$(alerts)" = "$n_alerts" ] || fail "state lost in upgrade"
ok "upgrade 0.1.0-1 → 0.1.0-2: restarted, config and state kept"

# 8. Purge leaves nothing.
dpkg --purge fhir-edge >/dev/null
rm -rf /etc/systemd/system/fhir-edge.service.d
systemctl daemon-reload
[ "$(systemctl show -p LoadState --value fhir-edge.service)" = "not-found" ] || fail "unit still known"
[ ! -e /etc/fhir-edge ] && [ ! -e /var/lib/fhir-edge ] && [ ! -e /usr/bin/fhir-edge ] || fail "files left after purge"
! getent passwd fhir-edge >/dev/null || fail "user left after purge"
ok "purge: unit, config, state and user gone"

# 9. A first start on a server that already holds the site's history: trained from its
# first learn_days before READY (the start timeout cut to 3 s: the daemon extends it
# while it trains), then warm, not learning, and the rest of the history reviewed. Ten
# staff, 150,000 events over some 220 days of recorded time (copies of a 14-day hospital);
# 180 learning days are about 120,000 events, longer to train than the start timeout
# allows without the extension.
dpkg -i /mnt/e2e/v1.deb >/dev/null
fhir_server /tmp/fhir-url2 --events 150000 --staff 10 --patients 200
url=$(cat /tmp/fhir-url2)
sed -i "s|^base_url = .*|base_url = \"$url\"|; s|^learn_days = .*|learn_days = 180|" /etc/fhir-edge/config.toml
unit_dropin TimeoutStartSec=3s
systemctl start fhir-edge.service || fail "systemctl start failed (first start with history)"
start=$(prop ExecMainStartTimestampMonotonic); active=$(prop ActiveEnterTimestampMonotonic)
journalctl -u fhir-edge --no-pager | grep "trained the site's model from the server's history: starting warm from it" >/dev/null || fail "the journal does not say it trained from the history"
[[ "$(prop StatusText)" != *"LEARNING"* ]] || fail "learning after training from the history: $(prop StatusText)"
fhir-edge status | grep "^mode            learning" >/dev/null && fail "status says learning after training from the history"
[ -e /var/lib/fhir-edge/model/baselines.json ] || fail "no site model in /var/lib/fhir-edge/model"
# The history after the learning days is reviewed: scored by the site's model.
wait_for 60 "the history after the learning days scored" '[ "$(scored)" -ge 20000 ]'
ok "first start on 150,000 events of history: trained the site's model in $(( (active - start) / 1000 )) ms before READY (TimeoutStartSec=3s, extended), started warm, reviewed the rest ($(scored) events scored)"
dpkg --purge fhir-edge >/dev/null
rm -rf /etc/systemd/system/fhir-edge.service.d
systemctl daemon-reload
echo "E2E PASS"
