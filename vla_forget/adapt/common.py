"""Shared plumbing of the adaptation methods.

The CLI's options and their resume (the configs themselves, one class per
method, are in :mod:`vla_forget.adapt.configs`), the run folder and its checkpoints (:class:`Run`),
exact resume, the KL-to-base penalty (:class:`KLPenalty`), the NaN guard
(:func:`optimizer_step`), rewards and seeds. The methods' loops live in their
own files (``ppo.py``, ``reinforce.py``, ``grpo.py``, ``sft.py``,
``iterative_sft.py``, ``rl_trace_sft.py``); rollouts in ``rollouts.py``.

Determinism and resume: every random draw of update ``u`` comes from
generators seeded by ``(seed, u, ...)`` (:func:`derive_seed`) — env seeds,
sampling, minibatch order, SFT batches, KL prefixes — and the global torch
RNG (dropout) is re-seeded at the start of each update. A run resumed from
the checkpoint after update ``u`` therefore repeats exactly what the
uninterrupted run did from ``u + 1`` on: same weights, bit for bit, on the
same machine. The checkpoint also stores the optimizer, the value head and the
RNG states (``train_state.pt``).

This module imports torch only inside functions, so that the CLI can build
its parser from it without importing torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from vla_forget.jsonio import append_jsonl, write_json
from vla_forget.adapt import CHECKPOINTS_DIR, META, METHODS, checkpoint_name, list_checkpoints
from vla_forget.adapt.configs import (REWARDS, AdaptConfig, RolloutConfig, config_dict, hparams,  # noqa: F401
                                      make_config, methods_with)
from vla_forget.errors import VlaForgetError
from vla_forget.registry import unversioned
from vla_forget.runfolder import RunFolder, RunKind
from vla_forget.training import Diverged, NonFiniteError, backward, optimizer_step  # noqa: F401 (the methods' names)

RUN_JSON = "run.json"
LOG = "log.jsonl"
EVENTS = "events.jsonl"
TRAIN_STATE = "train_state.pt"
ROLLOUT_WEIGHTS = "rollout_weights.pt"
#: training seeds stay below this (evaluation seeds start there)
TRAIN_SEED_LIMIT = 100_000


class AdaptError(VlaForgetError, RuntimeError):
    """An adaptation run that cannot start or continue; the message says what to do."""


# --------------------------------------------------------------------------
# the config (one class per method: vla_forget.adapt.configs)

#: fields a resumed run may change
VOLATILE = ("updates", "save_every", "out", "progress", "device", "threads", "workers")
#: adaptation run folders (their settings in ``run.json``): what a resume may change
RUN_KIND = RunKind("adapt", "an adaptation run", RUN_JSON, changeable=VOLATILE, error=AdaptError)


def _absolute_data(spec: str) -> str:
    """``PATH[:WEIGHT]`` with PATH made absolute, so that a resume from another folder finds the data."""
    from vla_forget.bc import parse_data_spec

    path, _ = parse_data_spec(spec)
    if not os.path.exists(path):
        return spec  # reported by the dataset checks
    return os.path.abspath(path) + spec[len(path):]


def resolve(cfg: AdaptConfig) -> AdaptConfig:
    """Check the values (each method's :meth:`~AdaptConfig.problems`) and make paths absolute; raises AdaptError."""
    if not cfg.method or METHODS.get(cfg.method) is None or type(cfg) is not METHODS[cfg.method].config:
        raise AdaptError(f"{type(cfg).__name__} is not the config of an adaptation method; build one with "
                         f"make_config(METHOD, ...) (methods: {', '.join(METHODS)})")
    changes: Dict[str, Any] = {}
    if hasattr(cfg, "data"):
        changes["data"] = [_absolute_data(d) for d in cfg.data]
    if getattr(cfg, "traces", None):
        changes["traces"] = os.path.abspath(cfg.traces)
    cfg = dataclasses.replace(cfg, **changes)
    problems = cfg.problems()
    if problems:
        raise AdaptError("; ".join(problems))
    return cfg


def add_config_arguments(parser) -> None:
    """The options of `vla-forget adapt`: one per field of every method's config (``--kl-coef`` for ``kl_coef``),
    help from the field docs (:func:`vla_forget.config.add_config_arguments`). The fields every method has come
    first; each other option says the methods it applies to, and a default that differs by method is given per
    method.

    Every option but the required ones parses to None when it is not given, so that :func:`config_from_args`
    can tell a given option from a default: a resumed run takes the options not given from its run.json."""
    from vla_forget.config import add_config_arguments as add_fields

    parser.add_argument("--method", required=True, choices=list(METHODS),
                        help=f"adaptation method: {', '.join(METHODS)}")
    defaults: Dict[str, Dict[str, Any]] = {}
    for name, m in METHODS.items():
        for f in dataclasses.fields(m.config):
            defaults.setdefault(f.name, {})[name] = m.defaults.get(f.name)
    shown = {k: "per method, " + ", ".join(f"{m} {v}" for m, v in d.items())
             for k, d in defaults.items() if len({repr(v) for v in d.values()}) > 1}
    common = {f.name for f in dataclasses.fields(AdaptConfig)}
    add_fields(parser, AdaptConfig, required=("base", "out"), unset_is_none=True, shown_defaults=shown)
    group = parser.add_argument_group("options of some methods", "[the methods each applies to]")
    seen = set(common)
    for name, m in METHODS.items():
        new = [f.name for f in dataclasses.fields(m.config) if f.name not in seen]
        seen.update(new)
        lists = {f.name: "PATH" for f in dataclasses.fields(m.config) if str(f.type).startswith("List")}
        add_fields(group, m.config, skip=[f.name for f in dataclasses.fields(m.config) if f.name not in new],
                   choices={"reward": REWARDS}, metavars=lists, unset_is_none=True, shown_defaults=shown,
                   notes={k: f"[{', '.join(methods_with(k))}]" for k in new})


def saved_run_config(out: str) -> Optional[Dict[str, Any]]:
    """The configuration an adaptation run in ``out`` was started with (its run.json), or None without one."""
    path = os.path.join(out, RUN_JSON)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return dict(json.load(f)["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AdaptError(f"--resume: cannot read {path} ({e}); pass every option of the run again, or choose "
                         "another --out") from None


def config_from_args(args, saved: Optional[Dict[str, Any]] = None) -> AdaptConfig:
    """The config of parsed ``vla-forget adapt`` arguments: an option not given takes the run's saved value
    (``saved``: the run.json config of the run being resumed) or else the method's default. So ``adapt --resume``
    continues a run with its own settings, whatever the defaults of the installed version. An option given
    that the method does not have is refused (AdaptError)."""
    cls = METHODS[args.method].config
    names = [f.name for f in dataclasses.fields(cls)]
    foreign = ["--" + k.replace("_", "-") for k in sorted(set().union(*(
        {f.name for f in dataclasses.fields(m.config)} for m in METHODS.values())) - set(names))
               if getattr(args, k, None) is not None]
    if foreign:
        raise AdaptError(f"{', '.join(foreign)}: not {'an option' if len(foreign) == 1 else 'options'} of "
                         f"--method {args.method} (see vla-forget adapt --help: each option says the methods it "
                         "applies to)")
    kw: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is None and saved is not None and f.name in saved:
            v = saved[f.name]
        if v is None and f.default is not dataclasses.MISSING:
            v = f.default
        if v is None and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            v = f.default_factory()  # type: ignore[misc]
        kw[f.name] = v
    return cls(**kw)


# --------------------------------------------------------------------------
# seeds, rewards, targets

def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (e.g. (seed, update, "minibatches", epoch))."""
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(*parts: Any, device: str = "cpu"):
    import torch

    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


def train_seeds(start: int, update: int, n: int) -> List[int]:
    """Env seeds of update ``update`` (1-based): ``n`` fresh seeds per update from ``start``, below TRAIN_SEED_LIMIT."""
    span = TRAIN_SEED_LIMIT - start
    return [start + ((update - 1) * n + i) % span for i in range(n)]


def sampling_seeds(seed: int, update: int, n: int) -> List[int]:
    """Generator seeds of the policy's sampling for the ``n`` episodes of update ``update``."""
    return [derive_seed(seed, update, "sample", i) for i in range(n)]


def episode_rewards(success: np.ndarray, dense: np.ndarray, mode: str) -> np.ndarray:
    """Per-step rewards ``[E, T]`` from success flags and dense rewards (see AdaptConfig.reward)."""
    E, T = success.shape
    if mode == "success":
        r = np.zeros((E, T), np.float32)
        r[:, -1] = success[:, -1]
        return r
    if mode == "dense":
        return (np.asarray(dense, np.float32) / T).astype(np.float32)
    raise AdaptError(f"unknown reward {mode!r}; rewards: {', '.join(REWARDS)}")


def resolve_task(cfg: AdaptConfig):
    """(task id, Target spec) of ``cfg.task``; refuses a task of ``cfg.battery`` unless allowed."""
    from vla_forget.spec import load_battery, load_target

    battery = load_battery(cfg.battery)
    ref = cfg.task or battery.target
    if not ref:
        raise AdaptError(f"--task: battery {battery.full_id} names no default target; give --task")
    target = load_target(ref)
    task = target.task.task
    # the same task at another version (PickCube-v1 against a battery of PickCube-v2) is the same skill
    same = [t for t in battery.task_ids if unversioned(t) == unversioned(task)]
    if same:
        task_desc = task if same == [task] else f"{task} (as {same[0]})"
        if not cfg.allow_battery_task:
            raise AdaptError(
                f"target task {task_desc} is in the battery {battery.full_id}: adapting on it makes its forgetting "
                f"meaningless. Choose a task outside the battery (its target is {battery.target}), or pass "
                "--allow-battery-task if you know why")
        msg = (f"\n{'!' * 78}\n!! --allow-battery-task: {task_desc} is in the battery {battery.full_id}; forgetting and "
               f"gain\n!! measured on {battery.full_id} after this adaptation are MEANINGLESS for {task}.\n{'!' * 78}")
        print(msg, file=sys.stderr)
        warnings.warn(f"adapting on battery task {task}: forgetting on {battery.full_id} is meaningless", stacklevel=2)
    return task, target


# --------------------------------------------------------------------------
# policies, optimiser steps, losses shared by methods

def trainable_parameters(policy) -> List[Any]:
    """``policy.trainable_parameters()`` where the policy has it (LoRA adapters), else every parameter."""
    if hasattr(policy, "trainable_parameters"):
        params = list(policy.trainable_parameters())
    else:
        params = list(policy.parameters())
    if not params:
        raise AdaptError(f"{type(policy).__name__} has no trainable parameters")
    return params


def policy_tokenizer(policy):
    """The policy's action tokenizer (its statistics turn demonstrations into tokens)."""
    tok = getattr(policy, "tokenizer", None)
    if tok is None or not hasattr(tok, "encode"):
        raise AdaptError(f"{type(policy).__name__} exposes no action tokenizer (policy.tokenizer): SFT needs one to "
                         "turn demonstrated actions into tokens")
    return tok


def clipped_surrogate(logp, old_logp, adv, clip: float):
    """PPO's clipped objective as a loss: ``mean(max(-A r, -A clip(r, 1-c, 1+c)))``, ``r = exp(logp - old_logp)``.

    Returns (loss, ratio). With one gradient step per batch the ratio is 1 and
    the gradient is the plain policy gradient ``-mean(A grad logp)``.
    """
    import torch

    ratio = torch.exp(logp - old_logp)
    loss = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)).mean()
    return loss, ratio


