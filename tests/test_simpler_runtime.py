"""SimplerEnv at run time: where ManiSkill3 reads the Bridge assets, the Google-robot worker's asset folder and its
missing-file check, the SimplerEnv interpreter's preflight (Vulkan extensions, ray tracing on a CPU renderer,
numpy 2) and `vla-forget doctor`, per-episode stats in episodes.jsonl, and the Google robot's state vector.
SimplerEnv is stood in for (tests/test_simpler.py's stand-in package); the preflight's probes are faked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vla_forget.envs import make_task_env, task_unavailable_reason
from vla_forget.envs.simpler import BRIDGE_FILES, WIDOWX_FILES, TaskUnavailableError

from tests.test_simpler import _touch, fake_simpler  # noqa: F401  (the stand-in SimplerEnv fixture)


@pytest.fixture()
def ms_dir(tmp_path, monkeypatch):
    ms = tmp_path / "maniskill"
    monkeypatch.setenv("MS_ASSET_DIR", str(ms))
    monkeypatch.setattr("vla_forget.envs.vulkan.check_vulkan", lambda *a, **k: "not needed")
    return ms


# --- 1. the Bridge assets: where ManiSkill3 reads them ------------------------------------------------------------
MANISKILL_PATHS = r"""
import json
import mani_skill
from mani_skill.agents.robots.widowx.widowx import WidowX250S
from mani_skill.envs.tasks.digital_twins.bridge_dataset_eval import base_env
from mani_skill.utils.assets import data

src = data.DATA_SOURCES
print(json.dumps({"asset_dir": str(mani_skill.ASSET_DIR), "bridge": str(base_env.BRIDGE_DATASET_ASSET_PATH),
                  "widowx_urdf": WidowX250S.urdf_path,
                  "download_bridge": str(src["bridge_v2_real2sim"].output_dir / src["bridge_v2_real2sim"].target_path),
                  "download_widowx": str(src["widowx250s"].output_dir / src["widowx250s"].target_path)}))
