"""The task contract every simulator backend implements.

A task env holds ``num_envs`` parallel copies of one task (1 per process on the
CPU; many in one process with ManiSkill3's GPU physics) and speaks torch:

* ``reset(seeds)`` -> :class:`~vla_forget.policies.base.Observation`; the same
  seed always gives the same initial state *and* the same instruction;
* ``step(action [N, 7])`` -> ``(obs, reward [N], terminated [N], truncated [N], info)``
  with ``info["is_success"]`` a bool tensor ``[N]`` at every step; the action is
  the 7-D end-effector delta in OpenVLA's order (dx, dy, dz, droll, dpitch,
  dyaw, gripper) in controller units: each entry in [-1, 1]; position
  +-1 = +-0.1 m, rotation +-1 = +-0.1 rad (axis-angle delta), gripper
  +1 open / -1 closed;
* ``frames()`` -> uint8 ``[N, H, W, 3]`` for videos;
* ``truncated`` becomes true at ``max_episode_steps``; the harness runs every
  episode to that length so that success-at-end is well defined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class TaskInfo:
    """Static facts of a registered task."""

    id: str
    #: instruction template; tasks whose instruction varies per seed fill it per episode
    instruction: str
    max_episode_steps: int
    description: str = ""
    #: pick-and-place tasks can serve as adaptation targets
    pick_and_place: bool = False
    #: which backend implements it ("maniskill", "simpler")
    backend: str = "maniskill"
    extra: Dict[str, Any] = field(default_factory=dict)


class TaskEnv:
    """Abstract base of the task contract (see the module docstring)."""

    info: TaskInfo
    num_envs: int
    image_size: int

    def reset(self, seeds: Sequence[int]):
        raise NotImplementedError

    def step(self, action) -> Tuple[Any, Any, Any, Any, Dict[str, Any]]:
        raise NotImplementedError

    def frames(self) -> np.ndarray:
        raise NotImplementedError

    def review_frames(self) -> np.ndarray:
        """The picture videos are recorded from, uint8 ``[N, H, W, 3]``: a review camera where the env has one
        (ManiSkill tasks made with ``review_size``), else the policy camera's :meth:`frames`."""
        return self.frames()

    def instructions(self) -> List[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
