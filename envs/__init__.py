"""Task registry: versioned task ids -> simulator envs that speak the task contract.

``import vla_forget.envs`` is cheap: it imports neither ManiSkill, SAPIEN nor
torch. Every task's static facts (instruction template, episode length,
pick-and-place flag, description) live in the registration metadata, so
``task_info`` and listing ids cost nothing; ``make_task_env`` imports the
backend when a task is made.

Tasks (ManiSkill3, Panda arm, no downloads; see ``envs/maniskill.py`` for the
observation layout):

=======================  ====================================  ==============
id                       ManiSkill env                          pick-and-place
=======================  ====================================  ==============
PickCube-v1              VLAF-PickCubeGoal-v1 (goal visible)    yes
PushCube-v1              PushCube-v1                            no
PullCube-v1              PullCube-v1                            no
StackCube-v1             StackCube-v1                           yes
PlaceSphere-v1           PlaceSphere-v1                         yes
LiftPegUpright-v1        LiftPegUpright-v1                      no
StackColorCube-v1        VLAF-StackColorCube-v1                 yes
PlaceCubeOnTarget-v1     VLAF-PlaceCubeOnTarget-v1              yes
=======================  ====================================  ==============

Each has a ``-v2`` (PickCube-v2 ... PlaceCubeOnTarget-v2): the same task, seeds, instructions and
expert, and bit-identical physics, with the arm drawn from low-poly meshes and a 20 m ground: a ninth of
the triangles to render (:mod:`vla_forget.envs.lowpoly`, :mod:`vla_forget.envs.tasks.lowpoly`).

SimplerEnv's tasks are registered too (:mod:`vla_forget.envs.simpler_tasks`):
the Google robot's SimplerPickCokeCan-v1, SimplerOpenDrawer-v1,
SimplerCloseDrawer-v1 and SimplerMoveNear-v1 (``simpler_env``, an optional
install) and the WidowX's BridgeCarrotOnPlate-v1, BridgeSpoonOnTowel-v1,
BridgeStackCube-v1 and BridgeEggplantInBasket-v1 (ManiSkill3's Bridge digital
twins, whose assets are downloads); they take OpenVLA's un-normalised actions.
Making one where its simulator or assets are missing raises
:class:`~vla_forget.envs.simpler.TaskUnavailableError` saying what to do;
:func:`task_unavailable_reason` says it without making the env.

``max_episode_steps`` is about twice the longest time the scripted expert
(``expert-v1``) needed over 30 seeds (PickCube/StackCube/PlaceSphere <= 38 steps
-> 80; the colour-cube tasks <= 42 -> 100; push/pull <= 13 -> 50), leaving room
for slower learned policies; the harness runs every episode to that length.
"""

from __future__ import annotations

import os
from typing import List, Optional

from vla_forget.envs.base import TaskEnv, TaskInfo
from vla_forget.registry import Registry, UnknownIdError

#: the camera size (square, pixels) where nothing says otherwise: no policy declares an input size
DEFAULT_IMAGE_SIZE = 128

__all__ = ["TASKS", "EXPERT_KINDS", "TaskInfo", "TaskEnv", "task_info", "make_task_env", "task_unavailable_reason",
           "UnknownIdError"]

#: What the scripted expert does on a task; the env puts the index into
#: ``Observation.privileged["task_kind"]``.
EXPERT_KINDS = ("none", "pick_place", "push")

_MANISKILL = "vla_forget.envs.maniskill:ManiSkillTaskEnv"
_OWN_TASKS = "vla_forget.envs.tasks"


