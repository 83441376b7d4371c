"""The adaptation methods' configs: one dataclass per method, and the table of methods.

:class:`AdaptConfig` holds the fields every method has (base, target, updates, learning rate, KL penalty,
seed, device); :class:`RolloutConfig` adds those of the methods that learn from their own rollouts (:class:`RLConfig`: from
their rewards, the RL methods); each
method's class adds its own hyper-parameters and its own defaults (``updates``, ``save_every``, ``lr``) and
is registered with :func:`method`, which names the function that trains it::

    @method("my-method", "vla_forget.adapt.my_method:train")
    @dataclass
    class MyMethodConfig(RolloutConfig):
        updates: int = 40
        step_size: float = 0.1
        \"\"\"my-method: what the step size does\"\"\"

A new method is therefore its training file and its config class here. ``vla-forget adapt`` takes the
options of every method (each field's doc under it is its help; an option of another method than ``--method``
is refused), ``run.json`` saves the method's config, and every checkpoint's ``meta.json`` records its
hyper-parameters (:func:`hparams`: its fields but the operational ones).

Light: no torch (the CLI builds its parser from these classes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type

from vla_forget.spec import DEFAULT_BATTERY

REWARDS = ("success", "dense")
LR_SCHEDULES = ("constant", "linear", "cosine")
#: fields that say where and how a run executes, not what it learns: not recorded as hyper-parameters
OPERATIONAL = ("base", "out", "task", "battery", "allow_battery_task", "device", "threads", "progress", "workers",
               "num_envs", "save_traces", "kl_log_states", "executor", "ray_address")


@dataclass(frozen=True)
class Method:
    """One adaptation method: its name, the function that trains it and its config class (see the module's
    docstring)."""

    name: str
    entry: str
    """``"module:function"``: ``function(cfg, *, resume, stop_at)`` trains and returns the run's summary"""
    config: Type["AdaptConfig"]

    @property
    def rl(self) -> bool:
        """A reinforcement-learning method: learns from the rewards of its own rollouts, and can keep the
        successful ones as traces (for rl-trace-sft)."""
        return issubclass(self.config, RLConfig)

    @property
    def hparams(self) -> Tuple[str, ...]:
        return hparam_names(self.config)

    @property
    def defaults(self) -> Dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(self.config) if f.default is not dataclasses.MISSING}


#: every adaptation method, in the order the CLI lists them
METHODS: Dict[str, Method] = {}


def method(name: str, entry: str):
    """Class decorator: register a config class as the config of method ``name``, trained by ``entry``."""

    def register(cls):
        if name in METHODS:
            raise ValueError(f"adaptation method {name!r} is registered twice")
        cls.method = name
        METHODS[name] = Method(name, entry, cls)
        return cls

    return register


def hparam_names(cls) -> Tuple[str, ...]:
    """The fields of a method's config that are hyper-parameters (all but :data:`OPERATIONAL`)."""
    skip = set(OPERATIONAL) | set(getattr(cls, "not_hparams", ()))
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in skip)


def hparams(cfg: "AdaptConfig") -> Dict[str, Any]:
    """The hyper-parameters of a run (recorded in every checkpoint's meta.json)."""
    return {k: getattr(cfg, k) for k in hparam_names(type(cfg))}


def config_dict(cfg: "AdaptConfig") -> Dict[str, Any]:
    """A config as run.json saves it: ``{"method": ..., field: value, ...}``."""
    return {"method": cfg.method, **dataclasses.asdict(cfg)}


def make_config(method_name: str, **fields: Any) -> "AdaptConfig":
    """The config of method ``method_name`` with ``fields`` (the others at the method's defaults); an unknown
    method or a field the method does not have raises ValueError naming the valid ones."""
    if method_name not in METHODS:
        raise ValueError(f"unknown adaptation method {method_name!r}; methods: {', '.join(METHODS)}")
    cls = METHODS[method_name].config
    names = {f.name for f in dataclasses.fields(cls)}
    fields.pop("method", None)
    foreign = sorted(set(fields) - names)
    if foreign:
        raise ValueError(f"{method_name} has no option {', '.join(foreign)} (its options: {', '.join(sorted(names))})")
    return cls(**fields)


def option_names(method_name: Optional[str] = None) -> List[str]:
    """The fields of ``method_name``'s config, or of any method's (in the order the CLI lists them)."""
    configs = [METHODS[method_name].config] if method_name else [m.config for m in METHODS.values()]
    return list(dict.fromkeys(f.name for cls in configs for f in dataclasses.fields(cls)))


