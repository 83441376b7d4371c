"""The one trainer: what every training run does besides computing its loss.

Pretraining (behaviour cloning with a cosine schedule, validation and DAgger, :mod:`vla_forget.pretrain`) and
every adaptation method (:mod:`vla_forget.adapt`, through :class:`vla_forget.adapt.run.Run`) drive one
:class:`Trainer`. It owns:

- **the checkpoint layout** that ``bench --checkpoints DIR`` reads for every kind of run::

      DIR/checkpoints/update-NNNNNN/   a policy folder (load_policy(dir)): model.safetensors, config.json,
                                       dataset_statistics.json
                                       meta.json         method, update (the step or update count), wall time,
                                                         and what the run adds (hyper-parameters, samples seen)
                                       train_state.pt    optimizer, torch (and CUDA) RNG, extra tensors such as a
                                                         value head: tensors only, loaded with weights_only=True
                                       train_state.json  the count ("step"), wall time, and the run's own state
                                                         (counters, numpy RNG, DAgger datasets)

  written in a temporary folder and renamed into place, so a listed folder is complete; ``keep_checkpoints``
  prunes all but the newest K;
- **exact resume** from the newest complete checkpoint: optimizer, RNG, count and wall time come back, and the
  log is cut back to the checkpoint (the records of steps after it are redone, not repeated). On the CPU the
  trainer turns on torch's deterministic algorithms: with several threads, torch's CPU backward otherwise sums
  some gradients in a varying order (measured: 45 of the small VLA's parameter gradients differing by ~1e-8
  between two identical backward passes with 2 threads, none with 1 thread or with deterministic algorithms;
  the same step time), and two identical RL runs drifted apart within three updates. On CUDA, runs are
  reproducible up to cuBLAS's and cuDNN's own non-determinism;
- **the save cadence**: every ``save_every`` steps, at the last step, and where an interrupted call stops
  (``stop_at``);
- **the log** (one JSON line per record, keyed by the count: ``log.jsonl`` for adaptation, ``metrics.jsonl``
  for pretraining) and the run folder's ``events.jsonl`` (start, resume, DAgger rounds, divergence, done);
- **the progress bar**;
- **the NaN guard**: a non-finite loss or gradient stops training before the optimiser step and raises
  :class:`~vla_forget.training.Diverged` naming the last good checkpoint, which stays on disk.

Use::

    trainer = Trainer(out, kind, log_name=..., counter="step", total=N, save_every=K, method="pretrain", ...)
    if trainer.resume_from: state, tensors = trainer.restore(opt)
    for step in trainer.loop(stop_at):
        loss = ...; trainer.optimizer_step(opt, loss, grad_clip)
        if trainer.done(step, record): trainer.save(policy, opt, state=..., meta=...)
    trainer.event("done", ...)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from tqdm import tqdm

from vla_forget.adapt import CHECKPOINTS_DIR, META, checkpoint_name, checkpoint_update, list_checkpoints
from vla_forget.jsonio import append_jsonl, write_json
from vla_forget.runfolder import RunFolder, RunKind
from vla_forget.training import Diverged, NonFiniteError, backward, optimizer_step

TRAIN_STATE_PT = "train_state.pt"
TRAIN_STATE_JSON = "train_state.json"
#: the checkpoint folders of pretraining runs written before the shared layout (``DIR/ckpt-NNNNNN``): read, never
#: written
LEGACY_CKPT_PREFIX = "ckpt-"
#: counters that adaptation checkpoints written before train_state.json kept in train_state.pt
_PT_COUNTERS = ("update", "env_steps", "samples_seen", "wall_time_s")


def checkpoint_dirs(out: str) -> List[str]:
    """Complete checkpoints in ``out``, oldest first: the shared layout's (``checkpoints/update-NNNNNN`` with its
    meta.json) and, for pretraining runs started before it, ``ckpt-NNNNNN`` folders with their train_state.json."""
    if not os.path.isdir(out):
        return []
    found = [(checkpoint_update(p), p) for p in list_checkpoints(out)]
    found += [(int(n[len(LEGACY_CKPT_PREFIX):]), os.path.join(out, n)) for n in os.listdir(out)
              if n.startswith(LEGACY_CKPT_PREFIX) and n[len(LEGACY_CKPT_PREFIX):].isdigit()
              and os.path.exists(os.path.join(out, n, TRAIN_STATE_JSON))]
    return [p for _, p in sorted(found)]


def decay_factor(schedule: str, t: float, min_ratio: float) -> float:
    """A learning-rate schedule at fraction ``t`` of its length (0: start, 1: end) as a fraction of its peak:
    ``constant`` 1; ``linear`` / ``cosine`` decay from 1 to ``min_ratio``."""
    t = min(1.0, max(0.0, t))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * t
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def adamw(named_params, *, lr: float, weight_decay: float, betas: Tuple[float, float] = (0.9, 0.999),
          matrices_only: bool = False, extra_groups=(), eps: float = 1e-8) -> torch.optim.AdamW:
    """The optimiser of every trainer: AdamW over the trainable ``(name, parameter)`` pairs, plus ``extra_groups``
    (e.g. a value head). ``matrices_only``: weight decay on the matrices only (not on biases, norms, embeddings
    or positions: pretraining's groups); otherwise one group with ``weight_decay`` (adaptation's)."""
    params = [(n, p) for n, p in named_params if p.requires_grad]
    if matrices_only:
        matrix = [p.ndim >= 2 and "emb" not in n and "pos" not in n for n, p in params]
        decay = [p for (_, p), m in zip(params, matrix) if m]
        keep = [p for (_, p), m in zip(params, matrix) if not m]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
    else:
        groups = [{"params": [p for _, p in params], "lr": lr, "weight_decay": weight_decay}]
    return torch.optim.AdamW([*groups, *extra_groups], lr=lr, betas=betas, eps=eps)


def read_train_state(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(train_state.json, train_state.pt) of the checkpoint ``path``; the JSON always has ``step``. Adaptation
    checkpoints from before train_state.json kept their counters in train_state.pt: they are read from there."""
    tensors = torch.load(os.path.join(path, TRAIN_STATE_PT), map_location="cpu", weights_only=True)
    js = os.path.join(path, TRAIN_STATE_JSON)
    if os.path.exists(js):
        with open(js) as f:
            state = json.load(f)
    else:
        state = {k: tensors[k] for k in _PT_COUNTERS if k in tensors}
        state["step"] = int(state.get("update", checkpoint_update(path)))
    return state, tensors


