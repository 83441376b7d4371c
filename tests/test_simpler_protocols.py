"""SimplerEnv evaluation protocols: held-out coke-can evaluation (training on RL's Razor's grid, evaluation at
random positions over its area), SimplerEnv's own visual-matching coke-can protocol episode for episode, the
Bridge batteries' coverage of the twins' configurations, and the camera resize (OpenCV's INTER_AREA, as
SimplerEnv's OpenVLA wrapper).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from vla_forget.envs.simpler_tasks import (
    COKE_CAN_POSES,
    GOOGLE_CONTROL_MODE,
    GRID_EXCLUSION,
    HELD_OUT_SEED_START,
    SIMPLER_TASKS,
    coke_can_episode,
    coke_can_vm_episode,
    episode_config,
    held_out_can_xy,
    near_grid_point,
)
from vla_forget.spec import load_battery, load_target

GRID_X = np.linspace(-0.35, -0.12, 10)
GRID_Y = np.linspace(-0.02, 0.42, 10)
#: every configuration the coke-can target trains on: 100 grid points x 3 can poses
TRAINING = {(x, y, p) for x in GRID_X for y in GRID_Y for p in COKE_CAN_POSES}


# --- held-out evaluation ----------------------------------------------------------------------------------
def test_held_out_boundary_is_the_training_seed_limit():
    from vla_forget import demos
    from vla_forget.adapt import common

    assert HELD_OUT_SEED_START == common.TRAIN_SEED_LIMIT == demos.TRAIN_SEED_LIMIT == 100_000
    t = load_target("simpler-pick-coke-can-v2")
    assert t.task.task == "SimplerPickCokeCan-v2" and t.train_seed_start == 0
    assert min(t.task.seeds) >= HELD_OUT_SEED_START


def test_v2_training_seeds_are_v1s_grid():
    rng = np.random.default_rng(0)
    seeds = list(range(3000)) + rng.integers(0, HELD_OUT_SEED_START, 2000).tolist() + [HELD_OUT_SEED_START - 1]
    for s in seeds:
        assert coke_can_episode(s, "SimplerPickCokeCan-v2") == coke_can_episode(s, "SimplerPickCokeCan-v1")
        assert coke_can_episode(s, "SimplerPickCokeCan-v2") in TRAINING
    assert episode_config("SimplerPickCokeCan-v2", 205)["build"] == episode_config("SimplerPickCokeCan-v1", 205)["build"]


def test_target_v1_evaluated_on_the_training_grid_v2_does_not():
    v1 = load_target("simpler-pick-coke-can-v1")
    assert {coke_can_episode(s, v1.task.task) for s in v1.task.seeds} == TRAINING  # the flaw v2 fixes
    v2 = load_target("simpler-pick-coke-can-v2")
    evaluation = [coke_can_episode(s, v2.task.task) for s in v2.task.seeds]
    assert len(evaluation) == 300 and len(set(evaluation)) == 300
    assert not set(evaluation) & TRAINING
    for x, y, pose in evaluation:
        assert not near_grid_point(x, y)
        # in both coordinates farther than GRID_EXCLUSION from every grid point, so no training configuration
        assert np.abs(GRID_X - x).min() > GRID_EXCLUSION or np.abs(GRID_Y - y).min() > GRID_EXCLUSION
        assert -0.35 <= x <= -0.12 and -0.02 <= y <= 0.42
    assert collections.Counter(p for _, _, p in evaluation) == {p: 100 for p in COKE_CAN_POSES}
    c = episode_config("SimplerPickCokeCan-v2", v2.task.seeds[7])
    assert c["reset"]["obj_init_options"]["init_xy"] == list(evaluation[7][:2]) and c["build"][evaluation[7][2]] is True


def test_held_out_positions_are_deterministic_uniform_and_never_on_the_grid():
    seeds = range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + 20000)
    xy = np.array([held_out_can_xy(s) for s in seeds])
    assert [held_out_can_xy(s) for s in seeds[:50]] == [tuple(p) for p in xy[:50]]  # a pure function of the seed
    assert not any(near_grid_point(x, y) for x, y in xy)
    assert xy[:, 0].min() >= -0.35 and xy[:, 0].max() < -0.12 and xy[:, 1].min() >= -0.02 and xy[:, 1].max() < 0.42
    # uniform over the area: each tenth of each axis holds ~10% (binomial sd ~0.2%)
    for values, lo, hi in ((xy[:, 0], -0.35, -0.12), (xy[:, 1], -0.02, 0.42)):
        counts = np.histogram(values, bins=10, range=(lo, hi))[0] / len(values)
        assert np.all(np.abs(counts - 0.1) < 0.01), counts
    assert len({tuple(p) for p in xy}) == len(xy)


# --- SimplerEnv's visual-matching coke-can protocol -------------------------------------------------------
#: scripts/pick_coke_can_visual_matching.sh (in the pull request that adds OpenVLA, #10) (and its rt1_/octo_ twins), verbatim where it matters
SCRIPT_COKE_CAN_OPTIONS = ("lr_switch=True", "upright=True", "laid_vertically=True")
SCRIPT_URDF_VERSIONS = ("None", "recolor_tabletop_visual_matching_1", "recolor_tabletop_visual_matching_2",
                        "recolor_cabinet_visual_matching_1")  # the bare word None: DictAction keeps the string
SCRIPT_OBJ_INIT_X = (-0.35, -0.12, 5)
SCRIPT_OBJ_INIT_Y = (-0.02, 0.42, 5)


def _script_episodes():
    """The script's episodes in its order: for urdf_version, for coke_can_option (shell loops), then
    maniskill2_evaluator's loops: robot x, y, quat (one each), obj x, obj y (parse_range_tuple = np.linspace)."""
    out = []
    for urdf in SCRIPT_URDF_VERSIONS:
        for option in SCRIPT_COKE_CAN_OPTIONS:
            key, value = option.split("=")
            for x in np.linspace(SCRIPT_OBJ_INIT_X[0], SCRIPT_OBJ_INIT_X[1], int(SCRIPT_OBJ_INIT_X[2])):
                for y in np.linspace(SCRIPT_OBJ_INIT_Y[0], SCRIPT_OBJ_INIT_Y[1], int(SCRIPT_OBJ_INIT_Y[2])):
                    out.append(dict(additional={key: value == "True", "urdf_version": urdf}, x=x, y=y))
    return out


