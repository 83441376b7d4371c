"""RLOO on the target task: groups of rollouts from one initial state, leave-one-out baselines, no critic.

The small-budget recipe of VLA RL fine-tuning (RIPT-VLA, SimpleVLA-RL): no value function to fit, a
baseline from the other rollouts of the same initial state, and only the groups that carry a signal.

One update::

    1. draw episodes_per_update / group_size initial states (env seeds); roll out the current policy
       group_size times from each (same seed, different sampling)
    2. with dynamic sampling, drop the groups whose episodes all scored the same (all solved or all
       failed: zero advantage, no signal) and draw new initial states, round after round, until the
       kept groups hold episodes_per_update episodes or max_draws rounds were drawn
    3. episode return R_i (binary success by default); leave-one-out advantage
           A_i = R_i - mean_{j != i} R_j          (j over the other episodes of i's group)
       applied to every step of episode i
    4. `epochs` passes over the kept steps in shuffled minibatches; per minibatch one AdamW step on
           clipped surrogate of r = exp(log pi(a|s) - log pi_old(a|s))   (a = the 7 tokens, jointly)
         - ent_coef * entropy + kl_coef * KL(base || pi)
       with the ratio diagnostics of PPO (vla_forget.adapt.ppo.ratio_diagnostics)
    5. log one record (every rollout drawn counts in env_steps); checkpoint every `save_every`
       updates; successful episodes -> RUN/traces/

The policy stays in eval mode (no dropout).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from vla_forget.adapt import common
from vla_forget.adapt.configs import RLOOConfig
from vla_forget.adapt.ppo import ratio_diagnostics
from vla_forget.adapt.rollouts import Trajectories, collector_for, traces_for
from vla_forget.adapt.run import Run


def loo_advantages(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[E]`` episode returns, consecutive groups of ``group_size`` -> ``[E]`` leave-one-out advantages
    ``R_i - mean of the group's other returns`` (= K / (K - 1) times the return minus the group mean)."""
    g = returns.reshape(-1, group_size).double()
    others = (g.sum(1, keepdim=True) - g) / (group_size - 1)
    return (g - others).reshape(-1).to(returns.dtype)


