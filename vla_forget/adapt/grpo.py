"""GRPO on the target task: groups of rollouts from the same initial state, group-normalised rewards.

One update::

    1. pick episodes_per_update / group_size initial states (env seeds); roll out the current
       policy `group_size` times from each (same seed, different sampling)
    2. episode return R_i (binary success by default); within each group
           A_i = (R_i - mean_group R) / (std_group R + eps)      (population std)
       applied to every step of episode i
    3. `epochs` passes over the batch in shuffled minibatches; per minibatch one AdamW step on
           clipped surrogate of r = exp(log pi(a|s) - log pi_old(a|s))   (a = the 7 tokens, jointly)
         - ent_coef * entropy + kl_coef * KL(base || pi)
       (epochs = 1 with one minibatch is the plain group-baseline policy gradient)
    4. log one record; checkpoint every `save_every` updates; successful episodes -> RUN/traces/

A group whose episodes all score the same has zero advantage: it teaches
nothing (with binary rewards, a task the policy never or always solves). The
policy stays in eval mode (no dropout).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Optional

import numpy as np
import torch

from vla_forget.adapt import common
from vla_forget.adapt.run import Run
from vla_forget.adapt.configs import GRPOConfig
from vla_forget.adapt.rollouts import collector_for, traces_for


def group_advantages(returns: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """``[E]`` episode returns, consecutive groups of ``group_size`` -> ``[E]`` group-normalised advantages."""
    g = returns.reshape(-1, group_size)
    adv = (g - g.mean(1, keepdim=True)) / (g.std(1, unbiased=False, keepdim=True) + eps)
    return adv.reshape(-1)


def train(cfg: GRPOConfig, *, resume: bool = False, stop_at: Optional[int] = None) -> Dict[str, Any]:
    """Run GRPO as ``cfg`` says (``stop_at``: stop after that update, as an interruption would)."""
    run = Run(cfg, resume=resume)
    cfg, policy, device = run.cfg, run.policy, run.device
    policy.eval()
    opt = run.optimizer()
    run.begin(opt)
    collector = collector_for(run)
    traces = traces_for(run)
    G = cfg.group_size
    try:
        for update in run.loop(stop_at):
            # 1. rollouts: group_size episodes from each initial state
            starts = common.train_seeds(run.target.train_seed_start, update, cfg.episodes_per_update // G)
            seeds = [s for s in starts for _ in range(G)]
            traj = collector.collect(policy, seeds, common.sampling_seeds(cfg.seed, update, len(seeds)), version=update)
            kept = traces.add(traj, update)

            # 2. group-normalised advantages, one per episode, on every step
            T, N = traj.horizon, traj.num_steps
            rewards = torch.from_numpy(traj.reward)
            episode_adv = group_advantages(rewards.sum(1), G)
            adv = episode_adv.repeat_interleave(T).to(device)
            tokens = torch.from_numpy(traj.flat("tokens").astype(np.int64)).to(device)
            old_logp = torch.from_numpy(traj.flat("logp")).to(device)

            # 3. clipped policy-gradient epochs
            stats: Dict[str, list] = defaultdict(list)
            kl_gen = common.generator(cfg.seed, update, "kl", device=device)
            for epoch in range(cfg.epochs):
                perm = torch.randperm(N, generator=common.generator(cfg.seed, update, "minibatches", epoch))
                for start in range(0, N, cfg.minibatch_size):
                    mb = perm[start:start + cfg.minibatch_size].numpy()
                    obs = traj.observation(mb, device)
                    logp, entropy = common.logp_and_entropy(policy, obs, tokens[mb], cfg.ent_coef > 0,
                                                              temperature=cfg.temperature)
                    loss, ratio = common.clipped_surrogate(logp, old_logp[mb], adv[mb], cfg.clip_coef)
                    if entropy is not None:
                        loss = loss - cfg.ent_coef * entropy.mean()
                        stats["entropy"].append(float(entropy.detach().mean()))
                    if run.kl.active:
                        kl = run.kl.kl(policy, obs, run.kl.reference(obs, kl_gen)).mean()
                        loss = loss + run.kl.coef * kl
                        stats["kl_to_base"].append(float(kl.detach()))
                    stats["grad_norm"].append(run.step(opt, loss))
                    stats["loss"].append(float(loss.detach()))
                    stats["clipfrac"].append(float(((ratio.detach() - 1).abs() > cfg.clip_coef).float().mean()))

            # 4. log and checkpoint
            ret = rewards.sum(1)
            run.end_update(update, {
                "success_rate": float(traj.success_at_end.mean()), "success_once_rate": float(traj.success_once.mean()),
                "mean_return": float(ret.mean()),
                "informative_groups": float((ret.reshape(-1, G).std(1) > 0).float().mean()),
                "traces_kept": kept, "rollout_s": round(traj.wall_s, 2), "lr": run.lr,
                **{k: float(np.mean(v)) for k, v in stats.items()},
            }, opt=opt, env_steps=N, samples=cfg.epochs * N, traj=traj)
    finally:
        collector.close()
    return run.finish()