def _register_all() -> None:
    def task(id, ms_id, *, instruction, max_episode_steps, pick_and_place, expert, description, module=None, **kwargs):
        TASKS.register(
            id,
            _MANISKILL,
            description=description,
            ms_id=ms_id,
            ms_module=module,
            expert=expert,
            **kwargs,
            metadata=dict(instruction=instruction, max_episode_steps=max_episode_steps, pick_and_place=pick_and_place),
        )

    task(
        "PickCube-v1",
        "VLAF-PickCubeGoal-v1",
        module=f"{_OWN_TASKS}.pick_cube_goal",
        instruction="pick up the red cube and move it to the green ball",
        max_episode_steps=80,
        pick_and_place=True,
        expert="pick_place",
        description="ManiSkill PickCube with the green goal marker shown: bring the red cube to the goal in the air and hold still",
    )
    task(
        "PushCube-v1",
        "PushCube-v1",
        instruction="push the blue cube onto the red and white target",
        max_episode_steps=50,
        pick_and_place=False,
        expert="push",
        description="ManiSkill PushCube: push the cube forward into the target region",
    )
    task(
        "PullCube-v1",
        "PullCube-v1",
        instruction="pull the blue cube back onto the red and white target",
        max_episode_steps=50,
        pick_and_place=False,
        expert="push",
        description="ManiSkill PullCube: pull the cube towards the robot into the target region",
    )
    task(
        "StackCube-v1",
        "StackCube-v1",
        instruction="stack the red cube on top of the green cube",
        max_episode_steps=80,
        pick_and_place=True,
        expert="pick_place",
        description="ManiSkill StackCube: put the red cube on the green one and let go",
    )
    task(
        "PlaceSphere-v1",
        "PlaceSphere-v1",
        instruction="place the blue ball into the bin",
        max_episode_steps=80,
        pick_and_place=True,
        expert="pick_place",
        description="ManiSkill PlaceSphere: put the sphere into the small bin and let go",
    )
    task(
        "LiftPegUpright-v1",
        "LiftPegUpright-v1",
        instruction="lift the peg and stand it upright",
        max_episode_steps=60,
        pick_and_place=False,
        expert="none",
        description="ManiSkill LiftPegUpright: stand a lying peg upright (no scripted expert: it returns a safe hold action)",
    )
    task(
        "StackColorCube-v1",
        "VLAF-StackColorCube-v1",
        module=f"{_OWN_TASKS}.color_cubes",
        instruction="stack the {c1} cube on the {c2} cube",
        max_episode_steps=100,
        pick_and_place=True,
        expert="pick_place",
        description="three coloured cubes; stack the named cube on the other named cube (6 instructions)",
    )
    task(
        "PlaceCubeOnTarget-v1",
        "VLAF-PlaceCubeOnTarget-v1",
        module=f"{_OWN_TASKS}.color_cubes",
        instruction="put the {cube} cube on the {target} target",
        max_episode_steps=100,
        pick_and_place=True,
        expert="pick_place",
        description="three coloured cubes and three coloured targets; put the named cube on the named target (9 instructions); the adaptation target",
    )

    from vla_forget.envs.lowpoly import register_v2

    register_v2(TASKS)  # PickCube-v2 ...: the same tasks with a low-poly arm (vla_forget.envs.lowpoly)

    from vla_forget.envs.simpler_tasks import register as register_simpler

    register_simpler(TASKS)


TASKS = Registry("task", populate=_register_all)


def set_env_defaults() -> None:
    cache = os.environ.get("VLA_FORGET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vla-forget")
    os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
    os.environ.setdefault("MS_ASSET_DIR", os.path.join(cache, "maniskill"))


set_env_defaults()


def task_info(task_id: str) -> TaskInfo:
    """Static facts of a registered task (imports nothing heavy)."""
    entry = TASKS.get(task_id)
    m = entry.metadata
    return TaskInfo(
        id=task_id,
        instruction=m["instruction"],
        max_episode_steps=m["max_episode_steps"],
        description=entry.description,
        pick_and_place=m["pick_and_place"],
        backend=m.get("backend", "maniskill"),
        extra={"ms_id": entry.kwargs["ms_id"], "expert": entry.kwargs["expert"],
               **({"unnorm_key": m["unnorm_key"]} if "unnorm_key" in m else {})},
    )


