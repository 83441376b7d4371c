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
  (``scripts/openvla_*.sh``): ``google_robot_static``, 3 Hz control, 513 Hz
  simulation, ``arm_pd_ee_delta_pose_align_interpolate_by_planner_gripper_pd_joint_target_delta_pos_interpolate_by_planner``.
* **WidowX / Bridge** (``backend: bridge``): ManiSkill3's Bridge digital twins
  (``mani_skill.envs.tasks.digital_twins.bridge_dataset_eval``), 5 Hz control,
  500 Hz simulation, ``arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos``;
  CPU or GPU physics in this process (their scenes and the WidowX robot are
  downloads: ``vla-forget assets``).

Seeds pick the episode deterministically:

* ``SimplerPickCokeCan-v1`` (RL's Razor's target): seed ``s`` -> grid point
  ``s mod 100`` of the 10 x 10 grid of can positions x in [-0.35, -0.12],
  y in [-0.02, 0.42] (row-major: x index ``(s mod 100) // 10``), and the can's
  pose ``(s // 100) mod 3``: lying flipped (``lr_switch``), standing
  (``upright``), lying along the table (``laid_vertically``); the robot at
  (0.35, 0.20) as in SimplerEnv's visual-matching set-up, with its real
  background overlay;
* drawers (SimplerEnv's variant-aggregation base set-up): the drawer
  ``(s // 9) mod 3`` (top, middle, bottom) and the robot's position ``s mod 9``
  on the 3 x 3 grid x in {0.65, 0.75, 0.85}, y in {-0.2, 0, 0.2};
  ray-traced rendering (``shader_dir=rt``) as SimplerEnv's scripts, which needs
  an RTX-capable GPU;
* move-near: SimplerEnv's episode ``s mod 60`` (its fixed object triplets);
* Bridge: ManiSkill3's ``episode_id = s`` (the env takes it modulo its
  configurations: 24 for the three flat-table tasks, 64 for the eggplant in the sink).
"""

from __future__ import annotations

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
DRAWERS = ("Top", "Middle", "Bottom")
DRAWER_ROBOT_X = (0.65, 0.75, 0.85)
DRAWER_ROBOT_Y = (-0.2, 0.0, 0.2)

_GOOGLE = dict(robot="google_robot_static", control_freq=3, sim_freq=513, control_mode=GOOGLE_CONTROL_MODE,
               camera="overhead_camera", unnorm_key="fractal20220817_data")

#: task id -> static facts (registration metadata) and simulator settings
SIMPLER_TASKS: Dict[str, Dict[str, Any]] = {
    "SimplerPickCokeCan-v1": dict(
        backend="simpler", instruction="pick coke can", max_episode_steps=80, pick_and_place=True,
        description="SimplerEnv Google robot: pick the coke can (10 x 10 grid of positions, 3 can poses, visual matching)",
        sim=dict(_GOOGLE, env="GraspSingleOpenedCokeCanInScene-v0", scene_name="google_pick_coke_can_1_v4",
                 rgb_overlay="real_inpainting/google_coke_can_real_eval_1.png"),
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
        sim=dict(env="PutCarrotOnPlateInScene-v1", control_freq=5, sim_freq=500, camera="3rd_view_camera",
                 unnorm_key="bridge_orig"),
    ),
    "BridgeSpoonOnTowel-v1": dict(
        backend="bridge", instruction="put the spoon on the towel", max_episode_steps=60, pick_and_place=True,
        description="WidowX (ManiSkill3 Bridge digital twin): put the spoon on the towel",
        sim=dict(env="PutSpoonOnTableClothInScene-v1", control_freq=5, sim_freq=500, camera="3rd_view_camera",
                 unnorm_key="bridge_orig"),
    ),
    "BridgeStackCube-v1": dict(
        backend="bridge", instruction="stack the green block on the yellow block", max_episode_steps=60,
        pick_and_place=True, description="WidowX (ManiSkill3 Bridge digital twin): stack the green block on the yellow block",
        sim=dict(env="StackGreenCubeOnYellowCubeBakedTexInScene-v1", control_freq=5, sim_freq=500,
                 camera="3rd_view_camera", unnorm_key="bridge_orig"),
    ),
    "BridgeEggplantInBasket-v1": dict(
        backend="bridge", instruction="put eggplant into yellow basket", max_episode_steps=120, pick_and_place=True,
        description="WidowX (ManiSkill3 Bridge digital twin, sink scene): put the eggplant into the yellow basket",
        sim=dict(env="PutEggplantInBasketScene-v1", control_freq=5, sim_freq=500, camera="3rd_view_camera",
                 unnorm_key="bridge_orig"),
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


def coke_can_episode(seed: int) -> Tuple[float, float, str]:
    """(x, y, can pose) of a SimplerPickCokeCan-v1 seed (see the module docstring)."""
    seed = int(seed)
    cell = seed % (COKE_CAN_GRID * COKE_CAN_GRID)
    x = _linspace(*COKE_CAN_X, COKE_CAN_GRID, cell // COKE_CAN_GRID)
    y = _linspace(*COKE_CAN_Y, COKE_CAN_GRID, cell % COKE_CAN_GRID)
    return x, y, COKE_CAN_POSES[(seed // 100) % 3]


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
    if task_id == "SimplerPickCokeCan-v1":
        x, y, pose = coke_can_episode(seed)
        build[pose] = True
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
