#!/usr/bin/env python3
"""Why injected incidents stay out of the review queue, and what queuing more would cost.

Reads the run directories that `crates/lab/quality/quality.py --out DIR` leaves behind
(labels.csv, scores.csv with its `case` and `case_queued` columns, features.csv for the
time of each event, results.json for the hospital's size) and, on each run's 7 test days:

- lists every injected incident with no event in a queued case, with why: `under the
  floor` (no event alerted), `watched` (alerted, but its case waits for corroboration),
  and its strongest event's score (a multiple of the threshold), behaviour and
  explanation;
- how many queued cases hold no injected event, and both counts summed over the runs
  (counts compare two builds on the same rows where a rate moves by one case);
- for the watched cases whose first alert is a lookup of another department's record,
  what queuing them from a score cut would add: false cases a day per 100 staff and
  incidents not otherwise in a queued case; and the same for those whose explanation
  states the care context's "no encounter … links this user" (an access outside every
  known relationship).

Scores in scores.csv are already divided by the threshold (1 is the threshold). Nothing
here changes the detector; it measures a rule before one is built.

usage: crates/lab/quality/misses.py DIR [--runs A,B] [--cuts 1.4,1.3,1.2,1.1]
"""
import argparse, collections, csv, json, os

START_MS = 1767571200000  # the simulator's day 0, as in quality.py
DAY_MS = 86_400_000
TEST_FROM_DAY = 28
TEST_DAYS = 7
OUTSIDE_CARE = "no encounter, appointment, episode of care or care team"


TEST_FROM_MS = START_MS + TEST_FROM_DAY * DAY_MS


def event_times(d):
    """Each event's time, ms (features.csv: id, recorded_ms, …)."""
    times = {}
    with open(os.path.join(d, "features.csv")) as f:
        f.readline()
        for line in f:
            i, t = line.split(",", 2)[:2]
            times[i] = float(t)
    return times


def runs(d, want):
    """(run directory, run as results.json has it) for each run of `d`, or those in `want`."""
    for res in json.load(open(os.path.join(d, "results.json"))):
        name = res["run"]["name"]
        if want is None or name in want:
            yield os.path.join(d, name), res["run"]


def test_rows(d, when=None):
    """scores.csv's rows of the events on the test days, and those rows by case."""
    when = event_times(d) if when is None else when
    rows = [r for r in csv.DictReader(open(os.path.join(d, "scores.csv")))
            if when.get(r["id"], 0.0) >= TEST_FROM_MS]
    cases = collections.defaultdict(list)
    for r in rows:
        if r["case"]:
            cases[r["case"]].append(r)
    return rows, cases


def arguments(doc, add=lambda ap: None):
    """The command line of a script over quality.py's run directories: DIR [--runs A,B],
    and what `add` adds; the arguments and the runs wanted (None: all)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--runs", help="comma-separated run names, e.g. A,B")
    add(ap)
    a = ap.parse_args()
    return a, set(a.runs.split(",")) if a.runs else None


def one(d, staff, cuts):
    labels = {r["id"]: r for r in csv.DictReader(open(os.path.join(d, "labels.csv")))}
    rows, cases = test_rows(d)
    by_id = {r["id"]: r for r in rows}
    queued = {c for c, rs in cases.items() if any(x["case_queued"] == "1" for x in rs)}
    incident_of = lambda r: labels[r["id"]]["incident"] if r["id"] in labels else ""
    incidents = collections.defaultdict(list)
    for i, l in labels.items():
        if l["incident"] and i in by_id:
            incidents[l["incident"]].append(by_id[i])
    found = {incident_of(r) for c in queued for r in cases[c]} - {""}
    false_cases = sum(not any(x["id"] in labels for x in cases[c]) for c in queued)
    print(f"## {os.path.basename(d)}: {len(found)} of {len(incidents)} incidents in a queued case; "
          f"{false_cases} queued cases without an injected event\n")
    for inc, evs in sorted(incidents.items(), key=lambda kv: int(kv[0])):
        if inc in found:
            continue
        best = max(evs, key=lambda r: float(r["score"]))
        why = "watched" if any(r["case"] for r in evs) else "under the floor"
        kind = labels[best["id"]]["anomaly"]
        print(f"- incident {inc} ({kind}, {len(evs)} events): {why}; strongest {float(best['score']):.2f}× "
              f"as {best['kind'] or '—'}: {best['explanation'][:240]}")
    watched = [rs for c, rs in cases.items() if c not in queued and rs[0]["kind"] == "cross_department"]
    per = TEST_DAYS * staff / 100.0
    print(f"\nWatched cross-department cases: {len(watched)}, "
          f"{sum(any(x['id'] in labels for x in rs) for rs in watched)} of them with an injected event.\n")
    print("| queue them when | added false cases a day per 100 staff | added incidents |")
    print("|---|---|---|")
    rules = [(f"score ≥ {k}×", lambda rs, k=k: max(float(x["score"]) for x in rs) >= k) for k in cuts]
    rules.append(("outside every known relationship", lambda rs: any(OUTSIDE_CARE in x["explanation"] for x in rs)))
    for name, rule in rules:
        take = [rs for rs in watched if rule(rs)]
        false = sum(not any(x["id"] in labels for x in rs) for rs in take)
        new = {incident_of(x) for rs in take for x in rs} - {""} - found
        print(f"| {name} | {false / per:.2f} ({false}) | {len(new)} |")
    print()
    return len(found), len(incidents), false_cases


def main():
    a, want = arguments(__doc__, lambda ap: ap.add_argument("--cuts", default="1.4,1.3,1.2,1.1"))
    cuts = [float(x) for x in a.cuts.split(",")]
    totals = [0, 0, 0]
    for path, run in runs(a.dir, want):
        totals = [t + n for t, n in zip(totals, one(path, run["users"], cuts))]
    # Counts, not rates: summed over rows, they compare two builds on the same rows where a
    # row's rate moves by one case.
    print(f"All runs: {totals[0]} of {totals[1]} incidents in a queued case; "
          f"{totals[2]} queued cases without an injected event")


if __name__ == "__main__":
    main()
