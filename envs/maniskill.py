"""ManiSkill3 backend of the task contract.

One :class:`ManiSkillTaskEnv` holds ``num_envs`` copies of a ManiSkill task with
the Panda arm under ``pd_ee_delta_pose`` control:

* CPU physics + software (lavapipe) or GPU rendering: one env per process
  (``num_envs=1``); parallelism on the CPU is processes, not envs;
* GPU physics (``sim_backend="gpu"``, or ``"auto"`` with CUDA and ``num_envs > 1``):
  many envs in one process, all tensors on the GPU.

Observation
-----------
``state`` (float32 ``[N, 16]``, the same layout for every task)::

    0:7    arm joint positions (rad)
    7:9    finger joint positions (m, 0 = closed, 0.04 = open)
    9:12   TCP position (m, world frame; the robot base sits at (-0.615, 0, 0))
    12:16  TCP orientation quaternion (w, x, y, z)

``image``: uint8 ``[N, S, S, 3]`` from ``base_camera``, the same fixed camera
for every task (in front of the table at (0.35, 0, 0.45) m looking at
(-0.05, 0, 0), 1.2 rad field of view: the whole workspace and the gripper), or
``None`` when ``render_images=False``. With ``wrist_camera=True`` a second
camera rides on the Panda's hand (where ManiSkill's ``panda_wristcam`` mounts its
RealSense, looking down between the fingers, pi/2 field of view) and ``image`` is
``[N, S, 2S, 3]``: the front view on the left, the wrist view on the right. The
robot stays the plain ``panda`` (same links, same physics); only a camera is added,
so scenes, seeds and success are those of the front-only task. ``instruction``: one string per env, fixed per seed.

``privileged`` (only with ``privileged=True``; for scripted experts)::

    task_kind      long [N]     index into vla_forget.envs.EXPERT_KINDS
    tcp_pose       float [N,7]  TCP position + quaternion (wxyz)
    obj_pose       float [N,7]  the object to move (the named cube, the sphere, ...)
    obj_half_size  float [N]    half the object's width (cube half size, sphere radius)
    goal_pos       float [N,3]  where the object's centre must end up
    release        bool  [N]    whether the object must be let go at the goal
    align_yaw      bool  [N]    whether the grasp must align with the object's faces
    is_grasped     bool  [N]    whether the gripper holds the object (simulator contact test; False
                                at reset, where the contacts are still the previous episode's)

Actions, rewards, episodes
--------------------------
The action ``[N, 7]`` (dx, dy, dz, droll, dpitch, dyaw, gripper) is clipped to
[-1, 1] and passed to ManiSkill's normalised ``pd_ee_delta_pose`` controller
(+-1 = +-0.1 m / +-0.1 rad per step; rotation deltas are applied about world-
aligned axes through the TCP, and, measured, a positive droll / dpitch / dyaw
turns the TCP about -x / -y / -z) plus the gripper (+1 open, -1 closed).
Every task uses the plain ``panda`` robot (ManiSkill's StackCube defaults to
``panda_wristcam``; its wrist camera is not used here). The reward is the
success indicator as a float; ManiSkill's normalised dense reward is in
``info["dense_reward"]``. ManiSkill's own termination is ignored: every episode
runs to ``max_episode_steps`` (``truncated`` turns true at that step;
``terminated`` is always false), so that success-at-end is well defined.

Seeds
-----
``reset(seeds)`` takes one seed per env. With one env (the CPU) the same seed
always gives the same scene and instruction. Our own tasks draw from
ManiSkill's per-env RNG, so that holds in GPU batches too; ManiSkill's
built-in tasks seed torch with the *first* seed of the batch, so in a GPU batch
their scenes depend on the whole seed list (reproducible for the same list).

Image size and speed
--------------------
Measured on the 2-core CPU machine with lavapipe (Mesa 25), one env, the
scripted expert acting, while other jobs kept the load at ~3 (so roughly one
core each; an idle machine is faster):

======  =====================  ==========================
pixels  PickCube ms/step       PlaceCubeOnTarget ms/step
======  =====================  ==========================
none    18 (55 steps/s)        22 (46 steps/s)
64      58                     71
128     91 (11 steps/s)        81 (12 steps/s)
224     89                     93
======  =====================  ==========================

The camera capture costs ~40-70 ms per frame and depends little on the size
(a fixed cost per frame dominates lavapipe), so 128 px is the default: enough
for the small VLA and for videos; 224 px (OpenVLA's input) costs ~10% more per
step but triples the stored demonstration size. Making an env takes ~0.3 s,
except the first one in a process with rendering (~14-18 s: lavapipe compiles
the shaders; they stay alive for the process, see ``_RENDER_KEEPALIVE``) and
the first state-only one (~5 s).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from vla_forget.envs.base import TaskEnv, TaskInfo
from vla_forget.envs.lowpoly import LOWPOLY_MS_IDS
from vla_forget.policies.base import Observation

STATE_DIM = 16
CAMERA = "base_camera"
#: One camera for every task (ManiSkill's defaults differ per task and show the
#: cubes at a few pixels): in front of the table, looking down at the workspace.
CAMERA_EYE = (0.35, 0.0, 0.45)
CAMERA_TARGET = (-0.05, 0.0, 0.0)
CAMERA_FOV = 1.2  # radians
WRIST_CAMERA = "hand_camera"
#: The wrist camera's pose in the ``panda_hand`` frame: ManiSkill's panda_wristcam mount
#: (panda_v3.urdf: realsense_joint, then camera_link_joint), looking along the fingers.
WRIST_CAMERA_OFFSET = ((0.035, 0.0, 0.036), (0.0, -1.5707, 3.1415), (0.0, 0.02, 0.0115))
WRIST_CAMERA_FOV = 1.5707963267948966
#: gym.make's own time limit is set far beyond ours; the episode length is ours.
NO_STEP_LIMIT = 10_000
#: One render system kept alive for the life of the process. SAPIEN frees its
#: compiled shaders with the last render system; with lavapipe recompiling them
#: costs 8-15 s at the next env's first picture (measured), so an env made after
#: another was closed would pay that again.
_RENDER_KEEPALIVE: list = []


#: ManiSkill log messages (their beginnings) that say nothing to a user of the suite: the tasks place every actor
#: at reset, and the renderer is chosen on purpose
MANISKILL_NOISE = ("No initial pose set for actor builder", 'Requested to use render device "sapien_cuda"')


class _DropNoise:
    """A logging filter that drops :data:`MANISKILL_NOISE` and keeps every other record."""

    def filter(self, record) -> bool:
        return not record.getMessage().startswith(MANISKILL_NOISE)


def quiet_maniskill_logs() -> None:
    """Drop ManiSkill's per-env messages that say nothing to the user (:data:`MANISKILL_NOISE`: the actor
    builders' initial poses, the render-device fallback) and keep its other warnings and errors.

    Set VLA_FORGET_VERBOSE=1 to see everything.
    """
    import os

    if os.environ.get("VLA_FORGET_VERBOSE"):
        return
    from mani_skill.utils.logging_utils import logger  # ManiSkill's own logger ("mani_skill ", with a space)

    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(_DropNoise())


# --- per-task simulator facts for the scripted expert --------------------------
def _cube_above(actor, half: float):
    def f(e):
        p = actor(e).pose.p.clone()
        p[:, 2] += 2 * half
        return p

    return f


def _priv_builtin(obj: Callable, goal: Callable, half: float, release: bool, align: bool):
    def f(e, ms_info) -> Dict[str, torch.Tensor]:
        n = e.num_envs
        o = obj(e)
        return dict(
            obj_pose=o.pose.raw_pose,
            obj_half_size=torch.full((n,), half, device=e.device),
            goal_pos=goal(e),
            release=torch.full((n,), release, dtype=torch.bool, device=e.device),
            align_yaw=torch.full((n,), align, dtype=torch.bool, device=e.device),
            is_grasped=e.agent.is_grasping(o),
        )

    return f


def _table_goal(region_attr: str, half: float):
    def f(e):
        p = getattr(e, region_attr).pose.p.clone()
        p[:, 2] = half
        return p

    return f


def _sphere_bin_goal(e):
    p = e.bin.pose.p.clone()
    p[:, 2] += e.block_half_size[0] + e.radius
    return p


def _priv_color_cubes(e, ms_info) -> Dict[str, torch.Tensor]:
    n = e.num_envs
    info = ms_info if "is_grasped" in ms_info else e.evaluate()
    return dict(
        obj_pose=e.named_cube_pose(),
        obj_half_size=torch.full((n,), e.cube_half_size, device=e.device),
        goal_pos=e.goal_pos(),
        release=torch.ones(n, dtype=torch.bool, device=e.device),
        align_yaw=torch.ones(n, dtype=torch.bool, device=e.device),
        is_grasped=info["is_grasped"],
    )


def _no_privileged_state(env, info: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """A task without an adapter (its scripted expert is "none": a safe hold): the robot's pose and kind only."""
    return {}