def test_visual_matching_seed_map_is_the_scripts_grid():
    episodes = _script_episodes()
    assert len(episodes) == 300
    t = load_target("simpler-pick-coke-can-visual-matching-v1")
    assert t.task.task == "SimplerPickCokeCanVM-v1" and t.task.seeds == list(range(300000, 300300))
    assert t.decoding is not None and t.decoding.greedy  # SimplerEnv's OpenVLA wrapper: do_sample=False
    for i, seed in enumerate(t.task.seeds):
        e = episodes[i]
        x, y, pose, urdf = coke_can_vm_episode(seed)
        assert (x, y) == (e["x"], e["y"])  # bit for bit: np.linspace's values
        assert {pose: True, "urdf_version": urdf} == e["additional"]
        assert coke_can_vm_episode(seed - 300000) == coke_can_vm_episode(seed) == coke_can_vm_episode(seed + 300)
    assert {coke_can_vm_episode(s)[3] for s in range(300)} == set(SCRIPT_URDF_VERSIONS)


def test_visual_matching_episode_config_is_simplerenvs_make_and_reset_arguments():
    """run_maniskill2_eval_single_episode: gym.make(env_name, **additional_env_build_kwargs, **kwargs) with
    kwargs = obs_mode, robot, sim_freq, control_mode, control_freq, max_episode_steps, scene_name, camera_cfgs,
    rgb_overlay_path (the worker adds obs_mode and the overlay path, and rgb_overlay_cameras as
    build_maniskill2_env does); env.reset(options={robot_init_options, obj_init_options})."""
    episodes = _script_episodes()
    for i in (0, 1, 24, 25, 74, 75, 151, 299):
        c = episode_config("SimplerPickCokeCanVM-v1", 300000 + i)
        e = episodes[i]
        assert c["env"] == "GraspSingleOpenedCokeCanInScene-v0"
        assert c["build"] == dict(e["additional"], robot="google_robot_static", sim_freq=513,
                                  control_mode=GOOGLE_CONTROL_MODE, control_freq=3, max_episode_steps=80,
                                  scene_name="google_pick_coke_can_1_v4", camera_cfgs={"add_segmentation": True})
        # --robot-init-x 0.35 0.35 1 --robot-init-y 0.20 0.20 1; --robot-init-rot-quat-center 0 0 0 1 with a zero
        # rpy range: Pose(q=euler2quat(0, 0, 0)) * Pose(q=[0, 0, 0, 1]) = [0, 0, 0, 1] (wxyz)
        assert c["reset"] == {"robot_init_options": {"init_xy": [0.35, 0.20], "init_rot_quat": [0.0, 0.0, 0.0, 1.0]},
                              "obj_init_options": {"init_xy": [e["x"], e["y"]]}}
        assert c["overlay"] == "real_inpainting/google_coke_can_real_eval_1.png" and c["camera"] == "overhead_camera"
    assert "SimplerEnv's own visual-matching" in SIMPLER_TASKS["SimplerPickCokeCanVM-v1"]["description"]


