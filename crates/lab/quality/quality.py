#!/usr/bin/env python3
"""Detection-quality benchmark for fhir-edge.

For each run: simulate a hospital (35 days; anomalies injected from day 28 on), train the
autoencoder on the 28 clean baseline days, score all 35 days in order with `fhir-edge
score` (context warms up on the baseline), and evaluate on the last 7 days against the
labels. Two peers run on the very same causal feature rows: an IsolationForest and a plain
MLP autoencoder (scikit-learn, reconstruction error), both fitted on the baseline days. Reports ROC-AUC, PR-AUC, precision@k (k = true anomalies), recall at 1% FPR,
overall and per anomaly type, for every run (seed, hospital size, activity and anomaly
rates vary).

Also reports incident recall: the share of injected incidents with at least one event
above the score that 1% (and 0.1%) of the normal test events exceed; and the alert budget
in cases at the default threshold — cases a day per 100 staff without an injected event,
the share of incidents in a queued case, and per type the incidents no queued case holds
(of them, those in a case still waiting for corroboration).

`--train-days N` trains on N days instead of 28 (the 7 test days follow them);
`--anomalies-from-day D` injects incidents from day D on, so that training learns from a
history that holds them, as a site's does; `--timezone TZ` puts the site in a time zone.

usage: crates/lab/quality/quality.py --bin target/release/fhir-edge [--out DIR] [--quick] [--runs A,C]
       [--no-watch-list] [--seed-offset N] [--sim-bin OTHER_BUILD] [--style STYLE] [--shape balp|hapi|medplum|firely|aidbox]
       [--train-days N] [--anomalies-from-day D] [--timezone TZ]
"""
import argparse, collections, csv, json, os, subprocess, sys, time
import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler
from sklearn.metrics import roc_auc_score, average_precision_score

START_MS = 1767571200000  # 2026-01-05T00:00:00Z, the simulator's day 0
DAY_MS = 86_400_000

RUNS = [
    dict(name="A", seed=1, users=150, patients=3000, incidents=9, activity=1.0),
    dict(name="B", seed=2, users=80, patients=1500, incidents=6, activity=1.0),
    dict(name="C", seed=3, users=300, patients=6000, incidents=15, activity=1.0),
    dict(name="D", seed=4, users=150, patients=3000, incidents=9, activity=1.5),
    dict(name="E", seed=5, users=120, patients=2500, incidents=4, activity=0.7),
]


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def recall_at_fpr(neg, pos, fpr=0.01):
    if len(pos) == 0:
        return float("nan")
    thr = np.quantile(neg, 1 - fpr)
    return float(np.mean(pos > thr))


def incident_recall(neg, s, incidents, fpr):
    """Share of incidents with at least one event above the (1 - fpr) quantile of normals."""
    thr = np.quantile(neg, 1 - fpr)
    ids = sorted({i for i in incidents if i != ""})
    if not ids:
        return float("nan")
    hit = {i: False for i in ids}
    for i, v in zip(incidents, s):
        if i != "" and v > thr:
            hit[i] = True
    return float(np.mean(list(hit.values())))


def metrics(y, s, types, kinds, incidents=None):
    neg = s[y == 0]
    out = {
        "roc_auc": roc_auc_score(y, s),
        "pr_auc": average_precision_score(y, s),
        "recall_1pct": recall_at_fpr(neg, s[y == 1]),
    }
    k = int(y.sum())
    top = np.argsort(-s)[:k]
    out["precision_at_k"] = float(y[top].mean()) if k else float("nan")
    out["per_type"] = per_type(neg, s, types, kinds)
    if incidents is not None:
        out["incident_recall_1pct"] = incident_recall(neg, s, incidents, 0.01)
        out["incident_recall_01pct"] = incident_recall(neg, s, incidents, 0.001)
    return out


def per_type(neg, s, types, kinds):
    per = {}
    for kind in kinds:
        m = types == kind
        if m.sum() == 0:
            continue
        yy = np.concatenate([np.zeros(len(neg)), np.ones(m.sum())])
        ss = np.concatenate([neg, s[m]])
        per[kind] = {"n": int(m.sum()), "roc_auc": roc_auc_score(yy, ss), "recall_1pct": recall_at_fpr(neg, s[m])}
    return per


def watched_split(ev, labels, watch):
    """VIP snooping split by whether the site's watch list names the record."""
    sub = {}
    with open(ev) as f:
        for line in f:
            e = json.loads(line)
            if labels.get(e["id"]) != "vip_snooping":
                continue
            p = next((x["what"].get("reference") for x in e.get("entity", []) if "what" in x), None)
            sub[e["id"]] = "vip_snooping, watched" if p in watch else "vip_snooping, not watched"
    return sub


