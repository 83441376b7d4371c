"""The v2 tabletop tasks: each v1 ManiSkill env with the low-poly Panda visuals and a 20 m ground.

Every env of :data:`vla_forget.envs.lowpoly.LOWPOLY_MS_IDS` gets a copy registered under its low-poly id.
The copy differs from its v1 env in what is drawn only:

* the robot is loaded from the low-poly mesh set (:mod:`vla_forget.envs.lowpoly`): the same links, joints,
  collision meshes, SRDF collision-ignore pairs and controllers, under the same robot uid ``"panda"`` (the
  table scene's initial robot pose is chosen by that uid), so seeds give the same initial states and the
  same actions the same motion, bit for bit;
* the table scene's ground is ``FLOOR_WIDTH`` m wide instead of 100 m (a visual grid with the same texture
  coordinates per metre; its collision is an infinite plane either way).

Both are done while the scene is built: ``_load_agent`` runs with ``"panda"`` resolving to
:class:`LowPolyPanda`, ``_load_scene`` with the table scene builder's ``build_ground`` making the smaller
ground; each is restored when the call returns (scenes are built on one thread). The mesh set is checked
against its recorded hash before the env is built.
"""

from __future__ import annotations

import contextlib
import dataclasses

import mani_skill.envs  # noqa: F401  (registers the built-in tasks)
from mani_skill.agents.registration import REGISTERED_AGENTS
from mani_skill.agents.robots.panda.panda import Panda
from mani_skill.utils.registration import REGISTERED_ENVS, register_env
from mani_skill.utils.scene_builder.table import scene_builder as _table_scene

from vla_forget.envs import lowpoly
from vla_forget.envs.tasks import color_cubes, pick_cube_goal  # noqa: F401  (registers the v1 own tasks)


class LowPolyPanda(Panda):
    """ManiSkill's Panda (uid ``"panda"``) loaded from the low-poly copy of ``panda_v2.urdf``. Not registered:
    the v2 envs put it in place of ``"panda"`` while they load their agent."""

    urdf_path = lowpoly.urdf_path()


@contextlib.contextmanager
def _panda_is_lowpoly():
    spec = REGISTERED_AGENTS["panda"]
    REGISTERED_AGENTS["panda"] = dataclasses.replace(spec, agent_cls=LowPolyPanda)
    try:
        yield
    finally:
        REGISTERED_AGENTS["panda"] = spec


@contextlib.contextmanager
def _small_ground():
    build_ground = _table_scene.build_ground

    def smaller(scene, floor_width=100, *args, **kwargs):
        # 500 m is the GUI's parallel-in-one-scene ground: left as it is
        return build_ground(scene, lowpoly.FLOOR_WIDTH if floor_width == 100 else floor_width, *args, **kwargs)

    _table_scene.build_ground = smaller
    try:
        yield
    finally:
        _table_scene.build_ground = build_ground


class LowPolyScene:
    """Mixin (first base) for a ManiSkill tabletop env: low-poly Panda visuals and a smaller ground."""

    def __init__(self, *args, **kwargs):
        lowpoly.check_meshes()  # a clear error before anything is built
        super().__init__(*args, **kwargs)

    def _load_agent(self, *args, **kwargs):
        with _panda_is_lowpoly():
            return super()._load_agent(*args, **kwargs)

    def _load_scene(self, *args, **kwargs):
        with _small_ground():
            return super()._load_scene(*args, **kwargs)


def _register_all() -> None:
    for v1, v2 in lowpoly.LOWPOLY_MS_IDS.items():
        if v2 in REGISTERED_ENVS:
            continue
        spec = REGISTERED_ENVS[v1]
        cls = type(spec.cls.__name__ + "LowPoly", (LowPolyScene, spec.cls),
                   {"__doc__": f"{v1} with the low-poly Panda visuals ({lowpoly.MESH_SET}) and a "
                               f"{lowpoly.FLOOR_WIDTH} m ground.\n" + (spec.cls.__doc__ or ""),
                    "__module__": __name__})
        register_env(v2, max_episode_steps=spec.max_episode_steps, asset_download_ids=spec.asset_download_ids,
                     **spec.default_kwargs)(cls)
        globals()[cls.__name__] = cls


_register_all()