"""


def test_asset_folders_are_where_maniskill_reads(ms_dir):
    """The folders checked and staged are the ones ManiSkill3 itself opens (asked of a fresh mani_skill)."""
    pytest.importorskip("mani_skill")
    from vla_forget.envs.simpler import asset_groups

    out = subprocess.run([sys.executable, "-c", MANISKILL_PATHS], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, MS_ASSET_DIR=str(ms_dir)), check=True).stdout
    ms = json.loads(out.strip().splitlines()[-1])
    g = asset_groups()
    assert os.path.normpath(g["bridge"]["root"]) == os.path.normpath(ms["bridge"]) == os.path.normpath(ms["download_bridge"])
    assert os.path.normpath(g["widowx"]["root"]) == os.path.normpath(ms["download_widowx"])
    assert os.path.normpath(os.path.join(g["widowx"]["root"], WIDOWX_FILES[0])) == os.path.normpath(ms["widowx_urdf"])
    assert os.path.normpath(g["bridge"]["root"]).startswith(os.path.normpath(ms["asset_dir"]) + os.sep)


def test_download_puts_files_where_the_check_looks(ms_dir, monkeypatch, capsys):
    pytest.importorskip("mani_skill")
    from mani_skill.utils import download_asset

    from vla_forget.cli import main

    fetched = []

    def fake_download(source, verbose=True, non_interactive=True):  # what ManiSkill's downloader does, offline
        out = os.path.join(str(source.output_dir), source.target_path)
        fetched.append(out)
        _touch(out, BRIDGE_FILES if "bridge" in source.target_path else WIDOWX_FILES)

    monkeypatch.setattr(download_asset, "download", fake_download)
    assert main(["assets", "--download", "bridge", "--download", "widowx"]) == 0
    out = capsys.readouterr().out
    assert "bridge   ok" in out and "widowx   ok" in out
    assert all(f.startswith(str(ms_dir / "data") + os.sep) for f in fetched)
    assert task_unavailable_reason("BridgeCarrotOnPlate-v1") is None


def test_old_layout_is_a_clear_error_and_assets_moves_it(ms_dir, capsys):
    from vla_forget.cli import main

    _touch(str(ms_dir / "tasks" / "bridge_v2_real2sim_dataset"), BRIDGE_FILES)  # where earlier versions staged
    _touch(str(ms_dir / "robots" / "widowx"), WIDOWX_FILES)
    why = task_unavailable_reason("BridgeCarrotOnPlate-v1")
    assert why and str(ms_dir / "data" / "tasks" / "bridge_v2_real2sim_dataset") in why and "vla-forget assets" in why
    with pytest.raises(TaskUnavailableError, match="ManiSkill3 reads them from"):
        make_task_env("BridgeCarrotOnPlate-v1")
    assert main(["assets"]) == 1  # the Google robot's group is still missing
    out = capsys.readouterr().out
    assert f"moved bridge from {ms_dir / 'tasks' / 'bridge_v2_real2sim_dataset'}" in out and "moved widowx" in out
    assert "bridge   ok" in out and "widowx   ok" in out
    assert (ms_dir / "data" / "robots" / "widowx" / "wx250s.urdf").exists()
    assert not (ms_dir / "tasks" / "bridge_v2_real2sim_dataset").exists()
    assert task_unavailable_reason("BridgeCarrotOnPlate-v1") is None


def test_a_linked_old_layout_moves_as_a_link(ms_dir, tmp_path, capsys):
    from vla_forget.cli import main

    real = tmp_path / "elsewhere" / "bridge_v2_real2sim_dataset"
    _touch(str(real), BRIDGE_FILES)
    (ms_dir / "tasks").mkdir(parents=True)
    os.symlink(real, ms_dir / "tasks" / "bridge_v2_real2sim_dataset")  # what `--from ... --link` made before
    main(["assets"])
    assert "moved bridge" in capsys.readouterr().out
    new = ms_dir / "data" / "tasks" / "bridge_v2_real2sim_dataset"
    assert new.is_symlink() and os.path.realpath(new) == os.path.realpath(real) and (real / BRIDGE_FILES[0]).exists()


def test_staging_from_a_maniskill_folder_of_either_layout(ms_dir, tmp_path, capsys):
    from vla_forget.cli import main

    src = tmp_path / "other-maniskill"
    _touch(str(src / "data" / "tasks" / "bridge_v2_real2sim_dataset"), BRIDGE_FILES)  # ManiSkill3's own layout
    _touch(str(src / "data" / "robots" / "widowx"), WIDOWX_FILES)
    assert main(["assets", "--from", str(src)]) == 0
    assert "staged from" in capsys.readouterr().out
    assert (ms_dir / "data" / "tasks" / "bridge_v2_real2sim_dataset" / BRIDGE_FILES[0]).exists()
    assert task_unavailable_reason("BridgeCarrotOnPlate-v1") is None


# --- 2. the Google-robot worker: SimplerEnv's asset folder, and files it would load without ------------------------
#: SimplerEnv's own order (mani_skill2_real2sim/__init__.py): MS2_REAL2SIM_ASSET_DIR, else the data/ folder next to
#: the package (an editable install from a clone), else MS2_ASSET_DIR, else ./data
REAL_ORDER = '''
import os
from pathlib import Path

_here = Path(__file__).parent.resolve()
if os.getenv("MS2_REAL2SIM_ASSET_DIR") is not None:
    ASSET_DIR = Path(os.getenv("MS2_REAL2SIM_ASSET_DIR"))
elif (_here.parent / "data").exists():
    ASSET_DIR = _here.parent / "data"
elif os.getenv("MS2_ASSET_DIR") is not None:
    ASSET_DIR = Path(os.getenv("MS2_ASSET_DIR"))
else:
    ASSET_DIR = Path("data")


def format_path(p):
    return p.format(ASSET_DIR=ASSET_DIR, PACKAGE_ASSET_DIR=_here / "assets")
'''

#: the stand-in env grown towards SimplerEnv's: the attributes naming its asset files, a robot with named joints, and
#: SimplerEnv's step info (grasp flags, episode_stats)
SCENE_ENV = '''

from types import SimpleNamespace

import mani_skill2_real2sim

_JOINTS = ["joint_torso", "joint_shoulder", "joint_bicep", "joint_elbow", "joint_forearm", "joint_wrist",
           "joint_gripper", "joint_finger_right", "joint_finger_left", "joint_head_pan", "joint_head_tilt"]


class _Joint:
    def __init__(self, name):
        self.name = name

    def get_name(self):
        return self.name


_plain_init, _plain_step = FakeSimplerEnv.__init__, FakeSimplerEnv.step


def _init(self, obs_mode=None, **kwargs):
    _plain_init(self, obs_mode=obs_mode, **kwargs)
    root = mani_skill2_real2sim.ASSET_DIR
    self.scene_root, self.scene_name = root / "hab2_bench_assets", kwargs.get("scene_name")
    self.asset_root, self.model_ids = root / "custom", ["opened_coke_can"]
    self.rgb_overlay_path = kwargs.get("rgb_overlay_path")
    self.agent = SimpleNamespace(robot=SimpleNamespace(get_active_joints=lambda: [_Joint(n) for n in _JOINTS]))


def _step(self, action):
    obs, reward, terminated, truncated, info = _plain_step(self, action)
    grasped = len(self.actions) == 1  # grasped at the first step only
    info.update(is_grasped=grasped, consecutive_grasp=False, lifted_object=np.bool_(False), elapsed_steps=3,
                episode_stats={"n_lift_significant": np.int64(1), "consec_grasp": False,
                               "grasped": True, "qpos": "0.151"})
    return obs, reward, terminated, truncated, info


FakeSimplerEnv.__init__, FakeSimplerEnv.step = _init, _step
'''

COKE_CAN_MODEL = ("custom/models/opened_coke_can/collision.obj", "custom/models/opened_coke_can/textured.dae")


@pytest.fixture()
def scene_simpler(fake_simpler):
    """The stand-in SimplerEnv with SimplerEnv's asset-folder order, scene attributes and step info, installed from
    a clone (a data/ folder next to the package, which SimplerEnv reads unless MS2_REAL2SIM_ASSET_DIR is set)."""
    pkg = fake_simpler / "fake-simpler"
    (pkg / "mani_skill2_real2sim" / "__init__.py").write_text(REAL_ORDER)
    envs = pkg / "mani_skill2_real2sim" / "envs" / "__init__.py"
    envs.write_text(envs.read_text() + SCENE_ENV)
    (pkg / "data").mkdir()  # the clone's own data folder, empty: not the staged one
    _touch(str(fake_simpler / "simpler-data"), COKE_CAN_MODEL)
    return fake_simpler


def test_worker_points_simplerenv_at_the_staged_folder(scene_simpler):
    from vla_forget.envs.simpler import SimplerWorker

    w = SimplerWorker()
    try:
        used = w.request(cmd="check")["asset_dir"]
        assert os.path.realpath(used) == os.path.realpath(scene_simpler / "simpler-data")  # not the clone's data/
        w.check_asset_dir()
    finally:
        w.close()
    env = make_task_env("SimplerPickCokeCan-v1", image_size=32)
    try:
        env.reset([0])  # the overlay and scene come from the staged folder
    finally:
        env.close()


def test_a_worker_reading_another_folder_is_refused(scene_simpler):
    pkg = scene_simpler / "fake-simpler" / "mani_skill2_real2sim" / "__init__.py"
    pkg.write_text(pkg.read_text().replace('os.getenv("MS2_REAL2SIM_ASSET_DIR") is not None', "False"))
    with pytest.raises(TaskUnavailableError, match="SimplerEnv reads its assets from .*not from the staged folder"):
        make_task_env("SimplerPickCokeCan-v1", image_size=32)


@pytest.mark.parametrize("gone,named", [(COKE_CAN_MODEL[0], "collision.obj"), (COKE_CAN_MODEL[1], "textured.{obj,dae,glb}")])
def test_a_missing_mesh_is_an_error_naming_it(scene_simpler, gone, named):
    os.remove(scene_simpler / "simpler-data" / gone)
    assert task_unavailable_reason("SimplerPickCokeCan-v1") is None  # not one of the key files checked up front
    env = make_task_env("SimplerPickCokeCan-v1", image_size=32)
    try:
        with pytest.raises(RuntimeError, match="loads files that are not there") as e:
            env.reset([0])  # the stand-in, like SAPIEN 2, would run on without the mesh
        msg = str(e.value)
        assert os.path.join("opened_coke_can", named) in msg and "vla-forget assets --from" in msg
    finally:
        env.close()


def test_only_the_episodes_own_models_must_be_there(scene_simpler):
    """Move-near's env lists every model of its catalogue (``model_ids``), but an episode loads its triplet only
    (``episode_model_ids``): SimplerEnv runs it without the others' files, so the check asks for those only."""
    envs = scene_simpler / "fake-simpler" / "mani_skill2_real2sim" / "envs" / "__init__.py"
    envs.write_text(envs.read_text() + '\n_scene_init = FakeSimplerEnv.__init__\n\n\n'
                    'def _catalogue(self, obs_mode=None, **kwargs):\n'
                    '    _scene_init(self, obs_mode=obs_mode, **kwargs)\n'
                    '    self.model_ids = ["opened_coke_can", "eggplant"]  # eggplant: no files staged\n'
                    '    self.episode_model_ids = ["opened_coke_can", None]\n\n\n'
                    'FakeSimplerEnv.__init__ = _catalogue\n')
    env = make_task_env("SimplerPickCokeCan-v1", image_size=32)
    try:
        env.reset([0])  # the catalogue's eggplant is not this episode's
    finally:
        env.close()


