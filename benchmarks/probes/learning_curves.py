"""Learning curves of adaptation runs side by side, from their log.jsonl: one panel per logged field.

Rollout success per update is noisy (each update draws a few initial states), so each run's curve is drawn
with its running mean over ``--window`` updates; the printed table gives the mean of the first and the last
``--window`` updates of each field with the standard error of their difference (independent updates).

    python benchmarks/probes/learning_curves.py runs/adapt/rloo-v6-s0 runs/adapt/rloo-v6-s1 \\
        --fields success_rate kl_to_base_after --out docs/figures/rloo-v6-learning-curves.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List

import numpy as np


def read_log(run: str) -> List[Dict]:
    path = os.path.join(run, "log.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"{run}: no log.jsonl (is it a vla-forget adapt run folder?)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def first_last(values: np.ndarray, window: int) -> Dict[str, float]:
    a, b = values[:window], values[-window:]
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if min(len(a), len(b)) > 1 else float("nan")
    return {"first": float(a.mean()), "last": float(b.mean()), "difference": float(b.mean() - a.mean()), "se": se}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="adaptation run folders")
    ap.add_argument("--fields", nargs="+", default=["success_rate", "kl_to_base_after"])
    ap.add_argument("--window", type=int, default=5, help="updates in the running mean and the first/last means")
    ap.add_argument("--out", help="PNG to write (needs matplotlib: the plots extra)")
    args = ap.parse_args(argv)

    logs = {os.path.basename(os.path.normpath(r)): read_log(r) for r in args.runs}
    table = {}
    for name, rows in logs.items():
        for field in args.fields:
            v = np.array([r[field] for r in rows if r.get(field) is not None], float)
            if len(v):
                table[f"{name} {field}"] = {"updates": len(v), **first_last(v, args.window)}
    print(json.dumps(table, indent=2))
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(args.fields), figsize=(5.2 * len(args.fields), 3.8), squeeze=False)
        for ax, field in zip(axes[0], args.fields):
            for i, (name, rows) in enumerate(logs.items()):
                pts = [(r["update"], r[field]) for r in rows if r.get(field) is not None]
                if not pts:
                    continue
                u, v = map(np.array, zip(*pts))
                colour = f"C{i}"
                ax.plot(u, v, "o", ms=3, alpha=0.45, color=colour)
                w = min(args.window, len(v))
                run_mean = np.convolve(v, np.ones(w) / w, mode="valid")
                ax.plot(u[w - 1:], run_mean, "-", color=colour, label=f"{name} (mean of {w})")
            ax.set_xlabel("update")
            ax.set_title(field)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        fig.savefig(args.out, dpi=110)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
