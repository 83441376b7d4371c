"""Conformance of every registered task with the task contract (``envs/base.py``).

Generated from the task registry: each id gets the same reset / step / seed /
shape / success-flag / truncation checks on the real CPU simulator (one env
per task, shared by the tests of that task, 64 px images).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vla_forget.envs import TASKS, task_info
from vla_forget.registry import UnknownIdError

IDS = TASKS.ids()
IMAGE = 64


@pytest.fixture(scope="module", params=IDS)
def env(request):
    from vla_forget.envs import make_task_env, task_unavailable_reason

    reason = task_unavailable_reason(request.param)
    if reason:  # SimplerEnv tasks without their simulator or assets
        pytest.skip(reason)
    e = make_task_env(request.param, image_size=IMAGE, render_images=True)
    yield e
    e.close()


def test_registry_lists_at_least_six_panda_tasks_with_facts():
    assert len(IDS) >= 6
    for tid in IDS:
        info = task_info(tid)
        assert info.id == tid and info.instruction and info.max_episode_steps > 0
    assert task_info("PlaceCubeOnTarget-v1").pick_and_place
    assert sum(task_info(t).pick_and_place for t in IDS) >= 3


def test_import_is_light():
    code = (
        "import sys, vla_forget.envs as e; e.TASKS.ids(); e.task_info('PickCube-v1');"
        "heavy = [m for m in ('torch', 'mani_skill', 'sapien') if m in sys.modules]; print(heavy); assert not heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_id_lists_valid_ids():
    from vla_forget.envs import make_task_env

    with pytest.raises(UnknownIdError) as err:
        make_task_env("NoSuchTask-v1")
    for tid in IDS:
        assert tid in str(err.value)
    with pytest.raises(UnknownIdError):
        task_info("PickCube-v9")


def test_reset_and_step_shapes(env):
    import torch

    obs = env.reset([0])
    assert obs.image.shape == (1, IMAGE, IMAGE, 3) and obs.image.dtype == torch.uint8
    assert obs.state.shape == (1, 16) and obs.state.dtype == torch.float32
    assert len(obs.instruction) == 1 and obs.instruction[0] and "{" not in obs.instruction[0]
    assert obs.instruction == env.instructions()
    assert obs.privileged == {}
    assert env.frames().shape == (1, IMAGE, IMAGE, 3) and env.frames().dtype == np.uint8
    obs, reward, terminated, truncated, info = env.step(torch.zeros(1, 7))
    assert obs.state.shape == (1, 16) and obs.image.shape == (1, IMAGE, IMAGE, 3)
    assert reward.shape == (1,) and reward.dtype == torch.float32
    assert terminated.dtype == torch.bool and truncated.dtype == torch.bool
    assert info["is_success"].shape == (1,) and info["is_success"].dtype == torch.bool
    assert info["dense_reward"].shape == (1,)
    with pytest.raises(ValueError):
        env.step(torch.zeros(1, 6))
    with pytest.raises(ValueError):
        env.reset([0, 1])


def test_seed_determinism(env):
    import torch

    a = env.reset([3])
    env.step(torch.zeros(1, 7))
    b = env.reset([3])
    assert torch.equal(a.state, b.state)
    assert torch.equal(a.image, b.image)
    assert a.instruction == b.instruction
    c = env.reset([4])
    assert not torch.equal(a.state, c.state)
    assert not torch.equal(a.image, c.image)


def test_runs_to_max_episode_steps_with_success_flag_every_step(env):
    import torch

    T = env.info.max_episode_steps
    env.reset([1])
    gen = torch.Generator().manual_seed(0)
    for t in range(1, T + 1):
        action = torch.rand(1, 7, generator=gen) * 4 - 2  # out of range on purpose: the env clips
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["is_success"].dtype == torch.bool and info["is_success"].shape == (1,)
        assert not bool(terminated[0])
        assert bool(truncated[0]) == (t == T), t
        assert torch.isfinite(obs.state).all()


def test_language_grounded_tasks_vary_the_instruction():
    from vla_forget.envs import make_task_env

    for tid in ("StackColorCube-v1", "PlaceCubeOnTarget-v1"):
        with make_task_env(tid, render_images=False) as e:
            seen = {e.reset([s]).instruction[0] for s in range(8)}
        assert len(seen) >= 3, (tid, seen)


def test_a_scene_can_be_reset_with_each_of_its_instructions():
    import torch

    from vla_forget.envs import make_task_env, task_instructions

    assert task_instructions("PickCube-v1") == [task_info("PickCube-v1").instruction]
    for tid, n in (("StackColorCube-v1", 6), ("PlaceCubeOnTarget-v1", 9)):
        names = task_instructions(tid)
        assert len(names) == n == len(set(names)), names
        with make_task_env(tid, image_size=64, privileged=True) as e:
            assert e.all_instructions() == names
            own = e.reset([11])
            goals = set()
            for k in range(n):
                other = e.reset([11], instruction_index=k)
                assert other.instruction == [names[k]] == e.instructions()
                # the same scene: same pixels and robot; only the words (and so the goal) differ
                assert torch.equal(own.image, other.image) and torch.equal(own.state, other.state)
                goals.add(tuple(other.privileged["goal_pos"].flatten().tolist()))
            assert len(goals) >= 3, goals
            assert e.reset([11]).instruction == own.instruction  # the option does not stick
            with pytest.raises(ValueError, match=f"0..{n - 1}"):
                e.reset([11], instruction_index=n)
    with make_task_env("PickCube-v1", render_images=False) as e:
        with pytest.raises(ValueError, match="one instruction"):
            e.reset([0], instruction_index=0)


def test_cpu_parallel_envs_are_refused():
    import torch

    from vla_forget.envs import make_task_env

    if torch.cuda.is_available():
        pytest.skip("CUDA present: num_envs > 1 uses GPU physics")
    with pytest.raises(ValueError, match="processes"):
        make_task_env("PickCube-v1", num_envs=2)


def test_the_maniskill_env_underneath_is_public_for_probes(env):
    from vla_forget.envs.maniskill import ManiSkillTaskEnv

    if not isinstance(env, ManiSkillTaskEnv):
        pytest.skip("not a ManiSkill task")
    env.reset([3])
    u = env.unwrapped
    assert u.num_envs == 1 and hasattr(u, "agent") and hasattr(u, "scene")
    assert u.agent.tcp.pose.p.shape == (1, 3)


@pytest.mark.parametrize("task_id", ["PickCube-v1", "PlaceCubeOnTarget-v2"])
def test_an_evaluation_env_skips_the_shaped_reward_and_runs_the_same_episode(task_id):
    """Benches build their envs with ``dense_reward=False``: no shaped reward is computed or reported, and the
    episode (states, success) is the one a learner's env runs."""
    import torch

    from vla_forget.envs import make_task_env

    envs = [make_task_env(task_id, render_images=False, privileged=True, dense_reward=d) for d in (True, False)]
    try:
        obs = [e.reset([5]) for e in envs]
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            a = torch.rand(1, 7, generator=gen) * 2 - 1
            out = [e.step(a) for e in envs]
            assert torch.equal(out[0][0].state, out[1][0].state)
            assert torch.equal(out[0][4]["is_success"], out[1][4]["is_success"])
            assert torch.equal(out[0][1], out[1][1])  # the reward: success
        assert "dense_reward" in out[0][4] and "dense_reward" not in out[1][4]
        assert envs[1].unwrapped.reward_mode == "sparse"
    finally:
        for e in envs:
            e.close()