# --- Bridge: the batteries' coverage of the twins' configurations ----------------------------------------
@pytest.mark.filterwarnings("ignore:Creating a tensor from a list")
def test_bridge_configuration_counts_match_maniskill3(monkeypatch):
    """Build each twin's configuration tables (its __init__ up to the base class) and count them."""
    pytest.importorskip("mani_skill")
    from mani_skill.envs.tasks.digital_twins.bridge_dataset_eval import base_env, put_on_in_scene

    counts = {}

    def capture(self, obj_names, xyz_configs, quat_configs, **kwargs):
        counts[type(self).__name__] = len(xyz_configs) * len(quat_configs)

    monkeypatch.setattr(base_env.BaseBridgeEnv, "__init__", capture)
    classes = {"PutCarrotOnPlateInScene-v1": put_on_in_scene.PutCarrotOnPlateInScene,
               "PutSpoonOnTableClothInScene-v1": put_on_in_scene.PutSpoonOnTableClothInScene,
               "StackGreenCubeOnYellowCubeBakedTexInScene-v1": put_on_in_scene.StackGreenCubeOnYellowCubeBakedTexInScene,
               "PutEggplantInBasketScene-v1": put_on_in_scene.PutEggplantInBasketScene}
    for t in SIMPLER_TASKS.values():
        if t["backend"] == "bridge":
            cls = classes[t["sim"]["env"]]
            cls()
            assert counts[cls.__name__] == t["sim"]["configurations"], cls.__name__
    assert sorted(counts.values()) == [24, 24, 24, 64]


def test_bridge_v2_covers_every_configuration_equally():
    by_env = {t: s["sim"]["configurations"] for t, s in SIMPLER_TASKS.items() if s["backend"] == "bridge"}
    for entry in load_battery("simpler-bridge-v2").tasks:
        n = by_env[entry.task]
        cover = collections.Counter(s % n for s in entry.seeds)
        assert len(cover) == n and len(set(cover.values())) == 1, entry.task
    eggplant = next(t for t in load_battery("simpler-bridge-v1").tasks if t.task == "BridgeEggplantInBasket-v1")
    assert sorted(collections.Counter(s % 64 for s in eggplant.seeds).values()) == [1] * 32 + [2] * 32  # v1: uneven


def test_google_v2_battery_targets_the_held_out_coke_can():
    v1, v2 = load_battery("simpler-google-v1"), load_battery("simpler-google-v2")
    assert v2.target == "simpler-pick-coke-can-v2" and v1.target == "simpler-pick-coke-can-v1"
    assert [(t.task, t.seeds) for t in v2.tasks] == [(t.task, t.seeds) for t in v1.tasks]


# --- the camera resize: OpenCV's INTER_AREA ----------------------------------------------------------------
def test_resize_is_opencvs_inter_area():
    cv2 = pytest.importorskip("cv2")
    import torch

    from vla_forget.envs.simpler import _resize

    rng = np.random.default_rng(0)
    google = rng.integers(0, 256, (1, 512, 640, 3), dtype=np.uint8)
    widowx = rng.integers(0, 256, (3, 480, 640, 3), dtype=np.uint8)
    for batch in (google, widowx):
        for size in (224, 128, 96):
            got = _resize(torch.from_numpy(batch), size)
            assert got.dtype == torch.uint8 and tuple(got.shape) == (len(batch), size, size, 3)
            want = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in batch])
            np.testing.assert_array_equal(got.numpy(), want)
    same = torch.from_numpy(rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    assert _resize(same, 64) is same