def methods_with(name: str) -> List[str]:
    """The methods whose config has the field ``name``."""
    return [m for m, meth in METHODS.items() if name in {f.name for f in dataclasses.fields(meth.config)}]


def _positive(cfg, names, problems: List[str]) -> None:
    for name in names:
        v = getattr(cfg, name)
        if v is not None and int(v) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1 (got {v})")


# --------------------------------------------------------------------------
# the fields every method has

@dataclass
class AdaptConfig:
    """What every adaptation run has (pure data; saved in run.json). Each method extends it (see the module)."""

    method: ClassVar[str] = ""
    #: fields of the class that are not hyper-parameters besides :data:`OPERATIONAL`
    not_hparams: ClassVar[Tuple[str, ...]] = ()

    base: str
    """base policy: a registered id or a checkpoint folder (the starting point, and the KL reference)"""
    out: str
    """run folder"""
    task: Optional[str] = None
    """target: a target spec id (place-cube-on-target-v2), its YAML file or a task id (default: the battery's target)"""
    battery: str = DEFAULT_BATTERY
    """held-out battery (id or YAML); a target task inside it is refused"""
    allow_battery_task: bool = False
    """adapt on a task of the battery anyway (its forgetting is then meaningless)"""
    updates: int = 40
    """updates to run (RL: one rollout batch each; SFT: one optimiser step; iterative SFT: one round)"""
    save_every: int = 5
    """write a checkpoint every this many updates (and after the last)"""
    lr: float = 3e-5
    """AdamW learning rate of the policy (at the first update; see lr_schedule)"""
    lr_schedule: str = "constant"
    """constant, or linear / cosine decay from --lr at the first update to --lr * --min-lr-ratio at the last
    (every optimiser group, a value head's included)"""
    min_lr_ratio: float = 0.1
    """with a decaying --lr-schedule: the last update's learning rate as a fraction of --lr (> 0, at most 1)"""
    weight_decay: float = 0.0
    """AdamW weight decay of the policy"""
    grad_clip: float = 1.0
    """clip the gradient's global norm to this (0: no clipping)"""
    kl_coef: float = 0.0
    """weight of the forward KL(base || policy) penalty, exact per token on the batch's states (0: none)"""
    lora_rank: int = 0
    """LoRA rank for policies that support it (policy.enable_lora; 0: full fine-tuning)"""
    seed: int = 0
    """seed of the policy's sampling, the minibatches and dropout; the env seeds (initial states) of each update
    are the same for every --seed, so runs that differ only in it are paired replicates"""
    device: str = "cpu"
    """device of the policy: cpu or cuda"""
    threads: int = 1
    """torch CPU threads of the trainer (more help only on an otherwise idle machine)"""
    progress: bool = True
    """show a progress bar"""

    def problems(self) -> List[str]:
        """What is wrong with the values, one line each (a method adds its own checks)."""
        out: List[str] = []
        _positive(self, ("updates", "save_every", "threads"), out)
        if self.lora_rank < 0:
            out.append(f"--lora-rank must be >= 0 (got {self.lora_rank})")
        if not self.lr > 0:
            out.append(f"--lr must be > 0 (got {self.lr})")
        if self.kl_coef < 0:
            out.append(f"--kl-coef must be >= 0 (got {self.kl_coef})")
        if self.lr_schedule not in LR_SCHEDULES:
            out.append(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)} (got {self.lr_schedule!r})")
        elif self.lr_schedule != "constant" and not 0 < self.min_lr_ratio <= 1:
            out.append(f"--min-lr-ratio {self.min_lr_ratio}: the {self.lr_schedule} schedule would "
                       + ("reach a learning rate of zero at the last update, which would then train on nothing "
                          "(its rollouts or data spent for no step)" if self.min_lr_ratio <= 0 else
                          "end above --lr")
                       + "; give a ratio in (0, 1], e.g. 0.1")
        return out


