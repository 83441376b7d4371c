"""Shared plumbing of the adaptation methods.

The CLI's options and their resume (the configs themselves, one class per
method, are in :mod:`vla_forget.adapt.configs`), the checks of a config and its
target, seeds, rewards, the KL-to-base penalty (:class:`KLPenalty`) and the
losses the methods share. The run folder, its checkpoints and exact resume are
:class:`vla_forget.adapt.run.Run`. The methods' loops live in their
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
import sys
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vla_forget.adapt import METHODS
from vla_forget.adapt.configs import (REWARDS, AdaptConfig, RolloutConfig, config_dict, hparams,  # noqa: F401
                                      make_config, methods_with, option_names)
from vla_forget.errors import VlaForgetError
from vla_forget.registry import unversioned
from vla_forget.runfolder import RunKind
from vla_forget.training import Diverged, NonFiniteError, backward, optimizer_step  # noqa: F401 (the methods' names)

RUN_JSON = "run.json"
LOG = "log.jsonl"
EVENTS = "events.jsonl"
ROLLOUT_WEIGHTS = "rollout_weights.pt"
#: training seeds stay below this (evaluation seeds start there)
TRAIN_SEED_LIMIT = 100_000


class AdaptError(VlaForgetError, RuntimeError):
    """An adaptation run that cannot start or continue; the message says what to do."""


# --------------------------------------------------------------------------
# the config (one class per method: vla_forget.adapt.configs)

#: fields a resumed run may change
VOLATILE = ("updates", "save_every", "out", "progress", "device", "threads", "workers", "executor", "ray_address")
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
    foreign = ["--" + k.replace("_", "-") for k in sorted(set(option_names()) - set(names))
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


def logp_and_entropy(policy, obs, tokens, with_entropy: bool, per_token: bool = False, temperature: float = 1.0):
    """Joint log-probability ``[B]`` of the 7 tokens (``policy.log_prob``) and, if asked, the summed per-token
    entropy ``[B]`` teacher-forced on the same tokens (one forward pass either way). ``per_token``: the
    log-probability of each token given its prefix, ``[B, 7]``, instead of the joint one (their sum).
    ``temperature``: of the distribution the rollouts sampled from (logits / temperature)."""
    import torch

    if not (with_entropy or per_token or temperature != 1.0):
        return policy.log_prob(obs, tokens), None
    lp = torch.log_softmax(policy.action_logits(obs, tokens).float() / temperature, dim=-1)
    logp = lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(lp.exp() * lp).sum(-1).sum(-1) if with_entropy else None
    return (logp if per_token else logp.sum(-1)), entropy


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

    def measure(self, policy, obs, gen) -> Tuple[float, float]:
        """Mean and standard error of the forward KL of ``policy`` on ``obs`` (no gradient); needs the base
        loaded, whatever the coefficient."""
        import torch

        with torch.no_grad():
            tokens, logits = self.base.sample_tokens(obs, generator=gen)
            kl = self.kl(policy, obs, (tokens, logits.float()))
        n = int(kl.numel())
        return float(kl.mean()), (float(kl.std()) / n ** 0.5 if n > 1 else float("nan"))

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