def task_instructions(task_id: str) -> List[str]:
    """Every instruction a task can draw, in the order ``reset(seeds, instruction_index=k)`` takes them;
    a task with one fixed instruction gives ``[instruction]``. Imports the task's simulator module."""
    import importlib

    entry = TASKS.get(task_id)
    info = task_info(task_id)
    if info.backend != "maniskill":
        return [info.instruction]
    module = entry.kwargs.get("ms_module")
    if module:
        importlib.import_module(module)
    from mani_skill.utils.registration import REGISTERED_ENVS

    fn = getattr(REGISTERED_ENVS[info.extra["ms_id"]].cls, "all_instructions", None)
    return list(fn()) if fn is not None else [info.instruction]


def task_unavailable_reason(task_id: str) -> Optional[str]:
    """None if ``task_id`` can run here; else what is missing (simulator, assets) and what to do."""
    info = task_info(task_id)
    if "visual_assets" in TASKS.get(task_id).metadata:
        from vla_forget.envs.lowpoly import unavailable_reason as lowpoly_unavailable

        return lowpoly_unavailable(task_id)
    if info.backend in ("simpler", "bridge"):
        from vla_forget.envs.simpler import unavailable_reason

        return unavailable_reason(task_id)
    return None


def make_task_env(
    task_id: str,
    *,
    num_envs: int = 1,
    image_size: int = DEFAULT_IMAGE_SIZE,
    render_images: bool = True,
    privileged: bool = False,
    sim_backend: str = "auto",
    device: Optional[str] = None,
    max_episode_steps: Optional[int] = None,
    wrist_camera: bool = False,
    dense_reward: bool = True,
    review_size: int = 0,
) -> TaskEnv:
    """Make ``num_envs`` copies of a task (see :class:`vla_forget.envs.base.TaskEnv`).

    ``sim_backend="auto"`` picks ManiSkill's GPU physics when CUDA is present and
    ``num_envs > 1``, else the CPU (one env per process). ``privileged=True`` adds
    the simulator state the scripted expert reads. ``max_episode_steps``
    overrides the task's episode length. ``wrist_camera=True`` adds a camera on the
    robot's hand: images are then the front and wrist views side by side, ``[N, S, 2S, 3]``
    (ManiSkill tasks only). ``dense_reward=False`` skips the shaped reward a learner reads
    (``info["dense_reward"]``, then absent) where the task computes it at every step: what an
    evaluation needs is the success only (ManiSkill tasks; the others ignore it). ``review_size=R`` adds
    the review camera that videos are recorded from, ``env.review_frames()`` ``[N, R, R, 3]`` (ManiSkill tasks;
    the others record their own camera's frames).
    """
    entry = TASKS.get(task_id)
    info = task_info(task_id)
    if max_episode_steps is not None:  # a battery may set its own episode length
        import dataclasses

        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        info = dataclasses.replace(info, max_episode_steps=int(max_episode_steps))
    from vla_forget.envs.vulkan import check_vulkan

    check_vulkan()
    cls = entry.load()
    entry_kwargs = dict(entry.kwargs)
    if wrist_camera:
        from vla_forget.envs.maniskill import ManiSkillTaskEnv

        if not (isinstance(cls, type) and issubclass(cls, ManiSkillTaskEnv)):
            raise ValueError(f"task {task_id!r} has no wrist camera: it is offered on the ManiSkill tabletop tasks only")
        entry_kwargs["wrist_camera"] = True
    if not dense_reward:
        from vla_forget.envs.maniskill import ManiSkillTaskEnv

        if isinstance(cls, type) and issubclass(cls, ManiSkillTaskEnv):
            entry_kwargs["dense_reward"] = False
    if review_size:
        from vla_forget.envs.maniskill import ManiSkillTaskEnv

        if isinstance(cls, type) and issubclass(cls, ManiSkillTaskEnv):
            entry_kwargs["review_size"] = int(review_size)
    return cls(
        info,
        num_envs=num_envs,
        image_size=image_size,
        render_images=render_images,
        privileged=privileged,
        sim_backend=sim_backend,
        device=device,
        **entry_kwargs,
    )
