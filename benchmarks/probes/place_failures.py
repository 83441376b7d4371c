"""Why does a policy fail the target? Roll it out on PlaceCubeOnTarget-v1 and sort each episode's end state.

Each episode runs the task's full length on its evaluation seeds, and the
simulator's privileged state (never shown to the policy) sorts the ending into
the first class that applies:

* ``success``: the named cube rests on the named disc, let go;
* ``on named disc, not let go``: it is there (within the task's 3 cm), but held or moving;
* ``on another disc``: the named cube ended on a disc the instruction did not name
  (the destination was not read);
* ``carried, still in the air``: the named cube was lifted and is still off the table
  at the end (held, or on top of another cube);
* ``carried, put down off every disc``: the named cube was lifted (at least 3 cm) and ended
  on the table on none of the discs (dropped, or put down in the wrong place);
* ``moved another cube``: a cube that was not named was lifted or pushed (2 cm or more),
  the named one was not lifted (the cube name was not read);
* ``no grasp``: nothing was lifted.

    python benchmarks/probes/place_failures.py --policy small-vla-base-v5 --episodes 30
    python benchmarks/probes/place_failures.py --policy runs/adapt/sft/checkpoints/update-002000 \\
        --episodes 30 --workers 2 --json runs/probe/failures-sft.json
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import sys
from typing import Dict, List

import numpy as np
import torch

from vla_forget.jsonio import write_json

TASK = "PlaceCubeOnTarget-v1"
CLASSES = ["success", "on named disc, not let go", "on another disc", "carried, still in the air",
           "carried, put down off every disc", "moved another cube", "no grasp"]


def classify(start: np.ndarray, end: np.ndarray, max_z: np.ndarray, discs: np.ndarray, named: int, disc: int,
             success: bool, half: float, tol: float) -> Dict[str, object]:
    """Sort one ending. ``start``/``end`` cube centres ``[3, 3]``, ``max_z`` the highest centre of each cube,
    ``discs`` the disc centres ``[3, 3]``, ``named``/``disc`` the instruction's cube and disc."""
    to_discs = np.linalg.norm(end[named, None, :2] - discs[:, :2], axis=-1)
    out = {"named_to_named_disc_m": round(float(to_discs[disc]), 4)}
    lifted = max_z > half + 0.03
    moved = np.linalg.norm(end[:, :2] - start[:, :2], axis=-1) > 0.02
    if success:
        out["class"] = "success"
    elif to_discs[disc] <= tol:
        out["class"] = "on named disc, not let go"
    elif (to_discs <= tol).any():
        out["class"] = "on another disc"
    elif lifted[named] and end[named, 2] > half + 0.01:
        out["class"] = "carried, still in the air"
    elif lifted[named]:
        out["class"] = "carried, put down off every disc"
    elif any((lifted[i] or moved[i]) for i in range(len(start)) if i != named):
        out["class"] = "moved another cube"
    else:
        out["class"] = "no grasp"
    return out


def run_seeds(args) -> List[Dict[str, object]]:
    policy_spec, seeds, greedy = args
    from vla_forget.envs import make_task_env
    from vla_forget.policies import load_policy

    torch.set_num_threads(1)
    policy = load_policy(policy_spec).eval()
    env = make_task_env(TASK, wrist_camera=bool(getattr(policy, "wrist_camera", False)))
    u = env.unwrapped  # the ManiSkill env: privileged state for the classification only
    out = []
    for seed in seeds:
        obs = env.reset([seed])
        policy.reset(1)
        cubes = lambda: torch.stack([c.pose.p for c in u.cubes], 1)[0].cpu().numpy()  # noqa: E731
        start = cubes()
        max_z = start[:, 2].copy()
        success = success_once = False
        gen = torch.Generator().manual_seed(seed)
        for _ in range(env.info.max_episode_steps):
            with torch.no_grad():
                action = policy.act(obs, greedy=greedy, generator=gen)
            obs, _r, _term, _trunc, info = env.step(action)
            max_z = np.maximum(max_z, cubes()[:, 2])
            success = bool(info["is_success"][0])
            success_once = success_once or success
        discs = torch.stack([t.pose.p for t in u.targets], 1)[0].cpu().numpy()
        rec = classify(start, cubes(), max_z, discs, int(u.cube_idx[0]), int(u.other_idx[0]), success,
                       float(u.cube_half_size), float(u.place_tol))
        rec.update(success_once=success_once, seed=seed, instruction=env.instructions()[0])
        out.append(rec)
        print(f"seed {seed}: {rec['class']} ({rec['instruction']})", flush=True)
    env.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="policy id or checkpoint folder")
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed-start", type=int, default=200000, help="the target's evaluation seeds (default 200000)")
    ap.add_argument("--workers", type=int, default=2, help="processes, one env each")
    ap.add_argument("--greedy", action="store_true", help="act greedily instead of sampling")
    ap.add_argument("--json", help="write the episodes and the counts here")
    args = ap.parse_args(argv)
    seeds = list(range(args.seed_start, args.seed_start + args.episodes))
    parts = [(args.policy, seeds[i :: max(1, args.workers)], args.greedy) for i in range(max(1, args.workers))]
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            episodes = [r for part in pool.map(run_seeds, parts) for r in part]
    else:
        episodes = run_seeds(parts[0])
    episodes.sort(key=lambda r: r["seed"])
    counts = collections.Counter(r["class"] for r in episodes)
    once = collections.Counter(r["class"] for r in episodes if r["success_once"])
    print(f"{args.policy}, {len(episodes)} episodes of {TASK} (class at the end; of them, solved at some step):")
    for c in CLASSES:
        print(f"  {c:34s} {counts.get(c, 0):3d}  ({once.get(c, 0)})")
    if args.json:
        write_json(args.json, {"policy": args.policy, "task": TASK, "greedy": args.greedy,
                               "counts": {c: counts.get(c, 0) for c in CLASSES},
                               "solved_at_some_step": {c: once.get(c, 0) for c in CLASSES}, "episodes": episodes}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
