"""SimplerEnv: the OpenVLA -> SimplerEnv action conversions, the seed -> episode maps, registration, clear
errors when SimplerEnv or its assets are missing, `vla-forget assets`, and the worker protocol end to end
(with a stand-in ``simpler_env`` package on PYTHONPATH: no SAPIEN 2 here), including a `vla-forget bench`
run of the OpenVLA adapter on a SimplerEnv task.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from vla_forget.envs import TASKS, make_task_env, task_info, task_unavailable_reason
from vla_forget.envs.simpler import (
    BRIDGE_FILES,
    SIMPLER_FILES,
    WIDOWX_FILES,
    StickyGripper,
    TaskUnavailableError,
    bridge_gripper,
    euler_to_axis_angle,
    openvla_to_simpler_action,
)
from vla_forget.envs.simpler_tasks import SIMPLER_TASKS, coke_can_episode, episode_config

GOOGLE = ("SimplerPickCokeCan-v1", "SimplerOpenDrawer-v1", "SimplerCloseDrawer-v1", "SimplerMoveNear-v1")
BRIDGE = ("BridgeCarrotOnPlate-v1", "BridgeSpoonOnTowel-v1", "BridgeStackCube-v1", "BridgeEggplantInBasket-v1")


# --- conversions -------------------------------------------------------------------------------------
def test_euler_to_axis_angle_matches_transforms3d():
    t3d = pytest.importorskip("transforms3d.euler")
    rng = np.random.default_rng(0)
    rpy = np.concatenate([rng.uniform(-np.pi, np.pi, (200, 3)), rng.uniform(-0.05, 0.05, (200, 3)),
                          np.zeros((1, 3)), [[0.0, 0.0, 1e-9]], [[np.pi, 0.0, 0.0]]])
    got = euler_to_axis_angle(rpy)
    for r, g in zip(rpy, got):
        axis, angle = t3d.euler2axangle(*r)
        np.testing.assert_allclose(g, np.asarray(axis) * angle, atol=1e-7)


def test_euler_to_axis_angle_small_rotations_are_the_euler_vector():
    rpy = np.array([[0.01, 0.0, 0.0], [0.0, -0.02, 0.0], [0.0, 0.0, 0.03]])
    np.testing.assert_allclose(euler_to_axis_angle(rpy), rpy, atol=1e-12)


def _scalar_sticky(opens, repeat=15):
    """The Google robot's gripper rule written out for one env (a reference for the vectorised class)."""
    out, prev, on, count, held = [], None, False, 0, 0.0
    for o in opens:
        rel = 0.0 if prev is None else prev - o
        prev = o
        if abs(rel) > 0.5 and not on:
            on, held = True, rel
        if on:
            count += 1
            rel = held
        if count == repeat:
            on, count, held = False, 0, 0.0
        out.append(rel)
    return out


def test_sticky_gripper_repeats_a_close_for_15_steps():
    opens = [1.0, 1.0, 0.0] + [0.0] * 20
    g = StickyGripper(1)
    got = [float(g(np.array([o]))[0]) for o in opens]
    assert got[:2] == [0.0, 0.0]
    assert got[2:17] == [1.0] * 15, "closing (open 1 -> 0) sends +1 for 15 steps"
    assert got[17:] == [0.0] * 6
    assert got == _scalar_sticky(opens)


def test_sticky_gripper_is_per_env_and_resets():
    rng = np.random.default_rng(1)
    opens = (rng.uniform(size=(40, 3)) > 0.5).astype(float) * rng.uniform(0.6, 1.0, (40, 3))
    g = StickyGripper(3)
    got = np.stack([g(o) for o in opens])
    for e in range(3):
        np.testing.assert_allclose(got[:, e], _scalar_sticky(opens[:, e]))
    g.reset()
    assert g(np.array([0.0, 1.0, 0.0])).tolist() == [0.0, 0.0, 0.0]