def logp_and_entropy(policy, obs, tokens, with_entropy: bool):
    """Joint log-probability ``[B]`` of the 7 tokens (``policy.log_prob``) and, if asked, the summed per-token
    entropy ``[B]`` teacher-forced on the same tokens (one forward pass either way)."""
    import torch

    if not with_entropy:
        return policy.log_prob(obs, tokens), None
    lp = torch.log_softmax(policy.action_logits(obs, tokens).float(), dim=-1)
    logp = lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(-1)
    entropy = -(lp.exp() * lp).sum(-1).sum(-1)
    return logp, entropy


class KLPenalty:
    """``kl_coef * KL(base || policy)`` on a batch of states: RL's Razor's forward KL, chain rule, exact per token.

    For each state a prefix ``a ~ base`` is sampled (no gradient); both policies
    are teacher-forced on it and the 256-way KLs of the 7 tokens are summed
    (:func:`vla_forget.divergences.token_divergences`, the same estimator as
    ``vla-forget bench``). Inactive (nothing computed) when ``coef`` is 0.
    """

    def __init__(self, base, coef: float):
        self.base, self.coef = base, float(coef)

    @property
    def active(self) -> bool:
        return self.coef > 0

    def reference(self, obs, gen) -> Optional[Tuple[Any, Any]]:
        """(base tokens ``[B, 7]``, base logits ``[B, 7, 256]``) sampled on ``obs``; None when inactive."""
        if not self.active:
            return None
        import torch

        with torch.no_grad():
            tokens, logits = self.base.sample_tokens(obs, generator=gen)
        return tokens, logits.float()

    def kl(self, policy, obs, ref):
        """Per-state forward KL ``[B]`` (with gradients into ``policy``)."""
        from vla_forget.divergences import token_divergences

        tokens, base_logits = ref
        logits = policy.action_logits(obs, tokens)
        return token_divergences(base_logits, logits.float(), tokens)["forward"].float()