# --- 4. per-episode stats: the step info and episodes.jsonl -------------------------------------------------------
def test_episode_stats_in_the_step_info(scene_simpler):
    import torch

    env = make_task_env("SimplerPickCokeCan-v1", image_size=32)
    try:
        env.reset([0])
        hold = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
        _, _, _, _, info = env.step(hold)
        assert info["episode_stats"] == [{"n_lift_significant": 1, "consec_grasp": False, "grasped": True,
                                          "qpos": 0.151, "ever_is_grasped": True, "ever_consecutive_grasp": False,
                                          "ever_lifted_object": False}]
        _, _, _, _, info = env.step(hold)  # not grasped any more: the flag stays set for the episode
        s = info["episode_stats"][0]
        assert s["ever_is_grasped"] is True and s["n_lift_significant"] == 1
        env.reset([1])
        _, _, _, _, info = env.step(hold)
        assert info["episode_stats"][0]["ever_is_grasped"] is True and json.dumps(info["episode_stats"])
    finally:
        env.close()


def test_episode_stats_are_recorded_in_episodes_jsonl(scene_simpler, tmp_path):
    from tests.test_simpler import bench_tiny_openvla_on_simpler

    rc, out, _ = bench_tiny_openvla_on_simpler(tmp_path, target_episodes=2,
                                               extra=["--kl-states-per-task", "0", "--videos-per-task", "0"])
    assert rc == 0
    episodes = [json.loads(line) for line in open(os.path.join(out, "episodes.jsonl"))]
    assert sorted(e["task"] for e in episodes) == ["SimplerOpenDrawer-v1"] + ["SimplerPickCokeCan-v1"] * 2
    for e in episodes:
        s = e["env_stats"]
        assert s["grasped"] is True and s["ever_is_grasped"] is True and s["n_lift_significant"] == 1
        assert s["qpos"] == pytest.approx(0.151)