def test_bridge_gripper_and_the_full_conversion():
    assert bridge_gripper(np.array([0.0, 0.5, 0.51, 1.0])).tolist() == [-1.0, -1.0, 1.0, 1.0]
    raw = np.array([[0.01, -0.02, 0.03, 0.0, 0.0, 0.1, 0.9], [0.0, 0.0, 0.0, 0.2, 0.0, 0.0, 0.1]])
    w = openvla_to_simpler_action(raw, "widowx")
    np.testing.assert_allclose(w[:, :3], raw[:, :3])
    np.testing.assert_allclose(w[:, 3:6], euler_to_axis_angle(raw[:, 3:6]))
    assert w[:, 6].tolist() == [1.0, -1.0]
    g = openvla_to_simpler_action(raw, "google_robot", StickyGripper(2))
    assert g[:, 6].tolist() == [0.0, 0.0]  # relative: nothing changed yet
    with pytest.raises(ValueError, match="StickyGripper"):
        openvla_to_simpler_action(raw, "google_robot")
    with pytest.raises(ValueError, match="robot"):
        openvla_to_simpler_action(raw, "panda")
    with pytest.raises(ValueError, match=r"\[N, 7\]"):
        openvla_to_simpler_action(raw[:, :6], "widowx")


# --- seeds -> episodes ----------------------------------------------------------------------------------
def test_coke_can_grid_is_rl_razors_10_by_10():
    cells = {coke_can_episode(s)[:2] for s in range(100)}
    assert cells == {(x, y) for x in np.linspace(-0.35, -0.12, 10) for y in np.linspace(-0.02, 0.42, 10)}
    xs, ys = sorted({c[0] for c in cells}), sorted({c[1] for c in cells})
    assert len(cells) == 100 and len(xs) == 10 and len(ys) == 10
    assert (xs[0], xs[-1], ys[0], ys[-1]) == (-0.35, -0.12, -0.02, 0.42)
    target = [coke_can_episode(s) for s in range(200000, 200300)]  # the target spec's 300 evaluation seeds
    assert len(set(target)) == 300, "every (position, can pose) exactly once"


def test_episode_configs_follow_simplerenvs_scripts():
    c = episode_config("SimplerPickCokeCan-v1", 205)
    assert c["env"] == "GraspSingleOpenedCokeCanInScene-v0" and c["build"]["scene_name"] == "google_pick_coke_can_1_v4"
    assert c["build"]["control_freq"] == 3 and c["build"]["sim_freq"] == 513 and c["build"]["max_episode_steps"] == 80
    assert c["build"]["laid_vertically"] is True
    assert c["reset"]["obj_init_options"]["init_xy"] == [np.linspace(-0.35, -0.12, 10)[0], np.linspace(-0.02, 0.42, 10)[5]]
    assert c["reset"]["robot_init_options"] == {"init_xy": [0.35, 0.2], "init_rot_quat": [0.0, 0.0, 0.0, 1.0]}
    assert c["overlay"] == "real_inpainting/google_coke_can_real_eval_1.png" and c["camera"] == "overhead_camera"
    envs = {episode_config("SimplerOpenDrawer-v1", s)["env"] for s in range(27)}
    assert envs == {f"Open{d}DrawerCustomInScene-v0" for d in ("Top", "Middle", "Bottom")}
    xy = {tuple(episode_config("SimplerCloseDrawer-v1", s)["reset"]["robot_init_options"]["init_xy"]) for s in range(9)}
    assert xy == {(x, y) for x in (0.65, 0.75, 0.85) for y in (-0.2, 0.0, 0.2)}
    assert episode_config("SimplerOpenDrawer-v1", 0)["build"]["shader_dir"] == "rt"
    m = episode_config("SimplerMoveNear-v1", 61)
    assert m["reset"]["obj_init_options"] == {"episode_id": 1} and m["reset"]["robot_init_options"]["init_xy"] == [0.35, 0.21]
    q = m["reset"]["robot_init_options"]["init_rot_quat"]  # euler2quat(0, 0, -0.09) * (0, 0, 0, 1), wxyz
    np.testing.assert_allclose(q, [np.sin(0.045), 0.0, 0.0, np.cos(0.045)], atol=1e-9)
    with pytest.raises(ValueError):
        episode_config("BridgeStackCube-v1", 0)


