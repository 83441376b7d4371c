"""The run of an adaptation method: its folder, checkpoints, exact resume, optimiser and log (:class:`Run`).

Every method's training function makes one ``Run`` and drives its loop; see :mod:`vla_forget.adapt` for the run
folder's layout and :mod:`vla_forget.adapt.common` for determinism and resume.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from vla_forget import __version__
from vla_forget.adapt import CHECKPOINTS_DIR, METHODS, list_checkpoints
from vla_forget.adapt.common import (LOG, RUN_KIND, AdaptError, KLPenalty, derive_seed, resolve, resolve_task,
                                     trainable_parameters)
from vla_forget.adapt.configs import AdaptConfig, RolloutConfig, config_dict, hparams
from vla_forget.envs import DEFAULT_IMAGE_SIZE
from vla_forget.policies import load_policy
from vla_forget.runfolder import RunFolder
from vla_forget.trainer import Trainer, adamw, decay_factor

# --------------------------------------------------------------------------
# the run folder

class Run:
    """A run folder and the state of training in it (see the package docstring for the layout).

    Use: ``run = Run(cfg, resume=...)``, make the optimizer with
    :meth:`optimizer`, call :meth:`begin` (resume state, or checkpoint 0), then
    ``for update in run.loop(): ...; run.end_update(update, record, ...)`` and
    :meth:`finish`. NaN/inf: :meth:`step` / :meth:`backward` raise
    :class:`Diverged` naming the last good checkpoint, which stays on disk.
    """

    def __init__(self, cfg: AdaptConfig, *, resume: bool = False):
        self.cfg = cfg = resolve(cfg)
        self.task, self.target = resolve_task(cfg)
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise AdaptError("--device cuda: CUDA is not available on this machine (use --device cpu)")
        if isinstance(cfg, RolloutConfig):
            declared = getattr(load_policy(cfg.base), "input_image_size", None)
            if cfg.image_size is None:  # the base's own input size, saved in run.json as a number
                cfg.image_size = int(declared) if declared else DEFAULT_IMAGE_SIZE
            elif declared and int(declared) != cfg.image_size:
                print(f"warning: {cfg.base} takes {declared} px images but the rollouts render at --image-size "
                      f"{cfg.image_size}; it sees them rescaled", file=sys.stderr)
            if cfg.num_envs > 1 and not torch.cuda.is_available():
                raise AdaptError(f"--num-envs {cfg.num_envs} needs ManiSkill's GPU physics (CUDA); on the CPU use "
                                 "--num-envs 1 and --workers N (one simulator per process)")
        torch.set_num_threads(int(cfg.threads))
        self.dir = cfg.out
        self.device = cfg.device
        self.ckpt_root = os.path.join(cfg.out, CHECKPOINTS_DIR)
        self._check_run_json(resume)
        self.trainer = Trainer(cfg.out, RUN_KIND, log_name=LOG, counter="update", total=cfg.updates,
                               save_every=cfg.save_every, method=cfg.method, grad_clip=cfg.grad_clip,
                               progress=cfg.progress, desc=f"adapt {cfg.method}", resume=resume,
                               device=cfg.device)
        self.resume_from: Optional[str] = self.trainer.resume_from
        policy = load_policy(self.resume_from or cfg.base, device=self.device)
        if cfg.lora_rank > 0:  # the hook for transformer policies (peft); full fine-tuning otherwise
            if not hasattr(policy, "enable_lora"):
                raise AdaptError(f"--lora-rank {cfg.lora_rank}: {type(policy).__name__} has no LoRA support "
                                 "(policy.enable_lora); use full fine-tuning (--lora-rank 0)")
            policy.enable_lora(rank=cfg.lora_rank)
        self.policy = policy.to(self.device)
        self.params = trainable_parameters(self.policy)
        for p in self.policy.parameters():
            p.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)
        base = None
        if cfg.kl_coef > 0 or getattr(cfg, "kl_log_states", 0) > 0:
            base = load_policy(cfg.base, device=self.device).eval()
            base.requires_grad_(False)
        self.kl = KLPenalty(base, cfg.kl_coef)
        self.env_steps = 0
        self.samples_seen = 0
        self.before_checkpoint = self.trainer.before_checkpoint  # callables(update), e.g. flushing traces
        self.summary: Dict[str, Any] = {}
        self._opt, self._base_lrs = None, []  # the optimiser and its groups' lrs before any schedule

    @property
    def update(self) -> int:
        """Updates done (the trainer's count)."""
        return self.trainer.step

    @property
    def last_checkpoint(self) -> Optional[str]:
        return self.trainer.last_checkpoint

    # --- run.json ---------------------------------------------------------------
    def _check_run_json(self, resume: bool) -> None:
        cfg = self.cfg
        folder = RunFolder(cfg.out, RUN_KIND)
        want = {"method": cfg.method, "base": cfg.base, "task": self.task, "config": config_dict(cfg),
                "vla_forget_version": __version__}
        # a run.json without checkpoints is a run that stopped before its first one (bad --data, say):
        # nothing to keep, so it starts afresh unless --resume asks to check its settings
        if folder.has_config() and (resume or list_checkpoints(cfg.out)):
            folder.refuse_unless_resume(resume)
            have = folder.read_config()
            # a field added after the run was started counts with its default
            defaults = METHODS[cfg.method].defaults
            _, refused = folder.resume_changes(want["config"], have.get("config", {}), defaults=defaults)
            if have.get("method") != cfg.method:
                refused.insert(0, f"method: {have.get('method')!r} -> {cfg.method!r}")
            started_updates = have.get("config", {}).get("updates", cfg.updates)
            if cfg.lr_schedule != "constant" and started_updates != cfg.updates:
                # a decaying schedule is stretched over --updates: a new count would change every later lr
                refused.append(f"updates: {started_updates!r} -> {cfg.updates!r} (the {cfg.lr_schedule} "
                               "learning-rate schedule decays over --updates; to train further, start a new run "
                               "from the last checkpoint with --base)")
            folder.refuse(refused)
        folder.write_config(want)

    # --- logs -----------------------------------------------------------------------
    def event(self, name: str, **fields: Any) -> None:
        self.trainer.event(name, **fields)

    def wall_time(self) -> float:
        return self.trainer.wall_time()

    # --- optimiser and training state --------------------------------------------------
    def optimizer(self, extra_groups: Sequence[Dict[str, Any]] = ()):
        """AdamW over the trainable parameters (lr, weight_decay), plus ``extra_groups`` (e.g. a value head)."""
        names = {id(p): n for n, p in self.policy.named_parameters()}
        return adamw([(names.get(id(p), ""), p) for p in self.params], lr=self.cfg.lr,
                     weight_decay=self.cfg.weight_decay, extra_groups=extra_groups)

    def begin(self, opt, value_head=None) -> None:
        """Resume: load the optimizer, value head, RNG and counters of the newest checkpoint and cut the log
        back to it. Fresh run: write checkpoint 0 (the base, as the run starts)."""
        self._opt = opt
        self._base_lrs = [g["lr"] for g in opt.param_groups]  # --lr (and a value head's) before any schedule
        if self.resume_from is None:
            self.event("start", task=self.task, base=self.cfg.base, method=self.cfg.method)
            self.checkpoint(opt, value_head)
            return
        state, tensors = self.trainer.restore(opt)
        if value_head is not None and tensors.get("value_head"):
            value_head.load_state_dict(tensors["value_head"])
        self.env_steps = int(state["env_steps"])
        self.samples_seen = int(state["samples_seen"])

    def checkpoint(self, opt, value_head=None) -> str:
        """``checkpoints/update-NNNNNN/``: the policy folder, meta.json and the training state (see
        :mod:`vla_forget.trainer`)."""
        counters = {"env_steps": self.env_steps, "samples_seen": self.samples_seen}
        return self.trainer.save(
            self.policy, opt, tensors={"value_head": value_head.state_dict() if value_head is not None else {}},
            state=counters,
            meta={**counters, "hparams": hparams(self.cfg), "base": self.cfg.base, "task": self.task,
                  "run": os.path.basename(os.path.abspath(self.dir))})

    # --- the learning-rate schedule ------------------------------------------------------
    @property
    def lr(self) -> float:
        """The policy's learning rate of the update under way (--lr-schedule)."""
        return self.cfg.lr * lr_factor(self.cfg, self.update + 1)

    def _set_lr(self, update: int) -> None:
        """Every optimiser group at its own base lr times the schedule's factor (also after a restore, which
        loaded the lrs saved with the checkpoint)."""
        factor = lr_factor(self.cfg, update)
        if self._opt is not None:
            for g, lr in zip(self._opt.param_groups, self._base_lrs):
                g["lr"] = lr * factor

    # --- the loop ----------------------------------------------------------------------
    def loop(self, stop_at: Optional[int] = None) -> Iterator[int]:
        """Update numbers ``self.update + 1 ..`` to ``updates`` (or ``stop_at``, as an interruption would)."""
        self._t_update = time.perf_counter()

        def seed(u: int) -> int:  # dropout: the same after a resume
            self._t_update = time.perf_counter()
            self._set_lr(u)
            return derive_seed(self.cfg.seed, u, "torch")

        return self.trainer.loop(stop_at, seed=seed)

    def end_update(self, update: int, record: Dict[str, Any], *, opt, env_steps: int = 0, samples: int = 0,
                   value_head=None, traj=None) -> None:
        """Count, log one record to log.jsonl, and checkpoint every save_every updates and at the end. ``traj``:
        the update's rollouts, on whose states the forward KL to the base is measured (``kl_log_states``)."""
        n_kl = int(getattr(self.cfg, "kl_log_states", 0))
        if traj is not None and n_kl > 0:
            idx = np.unique(np.linspace(0, traj.num_steps - 1, min(n_kl, traj.num_steps)).round().astype(np.int64))
            gen = torch.Generator(device=self.device).manual_seed(derive_seed(self.cfg.seed, update, "kl-log"))
            mean, se = self.kl.measure(self.policy, traj.observation(idx, self.device), gen)
            record = {**record, "kl_to_base_after": mean, "kl_to_base_after_se": se}
        self.env_steps += int(env_steps)
        self.samples_seen += int(samples)
        rec = {"update": update, "env_steps": self.env_steps, "samples_seen": self.samples_seen,
               "wall_s": round(self.wall_time(), 3), "update_s": round(time.perf_counter() - self._t_update, 3),
               **{k: _round(v) for k, v in record.items()}}
        self.summary = rec
        self.trainer.show(**{k: rec[k] for k in ("success_rate", "loss") if k in rec})
        if self.trainer.done(update, rec):
            self.checkpoint(opt, value_head)

    def backward(self, loss, what: str = "loss") -> None:
        self.trainer.backward(loss, what)

    def step(self, opt, loss=None) -> float:
        """One optimiser step (see :func:`optimizer_step`); NaN/inf -> :class:`Diverged`."""
        return self.trainer.optimizer_step(opt, loss)

    def finish(self) -> Dict[str, Any]:
        summary = {"run": self.dir, "method": self.cfg.method, "task": self.task, "updates": self.update,
                   "env_steps": self.env_steps, "samples_seen": self.samples_seen,
                   "wall_s": round(self.wall_time(), 1), "checkpoint": self.last_checkpoint,
                   "checkpoints": len(list_checkpoints(self.dir)), "last": self.summary}
        self.event("done", **{k: v for k, v in summary.items() if k != "last"})
        return summary


def lr_factor(cfg: AdaptConfig, update: int) -> float:
    """The learning rate of update ``update`` (1-based) as a fraction of --lr: ``cfg.lr_schedule`` over
    ``cfg.updates``, from 1 at the first update to ``cfg.min_lr_ratio`` at the last."""
    t = (update - 1) / (cfg.updates - 1) if cfg.updates > 1 else 0.0
    return decay_factor(cfg.lr_schedule, t, cfg.min_lr_ratio)


def _round(v: Any) -> Any:
    """Six decimals, or six significant digits below 1 (a learning rate of 2.325e-5 stays that)."""
    if isinstance(v, float):
        return float(f"{v:.6g}") if abs(v) < 1 else round(v, 6)
    if isinstance(v, (np.floating, np.integer)):
        return _round(v.item())
    return v
