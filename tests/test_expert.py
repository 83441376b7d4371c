"""The scripted expert (``expert-v1``) really solves the tasks it claims (CPU sim, no rendering).

Each episode stops a few steps after the first success (the full-length rates
are in the ``envs`` docs; measured with 30 seeds per task, all 30/30).
"""

from __future__ import annotations

import pytest

SOLVED = [
    "PickCube-v1",
    "StackCube-v1",
    "StackColorCube-v1",
    "PlaceCubeOnTarget-v1",
    "PushCube-v1",
    "PullCube-v1",
    "PlaceSphere-v1",
]
SEEDS = range(100, 105)


def _run(env, expert, seed, extra_steps=5):
    obs = env.reset([seed])
    expert.reset(1)
    first = None
    for t in range(env.info.max_episode_steps):
        obs, _, _, _, info = env.step(expert.act(obs))
        if first is None and bool(info["is_success"][0]):
            first = t
        if first is not None and t >= first + extra_steps:
            break
    return bool(info["is_success"][0])


@pytest.mark.parametrize("task_id", SOLVED)
def test_expert_succeeds(task_id):
    from vla_forget.envs import make_task_env
    from vla_forget.policies import load_policy

    expert = load_policy("expert-v1")
    assert expert.needs_privileged and not expert.needs_image
    with make_task_env(task_id, render_images=False, privileged=True) as env:
        wins = sum(_run(env, expert, s) for s in SEEDS)
    assert wins >= 4, f"{task_id}: {wins}/{len(SEEDS)}"


def test_expert_labels_any_state_and_is_safe_where_unsolved():
    import torch

    from vla_forget.envs import make_task_env
    from vla_forget.policies.expert import ScriptedExpert

    expert = ScriptedExpert()
    gen = torch.Generator().manual_seed(0)
    with make_task_env("StackColorCube-v1", render_images=False, privileged=True) as env:
        obs = env.reset([7])
        for _ in range(15):  # wander off with random actions, then ask for labels
            obs, *_ = env.step(torch.rand(1, 7, generator=gen) * 2 - 1)
            a = expert.act(obs)
            assert a.shape == (1, 7) and torch.isfinite(a).all() and a.abs().max() <= 1
    with make_task_env("LiftPegUpright-v1", render_images=False, privileged=True) as env:
        a = expert.act(env.reset([0]))
    assert torch.equal(a, torch.tensor([[0, 0, 0, 0, 0, 0, 1.0]]))
    with pytest.raises(ValueError, match="privileged"):
        expert.act(obs.__class__(image=None, state=obs.state, instruction=obs.instruction))