PRIVILEGED: Dict[str, Callable[[Any, Dict[str, Any]], Dict[str, torch.Tensor]]] = {
    "VLAF-PickCubeGoal-v1": _priv_builtin(lambda e: e.cube, lambda e: e.goal_site.pose.p, 0.02, False, True),
    "PushCube-v1": _priv_builtin(lambda e: e.obj, _table_goal("goal_region", 0.02), 0.02, False, True),
    "PullCube-v1": _priv_builtin(lambda e: e.obj, _table_goal("goal_region", 0.02), 0.02, False, True),
    "StackCube-v1": _priv_builtin(lambda e: e.cubeA, _cube_above(lambda e: e.cubeB, 0.02), 0.02, True, True),
    "PlaceSphere-v1": _priv_builtin(lambda e: e.obj, _sphere_bin_goal, 0.02, True, False),
    "LiftPegUpright-v1": _priv_builtin(lambda e: e.peg, lambda e: e.peg.pose.p, 0.025, False, False),
    "VLAF-StackColorCube-v1": _priv_color_cubes,
    "VLAF-PlaceCubeOnTarget-v1": _priv_color_cubes,
}
# the low-poly (v2) envs read the same simulator state as the v1 envs they copy
PRIVILEGED.update({_v2: PRIVILEGED[_v1] for _v1, _v2 in LOWPOLY_MS_IDS.items()})


