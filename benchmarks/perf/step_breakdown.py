"""Where a bench episode's time goes, v1 against v2 tasks, in one process: the rest of the step.

For each task version, one env as the bench's workers build it (front + wrist cameras at the base's 128 px, CPU
physics, no privileged state or shaped reward) and the small VLA the default preset benches; per control step:

- ``policy``: the policy's views and ``act`` (encode, seven decoding steps, de-tokenisation);
- ``env step``: ``TaskEnv.step`` with images (physics, the camera frames, the wrapper's observation);
- ``physics only``: the same step on an env of the same task without cameras, so that
  ``env step - physics only`` is what rendering costs;

and once per worker and task: spawning a worker process with its imports, building each task's env, loading
the policy, and the first reset (lavapipe compiles its shaders on the first frame). Versions are interleaved
in chunks of steps so that both share the machine's noise.

    python benchmarks/perf/step_breakdown.py [--task PlaceCubeOnTarget] [--policy small-vla-base-v5]
        [--steps 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from vla_forget.jsonio import write_json

SPAWN_PROBE = ("import time; t0 = time.perf_counter(); import torch, mani_skill.envs, sapien; "
               "import vla_forget.envs, vla_forget.policies, vla_forget.rollout; print(time.perf_counter() - t0)")


def spawn_cost() -> dict:
    """A fresh interpreter's start and the imports a bench worker does before its first job."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", SPAWN_PROBE], check=True, capture_output=True, text=True)
    return {"process_s": round(time.perf_counter() - t0, 2), "imports_s": round(float(out.stdout.strip()), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="PlaceCubeOnTarget")
    ap.add_argument("--policy", default="small-vla-base-v5")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--json")
    args = ap.parse_args()

    from vla_forget.envs import make_task_env
    from vla_forget.policies import load_policy
    from vla_forget.policies.base import views_for
    from vla_forget.rollout import act, worker_init

    worker_init()
    once: dict = {"spawn": spawn_cost()}
    t0 = time.perf_counter()
    policy = load_policy(args.policy)
    policy.eval()
    once["load_policy_s"] = round(time.perf_counter() - t0, 2)
    wrist = bool(getattr(policy, "wrist_camera", False))
    envs, bare = {}, {}
    for v in ("v1", "v2"):
        task = f"{args.task}-{v}"
        t0 = time.perf_counter()
        envs[v] = make_task_env(task, image_size=args.image_size, render_images=True, wrist_camera=wrist,
                                privileged=False, dense_reward=False)
        once[f"make_env_{v}_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        envs[v].reset([0])
        once[f"first_reset_{v}_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        bare[v] = make_task_env(task, render_images=False, privileged=False, dense_reward=False)
        once[f"make_env_{v}_no_cameras_s"] = round(time.perf_counter() - t0, 2)
    gen = torch.Generator().manual_seed(0)
    times = {v: {"policy": [], "env step": [], "physics only": []} for v in envs}
    obs = {v: envs[v].reset([0]) for v in envs}
    for v in envs:
        bare[v].reset([0])
    policy.reset(1)
    for start in range(0, args.steps, args.chunk):
        for v, env in envs.items():
            for _ in range(min(args.chunk, args.steps - start)):
                t0 = time.perf_counter()
                action = act(policy, views_for(policy, obs[v]), greedy=False, generator=gen)
                t1 = time.perf_counter()
                obs[v] = env.step(action)[0]
                t2 = time.perf_counter()
                bare[v].step(action)
                t3 = time.perf_counter()
                times[v]["policy"].append(t1 - t0)
                times[v]["env step"].append(t2 - t1)
                times[v]["physics only"].append(t3 - t2)
    rows = {}
    for v, parts in times.items():
        ms = {k: 1000 * statistics.fmean(x) for k, x in parts.items()}
        total = ms["policy"] + ms["env step"]
        rows[v] = {"policy_ms": round(ms["policy"], 2), "env_step_ms": round(ms["env step"], 2),
                   "physics_ms": round(ms["physics only"], 2),
                   "render_ms": round(ms["env step"] - ms["physics only"], 2), "step_ms": round(total, 2),
                   "policy_share": round(ms["policy"] / total, 3)}
    print(f"{args.task}, {args.policy}, {args.image_size} px, {'front + wrist' if wrist else 'front'} cameras, "
          f"{args.steps} steps per version (load average {os.getloadavg()[0]:.1f})")
    print("| version | step (ms) | policy | render | physics + wrapper |")
    print("|---|---|---|---|---|")
    for v, r in rows.items():
        print(f"| {v} | {r['step_ms']:.1f} | {r['policy_ms']:.1f} ({100 * r['policy_share']:.0f}%) | "
              f"{r['render_ms']:.1f} | {r['physics_ms']:.1f} |")
    print("once per worker:", ", ".join(f"{k} {v}" for k, v in once.items()))
    if args.json:
        write_json(args.json, {"task": args.task, "policy": args.policy, "steps": args.steps, "per_step": rows,
                               "once": once, "load_average": os.getloadavg()[0]})


if __name__ == "__main__":
    main()
