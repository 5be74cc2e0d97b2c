#!/usr/bin/env python3
"""How well peer groups find departments: the grouping `detector::peers` does, read again
here on a simulated hospital whose events name their departments (the simulator's own
layout), with those departments put aside for the grouping and used only to judge it.

For each resolution asked: the groups of at least MIN_PEERS users, how many users they hold,
their purity (the share of grouped users in their group's most common department), the
users left alone, and each group's size and department. The grouping is the daemon's:
users joined by the patients they both opened in the first DAYS days (successful events),
each patient counting 1 / (its users - 1) to each pair, records of more than 200 users
tying no one; each user in turn moved to the group of the largest modularity gain at the
resolution, until no one moves.

usage: crates/lab/quality/peers.py EVENTS.ndjson [--days 14] [--resolutions 1,1.5,2,3]
"""
import argparse, collections, datetime, json

MIN_PEERS = 3
MAX_RECORD_USERS = 200
MAX_SWEEPS = 50


def read(path, days):
    """Each patient's users and each user's department, over the first `days` days."""
    by_patient, dept, first_day = collections.defaultdict(set), {}, None
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            day = datetime.date.fromisoformat(e["recorded"][:10])
            first_day = first_day or day
            if (day - first_day).days >= days:
                break
            if e.get("outcome", "0") != "0":
                continue
            agent = next((a for a in e.get("agent", []) if a.get("requestor")), None)
            if not agent:
                continue
            who = agent.get("who", {})
            user = who.get("reference") or who.get("identifier", {}).get("value")
            if agent.get("location", {}).get("display"):
                dept[user] = agent["location"]["display"]
            for x in e.get("entity", []):
                ref = x.get("what", {}).get("reference", "")
                if ref.startswith("Patient/"):
                    by_patient[ref].add(user)
    return by_patient, dept


def ties(by_patient):
    users = sorted({u for s in by_patient.values() for u in s})
    index = {u: i for i, u in enumerate(users)}
    adjacent = [collections.defaultdict(float) for _ in users]
    for sharing in by_patient.values():
        n = len(sharing)
        if n < 2 or n > MAX_RECORD_USERS:
            continue
        ix = sorted(index[u] for u in sharing)
        for a, i in enumerate(ix):
            for j in ix[a + 1:]:
                adjacent[i][j] += 1.0 / (n - 1)
                adjacent[j][i] += 1.0 / (n - 1)
    return users, adjacent


def local_moving(adjacent, resolution):
    degree = [sum(a.values()) for a in adjacent]
    twice_total = sum(degree)
    group = list(range(len(adjacent)))
    if twice_total == 0:
        return group
    group_degree = degree[:]
    for _ in range(MAX_SWEEPS):
        moved = False
        for i, a in enumerate(adjacent):
            to_group = collections.defaultdict(float)
            for j, w in a.items():
                to_group[group[j]] += w
            own = group[i]
            group_degree[own] -= degree[i]
            gain = lambda g: to_group.get(g, 0.0) - resolution * group_degree[g] * degree[i] / twice_total
            best = (own, gain(own))
            for g in sorted(to_group):
                if gain(g) > best[1] + 1e-12:
                    best = (g, gain(g))
            group[i] = best[0]
            group_degree[best[0]] += degree[i]
            moved |= best[0] != own
        if not moved:
            break
    return group


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("events")
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--resolutions", default="1,1.5,2,3")
    a = ap.parse_args()
    by_patient, dept = read(a.events, a.days)
    users, adjacent = ties(by_patient)
    for r in [float(x) for x in a.resolutions.split(",")]:
        members = collections.defaultdict(list)
        for i, g in enumerate(local_moving(adjacent, r)):
            members[g].append(users[i])
        groups = sorted((m for m in members.values() if len(m) >= MIN_PEERS), key=len, reverse=True)
        grouped = sum(len(m) for m in groups)
        pure = sum(collections.Counter(dept.get(u) for u in m).most_common(1)[0][1] for m in groups)
        print(f"resolution {r}: {len(groups)} groups of >= {MIN_PEERS} hold {grouped} of {len(users)} users, "
              f"purity {pure / max(grouped, 1):.3f}; {len(users) - grouped} alone")
        for m in groups:
            top = collections.Counter(dept.get(u) for u in m).most_common(3)
            print(f"    {len(m)}: " + ", ".join(f"{d} {n}" for d, n in top))


if __name__ == "__main__":
    main()
