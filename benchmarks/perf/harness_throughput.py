"""Harness throughput against the raw simulator, and 1 vs 2 worker processes.

Measured side by side in one run (these machines are noisy):

1. *overhead*: on one env (PushCube-v1, 128 px camera rendered, CPU physics),
   the raw ManiSkill ``env.step`` loop with zero actions against the harness's
   episode loop (task wrapper + policy call + success bookkeeping) with the
   zero-cost policy ``zero-image-v1``; both in this process, env already made.
   Target: overhead <= 10 %.
2. *scaling*: the bench executor with 1 worker process and with 2 (spawned
   processes), same episodes; in steady state (after each process has made its
   env) and end to end. Target on 2 cores: >= 1.7x in steady state.

    python benchmarks/perf/harness_throughput.py [--steps 300] [--episodes 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from vla_forget.jsonio import write_json


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
    """The bench executor with 1 and with 2 worker processes on the same episodes.

    Reported two ways: end to end (process start and first env creation included,
    ~5-15 s per process), and in steady state, from the times at which episodes
    finish in the main process: (episodes after the first ``workers`` ones) /
    (time from the ``workers``-th to the last finish), which leaves out the
    start-up that a long bench pays once.
    """
    from vla_forget import rollout
    from vla_forget.rollout import EpisodeJob

    out = {}
    for workers in (1, 2):
        jobs = [EpisodeJob(policy_key="zero-image-v1", policy_spec="zero-image-v1", policy_hash="zero", task=task,
                           seeds=[s], max_episode_steps=steps, image_size=image_size) for s in range(episodes)]
        finished = []
        t0 = time.perf_counter()
        rollout.run_parallel(rollout.run_job, jobs, workers, lambda recs: finished.extend([time.perf_counter()] * len(recs)))
        wall = time.perf_counter() - t0
        k = workers
        steady = (len(finished) - k) * steps / (finished[-1] - finished[k - 1])
        out[workers] = {"wall_s": wall, "steps_per_s": episodes * steps / wall, "steady_steps_per_s": steady,
                        "startup_s": finished[k - 1] - t0}
    return {"task": task, "episodes": episodes, "steps_per_episode": steps, "one_worker": out[1], "two_workers": out[2],
            "speedup": out[2]["steps_per_s"] / out[1]["steps_per_s"],
            "steady_speedup": out[2]["steady_steps_per_s"] / out[1]["steady_steps_per_s"], "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg()[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="PushCube-v1")
    ap.add_argument("--steps", type=int, default=300, help="steps for the overhead measurement")
    ap.add_argument("--episodes", type=int, default=16, help="episodes for the scaling measurement")
    ap.add_argument("--episode-steps", type=int, default=60)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    res = {"overhead": measure_overhead(args.task, args.steps, args.image_size),
           "scaling": measure_scaling(args.task, args.episodes, args.episode_steps, args.image_size)}
    o, s = res["overhead"], res["scaling"]
    print(f"raw env.step        {o['raw_steps_per_s']:8.1f} steps/s")
    print(f"harness, 1 env      {o['harness_steps_per_s']:8.1f} steps/s   overhead {100 * o['overhead']:+.1f}% (target <= 10%)")
    for name, w in (("1 worker ", s["one_worker"]), ("2 workers", s["two_workers"])):
        print(f"executor, {name} {w['steps_per_s']:8.1f} steps/s end to end ({w['wall_s']:.1f} s, start-up {w['startup_s']:.1f} s); "
              f"{w['steady_steps_per_s']:.1f} steps/s in steady state")
    print(f"2 vs 1 workers: {s['steady_speedup']:.2f}x in steady state (target >= 1.7x on 2 cores), "
          f"{s['speedup']:.2f}x end to end; 1-min load average {s['load_average']:.2f}")
    if args.json:
        write_json(args.json, res, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
