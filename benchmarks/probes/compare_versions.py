"""The same policies benched on two versions of a suite (e.g. ``tabletop-v1`` and ``tabletop-v2``), paired by seed.

Each task of the first bench is matched with the task of the second that has the same name up to its version
suffix (``PickCube-v1`` with ``PickCube-v2``); for each policy and task the episodes are paired by seed and the
difference of success rates (second minus first) gets Newcombe's paired 95% interval. A task is *worse* when the
interval lies below zero, *better* when above. Prints a Markdown table and, per policy, whether it holds (no
task significantly worse); exits 1 when some policy does not hold, so a script can act on it.

    python benchmarks/probes/compare_versions.py runs/bases-v1 runs/bases-v2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from typing import Any, Dict, List, Tuple

from vla_forget.jsonio import write_json
from vla_forget.metrics import newcombe_paired_difference
from vla_forget.registry import unversioned

def _episodes(folder: str) -> Dict[Tuple[str, str], Dict[int, bool]]:
    path = os.path.join(folder, "episodes.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"compare_versions: no {path}; give two bench folders")
    out: Dict[Tuple[str, str], Dict[int, bool]] = defaultdict(dict)
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            out[(r["policy"], unversioned(r["task"]))][int(r["seed"])] = bool(r["success_at_end"])
    return out


def compare(first: str, second: str) -> Dict[str, Any]:
    a, b = _episodes(first), _episodes(second)
    rows: List[Dict[str, Any]] = []
    for key in sorted(set(a) & set(b)):
        seeds = sorted(set(a[key]) & set(b[key]))
        if not seeds:
            continue
        t = [0, 0, 0, 0]  # both, only the second, only the first, neither
        for s in seeds:
            x, y = a[key][s], b[key][s]
            t[0 if x and y else 1 if y else 2 if x else 3] += 1
        d, lo, hi = newcombe_paired_difference(t[0], t[1], t[2], t[3])
        rows.append({"policy": key[0], "task": key[1], "n": len(seeds), "first": t[0] + t[2], "second": t[0] + t[1],
                     "diff": d, "ci_low": lo, "ci_high": hi,
                     "verdict": "worse" if hi < 0 else "better" if lo > 0 else "same"})
    if not rows:
        raise SystemExit("compare_versions: the benches share no (policy, task, seed); bench the same policies "
                         "on the same seeds")
    holds = {}
    for r in rows:
        holds[r["policy"]] = holds.get(r["policy"], True) and r["verdict"] != "worse"
    return {"first": first, "second": second, "rows": rows, "holds": holds}


def markdown(res: Dict[str, Any], names: Tuple[str, str]) -> str:
    n1, n2 = names
    L = [f"| policy | task | {n1} | {n2} | {n2} - {n1} (pp) [95% paired] | |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        L.append(f"| {r['policy']} | {r['task']} | {r['first']}/{r['n']} | {r['second']}/{r['n']} | "
                 f"{100 * r['diff']:+.0f} [{100 * r['ci_low']:+.0f}, {100 * r['ci_high']:+.0f}] | "
                 f"{'' if r['verdict'] == 'same' else r['verdict']} |")
    L.append("")
    for p, ok in res["holds"].items():
        L.append(f"- {p}: {'holds (no task significantly worse)' if ok else 'does NOT hold'}")
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--names", nargs=2, default=None, help="column names (default: the folders' names)")
    ap.add_argument("--json")
    args = ap.parse_args()
    res = compare(args.first, args.second)
    names = tuple(args.names or (os.path.basename(args.first.rstrip("/")), os.path.basename(args.second.rstrip("/"))))
    print(markdown(res, names))
    if args.json:
        write_json(args.json, res)
    sys.exit(0 if all(res["holds"].values()) else 1)


if __name__ == "__main__":
    main()
