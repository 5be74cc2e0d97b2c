#!/usr/bin/env python3
"""Checks that dependencies run one way (ARCHITECTURE.md), and fails naming what breaks it.

1. Crates: fhir-edge-core links no actor framework, HTTP server or client, service manager
   or sibling crate; fhir-edge-lab does not link the daemon crate (read from `cargo metadata`).
2. Modules: inside each crate, the graph of `crate::a::b` / `super::` references between
   modules (a file is a module; `mod.rs` is its folder's module) has no cycle. A module's
   own `mod x;` declarations and its `#[cfg(test)]` blocks are not edges.

Run from anywhere: `python3 tests/check-structure.py`. Exit 0 when clean, 1 otherwise.
"""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What each crate must never link (directly).
FORBIDDEN = {
    "fhir-edge-core": {"actix", "actix-rt", "actix-web", "reqwest", "tokio", "sd-notify",
                       "tracing-journald", "figment", "clap", "fhir-edge", "fhir-edge-lab"},
    "fhir-edge-lab": {"fhir-edge", "actix", "reqwest", "sd-notify", "tracing-journald",
                      "figment"},
}


def crate_problems():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=ROOT, stderr=subprocess.DEVNULL) or b"{}")
    problems = []
    for pkg in meta.get("packages", []):
        bad = FORBIDDEN.get(pkg["name"], set())
        for dep in pkg["dependencies"]:
            if dep["name"] in bad and dep.get("kind") != "dev":
                problems.append(f"crate {pkg['name']} depends on {dep['name']}")
    return problems


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip_tests(text):
    """Drop `#[cfg(test)] mod … { … }` blocks (brace-matched) and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def module_edges(src):
    files = []
    for d, _, names in os.walk(src):
        files += [os.path.join(d, n) for n in names if n.endswith(".rs")]
    mods = {module_of(src, f): f for f in files}
    edges = {m: set() for m in mods}

    def resolve(parts):
        # The longest module prefix of a path: crate::alerts::actor::X → ("alerts", "actor").
        for n in range(len(parts), 0, -1):
            if tuple(parts[:n]) in mods:
                return tuple(parts[:n])
        return None

    for m, f in mods.items():
        text = strip_tests(open(f, encoding="utf-8").read())
        paths = []
        for use in re.finditer(r"\b(crate|super)((?:::\w+)+)(::\{([^;]*?)\})?", text):
            head = ([] if use.group(1) == "crate" else list(m[:-1])) + use.group(2).split("::")[1:]
            if use.group(4):
                for item in re.split(r"[,\s]+", use.group(4)):
                    item = item.strip("{} ")
                    if item and item not in ("self", "*"):
                        paths.append(head + item.split("::"))
            paths.append(head)
        for p in paths:
            t = resolve(p)
            # A module naming its own children (or itself) is containment, not a dependency.
            if t is not None and t[: len(m)] != m:
                edges[m].add(t)
    return edges


def cycles(edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main():
    problems = crate_problems()
    crates = {"fhir-edge": "src", "fhir-edge-core": "crates/core/src",
              "fhir-edge-lab": "crates/lab/src"}
    total = 0
    for name, src in crates.items():
        fine = module_edges(os.path.join(ROOT, src))
        total += sum(len(e) for e in fine.values())
        # Each module, and each top-level concern (a folder and all inside it), one way.
        coarse = {}
        for a, bs in fine.items():
            coarse.setdefault(a[:1], set()).update(b[:1] for b in bs if b[:1] != a[:1])
        for edges in (fine, coarse):
            for comp in cycles(edges):
                names = sorted("::".join(c) or "lib" for c in comp)
                detail = "; ".join(f"{'::'.join(a) or 'lib'} → {'::'.join(b)}"
                                   for a in comp for b in sorted(edges[a]) if b in comp)
                problems.append(f"{name}: module cycle among {', '.join(names)} ({detail})")
    for p in problems:
        print(f"check-structure: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"check-structure: 3 crates one way, {total} module edges, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