# --- 5. the Google robot's state: the finger joints, not the head -------------------------------------------------
def test_google_state_holds_the_finger_joints(fake_simpler):
    """qpos = 0..10 over the static robot's 11 joints: the fingers are entries 7 and 8, the head 9 and 10."""
    from vla_forget.envs.simpler import google_finger_qpos

    assert google_finger_qpos(list(range(11))).tolist() == [7.0, 8.0]
    assert google_finger_qpos(list(range(13))).tolist() == [9.0, 10.0]  # the mobile robot: the wheels first
    env = make_task_env("SimplerPickCokeCan-v1", image_size=32)  # the plain stand-in: no joint names
    try:
        assert env.reset([0]).state[0, 7:9].tolist() == [7.0, 8.0]
    finally:
        env.close()


def test_google_state_fingers_by_joint_name(scene_simpler):
    env = make_task_env("SimplerPickCokeCan-v1", image_size=32)
    try:
        obs = env.reset([0])
        assert obs.state[0, 7:9].tolist() == [7.0, 8.0] and obs.state[0, 9:].abs().sum().item() == 0
    finally:
        env.close()


# --- 3. the preflight of SimplerEnv's interpreter, and `vla-forget doctor` -----------------------------------------
EXTS = ["VK_KHR_external_semaphore_fd", "VK_KHR_external_fence_fd"]
LAVAPIPE = {"name": "llvmpipe (LLVM 15.0.6, 256 bits)", "type": 4,
            "extensions": ["VK_KHR_external_semaphore", "VK_KHR_external_fence", "VK_KHR_external_memory_fd"]}
