"""Finding checkpoints in run and sweep folders (what `bench --checkpoints` evaluates).

Every trained run keeps its checkpoints in one layout. An adaptation **run folder** (``vla-forget adapt``)::

    RUN/run.json                      {"kind": "adapt", "method", "base", "task", "config", ...}
    RUN/checkpoints/update-NNNNNN/    policy folder + meta.json {"method", "update", "env_steps", ...}

A pretraining run folder (``vla-forget pretrain``) has ``RUN/config.json`` (kind "pretrain") and the same
``RUN/checkpoints/update-NNNNNN/`` (the update is the training step; method "pretrain"); it names no base or
target, so a bench of it is given ``--base``.

A **sweep folder** (written by ``vla-forget sweep``) holds runs in
``SWEEP/runs/NAME/`` and lists them in ``SWEEP/sweep.json``. A checkpoint counts
once its ``meta.json`` exists (it is written last), so a run that is still
training can be benched: the checkpoints it has finished are found.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from vla_forget.jsonio import read_json_object
from vla_forget.errors import VlaForgetError


class CheckpointDiscoveryError(VlaForgetError, ValueError):
    """A folder that holds no adaptation run or sweep, or no finished checkpoint."""


@dataclass
class RunInfo:
    name: str
    path: str
    method: Optional[str] = None
    base: Optional[str] = None
    task: Optional[str] = None
    config: Dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckpointInfo:
    run: str
    """run name (the run folder's name)"""
    name: str
    """checkpoint folder name, e.g. update-000040"""
    path: str
    update: int
    method: Optional[str] = None
    env_steps: Optional[int] = None
    samples_seen: Optional[int] = None
    wall_time_s: Optional[float] = None
    hparams: Dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The policy key in bench results: ``RUN@update-NNNNNN``."""
        return f"{self.run}@{self.name}"


def _load_json(path: str) -> Dict[str, Any]:
    return read_json_object(path, CheckpointDiscoveryError)


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "run.json")) or os.path.isdir(os.path.join(path, "checkpoints"))


def _is_pretrain_config(data: Dict[str, Any]) -> bool:
    return data.get("kind") == "pretrain" or ("kind" not in data and "dagger_rounds" in data and "steps" in data)


def is_sweep_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "sweep.json")) or (
        os.path.isdir(os.path.join(path, "runs")) and not is_run_dir(path))


def run_info(path: str) -> RunInfo:
    path = path.rstrip("/") or path
    info = RunInfo(name=os.path.basename(os.path.abspath(path)), path=path)
    rj = os.path.join(path, "run.json")
    cj = os.path.join(path, "config.json")
    if os.path.isfile(rj):
        data = _load_json(rj)
        info.method, info.base, info.task = data.get("method"), data.get("base"), data.get("task")
        info.config = dict(data.get("config") or {})
    elif os.path.isfile(cj):
        data = _load_json(cj)
        if _is_pretrain_config(data):
            info.method = "pretrain"
            info.config = {k: v for k, v in data.items() if k not in ("kind", "format")}
    return info


def run_dirs(folder: str) -> List[str]:
    """The run folders of a sweep (in sweep.json's order, then any others by name), or ``[folder]`` for a run."""
    if is_run_dir(folder):
        return [folder]
    if not is_sweep_dir(folder):
        raise CheckpointDiscoveryError(
            f"{folder} is neither an adaptation run folder (run.json, checkpoints/) nor a sweep folder "
            "(sweep.json, runs/)")
    runs_root = os.path.join(folder, "runs")
    names: List[str] = []
    sj = os.path.join(folder, "sweep.json")
    if os.path.isfile(sj):
        names = [r["name"] for r in _load_json(sj).get("runs", []) if isinstance(r, dict) and "name" in r]
    if os.path.isdir(runs_root):
        names += sorted(n for n in os.listdir(runs_root) if n not in names and os.path.isdir(os.path.join(runs_root, n)))
    return [os.path.join(runs_root, n) for n in names if os.path.isdir(os.path.join(runs_root, n))]


def list_run_checkpoints(run_dir: str) -> List[CheckpointInfo]:
    """The finished checkpoints of one run (those with a meta.json), sorted by update."""
    from vla_forget.adapt import checkpoint_update, list_checkpoints, read_meta

    info = run_info(run_dir)
    out: List[CheckpointInfo] = []
    for path in list_checkpoints(run_dir):
        try:
            meta = read_meta(path)
        except json.JSONDecodeError as e:
            raise CheckpointDiscoveryError(f"{path}/meta.json is not valid JSON: {e}") from None
        out.append(CheckpointInfo(
            run=info.name, name=os.path.basename(path), path=path, update=int(meta.get("update", checkpoint_update(path))),
            method=meta.get("method", info.method), env_steps=meta.get("env_steps"),
            samples_seen=meta.get("samples_seen"), wall_time_s=meta.get("wall_time_s"),
            hparams=dict(meta.get("hparams") or {})))
    return out


def find_runs(folder: str) -> List[RunInfo]:
    return [run_info(d) for d in run_dirs(folder)]


def find_checkpoints(folder: str, stride: Optional[int] = None) -> List[CheckpointInfo]:
    """Every finished checkpoint in a run or sweep folder, run by run, by update.

    ``stride``: keep every ``stride``-th checkpoint of each run (the first included) and its last one.
    Raises :class:`CheckpointDiscoveryError` when the folder holds no finished checkpoint.
    """
    if stride is not None and stride < 1:
        raise CheckpointDiscoveryError(f"--checkpoint-stride must be >= 1, got {stride}")
    if not os.path.isdir(folder):
        raise CheckpointDiscoveryError(f"{folder}: no such folder")
    found: List[CheckpointInfo] = []
    for d in run_dirs(folder):
        cks = list_run_checkpoints(d)
        if stride:
            cks = [c for i, c in enumerate(cks) if i % stride == 0 or i == len(cks) - 1]
        found += cks
    if not found:
        raise CheckpointDiscoveryError(f"{folder} holds no finished checkpoint (checkpoints/update-NNNNNN/meta.json)")
    return found


def common_field(folders: List[str], name: str) -> Optional[str]:
    """The value of run.json's ``name`` ("base", "task", or a field of its config such as "battery") shared by
    every run in ``folders``; None if absent.

    Raises :class:`CheckpointDiscoveryError` when the runs disagree.
    """
    values = {}
    for folder in folders:
        for r in find_runs(folder):
            v = getattr(r, name, None)
            if v is None:
                v = r.config.get(name)
            if v is not None:
                values.setdefault(v, r.path)
    if len(values) > 1:
        detail = ", ".join(f"{v!r} ({p})" for v, p in values.items())
        raise CheckpointDiscoveryError(f"the runs do not share one {name}: {detail}; bench them separately or give --{name}")
    return next(iter(values), None)
