"""How many of the false queued cases a care relationship from the server's own resources
would explain (issue #22's potential): a case whose every alert is an access by a user on
the patient's care team, or in the admitting or a consulting department, on a day the
admission covers (from the run's context.ndjson). Also how many injected alerts have such
a relationship (what a blanket clearing would lose).

Usage: python3 care_potential.py RUN_DIR   (a quality.py run directory, kept on disk)"""
import csv, json, sys, collections, datetime
d = sys.argv[1]
labels = {}; inc = {}
for r in csv.DictReader(open(f"{d}/labels.csv")):
    labels[r["id"]] = r["anomaly"]; inc[r["id"]] = r.get("incident", "")
ev = {}
for line in open(f"{d}/events.ndjson"):
    e = json.loads(line)
    p = next((x["what"].get("reference") for x in e.get("entity", []) if "what" in x and x["what"].get("reference", "").startswith("Patient/")), None)
    ev[e["id"]] = (e["agent"][0]["who"]["reference"], p, e["recorded"][:10])
dept_of = {}; enc = collections.defaultdict(list)
for line in open(f"{d}/context.ndjson"):
    r = json.loads(line)
    if r["resourceType"] == "PractitionerRole":
        dept_of[r["practitioner"]["reference"]] = r["location"][0]["display"]
    elif r["resourceType"] == "Encounter":
        enc[r["subject"]["reference"]].append((r["period"]["start"][:10], r["period"]["end"][:10],
            {p["individual"]["reference"] for p in r["participant"]}, {l["location"]["display"] for l in r["location"]}))
def related(user, patient, day):
    if not patient: return False
    for s, e, team, depts in enc.get(patient, []):
        if s <= day <= e and (user in team or dept_of.get(user) in depts):
            return True
    return False
rows = list(csv.DictReader(open(f"{d}/scores.csv")))
rec = {}
with open(f"{d}/features.csv") as f:
    f.readline()
    for line in f:
        i, ms, _ = line.split(",", 2); rec[i] = int(ms)
cut = max(rec.values()) - 7 * 86400000
cases = collections.defaultdict(list)
for r in rows:
    if r["case"] and r["case_queued"] == "1" and rec[r["id"]] >= cut:
        cases[r["case"]].append(r["id"])
false_cases = [c for c, ids in cases.items() if not any(i in labels for i in ids)]
cleared = [c for c in false_cases if all(related(*ev[i]) for i in cases[c])]
inj_alerts = [i for ids in cases.values() for i in ids if i in labels]
inj_related = [i for i in inj_alerts if related(*ev[i])]
by_kind = collections.Counter(labels[i] for i in inj_related)
print(f"{d}: {len(false_cases)} false queued cases, {len(cleared)} ({len(cleared)/max(1,len(false_cases)):.0%}) fully explained by a care relationship active that day; "
      f"injected alerts with such a relationship: {len(inj_related)}/{len(inj_alerts)} {dict(by_kind)}")
