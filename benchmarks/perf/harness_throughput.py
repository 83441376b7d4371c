"""Harness throughput against the raw simulator, and 1 vs 2 worker processes.

Measured side by side in one run (these machines are noisy):

1. *overhead*: on one env (PushCube-v1, 128 px camera rendered, CPU physics),
   the raw ManiSkill ``env.step`` loop with zero actions against the harness's
   episode loop (task wrapper + policy call + success bookkeeping) with the
   zero-cost policy ``zero-image-v1``; both in this process, env already made.
   Target: overhead <= 10 %.
2. *scaling*: the bench executor with 1 worker process and with 2 (spawned
   processes, env creation included), same episodes. Target on 2 cores: >= 1.7x.

    python benchmarks/perf/harness_throughput.py [--steps 300] [--episodes 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch


def measure_overhead(task: str, steps: int, image_size: int) -> dict:
    from vla_forget import rollout
    from vla_forget.envs import make_task_env
    from vla_forget.policies import load_policy

    torch.set_num_threads(1)
    env = make_task_env(task, image_size=image_size, render_images=True, privileged=True, max_episode_steps=steps)
    raw = env._env  # the ManiSkill gym env the wrapper drives
    zero = torch.zeros(1, 7)
    zero[:, 6] = 1.0
    policy = load_policy("zero-image-v1")
    job = rollout.EpisodeJob(policy_key="zero-image-v1", policy_spec="zero-image-v1", policy_hash="zero", task=task,
                             seeds=[0], max_episode_steps=steps, image_size=image_size)
    # warm up both paths
    raw.reset(seed=[0])
    for _ in range(10):
        raw.step(zero)
    rollout.run_episodes(env, policy, rollout.EpisodeJob(**{**job.__dict__, "max_episode_steps": 10}))
    raw_times, harness_times = [], []
    for rep in range(3):  # interleave to share the machine's noise
        raw.reset(seed=[rep])
        t0 = time.perf_counter()
        for _ in range(steps):
            raw.step(zero)
        raw_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rollout.run_episodes(env, policy, job)
        harness_times.append(time.perf_counter() - t0)
    env.close()
    raw_sps = steps / min(raw_times)
    har_sps = steps / min(harness_times)
    return {"task": task, "image_size": image_size, "steps": steps, "raw_steps_per_s": raw_sps,
            "harness_steps_per_s": har_sps, "overhead": 1 - har_sps / raw_sps}


def measure_scaling(task: str, episodes: int, steps: int, image_size: int) -> dict:
    from vla_forget.bench import execute
    from vla_forget.rollout import EpisodeJob

    out = {}
    for workers in (1, 2):
        jobs = [EpisodeJob(policy_key="zero-image-v1", policy_spec="zero-image-v1", policy_hash="zero", task=task,
                           seeds=[s], max_episode_steps=steps, image_size=image_size) for s in range(episodes)]
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            execute(jobs, os.path.join(d, "episodes.jsonl"), workers, len(jobs), 0, progress=False)
            wall = time.perf_counter() - t0
        out[workers] = {"wall_s": wall, "steps_per_s": episodes * steps / wall}
    return {"task": task, "episodes": episodes, "steps_per_episode": steps, "one_worker": out[1], "two_workers": out[2],
            "speedup": out[2]["steps_per_s"] / out[1]["steps_per_s"], "cpu_count": os.cpu_count()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="PushCube-v1")
    ap.add_argument("--steps", type=int, default=300, help="steps for the overhead measurement")
    ap.add_argument("--episodes", type=int, default=12, help="episodes for the scaling measurement")
    ap.add_argument("--episode-steps", type=int, default=60)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    res = {"overhead": measure_overhead(args.task, args.steps, args.image_size),
           "scaling": measure_scaling(args.task, args.episodes, args.episode_steps, args.image_size)}
    o, s = res["overhead"], res["scaling"]
    print(f"raw env.step        {o['raw_steps_per_s']:8.1f} steps/s")
    print(f"harness, 1 env      {o['harness_steps_per_s']:8.1f} steps/s   overhead {100 * o['overhead']:+.1f}% (target <= 10%)")
    print(f"executor, 1 worker  {s['one_worker']['steps_per_s']:8.1f} steps/s   ({s['one_worker']['wall_s']:.1f} s)")
    print(f"executor, 2 workers {s['two_workers']['steps_per_s']:8.1f} steps/s   ({s['two_workers']['wall_s']:.1f} s)  "
          f"speed-up {s['speedup']:.2f}x (target >= 1.7x on 2 cores)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
