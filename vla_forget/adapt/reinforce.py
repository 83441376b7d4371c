"""REINFORCE on the target task: return minus a batch-mean baseline, optionally normalised.

The estimator of *RL's Razor*'s robot experiment (REINFORCE with a
normalised-reward baseline, binary success reward, no KL term by default).
One update::

    1. roll out `episodes_per_update` episodes of the current policy (sampling at temperature 1)
    2. returns-to-go G[e, t] = sum_{k >= t} gamma^(k - t) r[e, k]; baseline b[t] = mean_e G[e, t];
       advantage A = G - b, divided by std_e G[e, t] when `normalize_returns`
       (binary success reward, gamma = 1: A_e = (R_e - mean R) / std R at every step of episode e)
    3. ONE AdamW step on  - mean_{e,t} A[e, t] log pi(a[e, t] | s[e, t])     (a = the 7 tokens, jointly)
                          - ent_coef * entropy + kl_coef * KL(base || pi)
       (the gradient is accumulated over chunks of `minibatch_size` steps)
    4. log one record; checkpoint every `save_every` updates; successful episodes -> RUN/traces/

The policy stays in eval mode (no dropout), as in PPO.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from vla_forget.adapt import common
from vla_forget.adapt.run import Run
from vla_forget.adapt.configs import ReinforceConfig
from vla_forget.adapt.rollouts import collector_for, traces_for


def advantages(rewards: torch.Tensor, gamma: float, normalize: bool, eps: float = 1e-8) -> torch.Tensor:
    """``[E, T]`` rewards -> advantages: returns-to-go minus their mean over the batch at each step (/ std)."""
    E, T = rewards.shape
    returns = torch.zeros_like(rewards)
    running = torch.zeros(E, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    adv = returns - returns.mean(0, keepdim=True)
    if normalize:
        adv = adv / (returns.std(0, unbiased=False, keepdim=True) + eps)
    return adv


def train(cfg: ReinforceConfig, *, resume: bool = False, stop_at: Optional[int] = None) -> Dict[str, Any]:
    """Run REINFORCE as ``cfg`` says (``stop_at``: stop after that update, as an interruption would)."""
    run = Run(cfg, resume=resume)
    cfg, policy, device = run.cfg, run.policy, run.device
    policy.eval()
    opt = run.optimizer()
    run.begin(opt)
    collector = collector_for(run)
    traces = traces_for(run)
    try:
        for update in run.loop(stop_at):
            # 1. rollouts of the current policy
            seeds = common.train_seeds(run.target.train_seed_start, update, cfg.episodes_per_update)
            traj = collector.collect(policy, seeds, common.sampling_seeds(cfg.seed, update, len(seeds)), version=update)
            kept = traces.add(traj, update)

            # 2. advantages: returns-to-go minus the batch-mean baseline
            N = traj.num_steps
            rewards = torch.from_numpy(traj.reward)
            adv = advantages(rewards, cfg.gamma, cfg.normalize_returns).reshape(N).to(device)
            tokens = torch.from_numpy(traj.flat("tokens").astype(np.int64)).to(device)

            # 3. one policy-gradient step, accumulated over chunks
            kl_gen = common.generator(cfg.seed, update, "kl", device=device)
            sums = {"loss": 0.0, "entropy": 0.0, "kl_to_base": 0.0}
            for idx in common.chunks(N, cfg.minibatch_size):
                obs = traj.observation(idx, device)
                logp, entropy = common.logp_and_entropy(policy, obs, tokens[idx], cfg.ent_coef > 0,
                                                          temperature=cfg.temperature)
                loss = -(adv[idx] * logp).sum() / N
                if entropy is not None:
                    loss = loss - cfg.ent_coef * entropy.sum() / N
                    sums["entropy"] += float(entropy.detach().sum()) / N
                if run.kl.active:
                    kl = run.kl.kl(policy, obs, run.kl.reference(obs, kl_gen))
                    loss = loss + run.kl.coef * kl.sum() / N
                    sums["kl_to_base"] += float(kl.detach().sum()) / N
                run.backward(loss)
                sums["loss"] += float(loss.detach())
            grad_norm = run.step(opt)

            # 4. log and checkpoint
            ret = rewards.sum(1)
            stats = {k: v for k, v in sums.items() if k == "loss" or (k == "entropy" and cfg.ent_coef > 0)
                     or (k == "kl_to_base" and run.kl.active)}
            run.end_update(update, {
                "success_rate": float(traj.success_at_end.mean()), "success_once_rate": float(traj.success_once.mean()),
                "mean_return": float(ret.mean()), "return_std": float(ret.std(unbiased=False)), "traces_kept": kept,
                "rollout_s": round(traj.wall_s, 2), "lr": run.lr, "grad_norm": grad_norm, **stats,
            }, opt=opt, env_steps=N, samples=N, traj=traj)
    finally:
        collector.close()
    return run.finish()