def test_tasks_are_registered_with_their_facts():
    for t in GOOGLE + BRIDGE:
        assert t in TASKS
        info = task_info(t)
        assert info.backend == SIMPLER_TASKS[t]["backend"] and info.max_episode_steps > 0
        assert info.extra["unnorm_key"] == ("fractal20220817_data" if t in GOOGLE else "bridge_orig")
    assert task_info("SimplerPickCokeCan-v1").pick_and_place
    assert task_info("PickCube-v1").backend == "maniskill" and task_unavailable_reason("PickCube-v1") is None
    from vla_forget.spec import load_battery, load_target

    g = load_battery("simpler-google-v1")
    assert g.task_ids == ["SimplerOpenDrawer-v1", "SimplerCloseDrawer-v1", "SimplerMoveNear-v1"]
    assert g.target == "simpler-pick-coke-can-v1" and min(t.episodes for t in g.tasks) >= 75
    assert load_target("simpler-pick-coke-can-v1").task.episodes == 300
    assert load_battery("simpler-bridge-v1").task_ids == list(BRIDGE)


# --- missing simulator or assets ----------------------------------------------------------------------
@pytest.fixture()
def empty_assets(tmp_path, monkeypatch):
    monkeypatch.setenv("MS_ASSET_DIR", str(tmp_path / "maniskill"))
    monkeypatch.setenv("VLA_FORGET_SIMPLER_DATA", str(tmp_path / "simpler-data"))
    return tmp_path


def test_missing_assets_say_what_to_do(empty_assets, monkeypatch):
    monkeypatch.setattr("vla_forget.envs.vulkan.check_vulkan", lambda *a, **k: "not needed")
    with pytest.raises(TaskUnavailableError, match=r"vla-forget assets --download bridge") as e:
        make_task_env("BridgeCarrotOnPlate-v1")
    assert "bridge_v2_real2sim_dataset" in str(e.value)
    with pytest.raises(TaskUnavailableError, match=r"vla-forget assets --from SimplerEnv/ManiSkill2_real2sim/data"):
        make_task_env("SimplerPickCokeCan-v1")


def _touch(root, files):
    for f in files:
        p = os.path.join(root, f)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if "." in os.path.basename(f):
            open(p, "w").close()
        else:
            os.makedirs(p, exist_ok=True)


def test_simpler_env_not_installed_is_a_clear_error(empty_assets, monkeypatch):
    from vla_forget.envs import simpler

    monkeypatch.setattr(simpler, "PROBES", {})
    _touch(str(empty_assets / "simpler-data"), SIMPLER_FILES)
    monkeypatch.setenv("VLA_FORGET_SIMPLER_PYTHON", sys.executable)  # an interpreter without simpler_env
    monkeypatch.setattr("vla_forget.envs.vulkan.check_vulkan", lambda *a, **k: "not needed")
    if task_unavailable_reason("SimplerPickCokeCan-v1") is None:
        pytest.skip("simpler_env is installed in this interpreter")
    with pytest.raises(TaskUnavailableError, match="VLA_FORGET_SIMPLER_PYTHON") as e:
        make_task_env("SimplerPickCokeCan-v1")
    assert "simpler_env" in str(e.value) and "git clone https://github.com/simpler-env/SimplerEnv" in str(e.value)