def one(bin_, out, r, days=35, from_day=28, epochs=20, use_watch_list=True, sim_bin=None, style="classic",
        shape="balp", keep_department=False, context=False, max_patients=None, queue_budget=None,
        anomalies_from_day=None, timezone=None):
    d = os.path.join(out, r["name"])
    # The site's time zone: its shifts (simulate), and the hours train and score read.
    tz_args = ["--timezone", timezone] if timezone else []
    os.makedirs(d, exist_ok=True)
    t0 = time.time()
    run([sim_bin or bin_, "simulate", "--days", str(days), "--seed", str(r["seed"]), "--out", d, "--users", str(r["users"]),
         "--patients", str(r["patients"]), "--anomalies-from-day", str(from_day if anomalies_from_day is None else anomalies_from_day),
         "--incidents-per-day", str(r["incidents"])] + (["--activity", str(r["activity"])] if r["activity"] != 1.0 else [])
        + (["--style", style] if style != "classic" else [])
        + (["--shape", shape] if shape != "balp" else [])
        + (["--keep-department"] if keep_department else []) + tz_args)
    cutoff = START_MS + from_day * DAY_MS
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cutoff / 1000))
    ev = os.path.join(d, "events.ndjson")
    # The simulated hospital's watch list (its known VIPs), given to train and score as a
    # site would set `detector.watch_list`; --no-watch-list leaves it out.
    wl = os.path.join(d, "watchlist.txt")
    listed = _read_watch(wl) if os.path.exists(wl) else set()
    wl_args = ["--watch-list", wl] if listed and use_watch_list else []
    # The hospital's care context (its Practitioners, Patients, Encounters, CareTeams…), given
    # to train and score as `--context` when asked.
    ctx_file = os.path.join(d, "context.ndjson")
    ctx_args = ["--context", ctx_file] if context else []
    # A patient bound below the hospital's records (train and score forget as a site beyond
    # the built-in bound would).
    if max_patients:
        ctx_args += ["--max-patients", str(max_patients)]
    # The queue budget the threshold is fitted to (train's default unless given).
    budget_args = ["--case-budget", str(queue_budget)] if queue_budget is not None else []
    run([bin_, "train", "--input", ev, "--output", os.path.join(d, "model"), "--epochs", str(epochs), "--seed", "1",
         "--until", until] + wl_args + ctx_args + budget_args + tz_args)
    run([bin_, "score", "--model", os.path.join(d, "model"), "--input", ev, "--output", os.path.join(d, "scores.csv"),
         "--features-out", os.path.join(d, "features.csv")] + wl_args + ctx_args + tz_args)
    labels, incident = {}, {}
    with open(os.path.join(d, "labels.csv")) as f:
        for row in csv.DictReader(f):
            labels[row["id"]] = row["anomaly"]
            incident[row["id"]] = row.get("incident") or ""
    ids, scores, case_of, alerted, unqueued = [], [], {}, set(), set()
    with open(os.path.join(d, "scores.csv")) as f:
        for row in csv.DictReader(f):
            ids.append(row["id"]); scores.append(float(row["score"]))
            if row.get("severity"):
                alerted.add(row["id"])
            # Only cases that reach the review queue (a watched case does not).
            if row.get("case") and row.get("case_queued", "1") == "1":
                case_of[row["id"]] = row["case"]
            elif row.get("case"):
                unqueued.add(row["id"])
    with open(os.path.join(d, "features.csv")) as f:
        ncols = len(f.readline().split(","))
    feats = np.loadtxt(os.path.join(d, "features.csv"), delimiter=",", skiprows=1, usecols=range(1, ncols), dtype=np.float64)
    rec = feats[:, 0]
    X = feats[:, 1:]
    test = rec >= cutoff
    scores = np.array(scores)
    y = np.array([1 if i in labels else 0 for i in ids])
    types = np.array([labels.get(i, "") for i in ids])
    kinds = sorted(set(labels.values()))
    inc = np.array([incident.get(i, "") for i in ids])[test]
    ae = metrics(y[test], scores[test], types[test], kinds, inc)
    rng = np.random.default_rng(0)
    train_idx = np.where(~test)[0]
    sample = rng.choice(train_idx, size=min(100_000, len(train_idx)), replace=False)
    iso = IsolationForest(n_estimators=200, random_state=0, n_jobs=1).fit(X[sample])
    iso_s = -iso.score_samples(X[test])
    base = metrics(y[test], iso_s, types[test], kinds, inc)
    # A plain MLP autoencoder on the same rows: standardized, reconstruction error.
    small = rng.choice(train_idx, size=min(50_000, len(train_idx)), replace=False)
    sc = StandardScaler().fit(X[small])
    Z = np.clip(sc.transform(X[small]), -12, 12)
    mlp = MLPRegressor(hidden_layer_sizes=(32, 8, 32), max_iter=40, random_state=0).fit(Z, Z)
    Zt = np.clip(sc.transform(X[test]), -12, 12)
    mlp_s = ((mlp.predict(Zt) - Zt) ** 2).mean(axis=1)
    peer = metrics(y[test], mlp_s, types[test], kinds, inc)
    if listed:
        split = watched_split(ev, labels, listed)
        sub = np.array([split.get(i, "") for i in ids])[test]
        for m, s in ((ae, scores[test]), (base, iso_s), (peer, mlp_s)):
            m["per_type"].update(per_type(s[y[test] == 0], s, sub, sorted(set(split.values()))))
    budget = case_budget(ids, test, labels, incident, case_of, r["users"], days - from_day, unqueued, alerted)
    care = inside_care(ev, ctx_file, labels, alerted, cutoff) if os.path.exists(ctx_file) else None
    with open(os.path.join(d, "model", "model.json")) as f:
        meta = json.load(f)
        # The fit, and per behaviour how far its threshold was raised for it.
        fitted = dict(meta["training"].get("queue_budget") or {}, raises=meta.get("raises", {}))
    return {"run": r, "style": style, "shape": shape, "context": context, "care": care, "cases": budget, "queue_budget": fitted, "events": len(ids), "test_events": int(test.sum()), "anomalies": int(y[test].sum()),
            "autoencoder": ae, "isolation_forest": base, "mlp_autoencoder": peer, "seconds": round(time.time() - t0, 1)}


