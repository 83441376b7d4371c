"""Does an episode depend on what its env ran before? The same seeds in two orders on one env, with a plain reset
and with the rebuilt scene every CPU episode now starts from.

Each seed is run as bench runs it (the policy's generator seeded by the policy, the task and the seed), first
in ascending then in descending order on one env, in each reset mode; an episode *moved* when its steps
(proprio state at every step) differ between the two orders, and its outcome *changed* when its success at the
end differs. With the rebuilt scene nothing may move.

    python benchmarks/probes/episode_order.py [--task PlaceCubeOnTarget-v2] [--policy small-vla-base-v6] [--seeds 20]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

import numpy as np
import torch


def run_order(env, policy, phash: str, task: str, seeds, plain: bool) -> Dict[int, Dict[str, Any]]:
    from vla_forget import rollout

    reset = env._env.reset
    if plain:  # the reset bench used before: the scene is re-posed, not rebuilt
        def plain_reset(seed=None, options=None):
            return reset(seed=seed, options={k: v for k, v in (options or {}).items() if k != "reconfigure"} or None)
        env._env.reset = plain_reset
    states: Dict[int, Dict[str, Any]] = {}

    try:
        for s in seeds:
            trace = []
            orig_step = env.step

            def step(action, _orig=orig_step):
                out = _orig(action)
                trace.append(out[0].state[0].numpy().copy())
                return out

            env.step = step
            job = rollout.EpisodeJob(policy_key="p", policy_spec="p", policy_hash=phash, task=task, seeds=[int(s)])
            rec = rollout.run_episodes(env, policy, job)[0]
            env.step = orig_step
            states[int(s)] = {"success": rec["success_at_end"], "trace": np.stack(trace)}
    finally:
        env._env.reset = reset
    return states


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="PlaceCubeOnTarget-v2")
    ap.add_argument("--policy", default="small-vla-base-v6")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--seed-start", type=int, default=200_000)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from vla_forget import rollout
    from vla_forget.policies import load_policy

    torch.set_num_threads(1)
    policy = load_policy(args.policy)
    env = rollout.get_env(args.task, image_size=128, render=True, num_envs=1, max_steps=None, sim_backend="cpu",
                          device="cpu", wrist_camera=bool(getattr(policy, "wrist_camera", False)), dense_reward=False,
                          privileged=False)
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    out: Dict[str, Any] = {"task": args.task, "policy": args.policy, "seeds": args.seeds}
    for mode, plain in (("plain reset", True), ("rebuilt scene", False)):
        up = run_order(env, policy, policy.checkpoint_hash(), args.task, seeds, plain)
        down = run_order(env, policy, policy.checkpoint_hash(), args.task, seeds[::-1], plain)
        moved = [s for s in seeds if not np.array_equal(up[s]["trace"], down[s]["trace"])]
        changed = [s for s in seeds if up[s]["success"] != down[s]["success"]]
        out[mode] = {"moved": len(moved), "outcome_changed": len(changed),
                     "success_ascending": sum(up[s]["success"] for s in seeds),
                     "success_descending": sum(down[s]["success"] for s in seeds)}
        print(mode, out[mode], flush=True)
    rollout.close_all()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
