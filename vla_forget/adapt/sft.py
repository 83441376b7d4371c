"""SFT on demonstrations of the target task: token cross-entropy, teacher-forced (as pretraining).

The data are RLDS datasets made by ``vla-forget demos`` (or any dataset the
one loader, :func:`vla_forget.datasets.open_dataset`, reads) and must be of the
target task: 7-D actions, the task in the manifest, instructions that fit the
task's instruction template — otherwise a clear error. One update::

    1. a batch of `batch_size` steps, uniform over all demonstration steps (seeded per update);
       with `transport_fraction` f > 0, a share f of the rows uniform over the transport steps
       instead (see :func:`transport_steps`; the same rule as pretraining's, vla_forget.bc), the rest
       uniform over all steps;
       actions -> 7 tokens with the *policy's* statistics (its unnorm_key), so that the adapted
       policy decodes actions exactly as the base does; optional random image shifts
    2. loss = mean over the 7 tokens of cross-entropy(action_logits(obs, tokens), tokens)
              + kl_coef * KL(base || pi) on the batch's states
    3. one AdamW step; log; checkpoint every `save_every` updates

The policy trains in train mode (dropout as in pretraining). ``rl-trace-sft``
runs this same loop on an RL run's successful traces.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from vla_forget.adapt import common
from vla_forget.adapt.common import AdaptError
from vla_forget.adapt.run import Run
from vla_forget.adapt.configs import SFTConfig
from vla_forget.bc import (TRANSPORT_MIN_XY, NoTransportSteps, TransportSampler, make_sampler, observation, shift_images,
                           token_loss, transport_steps)

__all__ = ["TRANSPORT_MIN_XY", "TransportSampler", "train", "transport_steps"]

def train(cfg: SFTConfig, *, resume: bool = False, stop_at: Optional[int] = None, data: Optional[Sequence[str]] = None,
          data_option: str = "--data") -> Dict[str, Any]:
    """Run SFT as ``cfg`` says, on ``data`` (default ``cfg.data``); ``stop_at``: stop after that update."""
    run = Run(cfg, resume=resume)
    cfg, policy, device = run.cfg, run.policy, run.device
    datasets = common.open_demonstrations(list(data if data is not None else cfg.data), run.task, policy, data_option)
    try:  # uniform over every demonstration step; the transport share drawn as in pretraining (vla_forget.bc)
        sampler = make_sampler(datasets, [ds.num_steps for ds in datasets], [np.arange(ds.num_episodes) for ds in datasets],
                               common.policy_tokenizer(policy), np.random.default_rng(0), cfg.transport_fraction)
    except NoTransportSteps as e:
        raise AdaptError(str(e)) from None
    extra = {}
    if isinstance(sampler, TransportSampler):
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
            obs = observation(batch, device)
            kl = run.kl.kl(policy, obs, run.kl.reference(obs, common.generator(cfg.seed, update, "kl", device=device))).mean()
            loss = loss + run.kl.coef * kl
            record["kl_to_base"] = float(kl.detach())

        # 3. one optimiser step; log and checkpoint
        record["grad_norm"] = run.step(opt, loss)
        run.end_update(update, {**record, "lr": run.lr}, opt=opt, samples=cfg.batch_size)
    return run.finish()