def inside_care(events_path, context_path, labels, alerted, cutoff_ms):
    """Of the test days' accesses the simulator did not inject that fall inside a treatment
    relationship its context resources state (the user on the Encounter or its CareTeam, or
    working in one of its locations, between the Encounter's start and end), the share that
    raised an alert. Read from the resources, not from the detector."""
    import datetime
    ms = lambda t: int(datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000)
    dept_of, enc, team = {}, collections.defaultdict(list), {}
    with open(context_path) as f:
        for line in f:
            x = json.loads(line)
            t = x["resourceType"]
            if t == "PractitionerRole":
                dept_of[x["practitioner"]["reference"]] = {l.get("display") for l in x.get("location", [])}
            elif t == "CareTeam":
                team[(x["subject"]["reference"], x["period"]["start"])] = {m["member"]["reference"] for m in x.get("participant", [])}
            elif t == "Encounter":
                enc[x["subject"]["reference"]].append((x, ms(x["period"]["start"]), ms(x["period"]["end"])))
    inside = hit = 0
    with open(events_path) as f:
        for line in f:
            e = json.loads(line)
            if e["id"] in labels:
                continue
            t = ms(e["recorded"])
            if t < cutoff_ms:
                continue
            p = next((x["what"].get("reference") for x in e.get("entity", []) if "what" in x), None)
            u = e["agent"][0]["who"].get("reference")
            for x, s, end in enc.get(p, []):
                if not s <= t <= end:
                    continue
                who = {q["individual"]["reference"] for q in x.get("participant", [])} | team.get((p, x["period"]["start"]), set())
                where = {l["location"]["display"] for l in x.get("location", [])}
                if u in who or dept_of.get(u, set()) & where:
                    inside += 1
                    hit += e["id"] in alerted
                    break
    return {"inside_accesses": inside, "inside_alerted": hit, "inside_alert_rate": hit / max(1, inside)}