def test_maniskills_noise_is_dropped_and_its_real_warnings_kept(monkeypatch):
    """ManiSkill's actor-builder pose and render-device messages say nothing to a user: dropped; any other
    warning of its logger still shows; VLA_FORGET_VERBOSE=1 keeps everything."""
    import logging

    from mani_skill.utils.logging_utils import logger

    from vla_forget.envs.maniskill import quiet_maniskill_logs

    seen = []

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    catch = Catch()
    logger.addHandler(catch)
    saved = list(logger.filters)
    try:
        logger.filters[:] = [f for f in saved if type(f).__name__ != "_DropNoise"]
        monkeypatch.delenv("VLA_FORGET_VERBOSE", raising=False)
        quiet_maniskill_logs()
        quiet_maniskill_logs()  # idempotent: one filter
        assert sum(type(f).__name__ == "_DropNoise" for f in logger.filters) == 1
        logger.warning("No initial pose set for actor builder of cube, setting to default pose")
        logger.warning("Requested to use render device \"sapien_cuda\", but CUDA device was not found")
        logger.warning("the scene has no lights")
        assert seen == ["the scene has no lights"]
    finally:
        logger.removeHandler(catch)
        logger.filters[:] = saved
    monkeypatch.setenv("VLA_FORGET_VERBOSE", "1")
    before = list(logger.filters)
    quiet_maniskill_logs()
    assert logger.filters == before
