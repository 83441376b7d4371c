"""Language-grounded pick-and-place tasks: three coloured cubes, the instruction names which.

Both tasks put a red, a green and a blue cube (and, for ``PlaceCubeOnTarget``,
three flat coloured target disks) at random, non-overlapping places on the
table. The colours of the actors are fixed; the seed decides the positions,
the yaw of each cube and *which* cube (and target) the instruction names, so a
policy has to read the instruction to succeed. All randomness comes from
ManiSkill's per-env ``_batched_episode_rng``, so an env reset with seed ``s``
gets the same scene and instruction on the CPU and in a GPU batch.

Only primitives built with actor builders are used: nothing to download.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np
import sapien
import torch
from transforms3d.euler import euler2quat

from mani_skill.envs.sapien_env import BaseEnv
from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils import sapien_utils
from mani_skill.utils.building import actors
from mani_skill.utils.registration import register_env
from mani_skill.utils.scene_builder.table import TableSceneBuilder
from mani_skill.utils.structs.pose import Pose

CUBE_COLORS = {"red": [0.85, 0.1, 0.1, 1], "green": [0.1, 0.7, 0.15, 1], "blue": [0.1, 0.2, 0.85, 1]}
TARGET_COLORS = {"yellow": [0.95, 0.85, 0.1, 1], "purple": [0.55, 0.15, 0.75, 1], "white": [0.97, 0.97, 0.97, 1]}
#: Where objects are placed (x, y in metres, table frame; the robot base is at x = -0.615).
REGION = ((-0.12, -0.2), (0.14, 0.2))


def _sample_separated(rng: np.random.RandomState, n: int, min_dist: float, region=REGION) -> np.ndarray:
    """``n`` xy points in ``region`` with pairwise distances >= ``min_dist`` (rejection sampling)."""
    lo, hi = np.asarray(region[0]), np.asarray(region[1])
    for _ in range(1000):
        pts: List[np.ndarray] = []
        for _ in range(200):
            p = lo + rng.uniform(size=2) * (hi - lo)
            if all(np.linalg.norm(p - q) >= min_dist for q in pts):
                pts.append(p)
                if len(pts) == n:
                    return np.stack(pts)
    raise RuntimeError(f"could not place {n} objects {min_dist} m apart in {region}")


class _ColorCubesEnv(BaseEnv):
    """Shared scene: table, Panda, three coloured cubes (subclasses add targets and success)."""

    SUPPORTED_ROBOTS = ["panda"]
    cube_half_size = 0.02
    min_dist = 0.1
    n_targets = 0

    def __init__(self, *args, robot_uids="panda", robot_init_qpos_noise=0.02, **kwargs):
        self.robot_init_qpos_noise = robot_init_qpos_noise
        self.instructions: List[str] = []
        super().__init__(*args, robot_uids=robot_uids, **kwargs)

    @property
    def _default_sensor_configs(self):
        pose = sapien_utils.look_at(eye=[0.3, 0, 0.6], target=[-0.1, 0, 0.1])
        return [CameraConfig("base_camera", pose, 128, 128, np.pi / 2, 0.01, 100)]

    @property
    def _default_human_render_camera_configs(self):
        pose = sapien_utils.look_at([0.6, 0.7, 0.6], [0.0, 0.0, 0.35])
        return CameraConfig("render_camera", pose, 512, 512, 1, 0.01, 100)

    def _load_agent(self, options: dict):
        super()._load_agent(options, sapien.Pose(p=[-0.615, 0, 0]))

    def _load_scene(self, options: dict):
        self.table_scene = TableSceneBuilder(env=self, robot_init_qpos_noise=self.robot_init_qpos_noise)
        self.table_scene.build()
        self.cube_names = list(CUBE_COLORS)
        self.cubes = [
            actors.build_cube(
                self.scene,
                half_size=self.cube_half_size,
                color=color,
                name=f"{name}_cube",
                initial_pose=sapien.Pose(p=[0, 0.3 * i, self.cube_half_size]),
            )
            for i, (name, color) in enumerate(CUBE_COLORS.items())
        ]
        self.target_names = list(TARGET_COLORS)[: self.n_targets]
        self.targets = [
            actors.build_cylinder(
                self.scene,
                radius=self.target_radius,
                half_length=5e-4,
                color=TARGET_COLORS[name],
                name=f"{name}_target",
                body_type="kinematic",
                add_collision=False,
                initial_pose=sapien.Pose(p=[0.3, 0.3 * i, 5e-4]),
            )
            for i, name in enumerate(self.target_names)
        ]
        n = self.num_envs
        self.cube_idx = torch.zeros(n, dtype=torch.long, device=self.device)
        self.other_idx = torch.zeros(n, dtype=torch.long, device=self.device)
        self.instructions = [""] * n

    def _initialize_episode(self, env_idx: torch.Tensor, options: dict):
        with torch.device(self.device):
            b = len(env_idx)
            self.table_scene.initialize(env_idx)
            rngs = self._batched_episode_rng[env_idx]
            n_obj = len(self.cubes) + len(self.targets)
            xy = np.stack([_sample_separated(rng, n_obj, self.min_dist) for rng in rngs.rngs])  # [b, n_obj, 2]
            yaw = np.stack([rng.uniform(0, 2 * np.pi, size=len(self.cubes)) for rng in rngs.rngs])  # [b, 3]
            choice = np.stack([self._choose(rng) for rng in rngs.rngs])  # [b, 2]
            if options.get("instruction_index") is not None:
                # the same scene (positions and yaws from the seed) with another of the task's instructions
                choice[:] = self.instruction_choices()[self._instruction_index(options["instruction_index"])]
            xy_t = torch.as_tensor(xy, dtype=torch.float32)
            for i, cube in enumerate(self.cubes):
                p = torch.zeros((b, 3))
                p[:, :2] = xy_t[:, i]
                p[:, 2] = self.cube_half_size
                q = torch.zeros((b, 4))
                q[:, 0] = torch.as_tensor(np.cos(yaw[:, i] / 2), dtype=torch.float32)
                q[:, 3] = torch.as_tensor(np.sin(yaw[:, i] / 2), dtype=torch.float32)
                cube.set_pose(Pose.create_from_pq(p, q))
            flat = torch.as_tensor(euler2quat(0, np.pi / 2, 0), dtype=torch.float32).repeat(b, 1)
            for j, target in enumerate(self.targets):
                p = torch.zeros((b, 3))
                p[:, :2] = xy_t[:, len(self.cubes) + j]
                p[:, 2] = 5e-4
                target.set_pose(Pose.create_from_pq(p, flat))
            idx = env_idx.to(self.cube_idx.device)
            self.cube_idx[idx] = torch.as_tensor(choice[:, 0], device=self.cube_idx.device)
            self.other_idx[idx] = torch.as_tensor(choice[:, 1], device=self.cube_idx.device)
            for k, e in enumerate(env_idx.tolist()):
                self.instructions[e] = self._instruction(int(choice[k, 0]), int(choice[k, 1]))

    @classmethod
    def instruction_choices(cls) -> List[Tuple[int, int]]:
        """Every (named cube, other object) pair the task can draw, in a fixed order; reset with
        ``options={"instruction_index": k}`` names pair ``k`` in the seed's scene."""
        raise NotImplementedError

    @classmethod
    def all_instructions(cls) -> List[str]:
        return [cls._instruction(i, j) for i, j in cls.instruction_choices()]

    def _instruction_index(self, k) -> int:
        n = len(self.instruction_choices())
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) < n:
            raise ValueError(f"instruction_index must be an integer in 0..{n - 1}, got {k!r}")
        return int(k)

    # --- per task ------------------------------------------------------
    def _choose(self, rng: np.random.RandomState) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def _instruction(cls, i: int, j: int) -> str:
        raise NotImplementedError

    # --- helpers -------------------------------------------------------
    def _stack_p(self, actors_: list) -> torch.Tensor:
        return torch.stack([a.pose.p for a in actors_], dim=1)  # [n, k, 3]

    def _pick(self, stacked: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return stacked[torch.arange(stacked.shape[0], device=stacked.device), idx]

    def named_cube_pose(self) -> torch.Tensor:
        raw = torch.stack([c.pose.raw_pose for c in self.cubes], dim=1)
        return self._pick(raw, self.cube_idx)

    def _named_cube_state(self):
        lin = self._pick(torch.stack([c.linear_velocity for c in self.cubes], 1), self.cube_idx)
        ang = self._pick(torch.stack([c.angular_velocity for c in self.cubes], 1), self.cube_idx)
        static = (torch.linalg.norm(lin, dim=1) <= 1e-2) & (torch.linalg.norm(ang, dim=1) <= 0.5)
        # contact queries cost ~0.7 ms per cube on the CPU simulator: ask only for the cubes some env names
        grasped = torch.zeros_like(static)
        for k in torch.unique(self.cube_idx).tolist():
            rows = self.cube_idx == k
            grasped[rows] = self.agent.is_grasping(self.cubes[k])[rows]
        return static, grasped

    def goal_pos(self) -> torch.Tensor:
        """Where the named cube's centre must end up ``[n, 3]``."""
        raise NotImplementedError

    def _get_obs_extra(self, info: dict):
        obs = dict(tcp_pose=self.agent.tcp.pose.raw_pose)
        if self.obs_mode_struct.use_state:
            obs.update(obj_pose=self.named_cube_pose(), goal_pos=self.goal_pos(), is_grasped=info["is_grasped"])
        return obs

    def compute_dense_reward(self, obs: Any, action: torch.Tensor, info: dict):
        obj_p = self.named_cube_pose()[:, :3]
        reach = 1 - torch.tanh(5 * torch.linalg.norm(obj_p - self.agent.tcp.pose.p, dim=1))
        place = 1 - torch.tanh(5 * torch.linalg.norm(self.goal_pos() - obj_p, dim=1))
        grasped = info["is_grasped"].float()
        reward = reach + grasped * (1 + place)
        reward[info["is_placed"]] = 4 + (~info["is_grasped"]).float()[info["is_placed"]]
        reward[info["success"]] = 6
        return reward

    def compute_normalized_dense_reward(self, obs: Any, action: torch.Tensor, info: dict):
        return self.compute_dense_reward(obs=obs, action=action, info=info) / 6


@register_env("VLAF-StackColorCube-v1", max_episode_steps=150)
class StackColorCubeEnv(_ColorCubesEnv):
    """
    **Task Description:**
    Three cubes (red, green, blue) lie on the table; the instruction
    "stack the {c1} cube on the {c2} cube" names two of them. Pick up the
    first and put it on top of the second, then let go.

    **Randomizations:**
    - the xy positions of the three cubes in [-0.12, 0.14] x [-0.2, 0.2], pairwise >= 0.1 m apart
    - the z-axis rotation of each cube
    - the ordered pair (c1, c2) of distinct colours (6 instructions)

    **Success Conditions:**
    - the c1 cube's centre is within 0.033 m of the c2 cube's centre in xy and 0.04 +- 0.005 m above it
    - the c1 cube is static and not grasped
    """

    def _choose(self, rng):
        return rng.permutation(len(CUBE_COLORS))[:2]

    @classmethod
    def instruction_choices(cls):
        n = len(CUBE_COLORS)
        return [(i, j) for i in range(n) for j in range(n) if i != j]

    @classmethod
    def _instruction(cls, i, j):
        names = list(CUBE_COLORS)
        return f"stack the {names[i]} cube on the {names[j]} cube"

    def goal_pos(self):
        base = self._pick(self._stack_p(self.cubes), self.other_idx)
        return base + torch.tensor([0, 0, 2 * self.cube_half_size], device=base.device)

    def evaluate(self):
        obj_p = self.named_cube_pose()[:, :3]
        base = self._pick(self._stack_p(self.cubes), self.other_idx)
        offset = obj_p - base
        xy_ok = torch.linalg.norm(offset[:, :2], dim=1) <= np.sqrt(2) * self.cube_half_size + 0.005
        z_ok = torch.abs(offset[:, 2] - 2 * self.cube_half_size) <= 0.005
        static, grasped = self._named_cube_state()
        placed = xy_ok & z_ok
        return {"success": placed & static & ~grasped, "is_placed": placed, "is_grasped": grasped, "is_static": static}


@register_env("VLAF-PlaceCubeOnTarget-v1", max_episode_steps=150)
class PlaceCubeOnTargetEnv(_ColorCubesEnv):
    """
    **Task Description:**
    Three cubes (red, green, blue) and three flat target disks (yellow, purple,
    white) lie on the table; the instruction "put the {cube} cube on the
    {target} target" names one of each. Pick up that cube, put it down on that
    target and let go.

    **Randomizations:**
    - the xy positions of the cubes and the targets in [-0.12, 0.14] x [-0.2, 0.2], all pairwise >= 0.1 m apart
    - the z-axis rotation of each cube
    - the named cube (3) and the named target (3): 9 instructions

    **Success Conditions:**
    - the named cube's centre is within 0.03 m (xy) of the named target's centre and it rests on the table (z <= half size + 5 mm)
    - the named cube is static and not grasped
    """

    n_targets = 3
    target_radius = 0.04
    place_tol = 0.03

    def _choose(self, rng):
        return np.array([rng.randint(len(CUBE_COLORS)), rng.randint(self.n_targets)])

    @classmethod
    def instruction_choices(cls):
        return [(i, j) for i in range(len(CUBE_COLORS)) for j in range(cls.n_targets)]

    @classmethod
    def _instruction(cls, i, j):
        return f"put the {list(CUBE_COLORS)[i]} cube on the {list(TARGET_COLORS)[j]} target"

    def goal_pos(self):
        t = self._pick(self._stack_p(self.targets), self.other_idx).clone()
        t[:, 2] = self.cube_half_size
        return t

    def evaluate(self):
        obj_p = self.named_cube_pose()[:, :3]
        goal = self.goal_pos()
        xy_ok = torch.linalg.norm(obj_p[:, :2] - goal[:, :2], dim=1) <= self.place_tol
        z_ok = obj_p[:, 2] <= self.cube_half_size + 5e-3
        static, grasped = self._named_cube_state()
        placed = xy_ok & z_ok
        return {"success": placed & static & ~grasped, "is_placed": placed, "is_grasped": grasped, "is_static": static}
