#!/usr/bin/env python3
"""What alerting events under the floor for one strong reason would add to the queue.

Reads the run directories that `crates/lab/quality/quality.py --out DIR` leaves behind
(scores.csv, whose explanations cover every event; labels.csv; features.csv for times;
events.ndjson for each event's user) and, on each run's 7 test days, takes the events
scoring under the alert floor whose explanation states the reason asked for:

- `watched`: a watched record (`--what staff`: a colleague's own; `--what listed`: on the
  watch list or restricted) opened without a working relationship (or outside every
  known relationship), alone on the record for 24 h or from a department that has done
  no work on it for days — what `detector::evidence` calls evidence twice over;
- `night`: an access at an unusual hour in a session begun at an hour none of the user's
  earlier sessions began.

Each user's such events on one day count as one case; it prints per run how many of
those hold no injected event, and how many incidents not already in a queued case they
hold, then the sums. Nothing here changes the detector; it measures a rule before one
is built.

usage: crates/lab/quality/floor.py DIR --reason watched|night [--what staff|listed] [--from 0.0]
"""
import collections, csv, json, os, re

from misses import DAY_MS, OUTSIDE_CARE, START_MS, TEST_DAYS, arguments, event_times, runs, test_rows

FLOOR = 0.9  # alerts::ALERT_FLOOR
WHAT = {"staff": "member of staff's own record", "listed": "a watched record (on the site"}
NIGHT = re.compile(r"when 0 of the user's \d+ earlier sessions began")


def users(d):
    """Each event's user reference, from events.ndjson."""
    out = {}
    with open(os.path.join(d, "events.ndjson")) as f:
        for line in f:
            e = json.loads(line)
            who = [a.get("who", {}).get("reference", "") for a in e.get("agent", []) if a.get("requestor")]
            out[e["id"]] = who[0] if who else ""
    return out


def states(r, reason, what):
    e = r["explanation"]
    if reason == "night":
        return r["kind"] == "after_hours" and NIGHT.search(e) is not None
    unrelated = "no working relationship" in e or OUTSIDE_CARE in e
    twice = "no one else has opened it in 24 h" in e or "has done no work on it in" in e
    return WHAT[what] in e and unrelated and twice


def one(d, staff, a):
    labels = {r["id"]: r for r in csv.DictReader(open(os.path.join(d, "labels.csv")))}
    when = event_times(d)
    rows, cases = test_rows(d, when)
    queued = {c for c, rs in cases.items() if any(x["case_queued"] == "1" for x in rs)}
    found = {labels[r["id"]]["incident"] for c in queued for r in cases[c] if r["id"] in labels}
    who = users(d)
    days = collections.defaultdict(list)
    for r in rows:
        if a.lift_from <= float(r["score"]) < FLOOR and states(r, a.reason, a.what):
            days[(who.get(r["id"], ""), int((when[r["id"]] - START_MS) // DAY_MS))].append(r)
    false = sum(not any(x["id"] in labels for x in rs) for rs in days.values())
    new = {labels[x["id"]]["incident"] for rs in days.values() for x in rs if x["id"] in labels} - found
    print(f"{os.path.basename(d)}: {len(days)} user-days under the floor, {false} without an injected "
          f"event ({false / (TEST_DAYS * staff / 100.0):.2f} a day per 100 staff), {len(new)} incidents not yet in a queued case")
    return false, len(new)


def main():
    def add(ap):
        ap.add_argument("--reason", choices=["watched", "night"], required=True)
        ap.add_argument("--what", choices=sorted(WHAT), default="staff")
        ap.add_argument("--from", dest="lift_from", type=float, default=0.0,
                        help="only events scoring at least this multiple of the threshold")
    a, want = arguments(__doc__, add)
    totals = [0, 0]
    for path, run in runs(a.dir, want):
        totals = [t + n for t, n in zip(totals, one(path, run["users"], a))]
    print(f"All runs: {totals[0]} user-days without an injected event; {totals[1]} incidents added")


if __name__ == "__main__":
    main()