@dataclass
class RolloutConfig(AdaptConfig):
    """The methods that learn from their own rollouts (and keep the successful ones as traces)."""

    episodes_per_update: int = 8
    """rollout episodes per update"""
    workers: int = 2
    """simulator worker processes for rollouts (0: in the trainer's process)"""
    executor: str = "local"
    """where the rollouts run: local (worker processes here) or ray (--workers actors on a Ray cluster, kept for
    the whole run; pip install 'vla-forget[ray]'; docs/ray.md)"""
    ray_address: str = "auto"
    """with --executor ray: the cluster (auto, HOST:PORT, or local: a one-machine cluster for this run)"""
    num_envs: int = 1
    """parallel envs in the trainer's process (> 1: ManiSkill GPU physics, needs CUDA)"""
    image_size: Optional[int] = None
    """camera image size in pixels (default: the base policy's input size, e.g. 128 for the small VLA, 224 for OpenVLA)"""
    max_episode_steps: Optional[int] = None
    """episode length (default: the task's)"""
    reward: str = "success"
    """success: 1 at the last step if the task is solved then, else 0; dense: ManiSkill's normalised dense reward / episode length at every step"""
    kl_log_states: int = 64
    """log the forward KL(base || policy) after each update on this many of its rollout states, spread over the
    batch (kl_to_base_after: the benchmark's predictor of forgetting, as training goes; 0: not logged)"""

    def problems(self) -> List[str]:
        out = super().problems()
        _positive(self, ("episodes_per_update", "num_envs", "image_size", "max_episode_steps"), out)
        if self.workers < 0 or self.kl_log_states < 0:
            out.append(f"--workers and --kl-log-states must be >= 0 (got {self.workers}, {self.kl_log_states})")
        if self.reward not in REWARDS:
            out.append(f"--reward must be one of {', '.join(REWARDS)} (got {self.reward!r})")
        from vla_forget.executors import executor_problem  # light: Ray is imported only where asked for

        problem = executor_problem(self.executor, self.workers, self.num_envs)
        if problem:
            out.append(problem)
        return out


@dataclass
class RLConfig(RolloutConfig):
    """The reinforcement-learning methods: they learn from the rewards of their rollouts."""

    save_traces: bool = True
    """keep successful rollouts in RUN/traces/ (for rl-trace-sft)"""
    temperature: float = 1.0
    """sampling temperature of the rollouts (above 1: more exploration); the ratio and the loss use the same
    tempered distribution; bench decodes as the battery says, whatever this"""

    def problems(self) -> List[str]:
        out = super().problems()
        if not self.temperature > 0:
            out.append(f"--temperature must be > 0 (got {self.temperature})")
        return out


# --------------------------------------------------------------------------
# the methods

@method("ppo", "vla_forget.adapt.ppo:train")
@dataclass
class PPOConfig(RLConfig):
    """PPO with a value head on the policy's features and GAE (vla_forget.adapt.ppo)."""

    epochs: int = 2
    """passes over each rollout batch (one optimiser step per minibatch)"""
    minibatch_size: int = 64
    """steps per minibatch (reinforce: per chunk of its one accumulated optimiser step)"""
    clip_coef: float = 0.2
    """clip the probability ratio to [1 - clip, 1 + clip]"""
    target_kl: Optional[float] = None
    """end an update's epochs early once an epoch's mean approximate KL to the rollout policy exceeds this (default: off)"""
    gamma: float = 1.0
    """discount"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    vf_coef: float = 0.5
    """weight of the value loss"""
    ent_coef: float = 0.0
    """weight of the entropy bonus (summed over the 7 tokens)"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    value_hidden: int = 256
    """hidden width of the value head (an MLP on policy.features)"""
    value_lr: float = 3e-4
    """learning rate of the value head"""
    value_time: bool = False
    """the value head also reads the fraction of the episode left (the suite's episodes end at a fixed length, so
    the value of a state depends on the time left)"""

    def problems(self) -> List[str]:
        out = super().problems()
        _positive(self, ("epochs", "minibatch_size"), out)
        return out


@method("reinforce", "vla_forget.adapt.reinforce:train")
@dataclass
class ReinforceConfig(RLConfig):
    """REINFORCE with the batch's mean return as baseline (vla_forget.adapt.reinforce)."""

    not_hparams: ClassVar[Tuple[str, ...]] = ("minibatch_size",)

    lr: float = 1e-4
    minibatch_size: int = 64
    """steps per chunk of its single accumulated optimiser step (memory only: the step is the same)"""
    gamma: float = 1.0
    """discount"""
    normalize_returns: bool = True
    """divide return minus baseline by the batch's standard deviation"""
    ent_coef: float = 0.0
    """weight of the entropy bonus (summed over the 7 tokens)"""

    def problems(self) -> List[str]:
        out = super().problems()
        _positive(self, ("minibatch_size",), out)
        return out


@dataclass
class GroupConfig(RLConfig):
    """The methods that roll out groups from one initial state and update with the clipped surrogate."""

    group_size: int = 4
    """rollouts per initial state (episodes_per_update must be a multiple)"""
    epochs: int = 2
    """passes over each rollout batch (one optimiser step per minibatch)"""
    minibatch_size: int = 64
    """steps per minibatch"""
    clip_coef: float = 0.2
    """clip the probability ratio to [1 - clip, 1 + clip]"""
    ent_coef: float = 0.0
    """weight of the entropy bonus (summed over the 7 tokens)"""

    def problems(self) -> List[str]:
        out = super().problems()
        _positive(self, ("epochs", "minibatch_size"), out)
        if self.group_size < 2 or self.episodes_per_update % self.group_size:
            out.append(f"{self.method}: --group-size must be >= 2 and divide --episodes-per-update "
                       f"(got {self.group_size} and {self.episodes_per_update})")
        return out


