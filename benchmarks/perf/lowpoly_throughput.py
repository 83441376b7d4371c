"""The low-poly suite (v2 tasks) against v1 on the CPU renderer, side by side in one run.

1. *env steps/s*: one env per task version (front + wrist cameras at 128 px, CPU physics, the task wrapper),
   a fixed action pattern, measured in interleaved chunks of steps so that both versions share the machine's
   noise; per task, the ratio v2 / v1 (CPU time and wall time).
2. *bench episodes/s*: ``make bench``'s command, ``vla-forget bench --preset default``, with ``--battery
   tabletop-v1`` (target ``place-cube-on-target-v1``) and ``--battery tabletop-v2`` (``place-cube-on-target-v2``):
   the same policies, seeds and workers, one after the other, each into a fresh folder; the wall time of each
   whole command and the ratio of episodes per second.

Target: >= 2x bench episodes per second (twice the episodes on the same CPU). Only for software
rendering: on a GPU renderer, or with no cameras, triangles cost little and the two versions run alike.
Run it on an idle machine: part 2 at the preset's size is `make bench` before and after.

    python benchmarks/perf/lowpoly_throughput.py [--tasks PickCube PlaceCubeOnTarget] [--steps 200]
        [--episodes N] [--workers 2] [--skip-bench] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional

import torch

from vla_forget.jsonio import write_json


def _actions(n: int) -> torch.Tensor:
    """A fixed pattern: small moves in x, y, z and a gripper that closes half-way through each 40 steps."""
    t = torch.arange(n, dtype=torch.float32)
    a = torch.zeros(n, 7)
    a[:, 0] = 0.3 * torch.sin(t / 7)
    a[:, 1] = 0.3 * torch.cos(t / 11)
    a[:, 2] = 0.2 * torch.sin(t / 5)
    a[:, 6] = torch.where((t % 40) < 20, 1.0, -1.0)
    return a


def env_steps(task: str, steps: int, chunk: int = 10, image_size: int = 128) -> dict:
    from vla_forget.envs import make_task_env

    torch.set_num_threads(1)
    envs = {v: make_task_env(f"{task}-{v}", image_size=image_size, render_images=True, wrist_camera=True,
                             max_episode_steps=10 ** 6) for v in ("v1", "v2")}
    actions = _actions(steps)
    wall = {v: 0.0 for v in envs}
    cpu = {v: 0.0 for v in envs}
    for v, env in envs.items():  # warm up: first frames, shader compilation
        env.reset([0])
        for i in range(5):
            env.step(actions[i:i + 1])
        env.reset([0])
    for start in range(0, steps, chunk):
        for v, env in envs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for i in range(start, min(steps, start + chunk)):
                env.step(actions[i:i + 1])
            wall[v] += time.perf_counter() - w0
            cpu[v] += time.process_time() - c0
    for env in envs.values():
        env.close()
    out = {f"{v}_steps_per_s": round(steps / wall[v], 2) for v in envs}
    out.update({f"{v}_ms_per_step_cpu": round(1000 * cpu[v] / steps, 2) for v in envs})
    out["speedup_wall"] = round(wall["v1"] / wall["v2"], 2)
    out["speedup_cpu"] = round(cpu["v1"] / cpu["v2"], 2)
    return out


def bench_episodes(episodes: Optional[int], workers: int) -> dict:
    """``make bench``'s command (``vla-forget bench --preset default``) with the battery at v1 and at v2, each into
    a fresh folder, one after the other: wall time of the whole command (start-up, episodes, divergences, report)."""
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="lowpoly-bench-") as tmp:
        for version in ("v1", "v2"):
            folder = os.path.join(tmp, version)
            cmd = [sys.executable, "-m", "vla_forget.cli", "bench", "--preset", "default", "--battery",
                   f"tabletop-{version}", "--workers", str(workers), "--no-progress", "--out", folder]
            if episodes:
                cmd += ["--episodes", str(episodes), "--target-episodes", str(episodes)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            with open(os.path.join(folder, "results.json")) as f:
                res = json.load(f)
            out[version] = {"episodes": res["episodes"], "wall_s": round(wall, 1),
                            "episodes_per_s": round(res["episodes"] / wall, 3),
                            "battery_mean_success": res["battery_mean_success"]}
    out["speedup"] = round(out["v2"]["episodes_per_s"] / out["v1"]["episodes_per_s"], 2)
    out["wall_ratio"] = round(out["v1"]["wall_s"] / out["v2"]["wall_s"], 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=["PickCube", "PlaceCubeOnTarget"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--episodes", type=int, default=None,
                    help="bench episodes per task and policy, each version (default: the preset's, 20)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    results = {"load_average_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
               "env_steps": {t: env_steps(t, args.steps) for t in args.tasks}}
    for t, r in results["env_steps"].items():
        print(f"{t}: v1 {r['v1_steps_per_s']} steps/s, v2 {r['v2_steps_per_s']} steps/s: {r['speedup_wall']}x wall, "
              f"{r['speedup_cpu']}x CPU", flush=True)
    if not args.skip_bench:
        b = results["bench"] = bench_episodes(args.episodes, args.workers)
        print(f"vla-forget bench --preset default ({args.episodes or 'its'} episodes per task, {args.workers} workers): "
              f"v1 {b['v1']['episodes_per_s']} episodes/s ({b['v1']['wall_s']} s), v2 {b['v2']['episodes_per_s']} "
              f"({b['v2']['wall_s']} s): {b['speedup']}x episodes/s", flush=True)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
