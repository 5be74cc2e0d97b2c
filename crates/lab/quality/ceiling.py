#!/usr/bin/env python3
"""How much the detector's features can tell, at best: a supervised reference.

Reads the run directories that `crates/lab/quality/quality.py --out DIR` leaves behind (features.csv,
scores.csv, labels.csv) and, on each run's 7 test days, trains a gradient-boosted
classifier *with the labels* (5-fold stratified cross-validation), then reports its recall
at 1% false-positive rate, overall and per anomaly type, next to the autoencoder's.

The classifier sees the answers, which no deployment has; it is not a detector. It shows
where the information in the causal feature rows runs out: a type it cannot find at 1% FPR
either is limited by what the features carry, not by the unsupervised model.

usage: crates/lab/quality/ceiling.py DIR [--runs A,B]
"""
import argparse, csv, os
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold

START_MS = 1767571200000  # the simulator's day 0, as in quality.py
DAY_MS = 86_400_000
TEST_FROM_DAY = 28


def recall_at_fpr(neg, pos, fpr=0.01):
    return float(np.mean(pos > np.quantile(neg, 1 - fpr))) if len(pos) else float("nan")


def one(d):
    labels = {r["id"]: r["anomaly"] for r in csv.DictReader(open(os.path.join(d, "labels.csv")))}
    scores = list(csv.DictReader(open(os.path.join(d, "scores.csv"))))
    with open(os.path.join(d, "features.csv")) as f:
        ncols = len(f.readline().split(","))
    x = np.loadtxt(os.path.join(d, "features.csv"), delimiter=",", skiprows=1,
                   usecols=range(1, ncols), dtype=np.float64)
    test = x[:, 0] >= START_MS + TEST_FROM_DAY * DAY_MS
    types = np.array([labels.get(r["id"], "") for r in scores])[test]
    ae = np.array([float(r["score"]) for r in scores])[test]
    x = x[test][:, 1:]  # drop recorded_ms
    y = (types != "").astype(int)
    p = np.zeros(len(y))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        m = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=0)
        p[te] = m.fit(x[tr], y[tr]).predict_proba(x[te])[:, 1]
    rows = [("overall", int(y.sum()), recall_at_fpr(ae[y == 0], ae[y == 1]),
             recall_at_fpr(p[y == 0], p[y == 1]))]
    for kind in sorted(set(types) - {""}):
        m = types == kind
        rows.append((kind, int(m.sum()), recall_at_fpr(ae[y == 0], ae[m]),
                     recall_at_fpr(p[y == 0], p[m])))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--runs", default="A,B,C,D,E")
    a = ap.parse_args()
    print("| run | type | n | autoencoder recall@1%FPR | supervised reference (labels, 5-fold CV) |")
    print("|---|---|---|---|---|")
    for run in a.runs.split(","):
        d = os.path.join(a.dir, run)
        if not os.path.isdir(d):
            continue
        for kind, n, r_ae, r_sup in one(d):
            print(f"| {run} | {kind} | {n} | {r_ae:.3f} | {r_sup:.3f} |")


if __name__ == "__main__":
    main()