def chunks(n: int, size: int) -> List[np.ndarray]:
    """``arange(n)`` in consecutive pieces of ``size``."""
    return [np.arange(i, min(n, i + size)) for i in range(0, n, size)]


def slice_ref(ref, idx):
    return None if ref is None else (ref[0][idx], ref[1][idx])


def cat_refs(refs: List[Any]):
    import torch

    if not refs or refs[0] is None:
        return None
    return torch.cat([r[0] for r in refs]), torch.cat([r[1] for r in refs])


# --------------------------------------------------------------------------
# demonstrations

def instruction_pattern(template: str) -> "re.Pattern[str]":
    """A task's instruction template (``put the {cube} cube on the {target} target``) as a regex."""
    parts = re.split(r"\{[^}]*\}", template)
    return re.compile("^" + "(.+?)".join(re.escape(p) for p in parts) + "$")


def open_demonstrations(paths: Sequence[str], task: str, policy, option: str = "--data") -> List[Any]:
    """Open RLDS datasets for SFT on ``task``: the action dimension, the tasks and the instructions must match
    (``option`` names where the paths came from, for the messages)."""
    from vla_forget.datasets import DatasetError, open_dataset
    from vla_forget.envs import TASKS

    template = TASKS.get(task).metadata["instruction"]
    pattern = instruction_pattern(template)
    out = []
    for path in paths:
        try:
            ds = open_dataset(path)
        except DatasetError as e:
            raise AdaptError(f"{option} {path}: {e}") from None
        if ds.action_dim != policy.action_dim:
            raise AdaptError(f"{option} {path}: {ds.action_dim}-D actions; the policy and {task} take "
                             f"{policy.action_dim}-D actions")
        tasks = ds.manifest.get("tasks") or []
        if tasks and task not in tasks:
            raise AdaptError(f"{option} {path} holds demonstrations of {', '.join(tasks)}, not of the target task {task}")
        wrong = sorted({s for s in ds.instructions if not pattern.match(s.strip())})
        if wrong:
            raise AdaptError(f"{option} {path}: instructions {wrong[:3]} do not fit {task}'s instruction "
                             f"{template!r}: these are not demonstrations of the target task")
        out.append(ds)
    return out


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
        import torch

        from vla_forget.envs import DEFAULT_IMAGE_SIZE
        from vla_forget.policies import load_policy

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
        existing = list_checkpoints(cfg.out) if resume else []
        self.resume_from: Optional[str] = existing[-1] if existing else None
        self.last_checkpoint: Optional[str] = self.resume_from
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
        if cfg.kl_coef > 0:
            base = load_policy(cfg.base, device=self.device).eval()
            base.requires_grad_(False)
        self.kl = KLPenalty(base, cfg.kl_coef)
        self.update = 0
        self.env_steps = 0
        self.samples_seen = 0
        self._wall_offset = 0.0
        self._t0 = time.perf_counter()
        self._end = 0
        self.before_checkpoint: List[Any] = []  # callables(update), e.g. flushing traces
        self.summary: Dict[str, Any] = {}

    # --- run.json ---------------------------------------------------------------
    def _check_run_json(self, resume: bool) -> None:
        from vla_forget import __version__

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
            folder.refuse(refused)
        folder.write_config(want)

    # --- logs -----------------------------------------------------------------------
    def event(self, name: str, **fields: Any) -> None:
        RunFolder(self.dir, RUN_KIND).event(name, update=self.update, **fields)

    def wall_time(self) -> float:
        return self._wall_offset + (time.perf_counter() - self._t0)

    # --- optimiser and training state --------------------------------------------------
    def optimizer(self, extra_groups: Sequence[Dict[str, Any]] = ()):
        """AdamW over the trainable parameters (lr, weight_decay), plus ``extra_groups`` (e.g. a value head)."""
        import torch

        groups = [{"params": self.params, "lr": self.cfg.lr, "weight_decay": self.cfg.weight_decay}, *extra_groups]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(0.9, 0.999), eps=1e-8)

    def begin(self, opt, value_head=None) -> None:
        """Resume: load the optimizer, value head, RNG and counters of the newest checkpoint and cut the log
        back to it. Fresh run: write checkpoint 0 (the base, as the run starts)."""
        import torch

        if self.resume_from is None:
            self.event("start", task=self.task, base=self.cfg.base, method=self.cfg.method)
            self.checkpoint(opt, value_head)
            return
        state = torch.load(os.path.join(self.resume_from, TRAIN_STATE), map_location="cpu", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        if value_head is not None and state.get("value_head"):
            value_head.load_state_dict(state["value_head"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.update = int(state["update"])
        self.env_steps = int(state["env_steps"])
        self.samples_seen = int(state["samples_seen"])
        self._wall_offset = float(state["wall_time_s"])
        self._t0 = time.perf_counter()
        log = os.path.join(self.dir, LOG)
        if os.path.exists(log):  # records of updates after the checkpoint are redone
            with open(log) as f:
                keep = [line for line in f if line.strip() and _update_of(line) <= self.update]
            with open(log + ".tmp", "w") as f:
                f.writelines(keep)
            os.replace(log + ".tmp", log)
        self.event("resume", checkpoint=os.path.basename(self.resume_from))

    def checkpoint(self, opt, value_head=None) -> str:
        """``checkpoints/update-NNNNNN/``: the policy folder, meta.json and train_state.pt (written, then renamed)."""
        import torch

        for hook in self.before_checkpoint:
            hook(self.update)
        path = os.path.join(self.ckpt_root, checkpoint_name(self.update))
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(self.ckpt_root, exist_ok=True)
        self.policy.save(tmp)
        wall = round(self.wall_time(), 3)
        torch.save({
            "optimizer": opt.state_dict(),
            "value_head": value_head.state_dict() if value_head is not None else {},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "update": self.update, "env_steps": self.env_steps, "samples_seen": self.samples_seen, "wall_time_s": wall,
        }, os.path.join(tmp, TRAIN_STATE))
        _write_json(os.path.join(tmp, META), {
            "method": self.cfg.method, "update": self.update, "env_steps": self.env_steps,
            "samples_seen": self.samples_seen, "wall_time_s": wall, "hparams": hparams(self.cfg),
            "base": self.cfg.base, "task": self.task, "run": os.path.basename(os.path.abspath(self.dir)),
        })
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        self.last_checkpoint = path
        return path

    # --- the loop ----------------------------------------------------------------------
    def loop(self, stop_at: Optional[int] = None) -> Iterator[int]:
        """Update numbers ``self.update + 1 ..`` to ``updates`` (or ``stop_at``, as an interruption would)."""
        import torch
        from tqdm import tqdm

        total = int(self.cfg.updates)
        self._end = total if stop_at is None else min(total, int(stop_at))
        bar = tqdm(total=total, initial=self.update, unit="update", desc=f"adapt {self.cfg.method}",
                   disable=not self.cfg.progress, dynamic_ncols=True, file=sys.stderr)
        self._bar = bar
        try:
            while self.update < self._end:
                u = self.update + 1
                torch.manual_seed(derive_seed(self.cfg.seed, u, "torch"))  # dropout: the same after a resume
                self._t_update = time.perf_counter()
                yield u
                if self.update != u:
                    raise RuntimeError(f"update {u} ended without run.end_update")
                bar.update(1)
        finally:
            bar.close()

    def end_update(self, update: int, record: Dict[str, Any], *, opt, env_steps: int = 0, samples: int = 0,
                   value_head=None) -> None:
        """Count, log one record to log.jsonl, and checkpoint every save_every updates and at the end."""
        self.update = update
        self.env_steps += int(env_steps)
        self.samples_seen += int(samples)
        rec = {"update": update, "env_steps": self.env_steps, "samples_seen": self.samples_seen,
               "wall_s": round(self.wall_time(), 3), "update_s": round(time.perf_counter() - self._t_update, 3),
               **{k: _round(v) for k, v in record.items()}}
        _append(os.path.join(self.dir, LOG), rec)
        self.summary = rec
        shown = {k: rec[k] for k in ("success_rate", "loss") if k in rec}
        if shown and getattr(self, "_bar", None) is not None:
            self._bar.set_postfix(shown)
        if update % int(self.cfg.save_every) == 0 or update == int(self.cfg.updates) or update == self._end:
            self.checkpoint(opt, value_head)

    def backward(self, loss, what: str = "loss") -> None:
        try:
            backward(loss, what)
        except NonFiniteError as e:
            self.diverge(str(e))

    def step(self, opt, loss=None) -> float:
        """One optimiser step (see :func:`optimizer_step`); NaN/inf -> :class:`Diverged`."""
        try:
            return optimizer_step(opt, loss, self.cfg.grad_clip)
        except NonFiniteError as e:
            self.diverge(str(e))
            raise  # unreachable

    def diverge(self, message: str) -> None:
        last = self.last_checkpoint
        msg = (f"training diverged at update {self.update + 1}: {message}. Stopped before the optimiser step; the last "
               f"good checkpoint is {last}. Lower --lr or --grad-clip and start again.")
        self.event("diverged", message=message, last_checkpoint=last)
        raise Diverged(msg, last)

    def finish(self) -> Dict[str, Any]:
        summary = {"run": self.dir, "method": self.cfg.method, "task": self.task, "updates": self.update,
                   "env_steps": self.env_steps, "samples_seen": self.samples_seen,
                   "wall_s": round(self.wall_time(), 1), "checkpoint": self.last_checkpoint,
                   "checkpoints": len(list_checkpoints(self.dir)), "last": self.summary}
        self.event("done", **{k: v for k, v in summary.items() if k != "last"})
        return summary


def _update_of(line: str) -> int:
    try:
        return int(json.loads(line).get("update", 0))
    except (json.JSONDecodeError, TypeError, ValueError):
        return 1 << 60  # a torn line: dropped


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, (np.floating, np.integer)):
        return _round(v.item())
    return v


def _append(path: str, rec: Dict[str, Any]) -> None:
    append_jsonl(path, rec)


def _write_json(path: str, data: Any) -> None:
    write_json(path, data)