def _wrist_camera_pose():
    import sapien
    from transforms3d.euler import euler2quat

    (p0, rpy, p1) = WRIST_CAMERA_OFFSET
    return sapien.Pose(p=list(p0), q=list(euler2quat(*rpy))) * sapien.Pose(p=list(p1))


_WRIST_CLASSES: Dict[type, type] = {}


def with_wrist_camera(cls: type) -> type:
    """``cls`` (a ManiSkill env class) with a camera on the Panda's hand added to its sensors."""
    if cls not in _WRIST_CLASSES:
        from mani_skill.sensors.camera import CameraConfig

        def _default_sensor_configs(self):
            own = super(sub, self)._default_sensor_configs
            own = list(own.values()) if isinstance(own, dict) else list(own) if isinstance(own, (list, tuple)) else [own]
            hand = self.agent.robot.links_map["panda_hand"]
            return own + [CameraConfig(WRIST_CAMERA, _wrist_camera_pose(), 128, 128, WRIST_CAMERA_FOV, 0.01, 100, mount=hand)]

        sub = type(cls.__name__ + "WithWristCamera", (cls,), {"_default_sensor_configs": property(_default_sensor_configs)})
        _WRIST_CLASSES[cls] = sub
    return _WRIST_CLASSES[cls]


def resolve_sim_backend(sim_backend: str, num_envs: int) -> str:
    if sim_backend == "auto":
        sim_backend = "gpu" if (num_envs > 1 and torch.cuda.is_available()) else "cpu"
    if sim_backend not in ("cpu", "gpu"):
        raise ValueError(f"sim_backend must be 'auto', 'cpu' or 'gpu', not {sim_backend!r}")
    if sim_backend == "gpu" and not torch.cuda.is_available():
        raise ValueError("sim_backend='gpu' needs CUDA; use sim_backend='cpu' (one env per process)")
    if sim_backend == "gpu":
        from vla_forget.envs.vulkan import check_physx_gpu

        check_physx_gpu()  # a clear error, not a failed download deep inside ManiSkill, where it is missing
    if sim_backend == "cpu" and num_envs != 1:
        raise ValueError(
            f"num_envs={num_envs} on the CPU simulator: ManiSkill's CPU physics holds one env per process, "
            "so CPU parallelism is processes (one task env each); many envs in one process need GPU physics"
        )
    return sim_backend


