"""An episode's outcome depends on its seed and its policy only, not on what the env ran before: the CPU simulator
keeps state across a plain reset (the same seed and actions ended otherwise after another episode), so each
episode starts from a rebuilt scene. On the real simulator, with the real base policy."""

from __future__ import annotations

import numpy as np
import torch

from vla_forget import rollout
from vla_forget.adapt import common
from vla_forget.adapt.rollouts import run_episodes
from vla_forget.policies import load_policy


def test_the_same_seed_gives_the_same_episode_whatever_ran_before():
    torch.set_num_threads(1)
    policy = load_policy("small-vla-base-v6").eval()
    env = rollout.get_env("PlaceCubeOnTarget-v2", image_size=128, render=True, num_envs=1, max_steps=None,
                          sim_backend="cpu", device="cpu", wrist_camera=True)
    seeds, gens = common.train_seeds(0, 1, 2), common.sampling_seeds(0, 1, 8)
    try:
        first = run_episodes(env, policy, [seeds[1]], gens[6], "cpu")
        run_episodes(env, policy, [seeds[1]], gens[5], "cpu")  # after this one, a plain reset diverged at step 7
        again = run_episodes(env, policy, [seeds[1]], gens[6], "cpu")
        for key in ("state", "image", "tokens", "success"):
            assert np.array_equal(first[key], again[key]), key
    finally:
        rollout.close_all()
