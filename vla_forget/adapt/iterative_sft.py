"""Iterative SFT (*Retaining by Doing*): each round, roll out the current policy, keep its successes, SFT on them.

An "approximately on-policy" alternative to RL: the training data are the
policy's own successful behaviour, regenerated from the *current* policy every
round (self-SFT on samples of the initial policy only does not help, the paper
finds). One update = one round::

    1. roll out `episodes_per_update` episodes of the current policy (sampling at temperature 1)
    2. keep the episodes that end in success (none: the round trains nothing)
    3. `sft_steps` AdamW steps, each on `batch_size` steps drawn from the kept episodes: token
       cross-entropy on the policy's own sampled tokens (+ kl_coef * KL(base || pi))
    4. log one record; checkpoint every `save_every` rounds

The policy samples in eval mode and trains in train mode (dropout as in pretraining).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from vla_forget.adapt import common
from vla_forget.adapt.run import Run
from vla_forget.adapt.configs import IterativeSFTConfig
from vla_forget.adapt.rollouts import collector_for
from vla_forget.bc import observation, shift_images, token_loss


def train(cfg: IterativeSFTConfig, *, resume: bool = False, stop_at: Optional[int] = None) -> Dict[str, Any]:
    """Run iterative SFT as ``cfg`` says (``stop_at``: stop after that round, as an interruption would)."""
    run = Run(cfg, resume=resume)
    cfg, policy, device = run.cfg, run.policy, run.device
    opt = run.optimizer()
    run.begin(opt)
    collector = collector_for(run)
    try:
        for update in run.loop(stop_at):
            # 1. rollouts of the current policy
            seeds = common.train_seeds(run.target.train_seed_start, update, cfg.episodes_per_update)
            traj = collector.collect(policy, seeds, common.sampling_seeds(cfg.seed, update, len(seeds)), version=update)

            # 2. keep the successful episodes (every step of each)
            kept = np.nonzero(traj.success_at_end)[0]
            T = traj.horizon
            steps = (kept[:, None] * T + np.arange(T)[None, :]).reshape(-1)

            # 3. SFT on the policy's own successful tokens
            policy.train()
            rng = np.random.default_rng(common.derive_seed(cfg.seed, update, "batch"))
            kl_gen = common.generator(cfg.seed, update, "kl", device=device)
            losses, accs, kls, norms = [], [], [], []
            for _ in range(cfg.sft_steps if len(steps) else 0):
                batch = traj.batch(rng.choice(steps, size=cfg.batch_size))
                batch["image"] = shift_images(batch["image"], cfg.augment_shift, rng)
                loss, acc = token_loss(policy, batch, device)
                losses.append(float(loss.detach()))
                accs.append(float(acc.mean()))
                if run.kl.active:
                    obs = observation(batch, device)
                    kl = run.kl.kl(policy, obs, run.kl.reference(obs, kl_gen)).mean()
                    loss = loss + run.kl.coef * kl
                    kls.append(float(kl.detach()))
                norms.append(run.step(opt, loss))
            policy.eval()

            # 4. log and checkpoint
            record = {"success_rate": float(traj.success_at_end.mean()),
                      "success_once_rate": float(traj.success_once.mean()), "episodes_kept": int(len(kept)),
                      "sft_steps": len(losses), "rollout_s": round(traj.wall_s, 2), "lr": run.lr}
            if losses:
                record.update(loss=float(np.mean(losses)), token_acc=float(np.mean(accs)), grad_norm=float(np.mean(norms)))
            if kls:
                record["kl_to_base"] = float(np.mean(kls))
            run.end_update(update, record, opt=opt, env_steps=traj.num_steps, samples=len(losses) * cfg.batch_size,
                           traj=traj)
    finally:
        collector.close()
    return run.finish()