def informative(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[E / group_size]`` bool: the groups whose returns are not all equal."""
    g = returns.reshape(-1, group_size)
    return (g.max(1).values - g.min(1).values) > 0


def train(cfg: RLOOConfig, *, resume: bool = False, stop_at: Optional[int] = None) -> Dict[str, Any]:
    """Run RLOO as ``cfg`` says (``stop_at``: stop after that update, as an interruption would)."""
    run = Run(cfg, resume=resume)
    cfg, policy, device = run.cfg, run.policy, run.device
    policy.eval()
    opt = run.optimizer()
    run.begin(opt)
    collector = collector_for(run)
    traces = traces_for(run)
    K = cfg.group_size
    groups_wanted = cfg.episodes_per_update // K
    draws = cfg.max_draws if cfg.dynamic_sampling else 1
    try:
        for update in run.loop(stop_at):
            # 1-2. rounds of groups; keep the informative ones (all of them without dynamic sampling)
            kept_parts: List[Trajectories] = []
            drawn: List[Trajectories] = []
            n_kept = 0
            for r in range(draws):
                starts = common.train_seeds(run.target.train_seed_start, (update - 1) * draws + r + 1, groups_wanted)
                seeds = [s for s in starts for _ in range(K)]
                gen_seeds = common.sampling_seeds(cfg.seed, (update - 1) * draws + r + 1, len(seeds))
                traj = collector.collect(policy, seeds, gen_seeds, version=update)
                drawn.append(traj)
                returns = torch.from_numpy(traj.reward).sum(1)
                ok = informative(returns, K).numpy() if cfg.dynamic_sampling else np.ones(groups_wanted, bool)
                take = np.nonzero(ok)[0][:groups_wanted - n_kept]
                if len(take):
                    kept_parts.append(traj.select(np.concatenate([np.arange(g * K, (g + 1) * K) for g in take])))
                    n_kept += len(take)
                if n_kept >= groups_wanted:
                    break
            if n_kept < groups_wanted and cfg.dynamic_sampling:
                # the batch could not be filled within --max-draws: say so, and train on what there is
                then = (f"training on {n_kept * K} rollouts" if n_kept else
                        "no group carried a signal, so the policy is left as it is")
                rounds = f"{len(drawn)} draw{'s' * (len(drawn) != 1)} of {groups_wanted}"
                run.trainer.warn(f"update {update}: {n_kept} of {groups_wanted} groups were informative after "
                                 f"{rounds} (--max-draws {draws}); {then}",
                                 "short_batch", update=update, groups_kept=n_kept, groups_wanted=groups_wanted,
                                 draws=len(drawn))
            everything = Trajectories.join(drawn)
            kept = traces.add(everything, update)
            record: Dict[str, Any] = {
                "success_rate": float(everything.success_at_end.mean()),
                "success_once_rate": float(everything.success_once.mean()),
                "mean_return": float(everything.reward.sum(1).mean()),
                "rounds": len(drawn), "groups_drawn": len(drawn) * groups_wanted, "groups_kept": n_kept,
                "informative_groups": float(informative(torch.from_numpy(everything.reward).sum(1), K).float().mean()),
                "traces_kept": kept, "rollout_s": round(everything.wall_s, 2), "lr": run.lr,
            }
            stats: Dict[str, list] = defaultdict(list)
            if n_kept:
                # 3. leave-one-out advantages on every step of the kept episodes
                batch = Trajectories.join(kept_parts)
                T, N = batch.horizon, batch.num_steps
                adv = loo_advantages(torch.from_numpy(batch.reward).sum(1), K).float().repeat_interleave(T).to(device)
                tokens = torch.from_numpy(batch.flat("tokens").astype(np.int64)).to(device)
                old_tok = torch.from_numpy(batch.flat("logp_tokens")).to(device)
                old_logp = old_tok.sum(-1)

                # 4. clipped policy-gradient epochs
                kl_gen = common.generator(cfg.seed, update, "kl", device=device)
                n_steps = 0
                for epoch in range(cfg.epochs):
                    perm = torch.randperm(N, generator=common.generator(cfg.seed, update, "minibatches", epoch))
                    for start in range(0, N, cfg.minibatch_size):
                        mb = perm[start:start + cfg.minibatch_size].numpy()
                        obs = batch.observation(mb, device)
                        logp_tok, entropy = common.logp_and_entropy(policy, obs, tokens[mb], cfg.ent_coef > 0, True,
                                                                           cfg.temperature)
                        diag = ratio_diagnostics(logp_tok, old_tok[mb], cfg.clip_coef)
                        if n_steps == 0:
                            record.update(first_ratio_mean=diag["ratio_mean"], first_ratio_max_dev=diag["ratio_max_dev"],
                                          first_clipfrac=diag["clipfrac"])
                        loss, _ = common.clipped_surrogate(logp_tok.sum(-1), old_logp[mb], adv[mb], cfg.clip_coef)
                        if entropy is not None:
                            loss = loss - cfg.ent_coef * entropy.mean()
                            stats["entropy"].append(float(entropy.detach().mean()))
                        if run.kl.active:
                            kl = run.kl.kl(policy, obs, run.kl.reference(obs, kl_gen)).mean()
                            loss = loss + run.kl.coef * kl
                            stats["kl_to_base"].append(float(kl.detach()))
                        stats["grad_norm"].append(run.step(opt, loss))
                        n_steps += 1
                        stats["loss"].append(float(loss.detach()))
                        stats["clipfrac"].append(diag["clipfrac"])
                        stats["token_clipfrac"].append(diag["token_clipfrac"])
                record["optimizer_steps"] = n_steps
            else:
                record["optimizer_steps"] = 0  # no group carried a signal: the policy is left as it is

            # 5. log and checkpoint
            run.end_update(update, {**record, **{k: float(np.mean(v)) for k, v in stats.items()}}, opt=opt,
                           env_steps=everything.num_steps, samples=cfg.epochs * (n_kept * K * everything.horizon),
                           traj=everything)
    finally:
        collector.close()
    return run.finish()
