"""The optional wrist camera: the env adds a view without changing the task, the small VLA reads both
views, pretraining grows a front-only model, and the shift augmentation keeps the views apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vla_forget.policies.base import Observation
from vla_forget.policies.small_vla import SmallVLA, SmallVLAConfig

TINY = dict(image_size=32, conv_channels=(8, 16), residual_stages=1, image_grid=2, state_dim=16, d_model=32,
            n_layers=1, context_layers=1, heads=2, ff_mult=2, text_layers=1, text_tokens=2, max_instruction_bytes=32,
            keypoints=4, wrist_image_size=16, wrist_image_grid=1)


def _obs(B: int, H: int, W: int, seed: int = 0) -> Observation:
    g = torch.Generator().manual_seed(seed)
    return Observation(image=torch.randint(0, 256, (B, H, W, 3), generator=g, dtype=torch.uint8),
                       state=torch.randn(B, 16, generator=g), instruction=["pick the cube"] * B)


# --- the small VLA --------------------------------------------------------------------------------
def test_wrist_policy_reads_both_halves_and_refuses_square_images():
    m = SmallVLA.random_init(0, wrist_camera=True, **TINY)
    assert m.wrist_camera and m.config.image_tokens == (4 + 1) + (1 + 1)
    obs = _obs(2, 32, 64)
    assert m.encode(obs).shape == (2, m.n_memory, 32)
    tokens = torch.zeros(2, 7, dtype=torch.long)
    base = m.action_logits(obs, tokens)
    # each half matters: changing only the wrist half (or only the front half) changes the logits
    for sl in (slice(32, 64), slice(0, 32)):
        other = Observation(image=obs.image.clone(), state=obs.state, instruction=obs.instruction)
        other.image[:, :, sl] = 255 - other.image[:, :, sl]
        assert not torch.allclose(m.action_logits(other, tokens), base)
    with pytest.raises(ValueError, match="wrist_camera=True"):
        m.encode(_obs(2, 32, 32))
    assert not SmallVLA.random_init(0, **{k: v for k, v in TINY.items()}).wrist_camera


def test_wrist_policy_save_load_and_old_configs(tmp_path):
    m = SmallVLA.random_init(3, wrist_camera=True, **TINY)
    m.save(str(tmp_path / "w"))
    again = SmallVLA.load(str(tmp_path / "w"))
    obs, tokens = _obs(2, 32, 64, seed=1), torch.randint(0, 256, (2, 7))
    assert again.wrist_camera and torch.equal(again.action_logits(obs, tokens), m.action_logits(obs, tokens))
    # a config written before the field existed loads front-only
    d = SmallVLAConfig(**{k: v for k, v in TINY.items() if not k.startswith("wrist")}).to_dict()
    for k in ("wrist_camera", "wrist_image_size", "wrist_image_grid"):
        d.pop(k)
    assert SmallVLAConfig.from_dict(d).wrist_camera is False


# --- pretraining ----------------------------------------------------------------------------------
def test_pretrain_grows_a_front_only_model_and_checks_the_data(tmp_path):
    from vla_forget.pretrain import PretrainConfig, PretrainError, _load_model

    front = SmallVLA.random_init(1, **TINY)
    front.save(str(tmp_path / "front"))
    cfg = PretrainConfig(data=["x"], out=str(tmp_path / "run"), init=str(tmp_path / "front"), seed=5)
    events = []
    grown = _load_model(cfg, (32, 64, 3), events.append)
    assert grown.wrist_camera and events[0]["event"] == "wrist_camera_added" and events[0]["new_parameters"] > 0
    front_sd, grown_sd = front.state_dict(), grown.state_dict()
    assert set(grown_sd) - set(front_sd) == {k for k in grown_sd if k.startswith("wrist.")} != set()
    assert all(torch.equal(front_sd[k], grown_sd[k]) for k in front_sd)
    # the same square data keeps the model as it is; a two-camera model refuses square data
    assert not _load_model(cfg, (32, 32, 3)).wrist_camera
    grown.save(str(tmp_path / "wide"))
    with pytest.raises(PretrainError, match="--wrist-camera"):
        _load_model(PretrainConfig(data=["x"], out=str(tmp_path / "run2"), init=str(tmp_path / "wide")), (32, 32, 3))


def test_shift_augmentation_keeps_the_two_views_apart():
    from vla_forget.pretrain import shift_images

    images = np.zeros((16, 8, 16, 3), np.uint8)
    images[:, :, 8:] = 200  # the wrist half
    images[:, 3, 2] = 90  # a marker pixel in the front half
    out = shift_images(images, 2, np.random.default_rng(0))
    assert (out[:, :, :8] != 200).all() and (out[:, :, 8:] == 200).all()
    moved = [tuple(np.argwhere(out[i, :, :8, 0] == 90)[0]) if (out[i, :, :8, 0] == 90).any() else None for i in range(16)]
    assert len(set(moved)) > 1  # the shift does move the front view


# --- the simulator --------------------------------------------------------------------------------
TASK = "PullCube-v1"


@pytest.fixture(scope="module")
def two_runs():
    """The same seed and actions with and without the wrist camera (64 px)."""
    from vla_forget.envs import make_task_env
    from vla_forget.policies.expert import ScriptedExpert

    expert = ScriptedExpert()
    runs = {}
    for wrist in (False, True):
        env = make_task_env(TASK, image_size=64, privileged=True, wrist_camera=wrist)
        obs = env.reset([7])
        images, states = [obs.image.clone()], [obs.state.clone()]
        for _ in range(6):
            obs, *_ = env.step(expert.act(obs, greedy=True))
            images.append(obs.image.clone())
            states.append(obs.state.clone())
        runs[wrist] = (torch.cat(images), torch.cat(states), env.frames().shape)
        env.close()
    return runs


def test_wrist_camera_adds_a_view_and_changes_nothing_else(two_runs):
    (front, s0, f0), (both, s1, f1) = two_runs[False], two_runs[True]
    assert front.shape[1:] == (64, 64, 3) and both.shape[1:] == (64, 128, 3) and f1 == (1, 64, 128, 3)
    assert torch.equal(s0, s1)  # same robot, same physics: the same trajectory
    assert torch.equal(both[:, :, :64], front)  # the front view is the front-only image
    wrist = both[:, :, 64:].float()
    assert (wrist - both[:, :, :64].float()).abs().mean() > 10  # a different picture, not a copy
    assert (wrist[-1] - wrist[0]).abs().mean() > 1  # it moves with the hand


def test_wrist_camera_is_refused_where_there_is_none():
    from vla_forget.envs import TASKS, make_task_env

    simpler = [t for t in TASKS.ids() if t.startswith("Simpler")]
    with pytest.raises(ValueError, match="no wrist camera"):
        make_task_env(simpler[0], wrist_camera=True)


def test_demos_with_wrist_camera_then_pretrain_then_roll_out(tmp_path):
    """The whole path: two-camera demonstrations, a two-camera policy trained on them, and a rollout
    whose env gives that policy both views (the rollout worker reads the policy's wrist_camera)."""
    pytest.importorskip("tensorflow_datasets", reason="needs the rlds extra: pip install 'vla-forget[rlds]'")
    from vla_forget.datasets import open_dataset
    from vla_forget.pretrain import PretrainConfig, pretrain
    from vla_forget import rollout
    from vla_forget.rollout import EpisodeJob, close_all, run_job

    out = tmp_path / "pull"
    env = dict(os.environ, VLA_FORGET_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "vla_forget.cli", "demos", "--task", TASK, "--episodes", "1", "--out", str(out),
           "--image-size", "32", "--wrist-camera", "--workers", "0", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ds = open_dataset(str(out))
    assert ds.image_shape == (32, 64, 3)
    with open(out / "dataset.json") as f:
        assert json.load(f)["cameras"] == ["front", "wrist"]
    init = tmp_path / "init"
    SmallVLA.random_init(0, **{**TINY, "keypoints": 0}).save(str(init))
    s = pretrain(PretrainConfig(data=[str(out)], out=str(tmp_path / "run"), init=str(init), steps=2, batch_size=4,
                                val_fraction=0.0, eval_every=2, save_every=2, progress=False))
    assert SmallVLA.load(s["checkpoint"]).wrist_camera
    try:
        records = run_job(EpisodeJob(policy_key="p", policy_spec=s["checkpoint"], policy_hash="h", task=TASK, seeds=[3],
                                     max_episode_steps=2, image_size=32))
        assert len(records) == 1 and any(env.wrist_camera for env in rollout.ENVS.envs())
    finally:
        close_all()


def test_front_only_policies_get_the_front_half_of_two_camera_states():
    from vla_forget.policies.base import views_for

    front, wide = SmallVLA.random_init(0, **TINY), SmallVLA.random_init(0, wrist_camera=True, **TINY)
    obs = _obs(3, 32, 64)
    assert views_for(wide, obs) is obs
    cut = views_for(front, obs)
    assert cut.image.shape == (3, 32, 32, 3) and torch.equal(cut.image, obs.image[:, :, :32])
    assert torch.equal(front.action_logits(cut, torch.zeros(3, 7, dtype=torch.long)),
                       front.action_logits(Observation(image=obs.image[:, :, :32].contiguous(), state=obs.state,
                                                       instruction=obs.instruction), torch.zeros(3, 7, dtype=torch.long)))
    square = _obs(2, 32, 32)
    assert views_for(front, square) is square


def test_shipped_bases_load_each_with_its_cameras_and_card():
    from importlib.resources import files

    from vla_forget.policies import load_policy

    for pid, wrist in (("small-vla-base-v5", True), ("small-vla-base-v6", True)):
        folder = files("vla_forget.assets").joinpath(pid)
        size = sum(f.stat().st_size for f in folder.iterdir())
        assert size < 20e6 and folder.joinpath("MODEL_CARD.md").is_file(), pid
        policy = load_policy(pid)
        assert isinstance(policy, SmallVLA) and policy.wrist_camera is wrist and policy.unnorm_key == "pretrain_mix"
        obs = _obs(2, 128, 256 if wrist else 128)
        assert torch.isfinite(policy.act(obs)).all()
    # v6 is v5 trained on with v5's statistics kept (pretrain --keep-statistics): the same tokenizer
    v5, v6 = load_policy("small-vla-base-v5"), load_policy("small-vla-base-v6")
    assert v6.dataset_statistics == v5.dataset_statistics and torch.equal(v6.state_mean, v5.state_mean)
