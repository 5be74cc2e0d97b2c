#!/usr/bin/env python3
"""Shared family names in the review queue, by how many patients the user opens a day.

Reads the run directories that `crates/lab/quality/quality.py --out DIR` leaves behind
(labels.csv, scores.csv, features.csv, events.ndjson, results.json) and lists, per run,
every queued case on the test days whose strongest alert is a family name the user shares
with the patient (not a personal link the care context knows: a relative the patient's
records name, a shared name and address), injected or not, with the
user's distinct patients a day over the training days and the case's score (a multiple
of the threshold).

What it is for: a user who opens many patients a day shares a rare name with one of them
by chance; if the false cases come from such users and the injected ones do not, the
coincidence wants weighing by the user's volume (as `same_family_name_rarity` has done
since 70955d9). Nothing here changes the detector.

usage: crates/lab/quality/names.py DIR [--runs A,B]
"""
import collections, csv, json, os

from misses import DAY_MS, TEST_FROM_MS, arguments, event_times, runs, test_rows

# A personal link the care context knows (a relative the patient's records name, or a
# shared family name *and* address or phone) is not a namesake by chance: left out.
PERSONAL_LINKS = ("name the user as a relative", "family name and address or phone")


def user_of(e):
    """The Practitioner an AuditEvent's agents name, if any."""
    for a in e.get("agent", []):
        ref = a.get("who", {}).get("reference", "")
        if ref.startswith("Practitioner/"):
            return ref
    return None


def volume(d, when):
    """Each event's user, and each user's distinct patients a day over the training days."""
    cut = TEST_FROM_MS
    who, patients, days = {}, collections.defaultdict(set), collections.defaultdict(set)
    with open(os.path.join(d, "events.ndjson")) as f:
        for line in f:
            e = json.loads(line)
            u = user_of(e)
            who[e["id"]] = u
            if u is None or when.get(e["id"], cut) >= cut:
                continue
            days[u].add(int(when[e["id"]] // DAY_MS))
            for en in e.get("entity", []):
                ref = en.get("what", {}).get("reference", "")
                if ref.startswith("Patient/"):
                    patients[u].add(ref)
    per_day = {u: len(p) / max(1, len(days[u])) for u, p in patients.items()}
    return who, per_day


def one(d):
    labels = {r["id"] for r in csv.DictReader(open(os.path.join(d, "labels.csv")))}
    when = event_times(d)
    _, cases = test_rows(d, when)
    who, per_day = volume(d, when)
    print(f"## {os.path.basename(d)}\n")
    print("| injected | user's patients a day | score | user |")
    print("|---|---|---|---|")
    rows = []
    for rs in cases.values():
        if not any(x["case_queued"] == "1" for x in rs):
            continue
        top = max(rs, key=lambda x: float(x["score"]))
        if top["kind"] != "family_snooping" or any(p in top["explanation"] for p in PERSONAL_LINKS):
            continue
        u = who.get(top["id"])
        injected = any(x["id"] in labels for x in rs)
        rows.append((per_day.get(u, 0.0), injected, float(top["score"]), u or "—"))
    for v, injected, score, u in sorted(rows):
        print(f"| {'yes' if injected else 'no'} | {v:.1f} | {score:.2f}× | {u} |")
    print()


def main():
    a, want = arguments(__doc__)
    for path, _ in runs(a.dir, want):
        one(path)


if __name__ == "__main__":
    main()