class Trainer:
    """A training run's folder, checkpoints, resume, cadence, log, progress bar and NaN guard (see the module
    docstring).

    ``counter`` names the count in log records and messages ("step" for pretraining, "update" for adaptation);
    ``resume``: continue from the newest checkpoint (:attr:`resume_from`, None in a fresh folder).
    """

    def __init__(self, out: str, kind: RunKind, *, log_name: str, counter: str, total: int, save_every: int,
                 method: str, grad_clip: float = 1.0, progress: bool = True, desc: Optional[str] = None,
                 keep_checkpoints: int = 0, resume: bool = False, device: str = "cpu"):
        if device == "cpu":
            # torch's CPU backward with more than one thread sums some gradients in a varying order (differences
            # of ~1e-8 that sampling then amplifies): deterministic kernels make runs and resumes exact, at no
            # measurable cost on the small VLA (vla_forget.trainer docs)
            torch.use_deterministic_algorithms(True)
        self.dir = out
        os.makedirs(out, exist_ok=True)
        self.folder = RunFolder(out, kind)
        self.log_path = os.path.join(out, log_name)
        self.counter = counter
        self.total = int(total)
        self.save_every = int(save_every)
        self.method = method
        self.grad_clip = float(grad_clip)
        self.progress = progress
        self.desc = desc or method
        self.keep_checkpoints = int(keep_checkpoints)
        existing = checkpoint_dirs(out) if resume else []
        self.resume_from: Optional[str] = existing[-1] if existing else None
        self.last_checkpoint: Optional[str] = self.resume_from
        self.step = 0
        self.end = self.total
        self.before_checkpoint: List[Callable[[int], None]] = []  # e.g. flushing traces
        self._wall_offset = 0.0
        self._t0 = time.perf_counter()
        self._bar: Optional[tqdm] = None

    # --- time, log, events -----------------------------------------------------------
    def wall_time(self) -> float:
        """Seconds of training in this run folder, resumed calls included."""
        return self._wall_offset + (time.perf_counter() - self._t0)

    def log(self, record: Mapping[str, Any]) -> None:
        append_jsonl(self.log_path, dict(record))

    def event(self, name: str, **fields: Any) -> None:
        self.folder.event(name, **{self.counter: self.step, **fields})

    def warn(self, message: str, event: str, **fields: Any) -> None:
        """A warning on stderr (above the progress bar, if one is shown) that is also kept in events.jsonl."""
        self.event(event, message=message, **fields)
        if self._bar is not None:
            self._bar.write(f"warning: {message}", file=sys.stderr)
        else:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def show(self, **fields: Any) -> None:
        """Figures beside the progress bar."""
        if self._bar is not None and fields:
            self._bar.set_postfix(fields)

    # --- checkpoints and resume ------------------------------------------------------------
    def save(self, policy, opt, *, tensors: Optional[Mapping[str, Any]] = None,
             state: Optional[Mapping[str, Any]] = None, meta: Optional[Mapping[str, Any]] = None) -> str:
        """Write ``checkpoints/update-<step>/`` (see the module docstring) and return its path."""
        for hook in self.before_checkpoint:
            hook(self.step)
        path = os.path.join(self.dir, CHECKPOINTS_DIR, checkpoint_name(self.step))
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        policy.save(tmp)
        wall = round(self.wall_time(), 3)
        torch.save({"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    **(tensors or {})}, os.path.join(tmp, TRAIN_STATE_PT))
        write_json(os.path.join(tmp, TRAIN_STATE_JSON), {"step": self.step, "wall_time_s": wall, **(state or {})})
        write_json(os.path.join(tmp, META), {"method": self.method, "update": self.step, "wall_time_s": wall,
                                             **(meta or {})})
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        self.last_checkpoint = path
        if self.keep_checkpoints > 0:
            for old in checkpoint_dirs(self.dir)[: -self.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def restore(self, opt) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """Load the optimizer, RNG, count and wall time of :attr:`resume_from`, cut the log back to it and record
        the resume; returns its (train_state.json, train_state.pt) for the run's own state."""
        if self.resume_from is None:
            raise RuntimeError("restore: no checkpoint to resume from")
        state, tensors = read_train_state(self.resume_from)
        opt.load_state_dict(tensors["optimizer"])
        torch.set_rng_state(tensors["torch_rng"])
        if torch.cuda.is_available() and tensors.get("cuda_rng"):
            torch.cuda.set_rng_state_all(tensors["cuda_rng"])
        self.step = int(state["step"])
        self._wall_offset = float(state.get("wall_time_s", 0.0))
        self._t0 = time.perf_counter()
        self._cut_log()
        self.event("resume", checkpoint=os.path.basename(self.resume_from))
        return state, tensors

    def _cut_log(self) -> None:
        """Drop the log's records of steps after the checkpoint (they are redone) and any torn line."""
        if not os.path.exists(self.log_path):
            return
        with open(self.log_path) as f:
            keep = [line for line in f if line.strip() and self._count_of(line) <= self.step]
        with open(self.log_path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(self.log_path + ".tmp", self.log_path)

    def _count_of(self, line: str) -> int:
        try:
            return int(json.loads(line).get(self.counter, 0))
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
            return 1 << 60  # a torn line: dropped

    # --- the loop --------------------------------------------------------------------------
    def loop(self, stop_at: Optional[int] = None, seed: Optional[Callable[[int], int]] = None) -> Iterator[int]:
        """Steps ``step + 1 ..`` to ``total`` (or ``stop_at``, as an interruption would), with the progress bar;
        ``seed(n)`` reseeds torch before step n (dropout draws the same after a resume). Each step ends with
        :meth:`done`."""
        self.end = self.total if stop_at is None else min(self.total, int(stop_at))
        self._bar = tqdm(total=self.total, initial=self.step, unit=self.counter, desc=self.desc,
                         disable=not self.progress, dynamic_ncols=True, file=sys.stderr)
        try:
            while self.step < self.end:
                n = self.step + 1
                if seed is not None:
                    torch.manual_seed(seed(n))
                yield n
                if self.step != n:
                    raise RuntimeError(f"{self.counter} {n} ended without trainer.done({n})")
                self._bar.update(1)
        finally:
            self._bar.close()
            self._bar = None

    def done(self, n: int, record: Optional[Mapping[str, Any]] = None) -> bool:
        """End step ``n``: log ``record`` (if any); True when a checkpoint is due after it."""
        self.step = int(n)
        if record:
            self.log(record)
        return self.due(n)

    def due(self, n: int) -> bool:
        return n % self.save_every == 0 or n == self.total or n == self.end

    # --- the NaN guard ---------------------------------------------------------------------
    def backward(self, loss, what: str = "loss") -> None:
        try:
            backward(loss, what)
        except NonFiniteError as e:
            self.diverge(str(e))

    def optimizer_step(self, opt, loss=None) -> float:
        """One optimiser step (:func:`~vla_forget.training.optimizer_step`); NaN/inf -> :class:`Diverged`."""
        try:
            return optimizer_step(opt, loss, self.grad_clip)
        except NonFiniteError as e:
            self.diverge(str(e))
            raise  # unreachable

    def diverge(self, message: str) -> None:
        last = self.last_checkpoint
        msg = (f"training diverged at {self.counter} {self.step + 1}: {message}. Stopped before the optimiser step; "
               f"the last good checkpoint is {last}. Lower --lr or --grad-clip and start again.")
        self.event("diverged", message=message, last_checkpoint=last)
        raise Diverged(msg, last)
