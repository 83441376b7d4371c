"""SimplerEnv tasks: the static table (ids, instructions, lengths, simulator settings) and seed -> episode maps.

Pure data and pure functions (no simulator, no numpy, no torch), so that
registering these tasks costs nothing; :mod:`vla_forget.envs.simpler` runs them.

Two simulators, two backends:

* **Google robot** (``backend: simpler``): SimplerEnv's own ``simpler_env`` on
  ``mani_skill2_real2sim`` (SAPIEN 2.2.2, CPU physics, one env per process).
  SAPIEN 2 and ManiSkill3's SAPIEN 3 cannot share one Python environment, so
  these envs run in a worker process of SimplerEnv's own interpreter
  (``VLA_FORGET_SIMPLER_PYTHON``; default: this one, if it imports
  ``simpler_env``). Settings are SimplerEnv's published OpenVLA scripts
  (``scripts/*.sh`` with ``--policy-model openvla``, from the pull request that adds OpenVLA, #10): ``google_robot_static``, 3 Hz control, 513 Hz
  simulation, ``arm_pd_ee_delta_pose_align_interpolate_by_planner_gripper_pd_joint_target_delta_pos_interpolate_by_planner``.
* **WidowX / Bridge** (``backend: bridge``): ManiSkill3's Bridge digital twins
  (``mani_skill.envs.tasks.digital_twins.bridge_dataset_eval``), 5 Hz control,
  500 Hz simulation, ``arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos``;
  CPU or GPU physics in this process (their scenes and the WidowX robot are
  downloads: ``vla-forget assets``).

Seeds pick the episode deterministically:

* ``SimplerPickCokeCan-v2`` (RL's Razor's target, target
  ``simpler-pick-coke-can-v2``): training seeds (below
  :data:`HELD_OUT_SEED_START` = 100000, the project's training-seed limit) are
  the grid: seed ``s`` -> grid point ``s mod 100`` of the 10 x 10 grid of can
  positions x in [-0.35, -0.12], y in [-0.02, 0.42] (row-major: x index
  ``(s mod 100) // 10``), and the can's pose ``(s // 100) mod 3``: lying
  flipped (``lr_switch``), standing (``upright``), lying along the table
  (``laid_vertically``). Evaluation seeds (100000 and up) are held out, as RL's
  Razor evaluates: the can at a continuous position drawn uniformly over the
  grid's area, deterministic per seed (:func:`held_out_can_xy`: SHA-256 of the
  seed), never within :data:`GRID_EXCLUSION` (1 mm) of a grid point in both
  coordinates (redrawn if so), so no evaluation episode is a training one;
  pose ``(s // 100) mod 3`` as on the grid. The robot at (0.35, 0.20) as in
  SimplerEnv's visual-matching set-up, with its real background overlay;
* ``SimplerPickCokeCan-v1``: the grid for every seed, evaluation seeds
  included, so its target (``simpler-pick-coke-can-v1``) evaluates on the
  training configurations; kept so that earlier results stay reproducible;
* ``SimplerPickCokeCanVM-v1``: SimplerEnv's own visual-matching coke-can
  protocol (``scripts/pick_coke_can_visual_matching.sh`` of the pull request that adds OpenVLA, #10, the same as
  its RT-1 and Octo scripts): 4 robot URDF variants x 3 can poses x 5 x 5 can
  positions (``np.linspace(-0.35, -0.12, 5)`` x ``np.linspace(-0.02, 0.42, 5)``)
  = 300 episodes. Seed ``s`` -> episode ``e = s mod 300`` in the scripts' loop
  order: URDF ``e // 75`` (:data:`VM_URDF_VERSIONS`), pose ``(e // 25) mod 3``,
  x index ``(e mod 25) // 5``, y index ``e mod 5``; seeds 300000..300299 (target
  ``simpler-pick-coke-can-visual-matching-v1``) are episodes 0..299, comparable
  with SimplerEnv's published visual-matching table;
* drawers (SimplerEnv's variant-aggregation base set-up): the drawer
  ``(s // 9) mod 3`` (top, middle, bottom) and the robot's position ``s mod 9``
  on the 3 x 3 grid x in {0.65, 0.75, 0.85}, y in {-0.2, 0, 0.2};
  ray-traced rendering (``shader_dir=rt``) as SimplerEnv's scripts, which needs
  an RTX-capable GPU;
* move-near: SimplerEnv's episode ``s mod 60`` (its fixed object triplets);
* Bridge: ManiSkill3's ``episode_id = s`` (the env takes it modulo its
  configurations, ``sim["configurations"]``: 24 for the three flat-table tasks
  (carrot and spoon 12 position pairs x 2 orientations, cubes 24 position
  pairs), 64 for the eggplant in the sink (8 positions x 8 orientations)), so
  ``n`` consecutive seeds cover every configuration equally when ``n`` is a
  multiple of that count.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, Tuple

GOOGLE_CONTROL_MODE = (
    "arm_pd_ee_delta_pose_align_interpolate_by_planner_gripper_pd_joint_target_delta_pos_interpolate_by_planner"
)
BRIDGE_CONTROL_MODE = "arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos"

#: the coke-can grid of RL's Razor (10 x 10 over SimplerEnv's range)
COKE_CAN_X = (-0.35, -0.12)
COKE_CAN_Y = (-0.02, 0.42)
COKE_CAN_GRID = 10
COKE_CAN_POSES = ("lr_switch", "upright", "laid_vertically")
#: SimplerPickCokeCan-v2: seeds from here on (the evaluation seeds; training seeds stay below
#: vla_forget.adapt.common.TRAIN_SEED_LIMIT, the same 100000) draw held-out continuous can positions
HELD_OUT_SEED_START = 100_000
#: a held-out draw within this distance (metres) of a grid point in both x and y is redrawn
GRID_EXCLUSION = 0.001
#: SimplerEnv's visual-matching coke-can protocol (its scripts' --obj-init-x/-y linspace arguments)
VM_X = (-0.35, -0.12, 5)
VM_Y = (-0.02, 0.42, 5)
#: the scripts' urdf_version values, as SimplerEnv's DictAction parses them: the bare word None stays the
#: string "None", which ManiSkill2_real2sim reads as the default URDF
VM_URDF_VERSIONS = ("None", "recolor_tabletop_visual_matching_1", "recolor_tabletop_visual_matching_2",
                    "recolor_cabinet_visual_matching_1")
VM_EPISODES = len(VM_URDF_VERSIONS) * len(COKE_CAN_POSES) * VM_X[2] * VM_Y[2]
DRAWERS = ("Top", "Middle", "Bottom")
DRAWER_ROBOT_X = (0.65, 0.75, 0.85)
DRAWER_ROBOT_Y = (-0.2, 0.0, 0.2)

_GOOGLE = dict(robot="google_robot_static", control_freq=3, sim_freq=513, control_mode=GOOGLE_CONTROL_MODE,
               camera="overhead_camera", unnorm_key="fractal20220817_data")

#: what the coke-can tasks share (SimplerEnv's visual-matching coke-can set-up); they differ in their seed maps
_COKE_CAN = dict(backend="simpler", instruction="pick coke can", max_episode_steps=80, pick_and_place=True,
                 sim=dict(_GOOGLE, env="GraspSingleOpenedCokeCanInScene-v0", scene_name="google_pick_coke_can_1_v4",
                          rgb_overlay="real_inpainting/google_coke_can_real_eval_1.png"))

#: task id -> static facts (registration metadata) and simulator settings
SIMPLER_TASKS: Dict[str, Dict[str, Any]] = {
    "SimplerPickCokeCan-v1": dict(
        _COKE_CAN,
        description="SimplerEnv Google robot: pick the coke can (10 x 10 grid of positions, 3 can poses, visual "
                    "matching; every seed on the grid: superseded by SimplerPickCokeCan-v2)",
    ),
    "SimplerPickCokeCan-v2": dict(
        _COKE_CAN,
        description="SimplerEnv Google robot: pick the coke can (visual matching, 3 can poses); training seeds "
                    "(< 100000) on RL's Razor's 10 x 10 grid, evaluation seeds (>= 100000) at held-out random "
                    "positions over the grid's area",
    ),
    "SimplerPickCokeCanVM-v1": dict(
        _COKE_CAN,
        description="SimplerEnv's own visual-matching coke-can protocol (its pick_coke_can_visual_matching scripts): "
                    "4 robot URDF variants x 3 can poses x 5 x 5 positions = 300 episodes, seed mod 300",
    ),
    "SimplerOpenDrawer-v1": dict(
        backend="simpler", instruction="open {drawer} drawer", max_episode_steps=113, pick_and_place=False,
        description="SimplerEnv Google robot: open the top, middle or bottom drawer (9 robot positions, ray-traced)",
        sim=dict(_GOOGLE, env="Open{drawer}DrawerCustomInScene-v0", scene_name="frl_apartment_stage_simple",
                 extra=dict(shader_dir="rt")),
    ),
    "SimplerCloseDrawer-v1": dict(
        backend="simpler", instruction="close {drawer} drawer", max_episode_steps=113, pick_and_place=False,
        description="SimplerEnv Google robot: close the top, middle or bottom drawer (9 robot positions, ray-traced)",
        sim=dict(_GOOGLE, env="Close{drawer}DrawerCustomInScene-v0", scene_name="frl_apartment_stage_simple",
                 extra=dict(shader_dir="rt")),
    ),
    "SimplerMoveNear-v1": dict(
        backend="simpler", instruction="move {object} near {target}", max_episode_steps=80, pick_and_place=True,
        description="SimplerEnv Google robot: move one object next to another (60 fixed object triplets)",
        sim=dict(_GOOGLE, env="MoveNearGoogleInScene-v0", scene_name="google_pick_coke_can_1_v4"),
    ),
    "BridgeCarrotOnPlate-v1": dict(
        backend="bridge", instruction="put carrot on plate", max_episode_steps=60, pick_and_place=True,
        description="WidowX (ManiSkill3 Bridge digital twin): put the carrot on the plate",
        sim=dict(env="PutCarrotOnPlateInScene-v1", configurations=24, control_freq=5, sim_freq=500,
                 camera="3rd_view_camera", unnorm_key="bridge_orig"),
    ),
    "BridgeSpoonOnTowel-v1": dict(
        backend="bridge", instruction="put the spoon on the towel", max_episode_steps=60, pick_and_place=True,
        description="WidowX (ManiSkill3 Bridge digital twin): put the spoon on the towel",
        sim=dict(env="PutSpoonOnTableClothInScene-v1", configurations=24, control_freq=5, sim_freq=500,
                 camera="3rd_view_camera", unnorm_key="bridge_orig"),
    ),
    "BridgeStackCube-v1": dict(
        backend="bridge", instruction="stack the green block on the yellow block", max_episode_steps=60,
        pick_and_place=True, description="WidowX (ManiSkill3 Bridge digital twin): stack the green block on the yellow block",
        sim=dict(env="StackGreenCubeOnYellowCubeBakedTexInScene-v1", configurations=24, control_freq=5, sim_freq=500,
                 camera="3rd_view_camera", unnorm_key="bridge_orig"),
    ),
    "BridgeEggplantInBasket-v1": dict(
        backend="bridge", instruction="put eggplant into yellow basket", max_episode_steps=120, pick_and_place=True,
        description="WidowX (ManiSkill3 Bridge digital twin, sink scene): put the eggplant into the yellow basket",
        sim=dict(env="PutEggplantInBasketScene-v1", configurations=64, control_freq=5, sim_freq=500,
                 camera="3rd_view_camera", unnorm_key="bridge_orig"),
    ),
}


def register(registry) -> None:
    """Register every SimplerEnv task in the task registry (metadata only; nothing is imported)."""
    entry = {"simpler": "vla_forget.envs.simpler:SimplerGoogleTaskEnv", "bridge": "vla_forget.envs.simpler:BridgeTaskEnv"}
    for task_id, t in SIMPLER_TASKS.items():
        registry.register(
            task_id, entry[t["backend"]], description=t["description"], ms_id=t["sim"]["env"], expert="none",
            simpler_task=task_id,
            metadata=dict(instruction=t["instruction"], max_episode_steps=t["max_episode_steps"],
                          pick_and_place=t["pick_and_place"], backend=t["backend"],
                          unnorm_key=t["sim"]["unnorm_key"]),
        )


def _linspace(lo: float, hi: float, n: int, i: int) -> float:
    """``numpy.linspace(lo, hi, n)[i]``, bit for bit (SimplerEnv's grids are linspaces)."""
    return hi if i == n - 1 else lo + i * ((hi - lo) / (n - 1))


def coke_can_grid() -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The training grid's x and y values (10 each)."""
    return (tuple(_linspace(*COKE_CAN_X, COKE_CAN_GRID, i) for i in range(COKE_CAN_GRID)),
            tuple(_linspace(*COKE_CAN_Y, COKE_CAN_GRID, i) for i in range(COKE_CAN_GRID)))


def near_grid_point(x: float, y: float, tolerance: float = GRID_EXCLUSION) -> bool:
    """Whether (x, y) lies within ``tolerance`` of a training grid point in both coordinates."""
    xs, ys = coke_can_grid()
    return any(abs(x - gx) <= tolerance for gx in xs) and any(abs(y - gy) <= tolerance for gy in ys)


def _unit(digest: bytes) -> float:
    """The first 8 bytes of a digest -> a float in [0, 1) with 53 random bits."""
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def held_out_can_xy(seed: int) -> Tuple[float, float]:
    """A held-out can position for an evaluation seed: uniform over the grid's area, a pure function of the seed.

    ``sha256(f"SimplerPickCokeCan-v2 {seed} {k}")`` gives x (bytes 0-7) and y (bytes 8-15), ``k = 0, 1, ...``
    until the point is not within :data:`GRID_EXCLUSION` of a grid point (k > 0 happens for ~0.4% of seeds).
    """
    for k in range(1000):
        d = hashlib.sha256(f"SimplerPickCokeCan-v2 {int(seed)} {k}".encode()).digest()
        x = COKE_CAN_X[0] + _unit(d[:8]) * (COKE_CAN_X[1] - COKE_CAN_X[0])
        y = COKE_CAN_Y[0] + _unit(d[8:16]) * (COKE_CAN_Y[1] - COKE_CAN_Y[0])
        if not near_grid_point(x, y):
            return x, y
    raise RuntimeError(f"no held-out position for seed {seed}")  # 1000 draws near the grid: impossible in practice


def coke_can_episode(seed: int, task_id: str = "SimplerPickCokeCan-v1") -> Tuple[float, float, str]:
    """(x, y, can pose) of a SimplerPickCokeCan-v1 or -v2 seed (see the module docstring)."""
    seed = int(seed)
    pose = COKE_CAN_POSES[(seed // 100) % 3]
    if task_id == "SimplerPickCokeCan-v2" and seed >= HELD_OUT_SEED_START:
        return (*held_out_can_xy(seed), pose)
    if task_id not in ("SimplerPickCokeCan-v1", "SimplerPickCokeCan-v2"):
        raise ValueError(f"{task_id} is not a coke-can grid task")
    cell = seed % (COKE_CAN_GRID * COKE_CAN_GRID)
    x = _linspace(*COKE_CAN_X, COKE_CAN_GRID, cell // COKE_CAN_GRID)
    y = _linspace(*COKE_CAN_Y, COKE_CAN_GRID, cell % COKE_CAN_GRID)
    return x, y, pose


def coke_can_vm_episode(seed: int) -> Tuple[float, float, str, str]:
    """(x, y, can pose, urdf_version) of a SimplerPickCokeCanVM-v1 seed: SimplerEnv's visual-matching episode
    ``seed mod 300`` in its scripts' loop order (URDF, then pose, then x, then y; see the module docstring)."""
    e = int(seed) % VM_EPISODES
    per_urdf = len(COKE_CAN_POSES) * VM_X[2] * VM_Y[2]
    cell = e % (VM_X[2] * VM_Y[2])
    return (_linspace(*VM_X, cell // VM_Y[2]), _linspace(*VM_Y, cell % VM_Y[2]),
            COKE_CAN_POSES[(e // (VM_X[2] * VM_Y[2])) % len(COKE_CAN_POSES)], VM_URDF_VERSIONS[e // per_urdf])


def episode_config(task_id: str, seed: int) -> Dict[str, Any]:
    """How to build and reset SimplerEnv for one seed of a Google-robot task.

    Returns ``{"build": gym.make kwargs (besides obs_mode and the asset paths), "reset": env.reset options,
    "overlay": overlay image path relative to SimplerEnv's data folder or None, "camera": name}``, exactly the
    arguments of SimplerEnv's ``run_maniskill2_eval_single_episode``.
    """
    t = SIMPLER_TASKS[task_id]
    if t["backend"] != "simpler":
        raise ValueError(f"{task_id} is not a SimplerEnv (Google robot) task")
    sim = t["sim"]
    seed = int(seed)
    build: Dict[str, Any] = dict(robot=sim["robot"], control_freq=sim["control_freq"], sim_freq=sim["sim_freq"],
                                 control_mode=sim["control_mode"], max_episode_steps=t["max_episode_steps"],
                                 scene_name=sim["scene_name"], camera_cfgs={"add_segmentation": True},
                                 **sim.get("extra", {}))
    env = sim["env"]
    robot_xy, robot_quat = (0.35, 0.20), [0.0, 0.0, 0.0, 1.0]
    reset: Dict[str, Any] = {}
    if task_id in ("SimplerPickCokeCan-v1", "SimplerPickCokeCan-v2"):
        x, y, pose = coke_can_episode(seed, task_id)
        build[pose] = True
        reset["obj_init_options"] = {"init_xy": [x, y]}
    elif task_id == "SimplerPickCokeCanVM-v1":  # --additional-env-build-kwargs {pose}=True urdf_version={urdf}
        x, y, pose, urdf = coke_can_vm_episode(seed)
        build[pose] = True
        build["urdf_version"] = urdf
        reset["obj_init_options"] = {"init_xy": [x, y]}
    elif task_id in ("SimplerOpenDrawer-v1", "SimplerCloseDrawer-v1"):
        env = env.format(drawer=DRAWERS[(seed // 9) % 3])
        cell = seed % 9
        robot_xy = (DRAWER_ROBOT_X[cell // 3], DRAWER_ROBOT_Y[cell % 3])
        reset["obj_init_options"] = {"init_xy": [0.0, 0.0]}
    elif task_id == "SimplerMoveNear-v1":
        robot_xy = (0.35, 0.21)
        robot_quat = _quat_from_yaw(-0.09)
        reset["obj_init_options"] = {"episode_id": seed % 60}
    reset["robot_init_options"] = {"init_xy": list(robot_xy), "init_rot_quat": robot_quat}
    return {"env": env, "build": build, "reset": reset, "overlay": sim.get("rgb_overlay"), "camera": sim["camera"],
            "seed": seed}


def _quat_from_yaw(yaw: float):
    """SimplerEnv's ``--robot-init-rot-quat-center 0 0 0 1 --robot-init-rot-rpy-range 0 0 1 0 0 1 YAW YAW 1``:
    the quaternion (w, x, y, z) of ``euler2quat(0, 0, yaw) * [0, 0, 0, 1]``."""
    import math

    c, s = math.cos(yaw / 2), math.sin(yaw / 2)
    # (c, 0, 0, s) * (0, 0, 0, 1) = (-s, 0, 0, c)
    return [round(-s, 9), 0.0, 0.0, round(c, 9)]
