"""Adaptation throughput: env steps per second during PPO against plain bench rollouts, and SFT samples per second.

Measured side by side in one run (these machines are noisy), with the shipped
base policy (small-vla-base-v5, the configuration of the archived v4 its figures were first measured with) on the adaptation target PlaceCubeOnTarget-v1:

1. *bench rollouts*: the bench executor (:func:`vla_forget.bench.execute`, the
   path of ``vla-forget bench``) runs ``updates x episodes`` episodes of the
   policy in ``workers`` spawned processes;
2. *PPO*: ``vla-forget adapt --method ppo`` (:func:`vla_forget.adapt.ppo.train`)
   runs ``updates`` updates of ``episodes`` episodes each with the same
   workers, episode length and image size: the same number of env steps, plus
   learning (features, GAE, ``epochs`` passes of minibatch updates),
   checkpoints and trace writing. Both include creating one env per worker.
   Reported: env steps/s of the whole run, of the rollout phases alone, and of
   the updates after the first (env creation excluded);
3. *SFT*: ``vla-forget adapt --method sft`` on a synthetic RLDS dataset of the
   target task (128 px images): samples per second per thread count (mean of
   ``batch_size / update_s`` after the first update).

    python benchmarks/perf/adapt_throughput.py [--updates 3] [--episodes 4] [--max-episode-steps 50]
        [--workers 2] [--sft-updates 30] [--batch-size 32] [--threads 1 2] [--skip-rollouts] [--device cuda]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from vla_forget.jsonio import write_json

TASK = "PlaceCubeOnTarget-v1"
BASE = "small-vla-base-v5"


def bench_rollouts(workers: int, episodes: int, steps: int, image_size: int) -> dict:
    from vla_forget.bench import execute
    from vla_forget.policies import load_policy
    from vla_forget.rollout import EpisodeJob

    h = load_policy(BASE).checkpoint_hash()
    jobs = [EpisodeJob(policy_key=BASE, policy_spec=BASE, policy_hash=h, task=TASK, seeds=[s], max_episode_steps=steps,
                       image_size=image_size) for s in range(episodes)]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        execute(jobs, os.path.join(d, "episodes.jsonl"), workers, len(jobs), 0, progress=False)
        wall = time.perf_counter() - t0
    return {"episodes": episodes, "env_steps": episodes * steps, "wall_s": round(wall, 1),
            "steps_per_s": round(episodes * steps / wall, 2)}


def ppo_rollouts(workers: int, updates: int, episodes: int, steps: int, image_size: int, threads: int) -> dict:
    from vla_forget.adapt import ppo
    from vla_forget.adapt.configs import PPOConfig

    with tempfile.TemporaryDirectory() as d:
        cfg = PPOConfig(base=BASE, out=os.path.join(d, "ppo"), task=TASK, updates=updates,
                        save_every=updates, episodes_per_update=episodes, max_episode_steps=steps, workers=workers,
                        image_size=image_size, threads=threads, progress=False)
        t0 = time.perf_counter()
        ppo.train(cfg)
        wall = time.perf_counter() - t0
        with open(os.path.join(cfg.out, "log.jsonl")) as f:
            rows = [json.loads(x) for x in f]
    n = rows[-1]["env_steps"]
    rollout_s = sum(r["rollout_s"] for r in rows)
    later = rows[1:]
    later_steps = episodes * steps * len(later)
    return {"updates": updates, "episodes_per_update": episodes, "env_steps": n, "wall_s": round(wall, 1),
            "steps_per_s": round(n / wall, 2), "rollout_steps_per_s": round(n / rollout_s, 2),
            "steady_steps_per_s": round(later_steps / sum(r["update_s"] for r in later), 2) if later else None,
            "learning_s_per_update": round(float(np.mean([r["update_s"] - r["rollout_s"] for r in rows])), 2),
            "rollout_s_per_update": round(rollout_s / len(rows), 2)}


def _demos(n: int, T: int, size: int, width: int):
    rng = np.random.default_rng(0)
    colours = ("red", "green", "blue")
    for i in range(n):
        yield dict(image=rng.integers(0, 256, (T, size, width, 3), dtype=np.uint8),
                   state=rng.normal(size=(T, 16)).astype(np.float32), action=rng.uniform(-1, 1, (T, 7)).astype(np.float32),
                   instruction=f"put the {colours[i % 3]} cube on the {colours[(i + 1) % 3]} target", seed=i, task=TASK)


def sft_rate(data: str, updates: int, batch_size: int, threads: int, device: str = "cpu") -> dict:
    from vla_forget.adapt import sft
    from vla_forget.adapt.configs import SFTConfig

    with tempfile.TemporaryDirectory() as d:
        cfg = SFTConfig(base=BASE, out=os.path.join(d, "sft"), task=TASK, data=[data], updates=updates,
                        save_every=updates, batch_size=batch_size, threads=threads, device=device, progress=False)
        sft.train(cfg)
        with open(os.path.join(cfg.out, "log.jsonl")) as f:
            rows = [json.loads(x) for x in f][1:]
    rate = float(np.mean([batch_size / r["update_s"] for r in rows]))
    return {"device": device, "threads": threads, "batch_size": batch_size, "samples_per_s": round(rate, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=3, help="PPO updates (bench runs updates x episodes episodes)")
    ap.add_argument("--episodes", type=int, default=4, help="episodes per PPO update")
    ap.add_argument("--max-episode-steps", type=int, default=50, help="episode length (the task's is 100)")
    ap.add_argument("--workers", type=int, default=2, help="simulator processes for both")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--ppo-threads", type=int, default=1, help="trainer threads for PPO")
    ap.add_argument("--sft-updates", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="SFT thread counts")
    ap.add_argument("--skip-rollouts", action="store_true", help="measure SFT only")
    ap.add_argument("--device", default="cpu", help="SFT training device: cpu or cuda (rollouts stay on the CPU)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    import torch

    result = {"task": TASK, "policy": BASE, "image_size": args.image_size, "torch": torch.__version__,
              "cpus": os.cpu_count()}
    if not args.skip_rollouts:
        steps, n = args.max_episode_steps, args.updates * args.episodes
        result["bench"] = bench_rollouts(args.workers, n, steps, args.image_size)
        print(f"bench rollouts: {result['bench']['steps_per_s']} env steps/s ({n} episodes of {steps} steps, "
              f"{args.workers} workers, env creation included)", flush=True)
        result["ppo"] = ppo_rollouts(args.workers, args.updates, args.episodes, steps, args.image_size, args.ppo_threads)
        p = result["ppo"]
        result["ppo_vs_bench"] = round(p["steps_per_s"] / result["bench"]["steps_per_s"], 3)
        print(f"ppo: {p['steps_per_s']} env steps/s overall ({result['ppo_vs_bench']:.2f}x bench), "
              f"{p['rollout_steps_per_s']} in its rollout phases, {p['steady_steps_per_s']} after the first update; "
              f"learning {p['learning_s_per_update']} s per update vs rollouts {p['rollout_s_per_update']} s", flush=True)
    with tempfile.TemporaryDirectory() as d:
        from vla_forget.datasets import write_dataset

        data = os.path.join(d, "demos")
        from vla_forget.policies import load_policy

        size = args.image_size
        # the base's camera layout: a two-camera policy reads front and wrist views side by side
        width = 2 * size if getattr(load_policy(BASE), "wrist_camera", False) else size
        write_dataset(data, _demos(12, 40, size, width), name="synthetic_place", image_shape=(size, width, 3),
                      state_dim=16)
        result["sft"] = [sft_rate(data, args.sft_updates, args.batch_size, t, args.device) for t in args.threads]
    for r in result["sft"]:
        print(f"sft: {r['samples_per_s']} samples/s ({r['device']}, {r['threads']} threads, batch {r['batch_size']})")
    if args.json:
        write_json(args.json, result, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
