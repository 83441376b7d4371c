"""The cost of the review camera (the 256 px camera videos are recorded from), side by side in one run.

1. *per episode*: in this process, one PlaceCubeOnTarget-v2 env with the review camera and one without, the base
   policy (small-vla-base-v6) on the same seed, interleaved: a video episode (frames captured every step,
   captioned, mp4 and still written) and an episode without video on each. The camera costs only where it is
   captured: the episodes without video should take the same time on both envs.
2. *bench*: the same small bench (two battery tasks and the target, base and one other policy, videos of the first
   ``--videos`` seeds) with ``--review-size 256`` and ``--review-size 0``, alternated, wall time of each.

    python benchmarks/perf/review_camera.py [--reps 3] [--bench-reps 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from vla_forget.jsonio import write_json

TASK = "PlaceCubeOnTarget-v2"
POLICY = "small-vla-base-v6"


def per_episode(reps: int, review_size: int) -> dict:
    from vla_forget import rollout
    from vla_forget.envs import make_task_env
    from vla_forget.policies import load_policy

    torch.set_num_threads(1)
    policy = load_policy(POLICY)
    envs = {name: make_task_env(TASK, image_size=128, render_images=True, wrist_camera=True, review_size=size)
            for name, size in (("review", review_size), ("policy camera", 0))}
    times: dict = {(name, video): [] for name in envs for video in (True, False)}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps + 1):  # the first round warms both envs up and is not counted
            for name, env in envs.items():
                for video in (True, False):
                    seed = 200_000 + rep
                    job = rollout.EpisodeJob(policy_key=POLICY, policy_spec=POLICY, policy_hash="bench", task=TASK,
                                             seeds=[seed], image_size=128, video_seeds=[seed] if video else [],
                                             video_dir=os.path.join(tmp, name.replace(" ", "-")),
                                             review_size=review_size if name == "review" else 0)
                    t0 = time.perf_counter()
                    rollout.run_episodes(env, policy, job)
                    if rep:
                        times[(name, video)].append(time.perf_counter() - t0)
    for env in envs.values():
        env.close()
    best = {f"{name}, {'video' if video else 'no video'}": round(min(t), 3) for (name, video), t in times.items()}
    extra = best["review, video"] - best["policy camera, video"]
    return {"task": TASK, "steps": 100, "seconds_per_episode": best, "extra_s_per_video_episode": round(extra, 3),
            "extra_ms_per_frame": round(1000 * extra / 101, 1),
            "no_video_ratio": round(best["review, no video"] / best["policy camera, no video"], 3)}


def bench(reps: int, videos: int, episodes: int, workers: int) -> dict:
    from vla_forget.bench import resolve_config, run_bench

    walls: dict = {256: [], 0: []}
    with tempfile.TemporaryDirectory() as tmp:
        battery = os.path.join(tmp, "two-v2.yaml")
        with open(battery, "w") as f:
            f.write(f"id: two\nversion: 2\nepisodes: {episodes}\nseed_start: 100000\n"
                    "target: place-cube-on-target-v2\ntasks: [PickCube-v2, PushCube-v2]\n")
        for rep in range(reps):
            for size in (256, 0):
                out = os.path.join(tmp, f"b{rep}-{size}")
                cfg = resolve_config(out, policies=["small-vla-base-v5", POLICY], base=POLICY, battery=battery,
                                     target="place-cube-on-target-v2", episodes=episodes, target_episodes=episodes,
                                     videos_per_task=videos, review_size=size, workers=workers, progress=False)
                t0 = time.perf_counter()
                run_bench(cfg, log=lambda *_: None)
                walls[size].append(round(time.perf_counter() - t0, 1))
    n = 2 * 3 * episodes
    return {"episodes": n, "video_episodes": 2 * 3 * min(videos, episodes), "workers": workers,
            "wall_s_review_256": walls[256], "wall_s_review_0": walls[0],
            "ratio_min": round(min(walls[256]) / min(walls[0]), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--review-size", type=int, default=256)
    ap.add_argument("--bench-reps", type=int, default=2, help="0 skips the bench comparison")
    ap.add_argument("--episodes", type=int, default=6, help="per task in the bench comparison")
    ap.add_argument("--videos", type=int, default=2, help="videos per policy and task in the bench comparison")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    out = {"per_episode": per_episode(args.reps, args.review_size)}
    print(out["per_episode"], flush=True)
    if args.bench_reps:
        out["bench"] = bench(args.bench_reps, args.videos, args.episodes, args.workers)
        print(out["bench"], flush=True)
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