def case_budget(ids, test, labels, incident, case_of, staff, days, unqueued, alerted):
    """The alert budget at the default threshold, in cases (`score`'s case column, the
    daemon's grouping rule): cases a day per 100 staff that hold no injected event, the
    share of injected incidents with at least one event in a case, and the incidents per
    anomaly type with those no case holds: of them, those with an event in a case still
    waiting for corroboration (`unqueued`, event ids) and those with an alert in no case
    (`alerted`, event ids)."""
    in_test = {i for i, t in zip(ids, test) if t}
    cases, injected = set(), set()
    for i, c in case_of.items():
        if i in in_test:
            cases.add(c)
            if i in labels:
                injected.add(c)
    incidents = {incident[i] for i in in_test if i in labels and incident.get(i)}
    found = {incident[i] for i in in_test if i in labels and incident.get(i) and i in case_of}
    quiet = len(cases - injected)
    kind_of = {incident[i]: labels[i] for i in in_test if i in labels and incident.get(i)}
    missed = collections.Counter(kind_of[n] for n in incidents - found)
    # Of the missed incidents, those with an event in a case that did not reach the queue
    # (awaiting corroboration), and those with an alert outside any case.
    of = lambda ids_: {incident[i] for i in in_test if i in labels and incident.get(i) and i in ids_}
    held = (incidents - found) & of(unqueued)
    alerted_only = (incidents - found - held) & of(alerted)
    return {"cases": len(cases), "cases_injected": len(injected), "cases_not_injected": quiet,
            "not_injected_per_day_per_100_staff": quiet / days / (staff / 100.0),
            "incidents": len(incidents), "incidents_in_a_case": len(found) / max(1, len(incidents)),
            "incidents_by_type": dict(collections.Counter(kind_of.values())),
            "missed_by_type": dict(missed),
            "missed_in_an_unqueued_case_by_type": dict(collections.Counter(kind_of[n] for n in held)),
            "missed_alerted_outside_a_case_by_type": dict(collections.Counter(kind_of[n] for n in alerted_only))}


def _read_watch(path):
    with open(path) as f:
        return {l.strip() for l in f if l.strip() and not l.startswith("#")}


def fmt(x):
    return "—" if x != x else f"{x:.3f}"


