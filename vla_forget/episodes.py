"""One episode loop for every caller that rolls a policy out in a task env: bench (outcomes, videos, divergence
states), adaptation's on-policy rollouts (observations, tokens and their log-probabilities, rewards), DAgger
(expert labels) and the scripted demonstrations (observations and executed actions).

:func:`run_episode` resets the env on the given seeds, asks ``act`` for an action at each control step, steps
the env, keeps the success bookkeeping (success at the end, at any step, the first successful step, the
return), and stops at the episode's end, when every row is truncated, or once every row has been successful
``success_hold`` steps in a row. What a caller keeps is said by its :class:`Recorder` objects: they see each
observation before the action (:meth:`Recorder.before`) and each transition after it (:meth:`Recorder.after`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch


class Recorder:
    """What one caller keeps of an episode; every hook is optional."""

    def start(self, obs: Any) -> None:
        """After the reset, with the first observation."""

    def before(self, t: int, obs: Any) -> None:
        """At control step ``t``, before the action, with the observation it is chosen from."""

    def after(self, t: int, obs: Any, action: Any, next_obs: Any, reward: Any, success: Any, info: Dict[str, Any]) -> None:
        """After the env stepped ``action`` (rows of ``[N, 7]``): the transition, its reward and success ``[N]``."""


@dataclass
class Outcome:
    """How an episode (a row per seed) ended."""

    steps: int
    """control steps taken"""
    success: torch.Tensor
    """``[N]`` bool: success at the last step"""
    once: torch.Tensor
    """``[N]`` bool: success at any step"""
    first: torch.Tensor
    """``[N]`` long: the step count at the first success (-1: never)"""
    ret: torch.Tensor
    """``[N]`` float64: the summed rewards"""
    instructions: List[str]
    obs: Any = None
    """the last observation"""
    env_stats: Optional[List[Dict[str, Any]]] = None
    """the simulator's per-episode statistics at the last step, where the env reports them (SimplerEnv tasks)"""


def run_episode(env: Any, act: Callable[[Any], Any], seeds: Sequence[int], *, instruction_index: Optional[int] = None,
                max_steps: Optional[int] = None, success_hold: int = 0,
                recorders: Sequence[Recorder] = ()) -> Outcome:
    """Roll ``act`` (observation -> actions ``[N, 7]``) out in ``env`` from ``seeds`` (one per env row) for
    ``max_steps`` control steps (default: the task's episode length); see the module's docstring."""
    N = len(seeds)
    obs = env.reset(list(seeds)) if instruction_index is None else env.reset(list(seeds), instruction_index=instruction_index)
    instructions = list(obs.instruction)
    for r in recorders:
        r.start(obs)
    T = env.info.max_episode_steps if max_steps is None else int(max_steps)
    success = torch.zeros(N, dtype=torch.bool)
    once = torch.zeros(N, dtype=torch.bool)
    first = torch.full((N,), -1, dtype=torch.long)
    held = torch.zeros(N, dtype=torch.long)
    ret = torch.zeros(N, dtype=torch.float64)
    env_stats = None
    steps = 0
    for t in range(T):
        for r in recorders:
            r.before(t, obs)
        action = act(obs)
        nxt, reward, _terminated, truncated, info = env.step(action)
        s = torch.as_tensor(info["is_success"]).bool().cpu().reshape(N)
        first[s & ~once] = t + 1
        once |= s
        success = s
        held = torch.where(s, held + 1, torch.zeros_like(held))
        ret += torch.as_tensor(reward, dtype=torch.float64).cpu().reshape(N)
        env_stats = info.get("episode_stats", env_stats)
        for r in recorders:
            r.after(t, obs, action, nxt, reward, s, info)
        obs = nxt
        steps = t + 1
        if bool(torch.as_tensor(truncated).all()):
            break
        if success_hold and bool((held >= success_hold).all()):
            break
    return Outcome(steps=steps, success=success, once=once, first=first, ret=ret, instructions=instructions, obs=obs,
                   env_stats=env_stats)
