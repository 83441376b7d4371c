"""Trivial policies for harness benchmarks and tests."""

from __future__ import annotations

from typing import Optional

import torch

from vla_forget.policies.base import Observation, Policy


class ZeroPolicy(Policy):
    """The zero end-effector delta with the gripper open: costs nothing, reads nothing."""

    def __init__(self, needs_image: bool = False):
        self.needs_image = needs_image

    def act(self, obs: Observation, *, greedy: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        a = torch.zeros(obs.batch_size, 7)
        a[:, 6] = 1.0
        return a

    def checkpoint_hash(self) -> str:
        return "zero-image-v1" if self.needs_image else "zero-v1"
