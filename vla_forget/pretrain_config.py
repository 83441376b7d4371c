"""The settings of a pretraining run (`vla-forget pretrain`), apart from the trainer so that the CLI and the
specs read them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from vla_forget.policies import SCRIPTED_EXPERTS


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