class ManiSkillTaskEnv(TaskEnv):
    """``num_envs`` copies of one ManiSkill3 task behind the task contract (see the module docstring)."""

    def __init__(
        self,
        info: TaskInfo,
        *,
        ms_id: str,
        ms_module: Optional[str] = None,
        expert: str = "none",
        num_envs: int = 1,
        image_size: int = 128,
        render_images: bool = True,
        privileged: bool = False,
        sim_backend: str = "auto",
        device: Optional[str] = None,
        robot_uids: str = "panda",
        wrist_camera: bool = False,
        dense_reward: bool = True,
        review_size: int = 0,
    ):
        import gymnasium as gym

        import mani_skill.envs  # noqa: F401  (registers the built-in tasks)
        from mani_skill.utils.sapien_utils import look_at
        from vla_forget.envs import EXPERT_KINDS

        if ms_module:
            importlib.import_module(ms_module)
        self.info = info
        self.num_envs = int(num_envs)
        self.image_size = int(image_size)
        self.render_images = bool(render_images)
        self.privileged = bool(privileged)
        self.ms_id = ms_id
        self.wrist_camera = bool(wrist_camera) and self.render_images
        self.dense_reward = bool(dense_reward)
        self.review_size = int(review_size) if self.render_images else 0
        if self.wrist_camera and robot_uids != "panda":
            raise ValueError(f"wrist_camera=True mounts a camera on the plain 'panda' robot; this task uses {robot_uids!r}")
        self.sim_backend = resolve_sim_backend(sim_backend, self.num_envs)
        self._kind = EXPERT_KINDS.index(expert)
        kwargs: Dict[str, Any] = dict(
            obs_mode="rgb" if self.render_images else "state_dict",
            control_mode="pd_ee_delta_pose",
            # the shaped reward costs ~0.6 ms a step on the tabletop tasks: computed only where a learner reads it
            reward_mode="normalized_dense" if self.dense_reward else "sparse",
            num_envs=self.num_envs,
            sim_backend="physx_cuda" if self.sim_backend == "gpu" else "physx_cpu",
            robot_uids=robot_uids,
            max_episode_steps=NO_STEP_LIMIT,
            sensor_configs={
                CAMERA: dict(pose=look_at(eye=CAMERA_EYE, target=CAMERA_TARGET), fov=CAMERA_FOV),
                "width": self.image_size,
                "height": self.image_size,
            },
            human_render_camera_configs=dict(width=self.image_size, height=self.image_size),
            # without CUDA, ask for the CPU renderer directly instead of falling back with a warning
            render_backend="gpu" if torch.cuda.is_available() else "cpu",
        )
        if self.review_size:  # the review camera: the policy camera's pose at a size a person can read
            kwargs["human_render_camera_configs"] = dict(
                width=self.review_size, height=self.review_size,
                pose=look_at(eye=CAMERA_EYE, target=CAMERA_TARGET), fov=CAMERA_FOV)
            kwargs["render_mode"] = "rgb_array"
        quiet_maniskill_logs()
        if self.wrist_camera:
            from mani_skill.utils.registration import REGISTERED_ENVS

            spec = REGISTERED_ENVS[ms_id]
            direct = {**spec.default_kwargs, **kwargs}
            direct.pop("max_episode_steps")  # gym.make's time-limit wrapper option; our episodes end by our count
            self._env = with_wrist_camera(spec.cls)(**direct)
        else:
            self._env = gym.make(ms_id, **kwargs)
        self._u = self._env.unwrapped
        if not _RENDER_KEEPALIVE and self.sim_backend == "cpu":
            render_system = getattr(self._u.scene.sub_scenes[0], "render_system", None)
            if render_system is not None:
                _RENDER_KEEPALIVE.append(render_system)
        self._priv_fn = PRIVILEGED.get(ms_id, _no_privileged_state)
        if self._priv_fn is _no_privileged_state and EXPERT_KINDS[self._kind] != "none":
            raise ValueError(f"{self.info.id}: its scripted expert ({EXPERT_KINDS[self._kind]}) reads the simulator state "
                             f"through an adapter, and {ms_id} has none: add one to envs/maniskill.py PRIVILEGED, or "
                             "register the task with expert='none'")
        self._t = 0
        self._last_image: Optional[torch.Tensor] = None
        self._instructions: List[str] = []

    # --- contract -----------------------------------------------------------
    def reset(self, seeds: Sequence[int], instruction_index: Optional[int] = None) -> Observation:
        """``instruction_index``: the seed's scene with the task's instruction number ``k`` of
        :meth:`all_instructions` (tasks that draw their instruction; the same ``k`` for every env)."""
        seeds = [int(s) for s in seeds]
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset needs one seed per env: got {len(seeds)} seeds for {self.num_envs} envs")
        options: Dict[str, Any] = {}
        if self.sim_backend == "cpu":
            # a fresh scene every episode: PhysX keeps state across a plain reset, so that the same seed and actions
            # could end differently after another episode in the same env (measured: the robot's state 5e-5 apart
            # after 7 steps, then another outcome); rebuilding costs ~0.2 s, 6-9 % of a 100-step episode
            options["reconfigure"] = True
        if instruction_index is not None:
            self.all_instructions()  # a task with one instruction raises here
            options["instruction_index"] = instruction_index
        obs, ms_info = self._env.reset(seed=seeds, options=options or None)
        self._t = 0
        self._instructions = self._make_instructions()
        out = self._observation(obs, ms_info)
        if "is_grasped" in out.privileged:
            # the simulator's contacts are those of the last physics step, i.e. of the previous episode's end:
            # no task starts with the object in the hand
            out.privileged["is_grasped"] = torch.zeros_like(out.privileged["is_grasped"])
        return out

    def step(self, action):
        a = torch.as_tensor(action, dtype=torch.float32, device=self._u.device)
        if a.shape != (self.num_envs, 7):
            raise ValueError(f"action must have shape [{self.num_envs}, 7], got {tuple(a.shape)}")
        a = a.clamp(-1.0, 1.0)
        obs, dense, _term, _trunc, ms_info = self._env.step(a)
        self._t += 1
        success = torch.as_tensor(ms_info["success"], device=self._u.device).bool().reshape(self.num_envs)
        n = self.num_envs
        truncated = torch.full((n,), self._t >= self.info.max_episode_steps, dtype=torch.bool, device=success.device)
        terminated = torch.zeros(n, dtype=torch.bool, device=success.device)
        info = {"is_success": success, "elapsed_steps": self._t}
        if self.dense_reward:
            info["dense_reward"] = torch.as_tensor(dense, dtype=torch.float32).reshape(n)
        return self._observation(obs, ms_info), success.float(), terminated, truncated, info

    def frames(self) -> np.ndarray:
        if self._last_image is None:
            raise RuntimeError("frames() needs render_images=True (and a reset)")
        return self._last_image.cpu().numpy()

    def review_frames(self) -> np.ndarray:
        """The review camera's picture now, uint8 ``[N, R, R, 3]`` (``review_size=R``): the policy camera's pose
        at a readable size, for videos only (the policy's images and the physics are unchanged; ManiSkill's
        goal markers, hidden from the policy's camera, show). Without a review camera: :meth:`frames`."""
        if not self.review_size:
            return self.frames()
        return self._env.render().cpu().numpy()

    def instructions(self) -> List[str]:
        return list(self._instructions)

    def all_instructions(self) -> List[str]:
        """Every instruction the task can draw, in the order ``reset(..., instruction_index=k)`` takes them."""
        fn = getattr(self._u, "all_instructions", None)
        if fn is None:
            raise ValueError(f"{self.info.id} has one instruction ({self.info.instruction!r}): "
                             f"there are no other instructions to choose from")
        return list(fn())

    @property
    def unwrapped(self):
        """The ManiSkill env underneath (its scene, agent and privileged state), for probes and
        diagnostics; policies see only ``reset``/``step``'s observations."""
        return self._u

    def close(self) -> None:
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None

    # --- internals ------------------------------------------------------------
    def _make_instructions(self) -> List[str]:
        own = getattr(self._u, "instructions", None)
        if own:
            return list(own)
        return [self.info.instruction] * self.num_envs

    def _proprio(self) -> torch.Tensor:
        qpos = self._u.agent.robot.get_qpos()
        tcp = self._u.agent.tcp.pose.raw_pose
        return torch.cat([qpos, tcp], dim=1).float()

    def _observation(self, obs, ms_info: Dict[str, Any]) -> Observation:
        image = None
        if self.render_images:
            image = obs["sensor_data"][CAMERA]["rgb"]
            if self.wrist_camera:
                image = torch.cat([image, obs["sensor_data"][WRIST_CAMERA]["rgb"]], dim=2)
            self._last_image = image
        privileged: Dict[str, torch.Tensor] = {}
        if self.privileged:
            privileged = self._priv_fn(self._u, ms_info)
            privileged["tcp_pose"] = self._u.agent.tcp.pose.raw_pose
            privileged["task_kind"] = torch.full((self.num_envs,), self._kind, dtype=torch.long, device=self._u.device)
        return Observation(image=image, state=self._proprio(), instruction=list(self._instructions), privileged=privileged)
