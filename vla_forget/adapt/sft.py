"""SFT on demonstrations of the target task: token cross-entropy, teacher-forced (as pretraining).

The data are RLDS datasets made by ``vla-forget demos`` (or any dataset the
one loader, :func:`vla_forget.datasets.open_dataset`, reads) and must be of the
target task: 7-D actions, the task in the manifest, instructions that fit the
task's instruction template — otherwise a clear error. One update::

    1. a batch of `batch_size` steps, uniform over all demonstration steps (seeded per update);
       with `transport_fraction` f > 0, a share f of the rows uniform over the transport steps
       instead (see :func:`transport_steps`), the rest uniform over all steps;
       actions -> 7 tokens with the *policy's* statistics (its unnorm_key), so that the adapted
       policy decodes actions exactly as the base does; optional random image shifts
    2. loss = mean over the 7 tokens of cross-entropy(action_logits(obs, tokens), tokens)
              + kl_coef * KL(base || pi) on the batch's states
    3. one AdamW step; log; checkpoint every `save_every` updates

The policy trains in train mode (dropout as in pretraining). ``rl-trace-sft``
runs this same loop on an RL run's successful traces.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from vla_forget.adapt import common
from vla_forget.adapt.common import AdaptConfig, AdaptError, Run
from vla_forget.pretrain import SplitSampler, _observation, gather, shift_images, token_loss

#: a transport step moves x or y by more than this (of the action range -1..1) with the gripper closed
TRANSPORT_MIN_XY = 0.3


def transport_steps(actions: np.ndarray) -> np.ndarray:
    """Indices of the steps that carry a held object sideways: gripper closed (< 0) and the x or y
    action beyond :data:`TRANSPORT_MIN_XY`. In pick-and-place these are the few steps per episode
    where only the instruction's destination says which way to go; the approach, the lift, the
    lowering and the release can be read off the image."""
    a = np.asarray(actions)
    return np.flatnonzero((a[:, 6] < 0) & (np.abs(a[:, :2]).max(axis=1) > TRANSPORT_MIN_XY))


class TransportSampler:
    """Draws a share ``fraction`` of each batch from the transport steps of the datasets, the rest
    from ``base`` (uniform over all steps); both read ``base.rng``, so a batch is a function of it."""

    def __init__(self, base: SplitSampler, fraction: float):
        self.base, self.fraction = base, float(fraction)
        which, ep, st = [], [], []
        for k, ds in enumerate(base.datasets):
            e, s = ds.locate(transport_steps(ds.all_actions()))
            which.append(np.full(len(e), k))
            ep.append(e)
            st.append(s)
        self.which, self.ep, self.st = (np.concatenate(x).astype(np.int64) for x in (which, ep, st))
        if not len(self.ep):
            raise AdaptError(f"--transport-fraction {fraction}: the data has no transport steps (gripper closed and "
                             f"an x or y action beyond {TRANSPORT_MIN_XY}); use --transport-fraction 0")

    @property
    def rng(self) -> np.random.Generator:
        return self.base.rng

    @rng.setter
    def rng(self, rng: np.random.Generator) -> None:
        self.base.rng = rng

    @property
    def counts(self) -> Tuple[int, ...]:
        """transport steps per dataset"""
        return tuple(int(n) for n in np.bincount(self.which, minlength=len(self.base.datasets)))

    def sample(self, batch_size: int) -> Dict[str, Any]:
        n = int(round(batch_size * self.fraction))
        if not n:  # a batch too small for the share: all uniform
            return self.base.sample(batch_size)
        pick = self.base.rng.integers(0, len(self.ep), size=n)
        rows = gather(self.base.datasets, self.which[pick], self.ep[pick], self.st[pick], self.base.tokenizer)
        if n == batch_size:
            return rows
        rest = self.base.sample(batch_size - n)
        return {k: (rows[k] + rest[k]) if isinstance(rows[k], list) else np.concatenate([rows[k], rest[k]]) for k in rest}


def train(cfg: AdaptConfig, *, resume: bool = False, stop_at: Optional[int] = None, data: Optional[Sequence[str]] = None,
          data_option: str = "--data") -> Dict[str, Any]:
    """Run SFT as ``cfg`` says, on ``data`` (default ``cfg.data``); ``stop_at``: stop after that update."""
    run = Run(cfg, resume=resume)
    cfg, policy, device = run.cfg, run.policy, run.device
    datasets = common.open_demonstrations(list(data if data is not None else cfg.data), run.task, policy, data_option)
    sampler = SplitSampler(datasets, [ds.num_steps for ds in datasets], [np.arange(ds.num_episodes) for ds in datasets],
                           common.policy_tokenizer(policy), np.random.default_rng(0))
    extra = {}
    if cfg.transport_fraction > 0:
        sampler = TransportSampler(sampler, cfg.transport_fraction)
        extra = {"transport_steps": list(sampler.counts), "transport_fraction": cfg.transport_fraction}
    policy.train()
    opt = run.optimizer()
    run.begin(opt)
    run.event("data", datasets=[ds.root for ds in datasets], episodes=[ds.num_episodes for ds in datasets],
              steps=[ds.num_steps for ds in datasets], **extra)
    for update in run.loop(stop_at):
        # 1. a batch of demonstration steps, tokenised with the policy's statistics
        sampler.rng = np.random.default_rng(common.derive_seed(cfg.seed, update, "batch"))
        batch = sampler.sample(cfg.batch_size)
        batch["image"] = shift_images(batch["image"], cfg.augment_shift, sampler.rng)

        # 2. token cross-entropy (+ KL to the base)
        loss, acc = token_loss(policy, batch, device)
        record = {"loss": float(loss.detach()), "token_acc": float(acc.mean())}
        if run.kl.active:
            obs = _observation(batch, device)
            kl = run.kl.kl(policy, obs, run.kl.reference(obs, common.generator(cfg.seed, update, "kl", device=device))).mean()
            loss = loss + run.kl.coef * kl
            record["kl_to_base"] = float(kl.detach())

        # 3. one optimiser step; log and checkpoint
        record["grad_norm"] = run.step(opt, loss)
        run.end_update(update, {**record, "lr": cfg.lr}, opt=opt, samples=cfg.batch_size)
    return run.finish()