@method("grpo", "vla_forget.adapt.grpo:train")
@dataclass
class GRPOConfig(GroupConfig):
    """Group-relative policy optimisation: groups of rollouts from one initial state (vla_forget.adapt.grpo)."""


@method("rloo", "vla_forget.adapt.rloo:train")
@dataclass
class RLOOConfig(GroupConfig):
    """Leave-one-out group baselines without a critic, with dynamic sampling (vla_forget.adapt.rloo)."""

    lr: float = 3e-6
    episodes_per_update: int = 32
    group_size: int = 8
    epochs: int = 1
    minibatch_size: int = 256
    dynamic_sampling: bool = True
    """drop groups whose episodes all scored the same (no learning signal) and draw new initial states until
    the update has episodes_per_update episodes in informative groups, or max_draws rounds were drawn"""
    max_draws: int = 3
    """most rounds of episodes_per_update rollouts an update draws for dynamic sampling"""

    def problems(self) -> List[str]:
        out = super().problems()
        _positive(self, ("max_draws",), out)
        return out


def _sft_problems(cfg, out: List[str]) -> None:
    _positive(cfg, ("batch_size",), out)
    if cfg.augment_shift < 0:
        out.append(f"--augment-shift must be >= 0 (got {cfg.augment_shift})")
    transport = getattr(cfg, "transport_fraction", 0.0)
    if not 0 <= transport < 1:
        out.append(f"--transport-fraction must be in [0, 1) (got {transport})")


@method("sft", "vla_forget.adapt.sft:train")
@dataclass
class SFTConfig(AdaptConfig):
    """Supervised fine-tuning on demonstrations (vla_forget.adapt.sft)."""

    updates: int = 500
    save_every: int = 50
    data: List[str] = field(default_factory=list)
    """RLDS demonstration datasets of the target task (vla-forget demos)"""
    batch_size: int = 32
    """steps per optimiser step"""
    augment_shift: int = 0
    """random image shift in pixels (0: none)"""
    transport_fraction: float = 0.0
    """share of each batch drawn from the transport steps (gripper closed, x or y action beyond 0.3: carrying a
    held object sideways, where only the instruction's destination says which way); 0: every step equally likely"""

    def problems(self) -> List[str]:
        out = super().problems()
        _sft_problems(self, out)
        if not self.data:
            out.append("sft: give the demonstrations with --data PATH (datasets made by `vla-forget demos`)")
        return out


@method("iterative-sft", "vla_forget.adapt.iterative_sft:train")
@dataclass
class IterativeSFTConfig(RolloutConfig):
    """Rounds of rollouts, then SFT on the successful ones (vla_forget.adapt.iterative_sft)."""

    updates: int = 20
    save_every: int = 2
    batch_size: int = 32
    """steps per optimiser step"""
    sft_steps: int = 20
    """optimiser steps on each round's successes"""
    augment_shift: int = 0
    """random image shift in pixels (0: none)"""

    def problems(self) -> List[str]:
        out = super().problems()
        _sft_problems(self, out)
        if self.sft_steps < 0:
            out.append(f"--sft-steps must be >= 0 (got {self.sft_steps})")
        return out


@method("rl-trace-sft", "vla_forget.adapt.rl_trace_sft:train")
@dataclass
class RLTraceSFTConfig(AdaptConfig):
    """SFT on the successful rollouts of an RL run (vla_forget.adapt.rl_trace_sft)."""

    updates: int = 500
    save_every: int = 50
    traces: Optional[str] = None
    """the RL run folder whose successful traces (RUN/traces/) to train on"""
    traces_until: Optional[int] = None
    """use traces collected up to this update only (default: all)"""
    batch_size: int = 32
    """steps per optimiser step"""
    augment_shift: int = 0
    """random image shift in pixels (0: none)"""
    transport_fraction: float = 0.0
    """share of each batch drawn from the transport steps (see sft)"""

    def problems(self) -> List[str]:
        out = super().problems()
        _sft_problems(self, out)
        if not self.traces:
            out.append("rl-trace-sft: give the RL run folder with --traces RUN")
        return out


#: methods that learn from the policy's own rollouts (and save successful traces)
RL_METHODS = tuple(name for name, m in METHODS.items() if m.rl)
