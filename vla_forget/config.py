"""The commands' settings and one generator from a config dataclass to its command line.

:class:`BenchConfig` (`vla-forget bench`), :class:`PretrainConfig` (`vla-forget pretrain`) and
:class:`DemoConfig` (`vla-forget demos`) live here, apart from their heavy modules, so that the CLI builds its
parsers without torch; the adaptation methods' configs live in :mod:`vla_forget.adapt.configs` (light too).
A sweep's configuration is its spec (:mod:`vla_forget.sweep`).

Each field of a config dataclass becomes ``--field-name``; its help is the docstring under the field (read
from the source with :func:`field_docs`), its type and default come from the annotation and the default. A
command adds what the fields cannot say (required options, choices, another flag name, a metavar) and its
own non-config options (``--resume``). :func:`config_from_args` builds the config back from the parsed
arguments. Light: no torch.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from vla_forget.policies import SCRIPTED_EXPERTS
from vla_forget.spec import DEFAULT_BATTERY


def field_docs(cls) -> Dict[str, str]:
    """The doc under each field of a config dataclass (read from its source and its bases'; a field declared
    again without a doc, to change its default, keeps its base's), on one line."""
    docs: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _kind(t: Any) -> str:
    """A field's annotation as text ("int", "Optional[float]", "List[str]"), postponed or not."""
    text = t if isinstance(t, str) else (t.__name__ if isinstance(t, type) else str(t))
    return text.replace("typing.", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_config_arguments(parser: argparse.ArgumentParser, cls, *, required: Iterable[str] = (),
                         choices: Optional[Mapping[str, Sequence[Any]]] = None, flags: Optional[Mapping[str, str]] = None,
                         metavars: Optional[Mapping[str, str]] = None, skip: Iterable[str] = (),
                         unset_is_none: bool = False, shown_defaults: Optional[Mapping[str, str]] = None,
                         notes: Optional[Mapping[str, str]] = None) -> None:
    """One option per field of ``cls`` (see the module's docstring). Booleans take ``--x/--no-x``; lists are
    repeatable; an option not given parses to the field's default, or with ``unset_is_none`` to None (so that a
    resumed run can take the options not given from its saved config). ``shown_defaults``: the default a help
    text states where it is not the field's own (e.g. one per method; "": none, where the help says it); ``notes``: text put before a field's help
    (e.g. the methods it applies to)."""
    docs = field_docs(cls)
    required, skip = set(required), set(skip)
    choices, flags, metavars = dict(choices or {}), dict(flags or {}), dict(metavars or {})
    shown_defaults = dict(shown_defaults or {})
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        doc = docs.get(f.name, "")
        if notes and f.name in notes:
            doc = f"{notes[f.name]} {doc}"
        default = _default(f)
        unset = None if unset_is_none else default
        kind = _kind(f.type)
        kw: Dict[str, Any] = dict(dest=f.name, help=doc)
        if f.name in choices:
            kw["choices"] = list(choices[f.name])
        if f.name in metavars:
            kw["metavar"] = metavars[f.name]
        if f.name in required:
            kw["required"] = True
        if kind == "bool":
            kw.update(action=argparse.BooleanOptionalAction, default=unset)
            shown = shown_defaults.get(f.name, "on" if default else "off")
            kw["help"] = f"{doc} (default: {shown})" if shown else doc
        elif kind.startswith("List"):
            kw.update(action="append", default=None)
            kw["help"] = f"{doc} (repeatable)"
        else:
            kw.update(type=int if "int" in kind else float if "float" in kind else str, default=unset)
            shown = shown_defaults.get(f.name, default)
            if shown is not None and f.name not in required:
                kw["help"] = f"{doc} (default: {shown})"
        kw["help"] = kw["help"].replace("%", "%%")  # argparse formats help with %: a doc's "95 %" stays text
        parser.add_argument(flag, **kw)


def config_from_args(cls, args: argparse.Namespace, **overrides: Any):
    """``cls`` from the parsed ``args`` (a list option not given: the field's default)."""
    kw: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            kw[f.name] = overrides[f.name]
        elif hasattr(args, f.name):
            v = getattr(args, f.name)
            kw[f.name] = _default(f) if v is None and _kind(f.type).startswith("List") else v
    return cls(**kw)


# --------------------------------------------------------------------------
# the commands' configs

#: the state sets of the divergences (BenchConfig.kl_states)
KL_STATE_SETS = ("base", "policy", "both")
#: OpenVLA's prompt styles (BenchConfig.prompt; vla_forget.policies.openvla)
PROMPT_STYLES = ("openvla", "bare")


@dataclass
class BenchConfig:
    """Everything that defines a bench run (saved as config.json). `vla-forget bench` takes each field as an
    option; :func:`vla_forget.bench.resolve_config` fills the fields not given from a resumed run, a preset and
    the adaptation runs."""

    policies: List[str]
    """policy id or checkpoint folder to evaluate"""
    base: str
    """base policy id or checkpoint folder: the reference of forgetting, gain and divergence (with --checkpoints:
    the runs' base by default)"""
    out: str
    """run folder"""
    checkpoints: List[str] = field(default_factory=list)
    """adaptation run or sweep folder: evaluate every finished checkpoint in it"""
    checkpoint_stride: Optional[int] = None
    """with --checkpoints: every K-th checkpoint of each run (from update 0), plus its last (default: all)"""
    battery: str = DEFAULT_BATTERY
    """battery id or YAML path (tabletop-v1: the same tasks at v1)"""
    target: Optional[str] = None
    """target spec id, YAML path or task id; 'none' for no target (default: the battery's)"""
    episodes: Optional[int] = None
    """episodes per battery task (default: the battery's)"""
    target_episodes: Optional[int] = None
    """evaluation episodes on the target task (default: the target's)"""
    workers: int = 2
    """env worker processes, one simulator each; 0 runs in this process"""
    num_envs: int = 1
    """parallel envs per process (GPU simulation only)"""
    executor: str = "local"
    """where the episodes run: local (this machine's worker processes) or ray (--workers actors on a Ray cluster;
    pip install 'vla-forget[ray]'; docs/ray.md)"""
    ray_address: str = "auto"
    """with --executor ray: the cluster (auto: the one this machine joined with `ray start`; HOST:PORT; local: a
    one-machine cluster started for this run)"""
    device: str = "cpu"
    """policy device: cpu or cuda"""
    image_size: Optional[int] = None
    """camera image size in pixels (default: the base policy's input size, e.g. 224 for OpenVLA, 128 for the
    small VLA); saved as a number"""
    videos_per_task: int = 2
    """mp4 videos per policy and task (the first seeds)"""
    review_size: int = 256
    """pixel size of the videos' review camera (ManiSkill tasks): the policy camera's pose at a size a person can
    read, the instruction as a caption; only the video episodes capture it (the policy's images are unchanged);
    0: the policy camera's own frames"""
    kl_states_per_task: int = 128
    """states per task for the divergences, spread evenly over the episodes' steps (vla_forget.states; the
    default comes from the measured trade-off in docs/metrics.md)"""
    kl_state_stride: int = 5
    """with kl_state_rule stride-v0 only: record every k-th step"""
    kl_samples_per_state: int = 1
    """token sequences sampled per state, from the base (forward KL, TV) and from each policy (reverse KL) (more
    states lower the error more than more samples)"""
    kl_state_rule: str = "spread-v1"
    """which steps become states (vla_forget.states.RULES); stride-v0 is the rule of older benches"""
    kl_states: str = "base"
    """whose target episodes give the states: the base's (RL's Razor's measure), each policy's own (on-policy
    KL), or both (the base's are the main figure)"""
    greedy: bool = False
    """act greedily on every task (default: as the battery and target say)"""
    temperature: Optional[float] = None
    """sample at temperature T on every task (default: as the battery and target say)"""
    prompt: Optional[str] = None
    """OpenVLA's prompt: its training template (openvla, the default) or the bare instruction (SimplerEnv's
    published evaluation); an error for policies without prompt styles"""
    seed: int = 0
    """seed of the divergence prefix sampling"""
    progress: bool = True
    """show progress bars"""

    # fields that may differ between a run and its resumption
    VOLATILE = ("workers", "progress", "out", "review_size", "executor", "ray_address")
    # fields that change only the divergences: a resumption may change them; states are recorded again where
    # they differ (the episodes re-run for their states only) and every divergence is recomputed
    DIVERGENCE_ONLY = ("kl_states_per_task", "kl_state_stride", "kl_samples_per_state", "kl_state_rule", "kl_states", "seed")
    # the value of a field for a config.json written before the field existed, where that is not its default
    LEGACY = {"kl_state_rule": "stride-v0"}
    #: the options `vla-forget bench` does not offer (set by the library: resume, older benches)
    INTERNAL = ("kl_state_stride", "kl_state_rule")

@dataclass
class CheckConfig:
    """A regression check of a bench's results (`vla-forget check`; vla_forget.check)."""

    results: str
    """the bench to check: its folder or its results.json"""
    baseline: Optional[str] = None
    """results.json (or folder) of an earlier bench on the same battery and protocol to compare with (default:
    the bench's own base)"""
    baseline_policy: Optional[str] = None
    """with --baseline: its policy to compare with (default: its base)"""
    policies: List[str] = field(default_factory=list)
    """a policy to check (default: every policy but the reference)"""
    max_forgetting: float = 0.0
    """points of forgetting allowed: a violation when the whole 95 % interval of a policy's forgetting lies above"""
    max_task_drop: float = 0.0
    """points a policy may lose on a battery task: a violation when the whole 95 % interval of the drop lies above"""
    min_gain: Optional[float] = None
    """points of target gain required: a violation when the whole 95 % interval of the gain lies below (default:
    not checked)"""
    junit: Optional[str] = None
    """write the findings as JUnit XML to this file (CI systems show it)"""
    summary: Optional[str] = None
    """write the findings as JSON to this file (default: check.json in the bench's folder)"""


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (pure data; saved as ``config.json`` in the run folder)."""

    data: List[str]
    """datasets as PATH or PATH:WEIGHT (sampling weight per step; default 1)"""
    out: str
    """run folder (checkpoints, metrics.jsonl)"""
    steps: int = 2000
    """optimiser steps of behaviour cloning before any DAgger round"""
    batch_size: int = 32
    """steps (observation, action) per optimiser step"""
    lr: float = 3e-4
    """peak AdamW learning rate"""
    weight_decay: float = 0.01
    """AdamW weight decay (matrices only; not biases, norms, embeddings)"""
    warmup_steps: int = 100
    """linear learning-rate warm-up from 0"""
    min_lr_ratio: float = 0.1
    """cosine decay ends at lr * min_lr_ratio at the last step"""
    grad_clip: float = 1.0
    """clip the gradient's global norm to this (0: no clipping)"""
    augment_shift: int = 4
    """random image shift in pixels (pad by replication, crop back; 0: none)"""
    transport_fraction: float = 0.0
    """share of each batch drawn from the transport steps of the training episodes (TransportSampler; 0: none)"""
    transport_rule: str = "conditional"
    """how that share is drawn (vla_forget.bc.TRANSPORT_RULES); runs started before the rule was named resume
    with theirs ("dataset-weight")"""
    val_fraction: float = 0.1
    """fraction of each dataset's episodes held out for validation (at least one when a dataset has two or more)"""
    val_steps: int = 256
    """validation steps sampled once (seeded) from the held-out episodes"""
    eval_every: int = 250
    """validate every this many steps (and at the end)"""
    log_every: int = 25
    """write a training line to metrics.jsonl every this many steps"""
    save_every: int = 500
    """write a checkpoint every this many steps (and at the end)"""
    keep_checkpoints: int = 0
    """keep only the newest this-many checkpoints (0: keep all)"""
    seed: int = 0
    """seed of initialisation, split, sampling, augmentation and dropout"""
    init: str = "small-vla-random-v1"
    """starting weights: a policy id or a SmallVLA checkpoint folder"""
    dropout: Optional[float] = None
    """override the model's dropout (None: keep the initial model's)"""
    name: str = "pretrain_mix"
    """the mixture's name: the unnorm_key of the pooled statistics in the checkpoint"""
    keep_statistics: bool = False
    """keep the initial policy's action and state statistics (its unnorm_key; `name` is then unused) instead of
    pooling new ones over `data`: continued training then tokenises actions and standardises states exactly as
    the initial policy does, whatever data (e.g. DAgger rounds) is added"""
    device: str = "cpu"
    """training device: cpu or cuda"""
    threads: int = 1
    """torch CPU threads"""
    dagger_rounds: int = 0
    """DAgger rounds after the first `steps` steps (0: plain behaviour cloning)"""
    dagger_steps: int = 1000
    """optimiser steps after each DAgger round"""
    dagger_episodes: int = 10
    """policy rollouts per task per DAgger round"""
    dagger_tasks: List[str] = field(default_factory=list)
    """tasks rolled out for DAgger, as TASK or TASK:N (N rollouts of it per round instead of dagger_episodes;
    default: every task in the data that the scripted expert solves)"""
    dagger_weight: float = 1.0
    """sampling weight of each DAgger round's dataset in the mixture"""
    dagger_workers: int = 0
    """simulator processes for DAgger rollouts (0: in this process)"""
    dagger_expert: str = SCRIPTED_EXPERTS[0]
    """the scripted expert that labels the DAgger rollouts (one of vla_forget.policies.SCRIPTED_EXPERTS)"""
    dagger_success_hold: int = 0
    """end a DAgger rollout after this many consecutive successful steps (0: the full episode, as bench runs it)"""
    image_size: int = 128
    """camera image size of DAgger rollouts (should match the demonstrations)"""
    progress: bool = True
    """show a progress bar"""

    def total_steps(self) -> int:
        return int(self.steps) + int(self.dagger_rounds) * int(self.dagger_steps)


#: most rollouts of one task in one DAgger round (its seeds are spaced 100 apart)


@dataclass
class DemoConfig:
    """Everything that defines a demonstration run."""

    task: str
    """task id (``vla-forget ls tasks``)"""
    episodes: int
    """successful demonstrations wanted"""
    out: str
    """dataset folder"""
    workers: int = 1
    """worker processes (one simulator each); 0 runs in this process"""
    executor: str = "local"
    """where the episodes run: local (worker processes here) or ray (--workers actors on a Ray cluster; the
    dataset folder must be a path every node shares; docs/ray.md)"""
    ray_address: str = "auto"
    """with --executor ray: the cluster (auto, HOST:PORT, or local: a one-machine cluster for this run)"""
    seed_start: int = 0
    """first seed tried; seeds go up by one and must stay below TRAIN_SEED_LIMIT"""
    image_size: int = 128
    """camera image size in pixels (square)"""
    wrist_camera: bool = False
    """add the wrist camera: images are the front and wrist views side by side ([S, 2S, 3])"""
    expert: str = SCRIPTED_EXPERTS[0]
    """the scripted expert that demonstrates (tasks it solves; others use their planner)"""
    success_hold: int = 5
    """end an episode once the task has been solved this many consecutive steps (0: run to the task's length)"""
    max_attempts: Optional[int] = None
    """give up after this many seeds (default: 3 x episodes + 10)"""
    name: Optional[str] = None
    """dataset name and unnorm_key (default: from the task id, PickCube-v1 -> pick_cube_v1)"""
    progress: bool = True
    """show a progress bar"""
    all_instructions: bool = False
    """demonstrate each seed's scene once per instruction the task can give (pairs that differ only in the words)"""

    def attempts_cap(self) -> int:
        return int(self.max_attempts) if self.max_attempts is not None else 3 * int(self.episodes) + 10
