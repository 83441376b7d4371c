"""Reference check of the Google-robot SimplerEnv tasks against SimplerEnv's own evaluation loop.

Runs only where ``VLA_FORGET_SIMPLER_PYTHON`` names an interpreter with the real SimplerEnv
(``simpler_env`` + ``mani_skill2_real2sim`` on SAPIEN 2.2.2) and a Vulkan device it can render with;
it skips, saying why, everywhere else.

One fixed sequence of raw OpenVLA-style actions (un-normalised: metres, Euler radians, gripper in [0, 1]
with 1 = open) reaches toward an object, closes the gripper and lifts. It is replayed for a fixed seed

(a) through the project: ``make_task_env(task, image_size=224)`` -> :class:`SimplerGoogleTaskEnv`, its
    SimplerEnv worker and its action conversion;
(b) through SimplerEnv itself, in a subprocess of SimplerEnv's interpreter: a driver script (written to
    ``tmp_path``) parses the arguments of SimplerEnv's published evaluation scripts with SimplerEnv's
    ``simpler_env.evaluation.argparse.get_args`` and runs ``maniskill2_evaluator`` (so
    ``run_maniskill2_eval_single_episode``: its gym.make kwargs, reset options and loop) with SimplerEnv's
    ``OpenVLAInference`` (``simpler_env/policies/openvla/openvla_model.py``: ``euler2axangle``, the sticky
    relative gripper, ``cv2.INTER_AREA`` resize to 224) whose OpenVLA-7B is replaced by the scripted actions.
    That class module imports transformers and torch at the top: the driver loads it with stand-ins for
    those two names (the network is never called). Where a SimplerEnv checkout lacks that file (it is not
    on SimplerEnv's main branch) the driver uses a line-by-line transcription of its conversion, written
    from the published file with transforms3d and cv2, and says so; when the file is there it checks the
    transcription against it too. The evaluator's outputs (video, action plot) are not written.

Compared per step: the 7-D action sent to ``env.step`` (both sides), the TCP pose (<= 1e-5), SimplerEnv's
success flag (equal), the instruction (equal), the camera frame at full resolution (equal) and the
224 x 224 image the policy sees (figures printed; asserted equal while the project resizes with cv2's
INTER_AREA as SimplerEnv does). Also printed: the gym.make kwargs and reset options of each side and
the time per env step.

Assets: both sides read the same SimplerEnv data folder: ``VLA_FORGET_SIMPLER_DATA`` if set, else the
interpreter's own ``mani_skill2_real2sim.ASSET_DIR``. Where that folder lacks the coke-can scene
(``hab2_bench_assets/stages/google_pick_coke_can_1_v4.glb``, a large file that some copies of the
repository do not carry) the test stages a copy of the folder (symbolic links) with a stand-in scene: a
box table whose top is at SimplerEnv's table height (0.87 m) and a floor, made with trimesh in SimplerEnv's
interpreter. Both sides then use the stand-in, so the comparison still holds; the physics of the real
scene (its table mesh) is then not what is simulated, and the test prints which scene was used.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

SIMPLER_PYTHON_ENV = "VLA_FORGET_SIMPLER_PYTHON"
SIMPLER_DATA_ENV = "VLA_FORGET_SIMPLER_DATA"
SIMPLER_PYTHON = os.environ.get(SIMPLER_PYTHON_ENV)

pytestmark = pytest.mark.skipif(
    not SIMPLER_PYTHON,
    reason=f"{SIMPLER_PYTHON_ENV} is not set: this reference test needs an interpreter with the real SimplerEnv",
)

STAGE = "hab2_bench_assets/stages/google_pick_coke_can_1_v4.glb"
POSE_TOL = 1e-5
ACTION_TOL = 1e-9
EPISODE_STEPS = 80  # the tasks' max_episode_steps: SimplerEnv's loop runs until the time limit


# ---------------------------------------------------------------------------------------------------
# the fixed action sequence
# ---------------------------------------------------------------------------------------------------
def _q(x) -> np.ndarray:
    """Round to multiples of 2**-14: exact in float32 and float64, so both sides receive identical values."""
    return np.round(np.asarray(x, dtype=np.float64) * 2.0**14) / 2.0**14


def scripted_actions(reach, n_reach: int = 16, n_settle: int = 6, n_close: int = 6, n_lift: int = 30,
                     lift: float = 0.02, steps: int = EPISODE_STEPS) -> np.ndarray:
    """``[steps, 7]`` raw OpenVLA-style actions: reach by ``reach`` (robot base frame, metres, in ``n_reach``
    equal steps, with small alternating Euler rotations), hold, close (open 1 -> 0), lift, then hold."""
    step = _q(np.asarray(reach, dtype=np.float64) / n_reach)
    rows: List[np.ndarray] = []
    for t in range(n_reach):
        s = 1.0 if t % 2 == 0 else -1.0
        rows.append(np.r_[step, _q([0.01 * s, -0.008 * s, 0.015 * s]), 1.0])
    rows += [np.r_[0, 0, 0, 0, 0, 0, 1.0]] * n_settle
    rows += [np.r_[0, 0, 0, 0, 0, 0, 0.0]] * n_close
    rows += [np.r_[0, 0, _q(lift), 0, 0, 0, 0.0]] * n_lift
    rows += [np.r_[0, 0, 0, 0, 0, 0, 0.0]] * (steps - len(rows))
    out = np.stack(rows[:steps]).astype(np.float64)
    assert np.array_equal(out.astype(np.float32).astype(np.float64), out)
    return out


# ---------------------------------------------------------------------------------------------------
# the cases: the project's task and seed, and the same episode as SimplerEnv's scripts' arguments
# ---------------------------------------------------------------------------------------------------
def _coke_can_case() -> Dict[str, Any]:
    from vla_forget.envs.simpler_tasks import coke_can_episode

    seed = 155  # grid point (5, 5) of the 10 x 10 grid, can standing (upright)
    x, y, pose = coke_can_episode(seed)
    assert pose == "upright"
    # scripts/*_pick_coke_can_visual_matching.sh, for one can position, pose and the default URDF
    argv = ["--robot", "google_robot_static", "--control-freq", "3", "--sim-freq", "513",
            "--max-episode-steps", "80", "--env-name", "GraspSingleOpenedCokeCanInScene-v0",
            "--scene-name", "google_pick_coke_can_1_v4",
            "--rgb-overlay-path", "{data}/real_inpainting/google_coke_can_real_eval_1.png",
            "--robot-init-x", "0.35", "0.35", "1", "--robot-init-y", "0.20", "0.20", "1",
            "--obj-init-x", repr(x), repr(x), "1", "--obj-init-y", repr(y), repr(y), "1",
            "--robot-init-rot-quat-center", "0", "0", "0", "1",
            "--robot-init-rot-rpy-range", "0", "0", "1", "0", "0", "1", "0", "0", "1",
            "--additional-env-build-kwargs", f"{pose}=True", "urdf_version=None"]
    files = ["custom/info_pick_custom_v0.json", "custom/models/opened_coke_can/textured.dae",
             "custom/models/opened_coke_can/collision.obj", "real_inpainting/google_coke_can_real_eval_1.png"]
    # reach the standing can at (x, y): the base faces -x, so base-frame deltas are the world's negated in x, y
    return dict(task="SimplerPickCokeCan-v1", seed=seed, argv=argv, files=files,
                actions=scripted_actions([0.36, 0.61, -0.29]))


def _move_near_case() -> Dict[str, Any]:
    seed = 12  # episode 12: triplet (7up can, apple, sponge), move the 7up can near the apple; all files present
    # scripts/*_move_near_variant_agg.sh, base set-up, one episode
    argv = ["--robot", "google_robot_static", "--control-freq", "3", "--sim-freq", "513",
            "--max-episode-steps", "80", "--env-name", "MoveNearGoogleInScene-v0",
            "--scene-name", "google_pick_coke_can_1_v4",
            "--robot-init-x", "0.35", "0.35", "1", "--robot-init-y", "0.21", "0.21", "1",
            "--obj-variation-mode", "episode", "--obj-episode-range", str(seed % 60), str(seed % 60 + 1),
            "--robot-init-rot-quat-center", "0", "0", "0", "1",
            "--robot-init-rot-rpy-range", "0", "0", "1", "0", "0", "1", "-0.09", "-0.09", "1"]
    files = ["custom/info_pick_custom_v0.json"] + [f"custom/models/{m}/{f}" for m in ("opened_7up_can", "apple", "sponge")
                                                   for f in ("textured.dae", "collision.obj")]
    return dict(task="SimplerMoveNear-v1", seed=seed, argv=argv, files=files,
                actions=scripted_actions([0.6, 1.0, -0.29]))


CASES = {"SimplerPickCokeCan-v1": _coke_can_case, "SimplerMoveNear-v1": _move_near_case}


# ---------------------------------------------------------------------------------------------------
# the driver, run by SimplerEnv's interpreter
# ---------------------------------------------------------------------------------------------------
DRIVER = r'''
import importlib.util
import json
import os
import sys
import time
import types

import numpy as np


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def cmd_info():
    import importlib.metadata as md

    import mani_skill2_real2sim
    import simpler_env

    versions = {}
    for name in ("sapien", "mani_skill2_real2sim", "simpler_env", "numpy", "gymnasium", "opencv-python",
                 "transforms3d"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    pkg = os.path.dirname(os.path.abspath(simpler_env.__file__))
    print(json.dumps({"simpler_env_dir": pkg, "asset_dir": str(mani_skill2_real2sim.ASSET_DIR),
                      "openvla_model": os.path.join(pkg, "policies", "openvla", "openvla_model.py"),
                      "versions": versions}))


def cmd_renderer():
    import sapien.core as sapien

    sapien.SapienRenderer(offscreen_only=True)
    print("RENDERER_OK")


def cmd_standin(path):
    """A box table (top at 0.87 m, SimplerEnv's scene_table_height) and a floor (top at 0.017 m), written in the
    frame of SimplerEnv's Habitat stages: the arena is placed at -scene_offset (1.6616, 3.0337, 0) and turned by
    scene_pose q = (0.707, 0.707, 0, 0), +90 degrees about x (y up -> z up)."""
    import trimesh

    boxes = [((-0.75, 0.0), (-0.45, 0.85), (0.0, 0.87)), ((-3.0, 3.0), (-3.0, 3.0), (-0.1, 0.017))]
    meshes = []
    for (x0, x1), (y0, y1), (z0, z1) in boxes:
        m = trimesh.creation.box(extents=[x1 - x0, y1 - y0, z1 - z0])
        m.apply_translation([(x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2])
        meshes.append(m)
    mesh = trimesh.util.concatenate(meshes)
    mesh.apply_translation([-1.6616, -3.0337, 0.0])
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    mesh.visual.face_colors = [120, 90, 60, 255]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mesh.export(path)
    print("STANDIN_OK")


class ScriptedVLA:
    """Stands in for OpenVLA-7B: predict_action returns the next scripted un-normalised action."""

    def __init__(self, actions):
        self.actions, self.i, self.unnorm_keys = actions, 0, []

    def cuda(self):
        return self

    def predict_action(self, unnorm_key=None, do_sample=False, **_inputs):
        self.unnorm_keys.append(unnorm_key)
        a = self.actions[self.i]
        self.i += 1
        return np.array(a, dtype=np.float64)


class _Inputs:
    def to(self, *args, **kwargs):
        return {}


class ScriptedProcessor:
    """Stands in for OpenVLA's processor: keeps the (already resized) image and the prompt it is given."""

    def __init__(self):
        self.images, self.prompts = [], []

    def __call__(self, prompt, image):
        self.images.append(np.array(image, dtype=np.uint8))
        self.prompts.append(prompt)
        return _Inputs()


def load_openvla_module(path, vla, processor):
    """Import SimplerEnv's openvla_model.py with stand-ins for transformers (and torch, if absent)."""
    tf = types.ModuleType("transformers")
    tf.AutoProcessor = types.SimpleNamespace(from_pretrained=lambda *a, **k: processor)
    tf.AutoModelForVision2Seq = types.SimpleNamespace(from_pretrained=lambda *a, **k: vla)
    saved = {name: sys.modules.get(name) for name in ("transformers", "torch")}
    sys.modules["transformers"] = tf
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.modules["torch"] = types.SimpleNamespace(bfloat16="bfloat16")
    try:
        spec = importlib.util.spec_from_file_location("simpler_env_openvla_model", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    return module


class TranscribedOpenVLAInference:
    """SimplerEnv's OpenVLAInference (simpler_env/policies/openvla/openvla_model.py), transcribed: the image resize
    and the raw-action conversion, line for line; the network is the scripted VLA."""

    def __init__(self, vla, processor, policy_setup="google_robot", image_size=(224, 224), action_scale=1.0):
        assert policy_setup == "google_robot"
        self.vla, self.processor = vla, processor
        self.policy_setup, self.unnorm_key = policy_setup, "fractal20220817_data"
        self.sticky_gripper_num_repeat = 15
        self.image_size, self.action_scale = list(image_size), action_scale
        self.reset(None)

    def reset(self, task_description):
        self.task_description = task_description
        self.sticky_action_is_on = False
        self.gripper_action_repeat = 0
        self.sticky_gripper_action = 0.0
        self.previous_gripper_action = None

    def step(self, image, task_description=None, *args, **kwargs):
        import cv2

        if task_description is not None and task_description != self.task_description:
            self.reset(task_description)
        assert image.dtype == np.uint8
        image = cv2.resize(image, tuple(self.image_size), interpolation=cv2.INTER_AREA)
        self.processor(task_description, image)
        raw_actions = self.vla.predict_action(unnorm_key=self.unnorm_key, do_sample=False)[None]
        raw_action = {"world_vector": np.array(raw_actions[0, :3]), "rotation_delta": np.array(raw_actions[0, 3:6]),
                      "open_gripper": np.array(raw_actions[0, 6:7])}
        return raw_action, self.convert(raw_action)

    def convert(self, raw_action):
        from transforms3d.euler import euler2axangle

        action = {"world_vector": raw_action["world_vector"] * self.action_scale}
        roll, pitch, yaw = np.asarray(raw_action["rotation_delta"], dtype=np.float64)
        ax, angle = euler2axangle(roll, pitch, yaw)
        action["rot_axangle"] = ax * angle * self.action_scale
        current = raw_action["open_gripper"]
        if self.previous_gripper_action is None:
            relative = np.array([0])
        else:
            relative = self.previous_gripper_action - current
        self.previous_gripper_action = current
        if np.abs(relative) > 0.5 and (not self.sticky_action_is_on):
            self.sticky_action_is_on = True
            self.sticky_gripper_action = relative
        if self.sticky_action_is_on:
            self.gripper_action_repeat += 1
            relative = self.sticky_gripper_action
        if self.gripper_action_repeat == self.sticky_gripper_num_repeat:
            self.sticky_action_is_on = False
            self.gripper_action_repeat = 0
            self.sticky_gripper_action = 0.0
        action["gripper"] = relative
        action["terminate_episode"] = np.array([0.0])
        return action

    def visualize_epoch(self, *args, **kwargs):
        pass


def cmd_episode(spec_path):
    spec = json.load(open(spec_path))
    actions = np.asarray(spec["actions"], dtype=np.float64)
    out = spec["out"]

    import gymnasium as gym

    made = []
    gym_make = gym.make

    def recording_make(env_id, **kwargs):  # simpler_env.utils.env.env_builder calls gym.make(env_name, **kwargs)
        made.append({"env": env_id, "kwargs": _plain(kwargs)})
        return gym_make(env_id, **kwargs)

    gym.make = recording_make

    import simpler_env
    import simpler_env.evaluation.maniskill2_evaluator as ev
    from simpler_env.evaluation.argparse import get_args

    rec = {"tcp": [], "qpos": [], "raw": [], "success": [], "terminated": [], "step_s": [], "actions": [],
           "reset": []}

    class Recorder(gym.Wrapper):
        """Passive: records what SimplerEnv's loop sends and gets."""

        def reset(self, *, seed=None, options=None):
            rec["reset"].append({"seed": seed, "options": _plain(options)})
            obs, info = self.env.reset(seed=seed, options=options)
            self._keep(obs)
            return obs, info

        def step(self, action):
            rec["actions"].append(np.asarray(action, dtype=np.float64).copy())
            t = time.perf_counter()
            obs, reward, terminated, truncated, info = self.env.step(action)
            rec["step_s"].append(time.perf_counter() - t)
            self._keep(obs)
            rec["success"].append(bool(info["success"]))
            rec["terminated"].append(bool(terminated))
            return obs, reward, terminated, truncated, info

        def _keep(self, obs):
            rec["tcp"].append(np.asarray(obs["extra"]["tcp_pose"], dtype=np.float64).copy())
            rec["qpos"].append(np.asarray(obs["agent"]["qpos"], dtype=np.float64).copy())
            cam = "overhead_camera" if "google_robot" in self.env.unwrapped.robot_uid else "3rd_view_camera"
            rec["raw"].append(np.array(obs["image"][cam]["rgb"], dtype=np.uint8))

    build = ev.build_maniskill2_env
    ev.build_maniskill2_env = lambda env_name, **kwargs: Recorder(build(env_name, **kwargs))
    ev.write_video = lambda *args, **kwargs: None  # output only

    sys.argv = ["main_inference.py", "--policy-model", "openvla", "--policy-setup", "google_robot",
                "--ckpt-path", "scripted-actions", "--logging-dir", spec["logging_dir"]] + spec["argv"]
    args = get_args()

    vla, processor = ScriptedVLA(actions), ScriptedProcessor()
    path = os.path.join(os.path.dirname(os.path.abspath(simpler_env.__file__)), "policies", "openvla", "openvla_model.py")
    transcription_diff = None
    if os.path.exists(path):
        module = load_openvla_module(path, vla, processor)
        model = module.OpenVLAInference(saved_model_path=args.ckpt_path, policy_setup=args.policy_setup,
                                        action_scale=args.action_scale)  # as simpler_env/main_inference.py
        source = "verbatim"
        # the transcription, on the same actions, against the published file
        a = TranscribedOpenVLAInference(None, None, action_scale=args.action_scale)
        b = module.OpenVLAInference.__new__(module.OpenVLAInference)
        b.__dict__.update(vars(model))
        b.reset("x")
        a.reset("x")
        diffs = []
        for raw in actions:
            r = {"world_vector": raw[:3].copy(), "rotation_delta": raw[3:6].copy(), "open_gripper": raw[6:7].copy()}
            b.vla, b.processor = ScriptedVLA([raw]), ScriptedProcessor()
            _, got = b.step(np.zeros((8, 8, 3), np.uint8), "x")
            want = a.convert(r)
            diffs.append(max(float(np.max(np.abs(np.asarray(got[k], np.float64) - np.asarray(want[k], np.float64))))
                             for k in ("world_vector", "rot_axangle", "gripper")))
        transcription_diff = max(diffs)
    else:
        model = TranscribedOpenVLAInference(vla, processor, action_scale=args.action_scale)
        source = "transcription"
    model.visualize_epoch = lambda *a, **k: None  # output only (an action plot)

    t0 = time.perf_counter()
    results = ev.maniskill2_evaluator(model, args)
    loop_s = time.perf_counter() - t0

    np.savez(out + ".npz", tcp=np.stack(rec["tcp"]), qpos=np.stack(rec["qpos"]), raw=np.stack(rec["raw"]),
             model_images=np.stack(processor.images), actions=np.stack(rec["actions"]),
             success=np.array(rec["success"]), terminated=np.array(rec["terminated"]),
             step_s=np.array(rec["step_s"]))
    meta = {"made": made, "reset": rec["reset"], "results": [bool(r) for r in results],
            "prompts": processor.prompts, "unnorm_keys": vla.unnorm_keys, "conversion": source,
            "openvla_model": path, "transcription_max_diff": transcription_diff, "loop_s": loop_s,
            "robot_init_quat": _plain(args.robot_init_quats[0])}
    json.dump(meta, open(out + ".json", "w"))
    print("EPISODE_OK")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "info":
        cmd_info()
    elif cmd == "renderer":
        cmd_renderer()
    elif cmd == "standin":
        cmd_standin(sys.argv[2])
    elif cmd == "episode":
        cmd_episode(sys.argv[2])
    else:
        raise SystemExit(f"unknown command {cmd}")
'''


def _run_driver(driver: Path, *args: str, env: Dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([SIMPLER_PYTHON, str(driver), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _mirror(src: Path, dst: Path, replace: List[tuple]) -> None:
    """``dst``: links to everything in ``src`` except along the paths in ``replace`` (tuples of parts)."""
    dst.mkdir(parents=True, exist_ok=True)
    heads = {p[0] for p in replace}
    if src.is_dir():
        for entry in src.iterdir():
            if entry.name not in heads:
                (dst / entry.name).symlink_to(entry)
    for head in heads:
        deeper = [p[1:] for p in replace if p[0] == head and len(p) > 1]
        if deeper:
            _mirror(src / head, dst / head, deeper)


@pytest.fixture(scope="module")
def simpler(tmp_path_factory):
    """SimplerEnv's interpreter: where its checkout is, its data folder (staged with a stand-in scene if needed)."""
    tmp = tmp_path_factory.mktemp("simpler-reference")
    driver = tmp / "simpler_reference_driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    base_env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    base_env.pop("MS2_REAL2SIM_ASSET_DIR", None)
    if not os.path.exists(SIMPLER_PYTHON):
        pytest.skip(f"{SIMPLER_PYTHON_ENV}={SIMPLER_PYTHON} does not exist")
    r = _run_driver(driver, "info", env=base_env, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"{SIMPLER_PYTHON} cannot import SimplerEnv: {_tail(r.stderr, 3)}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    r = _run_driver(driver, "renderer", env=base_env, timeout=300)
    if r.returncode != 0 or "RENDERER_OK" not in r.stdout:
        pytest.skip(f"SAPIEN 2 in {SIMPLER_PYTHON} cannot create its Vulkan renderer here: {_tail(r.stderr, 3)}")

    data = Path(os.environ.get(SIMPLER_DATA_ENV) or info["asset_dir"])
    scene = "SimplerEnv's google_pick_coke_can_1_v4"
    if not (data / STAGE).is_file():
        staged = tmp / "data"
        _mirror(data, staged, [tuple(Path(STAGE).parts)])
        r = _run_driver(driver, "standin", str(staged / STAGE), env=base_env, timeout=300)
        assert r.returncode == 0 and "STANDIN_OK" in r.stdout, _tail(r.stderr)
        data = staged
        scene = "a stand-in (box table at 0.87 m and floor; the real scene file is not in the data folder)"
    print(f"\nSimplerEnv: {info['simpler_env_dir']}  versions: {info['versions']}\ndata folder: {data}\nscene: {scene}")
    return dict(driver=driver, info=info, data=data, scene=scene, tmp=tmp,
                env=dict(base_env, MS2_REAL2SIM_ASSET_DIR=str(data)))


def _run_simplerenv(simpler, case) -> Dict[str, Any]:
    name = case["task"]
    out = simpler["tmp"] / f"{name}-simplerenv"
    spec = {"argv": [a.replace("{data}", str(simpler["data"])) for a in case["argv"]],
            "actions": case["actions"].tolist(), "out": str(out), "logging_dir": str(simpler["tmp"] / "results")}
    spec_path = simpler["tmp"] / f"{name}-spec.json"
    spec_path.write_text(json.dumps(spec))
    t = time.perf_counter()
    r = _run_driver(simpler["driver"], "episode", str(spec_path), env=simpler["env"], timeout=1800)
    wall = time.perf_counter() - t
    assert r.returncode == 0 and "EPISODE_OK" in r.stdout, f"SimplerEnv's loop failed:\n{_tail(r.stderr, 40)}"
    arrays = dict(np.load(str(out) + ".npz"))
    meta = json.loads(Path(str(out) + ".json").read_text())
    return dict(arrays, meta=meta, wall_s=wall)


def _run_project(simpler, case, monkeypatch) -> Dict[str, Any]:
    import torch

    from vla_forget.envs import make_task_env

    monkeypatch.setenv(SIMPLER_DATA_ENV, str(simpler["data"]))
    monkeypatch.delenv("MS2_REAL2SIM_ASSET_DIR", raising=False)  # the project must pass the folder itself
    env = make_task_env(case["task"], image_size=224)
    try:
        worker = env._worker
        requests, replies = [], []
        request = worker.request

        def recording_request(**req):
            reply = request(**req)
            if req.get("cmd") in ("reset", "step"):
                requests.append(req)
                replies.append(reply)
            return reply

        worker.request = recording_request
        asset_dir = request(cmd="check")["asset_dir"]

        try:
            obs = env.reset([case["seed"]])
        except RuntimeError as e:  # the worker refuses an env whose asset files are not all there
            if "FileNotFoundError" not in str(e):
                raise
            pytest.skip(f"{case['task']}: SimplerEnv's own loop ran this episode, the project refused it: "
                        f"{str(e).splitlines()[0]}")
        images, tcp, success, instr, step_s = [obs.image[0].numpy().copy()], [obs.state[0, :7].numpy().copy()], [], [], []
        instr.append(list(obs.instruction))
        for a in case["actions"]:
            t = time.perf_counter()
            obs, _r, _term, _trunc, info = env.step(torch.tensor(a[None], dtype=torch.float32))
            step_s.append(time.perf_counter() - t)
            images.append(obs.image[0].numpy().copy())
            tcp.append(obs.state[0, :7].numpy().copy())
            success.append(bool(info["is_success"][0]))
            instr.append(list(obs.instruction))
    finally:
        env.close()
    return dict(images=np.stack(images), tcp=np.stack(tcp).astype(np.float64), success=np.array(success),
                instructions=instr, step_s=np.array(step_s), asset_dir=asset_dir,
                raw=np.stack([np.asarray(r["image"], dtype=np.uint8) for r in replies]),
                raw_tcp=np.stack([np.asarray(r["tcp_pose"], dtype=np.float64) for r in replies]),
                actions=np.stack([np.asarray(q["action"], dtype=np.float64) for q in requests if q["cmd"] == "step"]),
                reset_request={k: v for k, v in requests[0].items() if k != "cmd"})


@pytest.mark.parametrize("task", list(CASES))
def test_matches_simplerenv_evaluation_loop(simpler, task, monkeypatch):
    case = CASES[task]()
    for f in case["files"]:
        if not (simpler["data"] / f).exists():
            pytest.skip(f"{task}: {f} is not in the SimplerEnv data folder {simpler['data']}")

    ref = _run_simplerenv(simpler, case)
    got = _run_project(simpler, case, monkeypatch)
    meta = ref["meta"]
    T = len(case["actions"])

    # --- figures -------------------------------------------------------------------------------------
    steps = min(T, len(ref["actions"]), len(got["actions"]))
    act_diff = float(np.max(np.abs(ref["actions"][:steps] - got["actions"][:steps])))
    n_pose = min(len(ref["tcp"]), len(got["tcp"]))
    pose_diff = np.max(np.abs(ref["tcp"][:n_pose] - got["tcp"][:n_pose]), axis=1)
    raw_same = ref["raw"].shape == got["raw"].shape and bool(np.array_equal(ref["raw"], got["raw"]))
    raw_diff = (int(np.max(np.abs(ref["raw"].astype(int) - got["raw"].astype(int))))
                if ref["raw"].shape == got["raw"].shape else None)
    n_img = min(len(ref["model_images"]), len(got["images"]))
    d = np.abs(ref["model_images"][:n_img].astype(int) - got["images"][:n_img].astype(int))
    succ_ref, succ_got = ref["success"][:steps], got["success"][:steps]
    first = lambda s: int(np.argmax(s)) if s.any() else None  # noqa: E731
    print(f"\n=== {task} seed {case['seed']} vs SimplerEnv's maniskill2_evaluator ({meta['conversion']} "
          f"OpenVLAInference: {meta['openvla_model']}; transcription vs published file: "
          f"{meta['transcription_max_diff']}) ===")
    print(f"scene: {simpler['scene']}")
    print(f"SimplerEnv gym.make: {meta['made']}")
    print(f"SimplerEnv reset: {meta['reset']}")
    print(f"project request: {got['reset_request']}")
    print(f"instruction: SimplerEnv {meta['prompts'][0]!r}, project {got['instructions'][0]}")
    print(f"steps compared: {steps} (SimplerEnv's loop ran {len(ref['actions'])}, evaluator success "
          f"{meta['results']})")
    print(f"action sent to env.step: max |diff| {act_diff:.3g}")
    print(f"TCP pose (7, float32 obs): max |diff| {float(pose_diff.max()):.3g} over {n_pose} observations "
          f"(first step above {POSE_TOL}: {first(pose_diff > POSE_TOL)})")
    print(f"success per step equal: {bool(np.array_equal(succ_ref, succ_got))}; first success step SimplerEnv "
          f"{first(succ_ref)}, project {first(succ_got)}; successes {int(succ_ref.sum())} / {int(succ_got.sum())}; "
          f"SimplerEnv success == terminated: {bool(np.array_equal(ref['success'], ref['terminated']))}")
    print(f"camera frame {ref['raw'].shape[1:]}: identical {raw_same} (max |diff| {raw_diff})")
    print(f"224x224 policy image: max |diff| {int(d.max())}, mean {float(d.mean()):.4f}, pixels differing "
          f"{float((d.max(axis=-1) > 0).mean()):.4%} over {n_img} images")
    print(f"time per env step: SimplerEnv env.step {1e3 * float(np.mean(ref['step_s'])):.0f} ms (its loop "
          f"{1e3 * meta['loop_s'] / max(1, len(ref['actions'])):.0f} ms/step incl. resize and policy stand-in, "
          f"subprocess {ref['wall_s']:.1f} s); project env.step {1e3 * float(np.mean(got['step_s'])):.0f} ms "
          f"(worker round trip + conversion + resize)")

    # --- assertions ---------------------------------------------------------------------------------
    assert os.path.realpath(got["asset_dir"]) == os.path.realpath(str(simpler["data"])), (
        f"the project's SimplerEnv worker reads {got['asset_dir']}, not {SIMPLER_DATA_ENV}={simpler['data']}")
    assert len(ref["actions"]) == T, "SimplerEnv's loop ran a different number of steps than the sequence"
    assert meta["unnorm_keys"][0] == "fractal20220817_data"
    assert meta["prompts"][0] == got["instructions"][0][0]
    if meta["transcription_max_diff"] is not None:
        assert meta["transcription_max_diff"] <= 1e-12
    assert act_diff <= ACTION_TOL, f"the converted actions differ by {act_diff}"
    assert float(pose_diff.max()) <= POSE_TOL, f"TCP poses differ by {float(pose_diff.max())}"
    assert np.allclose(got["raw_tcp"], got["tcp"], atol=1e-7)
    assert np.array_equal(succ_ref, succ_got), "per-step success differs"
    assert raw_same, f"the camera frames differ (max |diff| {raw_diff})"
    assert int(d.max()) == 0, "the 224 x 224 image differs from SimplerEnv's cv2.INTER_AREA resize"