GPU = {"name": "NVIDIA H100", "type": 2, "extensions": EXTS + ["VK_KHR_ray_tracing_pipeline"]}


@pytest.fixture()
def probes(fake_simpler, monkeypatch):
    """Fake probe results: ``probes.set(report, renderer=...)``; counts the probe runs."""
    from vla_forget import preflight

    class Probes:
        calls: list = []
        report: dict = {}
        renderer: dict = {"ok": False, "error": "RuntimeError: vk::PhysicalDevice::createDeviceUnique: "
                                                   "ErrorExtensionNotPresent"}

        def set(self, report, renderer=None):
            self.report = report
            if renderer is not None:
                self.renderer = renderer
            preflight.PROBES.clear()

    p = Probes()
    p.calls = []

    def fake_run(python, renderer=False, timeout=180.0):
        p.calls.append((python, renderer))
        return {"renderer": p.renderer} if renderer else json.loads(json.dumps(p.report))

    monkeypatch.setattr(preflight, "run_probe", fake_run)
    monkeypatch.setattr(preflight, "PROBES", {})
    return p


def _report(*devices, numpy="1.24.4"):
    return {"numpy": numpy, "sapien": "2.2.2", "vulkan": {"devices": list(devices)}}


def test_missing_vulkan_extensions_are_refused_before_the_first_episode(probes):
    probes.set(_report(LAVAPIPE))
    why = task_unavailable_reason("SimplerPickCokeCan-v1")
    assert "VK_KHR_external_semaphore_fd" in why and "VK_KHR_external_fence_fd" in why and "llvmpipe" in why
    assert "ErrorExtensionNotPresent" in why and "Vulkan layer" in why and "GPU" in why
    with pytest.raises(TaskUnavailableError, match="VK_KHR_external_semaphore_fd"):
        make_task_env("SimplerPickCokeCan-v1", image_size=32)
    assert probes.calls == [(sys.executable, False), (sys.executable, True)]  # SAPIEN's renderer asked once
    task_unavailable_reason("SimplerMoveNear-v1")
    assert len(probes.calls) == 2, "cached per interpreter"


def test_a_renderer_that_starts_anyway_passes(probes):
    probes.set(_report(LAVAPIPE), renderer={"ok": True})  # e.g. a layer strips the extensions from the request
    assert task_unavailable_reason("SimplerPickCokeCan-v1") is None