def test_assets_command_stages_from_folders_and_zips(empty_assets, capsys):
    from vla_forget.cli import main

    assert main(["assets"]) == 1
    out = capsys.readouterr().out
    assert "bridge   MISSING" in out and "fix: vla-forget assets --download bridge" in out and "simpler_env in" in out
    src = empty_assets / "download"
    _touch(str(src / "tasks" / "bridge_v2_real2sim_dataset"), BRIDGE_FILES)  # a ManiSkill asset folder
    _touch(str(src / "robots" / "widowx"), WIDOWX_FILES)
    assert main(["assets", "--from", str(src)]) == 0
    out = capsys.readouterr().out
    assert "staged from" in out and "bridge   ok" in out and "widowx   ok" in out
    data = empty_assets / "SimplerEnv" / "ManiSkill2_real2sim" / "data"
    _touch(str(data), SIMPLER_FILES)
    archive = empty_assets / "simpler.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for root, dirs, files in os.walk(empty_assets / "SimplerEnv"):
            for f in dirs + files:  # directories too: some key paths are folders
                full = os.path.join(root, f)
                z.write(full, os.path.relpath(full, empty_assets))
    assert main(["assets", "--from", str(archive)]) == 0
    assert "simpler  ok" in capsys.readouterr().out
    assert task_unavailable_reason("BridgeCarrotOnPlate-v1") is None
    assert main(["assets", "--from", str(empty_assets / "nothing-here")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


# --- the worker protocol, end to end with a stand-in SimplerEnv ------------------------------------------
FAKE_ENVS = '''
import os
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FakeSimplerEnv(gym.Env):
    """Records what it is built and driven with; succeeds once the gripper command closes (> 0.5)."""

    def __init__(self, obs_mode=None, **kwargs):
        self.kwargs = kwargs
        self.observation_space = spaces.Dict({})
        self.action_space = spaces.Box(-10, 10, (7,))
        self.actions = []

    def get_language_instruction(self):
        return "pick coke can" if "Grasp" in self.spec.id else "open top drawer"

    def _obs(self):
        v = len(self.actions)
        img = np.full((512, 640, 3), min(255, 10 * v), dtype=np.uint8)
        last = self.actions[-1] if self.actions else np.zeros(7)
        return {"image": {"overhead_camera": {"rgb": img}}, "extra": {"tcp_pose": np.r_[last[:3], 1.0, 0, 0, 0]},
                "agent": {"qpos": np.arange(11, dtype=np.float32)}}

    def reset(self, seed=None, options=None):
        self.actions = []
        self.options = options
        assert os.path.exists(self.kwargs.get("rgb_overlay_path") or os.devnull)
        return self._obs(), {}

    def step(self, action):
        self.actions.append(np.asarray(action))
        success = bool(action[6] > 0.5)
        return self._obs(), float(success), success, False, {"success": success}


for name in ("GraspSingleOpenedCokeCanInScene-v0", "OpenTopDrawerCustomInScene-v0"):
    gym.register(name, entry_point=FakeSimplerEnv, disable_env_checker=True)
'''


@pytest.fixture()
def fake_simpler(tmp_path, monkeypatch):
    pkg = tmp_path / "fake-simpler"
    (pkg / "mani_skill2_real2sim" / "envs").mkdir(parents=True)
    (pkg / "simpler_env").mkdir()
    (pkg / "mani_skill2_real2sim" / "__init__.py").write_text(
        "import os\nfrom pathlib import Path\nASSET_DIR = Path(os.getenv('MS2_REAL2SIM_ASSET_DIR', 'data'))\n"
        "def format_path(p):\n    return p.format(ASSET_DIR=ASSET_DIR)\n")  # SimplerEnv reads MS2_REAL2SIM_ASSET_DIR first
    (pkg / "mani_skill2_real2sim" / "envs" / "__init__.py").write_text(textwrap.dedent(FAKE_ENVS))
    (pkg / "simpler_env" / "__init__.py").write_text("")
    data = tmp_path / "simpler-data"
    _touch(str(data), SIMPLER_FILES)
    monkeypatch.setenv("VLA_FORGET_SIMPLER_DATA", str(data))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(pkg), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("VLA_FORGET_SIMPLER_PYTHON", sys.executable)
    from vla_forget import preflight
    from vla_forget.envs import simpler

    monkeypatch.setattr(simpler, "PROBES", {})
    # SimplerEnv's interpreter as a GPU machine would report it (the preflight is tested in test_simpler_runtime.py)
    monkeypatch.setattr(preflight, "PROBES", {os.path.realpath(sys.executable): dict(HEALTHY_PREFLIGHT)})
    return tmp_path


HEALTHY_PREFLIGHT = {"numpy": "1.24.4", "sapien": "2.2.2", "vulkan": {"devices": [
    {"name": "stand-in GPU", "type": 2, "extensions": ["VK_KHR_external_semaphore_fd", "VK_KHR_external_fence_fd"]}]}}


def test_google_env_through_the_worker_process(fake_simpler):
    import torch

    env = make_task_env("SimplerPickCokeCan-v1", image_size=32, privileged=True)
    try:
        obs = env.reset([205])
        assert obs.image.shape == (1, 32, 32, 3) and obs.image.dtype == torch.uint8
        assert obs.instruction == ["pick coke can"] == env.instructions()
        assert obs.state.shape == (1, 16) and obs.privileged["task_kind"].tolist() == [0]
        hold = torch.tensor([[0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])  # OpenVLA units: 1 cm forward, gripper open
        close = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
        obs, reward, term, trunc, info = env.step(hold)
        assert not bool(info["is_success"][0]) and obs.state[0, 0].item() == pytest.approx(0.01)
        obs, reward, term, trunc, info = env.step(close)  # 1 -> 0: the relative command +1 (close): success
        assert bool(info["is_success"][0]) and reward.tolist() == [1.0] and not bool(trunc[0])
        assert int(obs.image[0, 0, 0, 0]) == 20 and env.frames().shape == (1, 32, 32, 3)
        with pytest.raises(ValueError):
            env.step(torch.zeros(1, 6))
        with pytest.raises(ValueError, match="one env per process"):
            make_task_env("SimplerPickCokeCan-v1", num_envs=2)
    finally:
        env.close()


def bench_tiny_openvla_on_simpler(tmp_path, *, target_episodes: int, extra=()):
    """`vla-forget bench` of the tiny OpenVLA-format checkpoint (fractal20220817_data statistics) on one drawer
    episode of 3 steps and the coke-can target, SimplerEnv stood in for; returns (exit code, run folder, policy key)."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from vla_forget.cli import main
    from vla_forget.policies.openvla_tiny import build_tiny_openvla, identity_statistics

    tiny = build_tiny_openvla(str(tmp_path / "tiny"), statistics={"fractal20220817_data": identity_statistics()})
    battery = tmp_path / "battery.yaml"
    battery.write_text("id: simpler-smoke\nversion: 1\nepisodes: 2\nseed_start: 0\nmax_episode_steps: 3\n"
                       "tasks:\n  - task: SimplerOpenDrawer-v1\n    seeds: [0]\n")
    out = str(tmp_path / "bench")
    rc = main(["bench", "--policy", f"openvla:{tiny}", "--base", f"openvla:{tiny}", "--battery", str(battery),
               "--episodes", "1", "--target", "SimplerPickCokeCan-v1", "--target-episodes", str(target_episodes),
               "--workers", "0", "--image-size", "32", "--no-progress", "--out", out, *extra])
    return rc, out, f"openvla:{tiny}"


def test_bench_runs_openvla_on_a_simpler_task(fake_simpler, tmp_path):
    """The OpenVLA adapter benched on a SimplerEnv task: the whole pipeline, SimplerEnv stood in for."""
    rc, out, key = bench_tiny_openvla_on_simpler(tmp_path, target_episodes=1,
                                                 extra=["--kl-states-per-task", "2", "--videos-per-task", "1"])
    assert rc == 0
    res = json.load(open(os.path.join(out, "results.json")))
    assert set(res["success"][key]) == {"SimplerOpenDrawer-v1", "SimplerPickCokeCan-v1"}
    episodes = [json.loads(line) for line in open(os.path.join(out, "episodes.jsonl"))]
    assert {e["instruction"] for e in episodes} == {"open top drawer", "pick coke can"}
    assert all(e["steps"] == 3 or e["task"] == "SimplerPickCokeCan-v1" for e in episodes)
