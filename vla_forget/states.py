"""Which steps of an episode are recorded as states for the divergences, and the recorded files.

The divergences to the base are averaged over a recorded set of states. Which
states is part of the measurement: the forgetting law of RL's Razor is about
the new task's inputs *as a whole*, so the states must span each episode —
approach, grasp, carry, placement — in proportion to how long each lasts.

Rule ``spread-v1`` (the default). A task gets ``n`` states from its ``E``
episodes (seed order, index ``e = 0..E-1``). State ``k`` (``k = 0..n-1``)
belongs to episode ``k mod E`` and is taken at step ``floor((k + 1/2) T / n)``
of that episode, ``T`` its length. So the ``n`` states sit at the midpoints of
``n`` equal slices of the episode's time line, dealt out round-robin over the
episodes: each phase of the task contributes in proportion to its duration,
every episode contributes ``n/E`` states (one state from each of the first
``n`` episodes when ``E > n``) and an episode's states are spread over its
whole length. Two states of one episode that fall on the same step (only when
``n/E`` exceeds ``T``) are recorded once.

Rule ``stride-v0`` (before this version; kept to reproduce and to compare old
benches): every ``stride``-th step from step 0 until the episode's quota
``ceil(n / E)`` is met, then the first ``n`` in seed order. With 32 states
and 50 episodes it records step 0 of the first 32 episodes only.

Every recorded file (``states/TASK/seedS.npz``) holds the observations
(``image``, ``state``, ``instruction``), the ``step`` index of each state, the
episode's ``length``, the ``rule`` and the ``slots`` key that says which
states of the set they are, so a bench recorded under another rule or other
counts is never mixed with this one: its states are recorded again.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from vla_forget.errors import VlaForgetError

SPREAD = "spread-v1"
STRIDE = "stride-v0"
RULES = (SPREAD, STRIDE)
DEFAULT_RULE = SPREAD
#: the rule of benches whose config.json predates the field
LEGACY_RULE = STRIDE

#: the phases of an episode that the KL is broken down by: quarters of its steps
N_PHASES = 4


class StateRuleError(VlaForgetError, ValueError):
    """An unknown rule or impossible counts."""


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise StateRuleError(f"unknown state rule {rule!r}; choose one of {', '.join(RULES)}")
    return rule


def slots_key(rule: str, n_states: int, n_episodes: int, index: int, stride: int) -> str:
    """What identifies the states of episode ``index`` in a set: recorded files carry it."""
    base = f"{rule}:n={n_states}:episodes={n_episodes}:index={index}"
    return f"{base}:stride={stride}" if rule == STRIDE else base


def episode_steps(rule: str, *, n_states: int, n_episodes: int, index: int, length: int, stride: int = 5) -> List[int]:
    """The steps (ascending, distinct, ``< length``) at which episode ``index`` of ``n_episodes`` records states."""
    check_rule(rule)
    if n_states <= 0 or length <= 0 or not 0 <= index < n_episodes:
        return []
    if rule == SPREAD:
        return sorted({min(length - 1, (2 * k + 1) * length // (2 * n_states)) for k in range(index, n_states, n_episodes)})
    per_episode = math.ceil(n_states / n_episodes)
    if index * per_episode >= n_states:  # the old rule kept the first n states in seed order
        return []
    keep = min(per_episode, n_states - index * per_episode)
    return list(range(0, length, max(1, stride)))[:keep]


def phase_of(step: np.ndarray, length: np.ndarray, n_phases: int = N_PHASES) -> np.ndarray:
    """The phase (0..n_phases-1) of each state: which of ``n_phases`` equal parts of its episode it lies in."""
    step, length = np.asarray(step), np.maximum(1, np.asarray(length))
    return np.minimum(n_phases - 1, (step * n_phases) // length).astype(np.int64)


def state_path(states_dir: str, task: str, seed: int) -> str:
    return os.path.join(states_dir, task, f"seed{int(seed)}.npz")


def write_states(path: str, *, image: Sequence[np.ndarray], state: Sequence[np.ndarray], step: Sequence[int],
                 length: int, instruction: str, rule: str, slots: str) -> None:
    """One episode's recorded states, written atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, image=np.stack(image), state=np.stack(state), step=np.asarray(step, dtype=np.int64),
                        length=np.int64(length), instruction=np.array(instruction), rule=np.array(rule),
                        slots=np.array(slots))
    os.replace(tmp, path)


def recorded_slots(path: str) -> Optional[str]:
    """The ``slots`` key of a recorded file; None when it is missing, unreadable or from before the rules."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as z:
            return str(z["slots"]) if "slots" in z.files else None
    except (OSError, ValueError, KeyError):
        return None


def load_states(states_dir: str, task: str, seeds: List[int], cap: Optional[int] = None):
    """The recorded observations of ``task`` (in seed order, at most ``cap``) as ``(Observation, meta)``.

    ``meta`` holds numpy arrays ``step``, ``length`` and ``seed`` (one entry per state; ``step`` is -1 for
    files recorded before steps were kept). Returns None when nothing is recorded.
    """
    import torch

    from vla_forget.policies.base import Observation

    images, states, instr, steps, lengths, seed_of = [], [], [], [], [], []
    for s in seeds:
        path = state_path(states_dir, task, s)
        if not os.path.exists(path):
            continue
        with np.load(path) as z:
            n = len(z["state"])
            images.append(z["image"])
            states.append(z["state"])
            instr += [str(z["instruction"])] * n
            steps.append(z["step"] if "step" in z.files else np.full(n, -1, dtype=np.int64))
            lengths.append(np.full(n, int(z["length"]) if "length" in z.files else -1, dtype=np.int64))
            seed_of.append(np.full(n, int(s), dtype=np.int64))
    if not states:
        return None
    cap = None if cap is None else int(cap)
    obs = Observation(image=torch.from_numpy(np.concatenate(images)[:cap]),
                      state=torch.from_numpy(np.concatenate(states)[:cap]).float(), instruction=instr[:cap])
    meta = {"step": np.concatenate(steps)[:cap], "length": np.concatenate(lengths)[:cap],
            "seed": np.concatenate(seed_of)[:cap]}
    return obs, meta


def expected_slots(rule: str, n_states: int, seeds: Sequence[int], stride: int) -> Dict[int, str]:
    """``{seed: slots key}`` for the episodes of a task that record states under ``rule`` (the others none)."""
    E = len(seeds)
    # an episode records states iff it has any step to record, whatever its length: ask episode_steps at length 1
    return {int(s): slots_key(rule, n_states, E, i, stride) for i, s in enumerate(seeds)
            if episode_steps(rule, n_states=n_states, n_episodes=E, index=i, length=1, stride=stride)}