def test_ray_traced_drawers_are_refused_on_a_cpu_renderer(probes):
    lavapipe_with = dict(LAVAPIPE, extensions=EXTS)  # a software device that has the extensions
    probes.set(_report(lavapipe_with))
    assert task_unavailable_reason("SimplerPickCokeCan-v1") is None  # rasterised: fine on a CPU
    for task in ("SimplerOpenDrawer-v1", "SimplerCloseDrawer-v1"):
        why = task_unavailable_reason(task)
        assert why and "shader_dir=rt" in why and "CPU" in why and "never returns a frame" in why
    with pytest.raises(TaskUnavailableError, match="ray-traced"):
        make_task_env("SimplerOpenDrawer-v1", image_size=32)
    probes.set(_report(lavapipe_with, GPU))  # a GPU next to the software device: SAPIEN's device is the GPU
    assert task_unavailable_reason("SimplerOpenDrawer-v1") is None


def test_numpy_2_is_refused(probes):
    probes.set(_report(GPU, numpy="2.1.3"))
    why = task_unavailable_reason("SimplerPickCokeCan-v1")
    assert "numpy 2.1.3" in why and "numpy<2" in why and "falls through the table" in why
    with pytest.raises(TaskUnavailableError, match="numpy 2.1.3"):
        make_task_env("SimplerPickCokeCan-v1", image_size=32)


def test_a_fake_interpreter_with_numpy_2(fake_simpler, tmp_path, monkeypatch):
    """The real probe, run in an interpreter whose numpy says 2.0.1 (a stand-in numpy first on its path)."""
    from vla_forget import preflight

    fake_np = tmp_path / "fake-numpy" / "numpy"
    fake_np.mkdir(parents=True)
    (fake_np / "__init__.py").write_text("__version__ = '2.0.1'\n")
    python = tmp_path / "simpler-python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={fake_np.parent} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    monkeypatch.setattr(preflight, "PROBES", {})
    report = preflight.run_probe(str(python))
    assert report["numpy"] == "2.0.1" and ("devices" in report["vulkan"] or "error" in report["vulkan"])
    why = preflight.preflight_error("SimplerPickCokeCan-v1", python=str(python))
    assert why and "numpy 2.0.1" in why


def test_the_real_probe_lists_this_machines_vulkan_devices():
    from vla_forget import preflight

    report = preflight.run_probe(sys.executable)
    assert "error" not in report and report["numpy"]
    vulkan = report["vulkan"]
    if "error" in vulkan:
        pytest.skip(f"no Vulkan loader here: {vulkan['error']}")
    for d in vulkan["devices"]:
        assert d["name"] and d["type"] in preflight.DEVICE_TYPES and all(isinstance(e, str) for e in d["extensions"])
        assert any(e.startswith("VK_") for e in d["extensions"])


def test_doctor_reports_the_three_checks(probes, monkeypatch, capsys):
    from vla_forget.cli import main

    monkeypatch.setattr("vla_forget.envs.vulkan.check_vulkan", lambda *a, **k: "stand-in")
    probes.set(_report(LAVAPIPE, numpy="2.0.0"))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "simpler vulkan: FAILED" in out and "VK_KHR_external_fence_fd" in out
    assert "simpler drawers (rt): UNAVAILABLE" in out and "simpler numpy: FAILED: numpy 2.0.0" in out
    probes.set(_report(GPU))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "simpler vulkan: ok" in out and "simpler drawers (rt): ok: renders on NVIDIA H100" in out
    assert "simpler numpy: ok" in out


def test_doctor_without_simplerenv_is_not_a_failure(tmp_path, monkeypatch, capsys):
    from vla_forget.cli import main
    from vla_forget.envs import simpler

    monkeypatch.setattr("vla_forget.envs.vulkan.check_vulkan", lambda *a, **k: "stand-in")
    monkeypatch.setattr(simpler, "PROBES", {})
    monkeypatch.setenv("VLA_FORGET_SIMPLER_PYTHON", str(tmp_path / "no-such-python"))
    assert main(["doctor"]) == 0
    assert "simpler_env: not installed" in capsys.readouterr().out