def report(results):
    lines = ["| run | style | seed | users | patients | incidents/day | activity | test events | anomalies | detector | ROC-AUC | PR-AUC | P@k | recall@1%FPR | incidents found @1% / @0.1% |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        r = res["run"]
        for det in ("autoencoder", "mlp_autoencoder", "isolation_forest"):
            m = res.get(det)
            if m is None:
                continue
            lines.append(f"| {r['name']} | {res.get('style', 'classic')} | {r['seed']} | {r['users']} | {r['patients']} | {r['incidents']} | {r['activity']} | "
                         f"{res['test_events']} | {res['anomalies']} | {det.replace('_', ' ')} | {fmt(m['roc_auc'])} | "
                         f"{fmt(m['pr_auc'])} | {fmt(m['precision_at_k'])} | {fmt(m['recall_1pct'])} | "
                         f"{fmt(m.get('incident_recall_1pct', float('nan')))} / {fmt(m.get('incident_recall_01pct', float('nan')))} |")
    lines += ["", "The alert budget at the default threshold, in cases (the daemon's grouping rule):", "",
              "| run | cases | with an injected event | without, per day per 100 staff | incidents in a case |",
              "|---|---|---|---|---|"]
    for res in results:
        c = res.get("cases")
        if c:
            lines.append(f"| {res['run']['name']} | {c['cases']} | {c['cases_injected']} | "
                         f"{c['not_injected_per_day_per_100_staff']:.2f} | {c['incidents_in_a_case']:.3f} |")
    kinds = sorted({k for res in results for k in res.get("cases", {}).get("incidents_by_type", {})})
    if kinds:
        lines += ["", "Incidents no case holds, by type (missed of injected; of the missed, in a case still waiting "
                  "for corroboration / in no case at all):", "",
                  "| type | " + " | ".join(res["run"]["name"] for res in results) + " |",
                  "|---|" + "---|" * len(results)]
        for k in kinds:
            cells = []
            for res in results:
                c = res["cases"]
                n, m = c["incidents_by_type"].get(k, 0), c["missed_by_type"].get(k, 0)
                held = c["missed_in_an_unqueued_case_by_type"].get(k, 0)
                cells.append("—" if n == 0 else f"{m} of {n}" + (f" ({held} / {m - held})" if m else ""))
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    if any(res.get("care") for res in results):
        lines += ["", f"Accesses inside a treatment relationship the context states (not injected, test days) that raised an alert"
                  f" ({'with' if results[0].get('context') else 'without'} --context):", "",
                  "| run | inside accesses | alerted | share |", "|---|---|---|---|"]
        for res in results:
            c = res.get("care")
            if c:
                lines.append(f"| {res['run']['name']} | {c['inside_accesses']} | {c['inside_alerted']} | {100 * c['inside_alert_rate']:.3f}% |")
    kinds = sorted({k for res in results for k in res["autoencoder"]["per_type"]})
    lines += ["", "Recall at 1% FPR per anomaly type (fhir-edge / MLP autoencoder / isolation forest):", "",
              "| type | " + " | ".join(res["run"]["name"] for res in results) + " |",
              "|---|" + "---|" * len(results)]
    for k in kinds:
        cells = []
        for res in results:
            a = res["autoencoder"]["per_type"].get(k); b = res["isolation_forest"]["per_type"].get(k)
            c = res.get("mlp_autoencoder", {}).get("per_type", {}).get(k)
            mid = f"{fmt(c['recall_1pct'])} / " if c else ""
            cells.append("—" if a is None else f"{fmt(a['recall_1pct'])} / {mid}{fmt(b['recall_1pct'])} (n={a['n']})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", default="bench-out/quality")
    ap.add_argument("--quick", action="store_true", help="only run A")
    ap.add_argument("--runs", help="comma-separated run names, e.g. A,C")
    ap.add_argument("--no-watch-list", action="store_true",
                    help="do not give the simulated hospital's watch list to train and score")
    ap.add_argument("--sim-bin", help="simulate with this build instead of --bin (to judge a "
                    "detector on another simulator's hospitals)")
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="add this to every run's seed: the same hospital shapes, fresh draws "
                         "(a check that the figures do not hang on the five seeds)")
    ap.add_argument("--style", default="classic",
                    help="the simulated hospitals' style (see `fhir-edge simulate --help`): classic, "
                         "drawn (per run, from its seed) or aspects joined by commas")
    ap.add_argument("--shape", default="balp",
                    help="how the simulated server writes AuditEvents: balp, hapi, medplum, firely or aidbox "
                         "(see `fhir-edge simulate --help`)")
    ap.add_argument("--context", action="store_true",
                    help="give train and score the hospital's care context (its context.ndjson) as --context")
    ap.add_argument("--keep-department", action="store_true",
                    help="keep the user's department in every shape (a control; see `fhir-edge simulate --help`)")
    ap.add_argument("--max-patients", type=int,
                    help="forget patients at this many (train and score --max-patients): detection "
                         "at the memory bound, on a hospital whose records outnumber it")
    ap.add_argument("--case-budget", type=float,
                    help="fit the threshold to this many queued cases a day per 100 users "
                         "(train --case-budget; default: train's, 0: off)")
    ap.add_argument("--train-days", type=int, default=28,
                    help="days of history to train on before the 7 test days (default 28; the "
                         "daemon's first start learns [detector] learn_days, 14 by default)")
    ap.add_argument("--anomalies-from-day", type=int,
                    help="inject incidents from this day on (default: the first test day, 28), so "
                         "that training learns from days that hold them as a site's history does; "
                         "figures stay on the test days")
    ap.add_argument("--timezone",
                    help="the site's time zone (IANA name): the simulated shifts keep to it and "
                         "train and score read hours in it (default UTC)")
    a = ap.parse_args()
    runs = RUNS[:1] if a.quick else RUNS
    if a.runs:
        runs = [r for r in RUNS if r["name"] in a.runs.split(",")]
    runs = [dict(r, seed=r["seed"] + a.seed_offset) for r in runs]
    results = []
    for r in runs:
        res = one(a.bin, a.out, r, use_watch_list=not a.no_watch_list, sim_bin=a.sim_bin, style=a.style,
                  shape=a.shape, keep_department=a.keep_department, context=a.context,
                  max_patients=a.max_patients, queue_budget=a.case_budget,
                  anomalies_from_day=a.anomalies_from_day, timezone=a.timezone,
                  days=a.train_days + 7, from_day=a.train_days)
        results.append(res)
        print(f"run {r['name']} ({a.style}): AE roc {res['autoencoder']['roc_auc']:.3f} pr {res['autoencoder']['pr_auc']:.3f} "
              f"r@1% {res['autoencoder']['recall_1pct']:.3f} inc@1% {res['autoencoder']['incident_recall_1pct']:.3f} "
              f"inc@0.1% {res['autoencoder']['incident_recall_01pct']:.3f} | MLP pr {res['mlp_autoencoder']['pr_auc']:.3f} "
              f"r@1% {res['mlp_autoencoder']['recall_1pct']:.3f} | IF roc {res['isolation_forest']['roc_auc']:.3f} "
              f"pr {res['isolation_forest']['pr_auc']:.3f} r@1% {res['isolation_forest']['recall_1pct']:.3f} | "
              f"raised {', '.join(f'{k} ×{v:.2f}' for k, v in sorted(res['queue_budget']['raises'].items(), key=lambda x: -x[1])) or 'none'} | "
              f"cases {res['cases']['cases']} ({res['cases']['not_injected_per_day_per_100_staff']:.2f} not injected /day/100 staff), "
              f"incidents in a case {res['cases']['incidents_in_a_case']:.3f}"
              + (f", alerts inside care {res['care']['inside_alerted']}/{res['care']['inside_accesses']}" if res.get('care') else "")
              + f" ({res['seconds']} s)",
              file=sys.stderr)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(report(results))


if __name__ == "__main__":
    main()
