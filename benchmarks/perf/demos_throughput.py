"""Demonstrations per minute: `vla-forget demos` with 1 and 2 worker processes.

For each worker count, a fresh collection of ``--episodes`` successful
demonstrations of one task (rendered camera, the task's expert), end to end:
worker start and env creation, the episodes, and writing the RLDS dataset.
Reported per run: demos per minute (end to end, and of the collection alone),
the steady-state rate of one worker (60 s / median episode time, env creation
excluded), the kept fraction, mean episode length, and bytes per episode.

    python benchmarks/perf/demos_throughput.py [--task PickCube-v1] [--episodes 8] [--image-size 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from vla_forget.jsonio import write_json


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def measure(task: str, episodes: int, workers: int, image_size: int) -> dict:
    from vla_forget.demos import ATTEMPTS, RAW, DemoConfig, collect_demos

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "demos")
        t0 = time.perf_counter()
        s = collect_demos(DemoConfig(task=task, episodes=episodes, out=out, workers=workers, image_size=image_size,
                                     progress=False))
        total = time.perf_counter() - t0
        with open(os.path.join(out, RAW, ATTEMPTS)) as f:
            recs = [json.loads(line) for line in f]
        first = sorted(recs, key=lambda r: r["seed"])[:workers]  # the first job of each worker made its env
        steady = sorted(r["wall_s"] for r in recs if r not in first) or [r["wall_s"] for r in recs]
        median = steady[len(steady) // 2]
        n = s["episodes"]
        return {
            "workers": workers, "episodes": n, "attempts": s["attempts"], "kept_fraction": s["kept_fraction"],
            "mean_steps": s["mean_steps"], "wall_s": round(total, 2), "collect_s": s["wall_s"],
            "demos_per_min": round(60 * n / total, 2), "collect_demos_per_min": s["demos_per_min"],
            "steady_demos_per_min_per_worker": round(60 / median, 2) if median > 0 else None,
            "raw_bytes_per_episode": _size(os.path.join(out, RAW)) // max(1, len(recs)),
            "rlds_bytes_per_episode": _size(os.path.join(out, "rlds")) // max(1, n),
        }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="PickCube-v1")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    runs = [measure(args.task, args.episodes, w, args.image_size) for w in args.workers]
    res = {"task": args.task, "image_size": args.image_size, "cpu_count": os.cpu_count(), "runs": runs}
    if len(runs) >= 2 and runs[0]["demos_per_min"]:
        res["speedup"] = round(runs[-1]["demos_per_min"] / runs[0]["demos_per_min"], 2)
    print(json.dumps(res, indent=2))
    if args.json:
        write_json(args.json, res, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
