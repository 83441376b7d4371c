"""`vla-forget adapt`: adapting a base policy to a target task, by RL or by SFT.

Each method is one readable file whose loop reads top to bottom
(rollout -> advantages -> update, or batch -> loss -> step); shared plumbing
lives in :mod:`vla_forget.adapt.run` (the run's folder, policy and KL to the base, over the one
:class:`~vla_forget.trainer.Trainer` that pretraining also drives: checkpoints, exact resume, NaN guard, log), :mod:`vla_forget.adapt.common` (KL-to-base penalty, rewards,
seeds, shared losses) and :mod:`vla_forget.adapt.rollouts` (on-policy
trajectories in worker processes).

``METHODS`` maps a method name to its :class:`Method`: the function that trains it
(``"module:function"``) and its config class (:mod:`vla_forget.adapt.configs`); the
module is imported only when the method runs (``import vla_forget.adapt`` imports no torch).

Run folder (``--out RUN``)::

    RUN/run.json                      {"kind": "adapt", "format", "method", "base", "task", "config", "vla_forget_version"}
    RUN/log.jsonl                     one JSON record per update
    RUN/events.jsonl                  start / resume / diverged / done
    RUN/checkpoints/update-NNNNNN/    policy folder (load_policy(dir)) + meta.json + train_state.pt + train_state.json
                                      (every trained run's layout: see vla_forget.trainer)
    RUN/traces/                       RL methods: successful rollouts, RLDS datasets (see rl_trace_sft)

See docs/adaptation.md.
"""

from __future__ import annotations

import json
import os
from typing import List

from vla_forget.adapt.configs import METHODS, RL_METHODS, Method  # noqa: F401 (the table of methods)

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "update-"
META = "meta.json"


def checkpoint_name(update: int) -> str:
    """``update-000042``: the folder name of the checkpoint after ``update`` updates."""
    return f"{CHECKPOINT_PREFIX}{int(update):06d}"


def checkpoint_update(path: str) -> int:
    """The update number of a checkpoint folder (from its name)."""
    name = os.path.basename(os.path.normpath(path))
    if not name.startswith(CHECKPOINT_PREFIX) or not name[len(CHECKPOINT_PREFIX):].isdigit():
        raise ValueError(f"{path} is not an adaptation checkpoint folder (update-NNNNNN)")
    return int(name[len(CHECKPOINT_PREFIX):])


def list_checkpoints(run_dir: str) -> List[str]:
    """Complete checkpoint folders of an adaptation run, sorted by update (update-000000, the base, first).

    A folder counts once its ``meta.json`` exists (checkpoints are written in a
    temporary folder and renamed into place, so a listed folder is complete).
    Each is a policy folder: ``vla_forget.policies.load_policy(path)`` loads it.
    """
    root = os.path.join(run_dir, CHECKPOINTS_DIR)
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        digits = name[len(CHECKPOINT_PREFIX):]
        if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() and os.path.exists(os.path.join(root, name, META)):
            out.append((int(digits), os.path.join(root, name)))
    return [p for _, p in sorted(out)]


def read_meta(checkpoint_dir: str) -> dict:
    """A checkpoint's ``meta.json`` (method, update, env_steps, samples_seen, wall_time_s, hparams, base, task, run)."""
    with open(os.path.join(checkpoint_dir, META)) as f:
        return json.load(f)


def load_method(name: str):
    """The training function of a method (imports its module)."""
    from vla_forget.registry import Entry

    if name not in METHODS:
        raise KeyError(f"unknown adaptation method {name!r}; methods: {', '.join(METHODS)}")
    return Entry(name, METHODS[name].entry).load()
