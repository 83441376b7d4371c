"""PPO on the target task: on-policy rollouts, clipped ratio, a value head on the policy's features, GAE.

One update::

    1. roll out `episodes_per_update` episodes of the current policy (sampling at temperature 1) in
       the simulator workers; per step keep the 7 sampled tokens and their joint log-probability
    2. values V(s) from a small MLP on policy.features(s) (features without gradient: the value
       loss never moves the policy) and, with `value_time`, the fraction of the episode left;
       rewards (binary success at the end, or dense); GAE(gamma, lambda)
    3. `epochs` passes over the batch in shuffled minibatches; per minibatch one AdamW step on
           clipped surrogate of r = exp(log pi(a|s) - log pi_old(a|s))    (a = the 7 tokens, jointly)
         + vf_coef * 0.5 (V(s) - R)^2
         - ent_coef * entropy  (summed over the 7 tokens)
         + kl_coef * KL(base || pi)(s)  (exact per token, chain rule; see common.KLPenalty)
       (with `target_kl`, the epochs stop early once an epoch's mean approximate KL exceeds it)
    4. log one record; checkpoint every `save_every` updates; successful episodes -> RUN/traces/

The policy stays in eval mode (no dropout) so that the ratio compares the
sampler's distribution with the learner's. Losses are means over the
minibatch's steps.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import nn

from vla_forget.adapt import common
from vla_forget.adapt.common import KLPenalty
from vla_forget.adapt.run import Run
from vla_forget.adapt.configs import PPOConfig
from vla_forget.adapt.rollouts import Trajectories, collector_for, traces_for


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over ``[E, T]`` tensors; ``dones[:, t]``: the episode ends after step t
    (no bootstrapping past it). Returns (advantages, returns = advantages + values)."""
    E, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(E, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        nonterminal = 1.0 - dones[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value * nonterminal - values[:, t]
        last = delta + gamma * lam * nonterminal * last
        adv[:, t] = last
    return adv, adv + values


def ppo_losses(logp, old_logp, adv, values, returns, clip: float, norm_adv: bool = True) -> Dict[str, torch.Tensor]:
    """The clipped policy loss, the value loss ``0.5 mean((V - R)^2)`` and diagnostics (approx KL, clip fraction)."""
    if norm_adv and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss, ratio = common.clipped_surrogate(logp, old_logp, adv, clip)
    v_loss = 0.5 * ((values - returns) ** 2).mean()
    with torch.no_grad():
        log_ratio = logp - old_logp
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip).float().mean()
    return {"pg_loss": pg_loss, "v_loss": v_loss, "approx_kl": approx_kl, "clipfrac": clipfrac}


class ValueHead(nn.Module):
    """V(s) = MLP(policy.features(s)): two tanh layers; saved in train_state.pt."""

    def __init__(self, d_in: int, hidden: int = 256, seed: int = 0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            layers = [m for m in self.net if isinstance(m, nn.Linear)]
            for i, m in enumerate(layers):
                std = (0.01 if i == len(layers) - 1 else 1.0) / np.sqrt(m.in_features)
                m.weight.normal_(0.0, std, generator=g)
                m.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


def ratio_diagnostics(logp_tok: torch.Tensor, old_tok: torch.Tensor, clip: float) -> Dict[str, float]:
    """How far a minibatch's ratios are from 1: joint ratio (7 tokens) and per-token ratios, from per-token
    log-probabilities ``[B, 7]`` of the learner and of the sampler."""
    with torch.no_grad():
        log_tok = (logp_tok - old_tok).float()
        joint = log_tok.sum(-1).exp()
        tok = log_tok.exp()
        return {"ratio_mean": float(joint.mean()), "ratio_max_dev": float((joint - 1).abs().max()),
                "clipfrac": float(((joint - 1).abs() > clip).float().mean()),
                "token_clipfrac": float(((tok - 1).abs() > clip).float().mean())}


def update_epochs(policy, value_head: ValueHead, traj: Trajectories, batch: Dict[str, Any], cfg: PPOConfig,
                  kl: KLPenalty, step: Callable[[torch.Tensor], float], update: int) -> Dict[str, Any]:
    """Step 3: ``cfg.epochs`` passes over the batch in shuffled minibatches, one optimiser step each.

    ``batch`` holds flat ``[N]`` tensors on the policy's device: tokens ``[N, 7]``,
    old_logp, advantages, returns, features ``[N, F]``, kl_ref (or None) and, where the rollouts kept them,
    old_logp_tokens ``[N, 7]``.

    Besides the means of the losses, the record says how the ratio moved during the update (the standard PPO
    implementation check: on fresh on-policy data the first minibatch has ratio 1 and clip fraction 0):
    ``first_ratio_mean``, ``first_ratio_max_dev`` and ``first_clipfrac`` of the first minibatch, each epoch's
    ``clipfrac_by_epoch`` and ``approx_kl_by_epoch``, ``steps_to_clip_0.2`` (the optimiser step, from 1, whose
    minibatch first had a clip fraction above 0.2; None: never) and, with per-token log-probabilities,
    ``token_clipfrac``: the share of single-token ratios outside the clip range (the joint ratio multiplies 7 of
    them, so it leaves the range far sooner).
    """
    device = batch["tokens"].device
    N = traj.num_steps
    per_token = batch.get("old_logp_tokens") is not None
    stats: Dict[str, list] = defaultdict(list)
    by_epoch: Dict[str, list] = defaultdict(list)
    extra: Dict[str, Any] = {"steps_to_clip_0.2": None}
    n_steps = 0
    for epoch in range(cfg.epochs):
        if cfg.target_kl is not None and stats["approx_kl"] and \
                np.mean(stats["approx_kl"][-math.ceil(N / cfg.minibatch_size):]) > cfg.target_kl:
            stats["epochs_run"].append(epoch)  # the last epoch moved the policy too far from the sampler
            break
        perm = torch.randperm(N, generator=common.generator(cfg.seed, update, "minibatches", epoch))
        epoch_stats: Dict[str, list] = defaultdict(list)
        for start in range(0, N, cfg.minibatch_size):
            mb = perm[start:start + cfg.minibatch_size].to(device)
            obs = traj.observation(mb.cpu().numpy(), str(device))
            logp, entropy = common.logp_and_entropy(policy, obs, batch["tokens"][mb], cfg.ent_coef > 0, per_token,
                                                          cfg.temperature)
            if per_token:
                diag = ratio_diagnostics(logp, batch["old_logp_tokens"][mb], cfg.clip_coef)
                stats["token_clipfrac"].append(diag["token_clipfrac"])
                if n_steps == 0:
                    extra.update(first_ratio_mean=diag["ratio_mean"], first_ratio_max_dev=diag["ratio_max_dev"],
                                 first_clipfrac=diag["clipfrac"])
                logp = logp.sum(-1)
            values = value_head(batch["features"][mb])
            out = ppo_losses(logp, batch["old_logp"][mb], batch["advantages"][mb], values, batch["returns"][mb],
                             cfg.clip_coef, cfg.norm_adv)
            if n_steps == 0 and not per_token:
                with torch.no_grad():
                    r = (logp - batch["old_logp"][mb]).exp()
                extra.update(first_ratio_mean=float(r.mean()), first_ratio_max_dev=float((r - 1).abs().max()),
                             first_clipfrac=float(out["clipfrac"]))
            loss = out["pg_loss"] + cfg.vf_coef * out["v_loss"]
            if entropy is not None:
                loss = loss - cfg.ent_coef * entropy.mean()
                stats["entropy"].append(float(entropy.detach().mean()))
            if kl.active:
                kl_value = kl.kl(policy, obs, common.slice_ref(batch["kl_ref"], mb)).mean()
                loss = loss + kl.coef * kl_value
                stats["kl_to_base"].append(float(kl_value.detach()))
            stats["grad_norm"].append(step(loss))
            n_steps += 1
            stats["loss"].append(float(loss.detach()))
            for k, v in out.items():
                stats[k].append(float(v.detach()))
            for k in ("clipfrac", "approx_kl"):
                epoch_stats[k].append(float(out[k]))
            if extra["steps_to_clip_0.2"] is None and float(out["clipfrac"]) > 0.2:
                extra["steps_to_clip_0.2"] = n_steps
        for k, v in epoch_stats.items():
            by_epoch[k].append(round(float(np.mean(v)), 6))
    rec: Dict[str, Any] = {k: float(np.mean(v)) for k, v in stats.items()}
    rec.update({f"{k}_by_epoch": v for k, v in by_epoch.items()})
    rec.update(extra, optimizer_steps=n_steps)
    return rec


def train(cfg: PPOConfig, *, resume: bool = False, stop_at: Optional[int] = None) -> Dict[str, Any]:
    """Run PPO as ``cfg`` says (``stop_at``: stop after that update, as an interruption would)."""
    run = Run(cfg, resume=resume)
    cfg, policy, device = run.cfg, run.policy, run.device
    policy.eval()
    value_head = ValueHead(policy.feature_dim + int(cfg.value_time), cfg.value_hidden,
                           seed=common.derive_seed(cfg.seed, "value_head")).to(device)
    opt = run.optimizer([{"params": list(value_head.parameters()), "lr": cfg.value_lr, "weight_decay": 0.0}])
    run.begin(opt, value_head)
    collector = collector_for(run)
    traces = traces_for(run)
    try:
        for update in run.loop(stop_at):
            # 1. rollouts of the current policy
            seeds = common.train_seeds(run.target.train_seed_start, update, cfg.episodes_per_update)
            traj = collector.collect(policy, seeds, common.sampling_seeds(cfg.seed, update, len(seeds)), version=update)
            kept = traces.add(traj, update)

            # 2. values, rewards, advantages (and the base's prefixes for the KL penalty)
            E, T, N = traj.num_episodes, traj.horizon, traj.num_steps
            features, refs = [], []
            kl_gen = common.generator(cfg.seed, update, "kl", device=device)
            with torch.no_grad():
                for idx in common.chunks(N, cfg.minibatch_size):
                    obs = traj.observation(idx, device)
                    features.append(policy.features(obs).float())
                    refs.append(run.kl.reference(obs, kl_gen))
                features = torch.cat(features)
                if cfg.value_time:  # the fraction of the episode left: the suite's episodes end at a fixed length
                    left = (1.0 - torch.arange(T, dtype=features.dtype, device=device) / T).repeat(E).unsqueeze(1)
                    features = torch.cat([features, left], dim=1)
                values = value_head(features).view(E, T)
            rewards = torch.from_numpy(traj.reward).to(device)
            dones = torch.from_numpy(traj.done).to(device)
            advantages, returns = gae(rewards, values, dones, cfg.gamma, cfg.gae_lambda)
            batch = {"tokens": torch.from_numpy(traj.flat("tokens").astype(np.int64)).to(device),
                     "old_logp": torch.from_numpy(traj.flat("logp")).to(device),
                     "old_logp_tokens": None if traj.logp_tokens is None else
                     torch.from_numpy(traj.flat("logp_tokens")).to(device),
                     "advantages": advantages.reshape(N), "returns": returns.reshape(N), "features": features,
                     "kl_ref": common.cat_refs(refs)}

            # 3. PPO epochs
            stats = update_epochs(policy, value_head, traj, batch, cfg, run.kl, lambda loss: run.step(opt, loss), update)

            # 4. log and checkpoint
            ret = rewards.sum(1)
            run.end_update(update, {
                "success_rate": float(traj.success_at_end.mean()), "success_once_rate": float(traj.success_once.mean()),
                "mean_return": float(ret.mean()), "value_mean": float(values.mean()),
                "explained_variance": _explained_variance(values.reshape(N), returns.reshape(N)),
                "traces_kept": kept, "rollout_s": round(traj.wall_s, 2), "lr": run.lr, **stats,
            }, opt=opt, env_steps=N, samples=cfg.epochs * N, value_head=value_head, traj=traj)
    finally:
        collector.close()
    return run.finish()


def _explained_variance(pred: torch.Tensor, target: torch.Tensor) -> Optional[float]:
    var = float(target.var())
    return None if var == 0 else 1.0 - float((target - pred).var()) / var
