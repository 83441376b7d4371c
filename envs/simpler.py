"""SimplerEnv behind the task contract: Google-robot tasks (``simpler_env``) and WidowX Bridge tasks (ManiSkill3).

Task table, seeds and simulator settings: :mod:`vla_forget.envs.simpler_tasks`.

Actions
-------
These tasks take **OpenVLA's un-normalised 7-D delta** — what OpenVLA-7B
decodes with ``unnorm_key=fractal20220817_data`` (Google robot) or
``bridge_orig`` (WidowX): dx, dy, dz in metres, droll, dpitch, dyaw in radians
(Euler), gripper in [0, 1] with 1 = open — and convert it exactly as
SimplerEnv's OpenVLA inference code (``simpler_env/policies/openvla/openvla_model.py``)
does before ``env.step`` (the pure functions below):

* rotation: ``euler2axangle(roll, pitch, yaw)`` (transforms3d's static x-y-z
  convention) -> axis * angle;
* Google robot gripper: *relative* and *sticky*: the command is the previous
  open value minus the current one (+1 closes), and once its magnitude exceeds
  0.5 it is repeated for 15 steps (:class:`StickyGripper`);
* WidowX gripper: ``2 * (open > 0.5) - 1`` (+1 open, -1 closed), absolute;
* world vector and axis-angle scaled by ``action_scale`` = 1.

So a policy benched on these tasks must decode actions in those units: an
OpenVLA checkpoint with the matching ``unnorm_key`` (the task's registration
metadata names it).

Observations
------------
``image``: the task's camera (Google: ``overhead_camera`` 640 x 512; WidowX:
``3rd_view_camera`` 640 x 480, greenscreened with the real background),
resized to ``image_size`` squared with OpenCV's ``INTER_AREA``, as SimplerEnv
resizes for OpenVLA (to 224 x 224: use ``--image-size 224``).
``state`` (float32 ``[N, 16]``): TCP position and quaternion (wxyz) in the
world frame, the two finger joint positions, zeros. The fingers are found by
joint name: for the Google robot (right, left) they are ``qpos[-4:-2]`` of its
11 joints, whose last two are the head's pan and tilt
(:func:`google_finger_qpos`); for the WidowX (left, right) the last two.
``instruction``: the env's own (``get_language_instruction()``), per episode.
``info["is_success"]``: SimplerEnv's success flag at every step.
``info["episode_stats"]``: one dict per env: the simulator's per-episode stats
at this step (Google robot: SimplerEnv's ``episode_stats``, e.g. ``grasped``,
``consec_grasp``, ``n_lift_significant``, the drawer's ``qpos``, plus
``ever_<flag>`` for each boolean flag of the step's info, e.g.
``ever_is_grasped``, OR-ed over the episode; WidowX: ManiSkill3's flags, e.g.
``is_src_obj_grasped``, ``consecutive_grasp``, ``src_on_target``); the bench
records the last step's in each episode's ``env_stats``.

Where they run
--------------
* Bridge (:class:`BridgeTaskEnv`): ManiSkill3 in this process; CPU physics
  (one env) or GPU physics (``num_envs > 1``). Needs the Bridge scenes and the
  WidowX robot where ManiSkill3 reads them, ``$MS_ASSET_DIR/data/tasks`` and
  ``$MS_ASSET_DIR/data/robots`` (``vla-forget assets``).
* Google robot (:class:`SimplerGoogleTaskEnv`): SimplerEnv's ManiSkill2 fork on
  SAPIEN 2, one env per process, in a worker process of SimplerEnv's
  interpreter (``VLA_FORGET_SIMPLER_PYTHON``, default this interpreter) with
  SimplerEnv's data folder (``VLA_FORGET_SIMPLER_DATA``, default
  ``$VLA_FORGET_CACHE/simpler/data``, staged by ``vla-forget assets``).
Missing pieces raise :class:`TaskUnavailableError` saying what to do; so does
what SimplerEnv's interpreter would get wrong (:mod:`vla_forget.preflight`:
Vulkan extensions SAPIEN 2 needs, the drawers' ray tracing on a CPU renderer,
numpy 2), checked once per interpreter before the first episode.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from vla_forget.envs.base import TaskEnv, TaskInfo
from vla_forget.envs.simpler_tasks import BRIDGE_CONTROL_MODE, SIMPLER_TASKS, episode_config
from vla_forget.errors import VlaForgetError

STATE_DIM = 16
GOOGLE_STICKY_REPEAT = 15
SIMPLER_PYTHON_ENV = "VLA_FORGET_SIMPLER_PYTHON"
SIMPLER_DATA_ENV = "VLA_FORGET_SIMPLER_DATA"
INSTALL_SIMPLER = (
    "install SimplerEnv in its own virtualenv (it needs SAPIEN 2.2.2, ManiSkill3 here needs SAPIEN 3): "
    "git clone https://github.com/simpler-env/SimplerEnv --recurse-submodules; python3.10 -m venv simpler-venv; "
    "simpler-venv/bin/pip install numpy==1.24.4 -e SimplerEnv/ManiSkill2_real2sim -e SimplerEnv; "
    f"then export {SIMPLER_PYTHON_ENV}=$PWD/simpler-venv/bin/python and stage its data with "
    "`vla-forget assets --from SimplerEnv/ManiSkill2_real2sim/data`"
)


class TaskUnavailableError(VlaForgetError, RuntimeError):
    """A registered task whose simulator or assets are not installed here; the message says what to do."""


# --------------------------------------------------------------------------
# OpenVLA action -> SimplerEnv action (pure functions)
# --------------------------------------------------------------------------
def euler_to_quat(rpy: np.ndarray) -> np.ndarray:
    """Euler angles ``[..., 3]`` (roll, pitch, yaw; static x, y, z axes: transforms3d's ``sxyz``) -> quaternion (w, x, y, z)."""
    rpy = np.asarray(rpy, dtype=np.float64)
    ai, aj, ak = rpy[..., 0] / 2.0, rpy[..., 1] / 2.0, rpy[..., 2] / 2.0
    ci, si, cj, sj, ck, sk = np.cos(ai), np.sin(ai), np.cos(aj), np.sin(aj), np.cos(ak), np.sin(ak)
    cc, cs, sc, ss = ci * ck, ci * sk, si * ck, si * sk
    return np.stack([cj * cc + sj * ss, cj * sc - sj * cs, cj * ss + sj * cc, cj * cs - sj * sc], axis=-1)


def euler_to_axis_angle(rpy: np.ndarray) -> np.ndarray:
    """``euler2axangle`` then axis * angle, as SimplerEnv's OpenVLA wrapper: ``[..., 3]`` -> ``[..., 3]``.

    transforms3d's ``quat2axangle``: angle = 2 acos(w) in [0, 2 pi] (no flip to the short way),
    identity (|xyz| below 3 machine epsilons) -> zero vector.
    """
    q = euler_to_quat(rpy)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, xyz = q[..., 0], q[..., 1:]
    n = np.linalg.norm(xyz, axis=-1)
    tiny = n < 3 * np.finfo(np.float64).eps
    angle = 2.0 * np.arccos(np.clip(w, -1.0, 1.0))
    axis = xyz / np.where(tiny, 1.0, n)[..., None]
    return np.where(tiny[..., None], 0.0, axis * angle[..., None])


def bridge_gripper(open_amount: np.ndarray) -> np.ndarray:
    """WidowX: OpenVLA's gripper in [0, 1] (1 = open) -> ``+1`` open / ``-1`` closed."""
    return 2.0 * (np.asarray(open_amount, dtype=np.float64) > 0.5) - 1.0


class StickyGripper:
    """The Google robot's relative, sticky gripper command for ``n`` envs (SimplerEnv's OpenVLA wrapper).

    Per env: ``relative = previous_open - open`` (0 at the first step of an episode); when
    ``|relative| > 0.5`` and no sticky action is on, it turns on and that command is
    repeated for ``repeat`` (15) steps, counting the current one.
    """

    def __init__(self, n: int, repeat: int = GOOGLE_STICKY_REPEAT):
        self.n, self.repeat = int(n), int(repeat)
        self.reset()

    def reset(self) -> None:
        self.previous = np.full(self.n, np.nan)
        self.on = np.zeros(self.n, dtype=bool)
        self.count = np.zeros(self.n, dtype=np.int64)
        self.action = np.zeros(self.n)

    def __call__(self, open_amount: np.ndarray) -> np.ndarray:
        current = np.asarray(open_amount, dtype=np.float64).reshape(self.n)
        relative = np.where(np.isnan(self.previous), 0.0, self.previous - current)
        self.previous = current.copy()
        start = (np.abs(relative) > 0.5) & ~self.on
        self.on |= start
        self.action = np.where(start, relative, self.action)
        self.count = np.where(self.on, self.count + 1, self.count)
        relative = np.where(self.on, self.action, relative)
        done = self.on & (self.count == self.repeat)
        self.on &= ~done
        self.count = np.where(done, 0, self.count)
        self.action = np.where(done, 0.0, self.action)
        return relative


def openvla_to_simpler_action(raw: np.ndarray, robot: str, sticky: Optional[StickyGripper] = None,
                              action_scale: float = 1.0) -> np.ndarray:
    """OpenVLA's un-normalised actions ``[N, 7]`` -> SimplerEnv's ``[N, 7]`` (world vector, axis-angle, gripper).

    ``robot``: ``"google_robot"`` (needs ``sticky``, the episode's :class:`StickyGripper`) or ``"widowx"``.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != 7:
        raise ValueError(f"actions must be [N, 7], got shape {raw.shape}")
    world = raw[:, :3] * action_scale
    rot = euler_to_axis_angle(raw[:, 3:6]) * action_scale
    if robot == "google_robot":
        if sticky is None:
            raise ValueError("the Google robot's gripper is relative and sticky: pass the episode's StickyGripper")
        gripper = sticky(raw[:, 6])
    elif robot == "widowx":
        gripper = bridge_gripper(raw[:, 6])
    else:
        raise ValueError(f"robot must be 'google_robot' or 'widowx', not {robot!r}")
    return np.concatenate([world, rot, gripper[:, None]], axis=1)


# --------------------------------------------------------------------------
# assets
# --------------------------------------------------------------------------
def maniskill_asset_dir() -> str:
    from vla_forget.envs import set_env_defaults

    set_env_defaults()
    return os.environ["MS_ASSET_DIR"]


def maniskill_data_dir() -> str:
    """Where ManiSkill3 reads downloaded assets: ``$MS_ASSET_DIR/data`` (its ``mani_skill.ASSET_DIR``)."""
    return os.path.join(maniskill_asset_dir(), "data")


def simpler_data_dir() -> str:
    if os.environ.get(SIMPLER_DATA_ENV):
        return os.environ[SIMPLER_DATA_ENV]
    cache = os.environ.get("VLA_FORGET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vla-forget")
    return os.path.join(cache, "simpler", "data")


def simpler_python() -> str:
    return os.environ.get(SIMPLER_PYTHON_ENV) or sys.executable


#: files whose presence shows that an asset group is complete (relative to its root)
BRIDGE_FILES = (
    "custom/info_bridge_custom_v0.json",
    "stages/bridge_table_1_v1.glb",
    "stages/bridge_table_1_v2.glb",
    "real_inpainting/bridge_real_eval_1.png",
    "real_inpainting/bridge_sink.png",
    "custom/models/bridge_carrot_generated_modified/collision.obj",
    "custom/models/bridge_plate_objaverse_larger/collision.obj",
)
WIDOWX_FILES = ("wx250s.urdf",)
SIMPLER_FILES = (
    "custom/info_pick_custom_v0.json",
    "custom/models/opened_coke_can",
    "hab2_bench_assets/stages/google_pick_coke_can_1_v4.glb",
    "hab2_bench_assets/stages/frl_apartment_stage_simple.glb",
    "real_inpainting/google_coke_can_real_eval_1.png",
)


def asset_groups() -> Dict[str, Dict[str, Any]]:
    """Each asset group: its folder, the files checked, and where it comes from."""
    ms, data = maniskill_asset_dir(), maniskill_data_dir()
    return {  # old_root: where earlier versions of this project put the group (ManiSkill3 never reads it)
        "bridge": dict(root=os.path.join(data, "tasks", "bridge_v2_real2sim_dataset"), files=BRIDGE_FILES,
                       source="ManiSkill3 download id bridge_v2_real2sim", used_by="the Bridge (WidowX) tasks",
                       layout="data/tasks/bridge_v2_real2sim_dataset",
                       old_root=os.path.join(ms, "tasks", "bridge_v2_real2sim_dataset")),
        "widowx": dict(root=os.path.join(data, "robots", "widowx"), files=WIDOWX_FILES,
                       source="ManiSkill3 download id widowx250s", used_by="the Bridge (WidowX) tasks",
                       layout="data/robots/widowx", old_root=os.path.join(ms, "robots", "widowx")),
        "simpler": dict(root=simpler_data_dir(), files=SIMPLER_FILES,
                        source="SimplerEnv's ManiSkill2_real2sim/data folder (git clone --recurse-submodules)",
                        used_by="the Google-robot tasks", layout="ManiSkill2_real2sim/data"),
    }


def missing_assets(group: str) -> List[str]:
    g = asset_groups()[group]
    return [os.path.join(g["root"], f) for f in g["files"] if not os.path.exists(os.path.join(g["root"], f))]


def misplaced_assets(group: str) -> Optional[str]:
    """The group's folder in the old layout (``$MS_ASSET_DIR/tasks/...``, ``$MS_ASSET_DIR/robots/...``, which
    ManiSkill3 never reads) when it is there and the folder ManiSkill3 reads is not; else None."""
    g = asset_groups()[group]
    old = g.get("old_root")
    if old and os.path.isdir(old) and not os.path.exists(g["root"]):
        return old
    return None


def _misplaced_message(group: str) -> str:
    g = asset_groups()[group]
    return (f"{group} assets found at {g['old_root']}, but ManiSkill3 reads them from {g['root']} "
            f"($MS_ASSET_DIR/{g['layout']}): run `vla-forget assets` to move them there "
            f"(or: mv {g['old_root']} {g['root']})")


#: each SimplerEnv interpreter's import check, once per process (None: it works; tests reset it)
PROBES: Dict[str, Optional[str]] = {}


def probe_simpler_python(python: Optional[str] = None) -> Optional[str]:
    """None if ``python`` imports simpler_env and mani_skill2_real2sim, else why not (cached per interpreter)."""
    python = python or simpler_python()
    if python not in PROBES:
        if not os.path.exists(python):
            PROBES[python] = f"{SIMPLER_PYTHON_ENV}={python} does not exist"
        else:
            try:
                r = subprocess.run([python, "-c", "import simpler_env, mani_skill2_real2sim"], capture_output=True,
                                   text=True, timeout=300)
                PROBES[python] = None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["failed"])[-1]
            except (OSError, subprocess.TimeoutExpired) as e:
                PROBES[python] = f"{type(e).__name__}: {e}"
    return PROBES[python]


def _listing(paths: List[str], n: int = 3) -> str:
    more = f" (and {len(paths) - n} more)" if len(paths) > n else ""
    return ", ".join(paths[:n]) + more


def unavailable_reason(task_id: str) -> Optional[str]:
    """None if the task can run here, else what is missing and what to do."""
    t = SIMPLER_TASKS[task_id]
    if t["backend"] == "bridge":
        misplaced = [_misplaced_message(g) for g in ("bridge", "widowx") if misplaced_assets(g)]
        if misplaced:
            return f"{task_id}: " + "; ".join(misplaced)
        missing = missing_assets("bridge") + missing_assets("widowx")
        if missing:
            return (f"{task_id} needs ManiSkill3's Bridge scenes and WidowX robot under MS_ASSET_DIR="
                    f"{maniskill_asset_dir()} (in its data/ folder); missing: {_listing(missing)}. "
                    "Run `vla-forget assets --download bridge` (or --from a folder holding them)")
        return None
    missing = missing_assets("simpler")
    if missing:
        return (f"{task_id} needs SimplerEnv's data folder at {simpler_data_dir()} ({SIMPLER_DATA_ENV}); missing: "
                f"{_listing(missing)}. Stage it with `vla-forget assets --from SimplerEnv/ManiSkill2_real2sim/data`")
    why = probe_simpler_python()
    if why:
        return f"{task_id} needs SimplerEnv (simpler_env) in {simpler_python()}: {why}. To {INSTALL_SIMPLER}"
    from vla_forget.preflight import preflight_error  # Vulkan extensions, ray tracing on a CPU, numpy 2

    return preflight_error(task_id)


def _resize(images, size: int):
    """uint8 ``[N, H, W, 3]`` torch -> ``[N, size, size, 3]`` on the CPU, each image by OpenCV's ``INTER_AREA``.

    Exactly SimplerEnv's OpenVLA wrapper (``cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA)``).
    Torch's ``interpolate(mode="area")`` is not the same filter at non-integer scales (640 x 480 or 640 x 512
    -> 224): on camera images and rendered frames it differed on 37-72% of pixels, by up to 40 grey levels.
    """
    import cv2
    import torch

    if images.shape[1] == size and images.shape[2] == size:
        return images
    arr = images.cpu().numpy()
    out = np.stack([cv2.resize(np.ascontiguousarray(a), (size, size), interpolation=cv2.INTER_AREA) for a in arr])
    return torch.from_numpy(out)


def _state(tcp_pose, finger_qpos, n: int):
    """``[n, 16]``: TCP pose (7), the two finger joint positions ``finger_qpos`` ``[n, 2]``, zeros."""
    import torch

    s = torch.zeros(n, STATE_DIM, dtype=torch.float32)
    s[:, :7] = torch.as_tensor(tcp_pose, dtype=torch.float32).reshape(n, 7).cpu()
    f = torch.as_tensor(finger_qpos, dtype=torch.float32).reshape(n, -1)[:, :2].cpu()
    s[:, 7:7 + f.shape[1]] = f
    return s


def google_finger_qpos(qpos) -> np.ndarray:
    """The Google robot's finger joints (right, left) from its qpos.

    Its active joints (ManiSkill2_real2sim's ``googlerobot.py``; 11 for the static robot, 13 with the wheels
    first): [wheels,] torso, shoulder, bicep, elbow, forearm, wrist, gripper, finger_right, finger_left,
    head_pan, head_tilt: the fingers are ``qpos[-4:-2]``, the last two entries are the head.
    """
    return np.asarray(qpos, dtype=np.float32).reshape(-1)[-4:-2]


class _LastImageEnv(TaskEnv):
    """What both SimplerEnv-style envs share: the last observation's images and the episode's instructions."""

    _image: Any = None  # a torch uint8 tensor [N, H, W, 3] after a reset
    _instructions: Sequence[str] = ()

    def frames(self) -> np.ndarray:
        if self._image is None:
            raise RuntimeError("frames() needs a reset first")
        return self._image.numpy()

    def instructions(self) -> List[str]:
        return list(self._instructions)


# --------------------------------------------------------------------------
# WidowX: ManiSkill3's Bridge digital twins, in this process
# --------------------------------------------------------------------------
def _bridge_stats(info: Dict[str, Any], n: int) -> List[Dict[str, Any]]:
    """ManiSkill3's Bridge stats (its ``info`` holds its ``episode_stats``: ``is_src_obj_grasped``,
    ``consecutive_grasp``, OR-ed over the episode, ``src_on_target`` at this step), one dict per env."""
    import torch

    out: List[Dict[str, Any]] = [{} for _ in range(n)]
    for k, v in info.items():
        if k in ("success", "elapsed_steps") or not isinstance(v, torch.Tensor) or v.numel() != n:
            continue
        vals = v.reshape(n).cpu().tolist()
        for i in range(n):
            out[i][k] = vals[i]
    return out


class BridgeTaskEnv(_LastImageEnv):
    """``num_envs`` copies of a ManiSkill3 Bridge digital twin behind the task contract (see the module docstring)."""

    def __init__(self, info: TaskInfo, *, ms_id: str, simpler_task: str, num_envs: int = 1, image_size: int = 128,
                 render_images: bool = True, privileged: bool = False, sim_backend: str = "auto",
                 device: Optional[str] = None, expert: str = "none", **_: Any):
        why = unavailable_reason(simpler_task)
        if why:
            raise TaskUnavailableError(why)
        import gymnasium as gym
        import torch

        import mani_skill
        import mani_skill.envs  # noqa: F401
        from mani_skill.envs.tasks.digital_twins import bridge_dataset_eval  # noqa: F401  (registers the twins)

        if os.path.realpath(mani_skill.ASSET_DIR) != os.path.realpath(maniskill_data_dir()):
            raise TaskUnavailableError(
                f"ManiSkill3 reads its assets from {mani_skill.ASSET_DIR} (MS_ASSET_DIR when mani_skill was first "
                f"imported), but MS_ASSET_DIR is now {maniskill_asset_dir()}: set MS_ASSET_DIR before anything "
                "imports mani_skill")
        from vla_forget.envs.maniskill import NO_STEP_LIMIT, quiet_maniskill_logs, resolve_sim_backend

        self.info = info
        self.num_envs, self.image_size = int(num_envs), int(image_size)
        self.privileged = bool(privileged)
        self.sim_backend = resolve_sim_backend(sim_backend, self.num_envs)
        self.camera = SIMPLER_TASKS[simpler_task]["sim"]["camera"]
        quiet_maniskill_logs()
        self._env = gym.make(ms_id, obs_mode="rgb+segmentation", num_envs=self.num_envs,
                             sim_backend="physx_cuda" if self.sim_backend == "gpu" else "physx_cpu",
                             render_backend="gpu" if torch.cuda.is_available() else "cpu",
                             control_mode=BRIDGE_CONTROL_MODE, max_episode_steps=NO_STEP_LIMIT)
        self._u = self._env.unwrapped
        agent = self._u.agent  # the WidowX has no `tcp` link attribute: its controller's ee link is the TCP
        self._ee = getattr(agent, "tcp", None) or agent.robot.links_map["ee_gripper_link"]
        self._t = 0
        self._image = None
        self._instructions: List[str] = []

    def reset(self, seeds: Sequence[int]):
        import torch

        seeds = [int(s) for s in seeds]
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset needs one seed per env: got {len(seeds)} seeds for {self.num_envs} envs")
        obs, _ = self._env.reset(seed=seeds, options={"episode_id": torch.tensor(seeds)})
        self._t = 0
        self._instructions = list(self._u.get_language_instruction())
        return self._observation(obs)

    def step(self, action):
        import torch

        a = torch.as_tensor(action, dtype=torch.float32)
        if a.shape != (self.num_envs, 7):
            raise ValueError(f"action must have shape [{self.num_envs}, 7], got {tuple(a.shape)}")
        sim = openvla_to_simpler_action(a.cpu().numpy(), "widowx")
        obs, _reward, _term, _trunc, info = self._env.step(torch.as_tensor(sim, dtype=torch.float32, device=self._u.device))
        self._t += 1
        n = self.num_envs
        success = torch.as_tensor(info["success"]).bool().reshape(n).cpu()
        truncated = torch.full((n,), self._t >= self.info.max_episode_steps, dtype=torch.bool)
        out = {"is_success": success, "dense_reward": torch.zeros(n), "elapsed_steps": self._t,
               "episode_stats": _bridge_stats(info, n)}
        return self._observation(obs), success.float(), torch.zeros(n, dtype=torch.bool), truncated, out

    def _observation(self, obs):
        import torch

        from vla_forget.envs import EXPERT_KINDS
        from vla_forget.policies.base import Observation

        self._image = _resize(obs["sensor_data"][self.camera]["rgb"], self.image_size).cpu()
        tcp = self._ee.pose.raw_pose
        state = _state(tcp, self._u.agent.robot.get_qpos()[..., -2:], self.num_envs)  # WidowX: ..., left, right finger
        priv: Dict[str, torch.Tensor] = {}
        if self.privileged:
            priv = {"task_kind": torch.full((self.num_envs,), EXPERT_KINDS.index("none"), dtype=torch.long),
                    "tcp_pose": tcp.float().cpu()}
        return Observation(image=self._image, state=state, instruction=list(self._instructions), privileged=priv)

    def close(self) -> None:
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None


# --------------------------------------------------------------------------
# Google robot: SimplerEnv in a worker process of its own interpreter
# --------------------------------------------------------------------------
class SimplerWorker:
    """A ``simpler_worker.py`` process (see that file for the protocol)."""

    def __init__(self, python: Optional[str] = None, data_dir: Optional[str] = None):
        # SimplerEnv (mani_skill2_real2sim/__init__.py) takes MS2_REAL2SIM_ASSET_DIR first, then the data/ folder
        # next to its package, and only then MS2_ASSET_DIR: set the one it reads first to the folder checked here
        self.data_dir = data_dir or simpler_data_dir()
        env = dict(os.environ, MS2_REAL2SIM_ASSET_DIR=self.data_dir, PYTHONUNBUFFERED="1")
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "simpler_worker.py")
        self.proc = subprocess.Popen([python or simpler_python(), path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env)

    def check_asset_dir(self) -> None:
        """SimplerEnv's asset folder must be the folder checked (:func:`unavailable_reason`), else raise."""
        reply = self.request(cmd="check")
        used = str(reply.get("asset_dir"))
        if os.path.realpath(used) != os.path.realpath(self.data_dir):
            raise TaskUnavailableError(
                f"SimplerEnv reads its assets from {used}, not from the staged folder {self.data_dir} "
                f"({SIMPLER_DATA_ENV}): MS2_REAL2SIM_ASSET_DIR did not reach it; check that nothing in SimplerEnv's "
                "interpreter (sitecustomize, a .pth file) sets it")

    def request(self, **req: Any) -> Dict[str, Any]:
        data = pickle.dumps(req, protocol=4)
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
            head = self.proc.stdout.read(4)
        except (BrokenPipeError, OSError):
            head = b""
        if len(head) < 4:
            code = self.proc.poll()
            raise TaskUnavailableError(f"the SimplerEnv worker ({simpler_python()}) exited (code {code}); its "
                                       "messages are above. To " + INSTALL_SIMPLER)
        (n,) = struct.unpack(">I", head)
        reply = pickle.loads(self.proc.stdout.read(n))
        if "error" in reply:
            raise RuntimeError(f"SimplerEnv: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                data = pickle.dumps({"cmd": "close"}, protocol=4)
                self.proc.stdin.write(struct.pack(">I", len(data)) + data)
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class SimplerGoogleTaskEnv(_LastImageEnv):
    """One SimplerEnv Google-robot env (ManiSkill2, CPU, one per process) behind the task contract."""

    def __init__(self, info: TaskInfo, *, simpler_task: str, num_envs: int = 1, image_size: int = 128,
                 render_images: bool = True, privileged: bool = False, sim_backend: str = "auto",
                 device: Optional[str] = None, worker: Optional[SimplerWorker] = None, **_: Any):
        if int(num_envs) != 1:
            raise ValueError(f"num_envs={num_envs}: SimplerEnv's Google-robot tasks run on ManiSkill2's CPU physics, "
                             "one env per process (parallelism = worker processes, --workers)")
        if sim_backend == "gpu":
            raise ValueError("SimplerEnv's Google-robot tasks have no GPU physics (ManiSkill2); use sim_backend='cpu'")
        if worker is None:
            why = unavailable_reason(simpler_task)
            if why:
                raise TaskUnavailableError(why)
            worker = SimplerWorker()
            try:
                worker.check_asset_dir()
            except BaseException:
                worker.close()
                raise
        self.info = info
        self.task = simpler_task
        self.num_envs, self.image_size = 1, int(image_size)
        self.privileged = bool(privileged)
        self._worker = worker
        self._sticky = StickyGripper(1)
        self._ever: Dict[str, bool] = {}
        self._t = 0
        self._image = None
        self._instructions: List[str] = []

    def reset(self, seeds: Sequence[int]):
        seeds = [int(s) for s in seeds]
        if len(seeds) != 1:
            raise ValueError(f"reset needs one seed per env: got {len(seeds)} seeds for 1 env")
        cfg = episode_config(self.task, seeds[0])
        reply = self._worker.request(cmd="reset", **cfg)
        self._t = 0
        self._sticky.reset()
        self._ever = {}
        self._instructions = [str(reply["instruction"])]
        return self._observation(reply)

    def step(self, action):
        import torch

        a = torch.as_tensor(action, dtype=torch.float32)
        if a.shape != (1, 7):
            raise ValueError(f"action must have shape [1, 7], got {tuple(a.shape)}")
        sim = openvla_to_simpler_action(a.cpu().numpy(), "google_robot", self._sticky)
        reply = self._worker.request(cmd="step", action=sim[0].tolist())
        self._t += 1
        self._instructions = [str(reply["instruction"])]
        success = torch.tensor([bool(reply["success"])])
        truncated = torch.tensor([self._t >= self.info.max_episode_steps])
        info = {"is_success": success, "dense_reward": torch.zeros(1), "elapsed_steps": self._t,
                "episode_stats": [self._episode_stats(reply)]}
        return self._observation(reply), success.float(), torch.zeros(1, dtype=torch.bool), truncated, info

    def _episode_stats(self, reply: Dict[str, Any]) -> Dict[str, Any]:
        """SimplerEnv's ``episode_stats`` at this step (what its evaluator reports at the end of an episode), plus
        ``ever_<flag>``: each boolean flag of the step's info (``is_grasped``, ``lifted_object``, ...) OR-ed over the
        episode so far."""
        stats = dict(reply.get("episode_stats") or {})
        for k, v in (reply.get("step_stats") or {}).items():
            if isinstance(v, bool):
                self._ever[k] = self._ever.get(k, False) or v
        stats.update({f"ever_{k}": v for k, v in self._ever.items()})
        return stats

    def _observation(self, reply: Dict[str, Any]):
        import torch

        from vla_forget.envs import EXPERT_KINDS
        from vla_forget.policies.base import Observation

        image = torch.from_numpy(np.ascontiguousarray(reply["image"])).unsqueeze(0)
        self._image = _resize(image, self.image_size)
        tcp = reply.get("tcp_pose")
        tcp = np.zeros(7, np.float32) if tcp is None else tcp
        fingers = reply.get("finger_qpos")  # found by joint name in the worker
        if fingers is None:
            qpos = reply.get("qpos")
            fingers = np.zeros(2, np.float32) if qpos is None else google_finger_qpos(qpos)
        state = _state(tcp, fingers, 1)
        priv: Dict[str, torch.Tensor] = {}
        if self.privileged:
            priv = {"task_kind": torch.tensor([EXPERT_KINDS.index("none")]), "tcp_pose": state[:, :7].clone()}
        return Observation(image=self._image, state=state, instruction=list(self._instructions), privileged=priv)

    def close(self) -> None:
        if getattr(self, "_worker", None) is not None:
            self._worker.close()
            self._worker = None
