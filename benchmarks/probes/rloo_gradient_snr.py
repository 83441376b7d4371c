"""How much of an RLOO update is signal? The policy gradient of many groups, one group at a time.

RLOO's update direction is the sum over its groups of ``sum_i A_i * grad log pi(episode i)`` (leave-one-out
advantages ``A_i``, ratio 1 on fresh data). This probe rolls out ``--groups`` groups of ``--group-size``
episodes from a policy on the target's training seeds, as `vla-forget adapt --method rloo` does, and takes
each group's gradient ``g_k`` separately. From them (``n`` groups, mean ``mu``):

- ``signal = |E g|^2``, estimated without bias as ``(|sum g|^2 - sum |g_k|^2) / (n (n - 1))``;
- ``noise = E|g - E g|^2`` per group;
- ``rho = signal / noise``: the signal-to-noise ratio of one group, with a 95 % upper bound from the
  standard error of ``signal`` when ``E g`` is near zero, ``sqrt(2 mean_{j != k} (g_j . g_k)^2 / (n (n - 1)))``.
  A batch of ``B`` groups has
  ``cos^2(batch gradient, E g) ~= rho B / (1 + rho B)``, so ``B = c^2 / ((1 - c^2) rho)`` groups give
  cosine ``c`` (and at least ``c^2 / ((1 - c^2) rho_upper)``);
- the cosine between the gradients of two disjoint halves of the groups, measured directly (mean over
  random splits), against the same formula's prediction ``rho (n/2) / (1 + rho (n/2))``.

Figures are given per informative group (those that carry a gradient) and per group drawn (what the
rollouts cost: all-success and all-failure groups have zero gradient).

    python benchmarks/probes/rloo_gradient_snr.py --policy small-vla-base-v6 --task place-cube-on-target-v2 \\
        --groups 48 --seed-offset 20000 --out runs/probes/rloo-snr-base
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Dict

import numpy as np
import torch


def group_gradients(policy, params, traj, K: int, device: str, temperature: float, chunk: int = 200):
    """One flat gradient ``sum_i A_i grad log pi(tau_i)`` per informative group of ``traj``; the groups' indices."""
    from vla_forget.adapt import common, rloo

    returns = torch.from_numpy(traj.reward).sum(1)
    adv = rloo.loo_advantages(returns, K)
    T = traj.horizon
    grads, which = [], []
    for g in np.nonzero(rloo.informative(returns, K).numpy())[0]:
        for p in params:
            p.grad = None
        steps = np.arange(g * K * T, (g + 1) * K * T)
        for s in range(0, len(steps), chunk):
            idx = steps[s:s + chunk]
            obs = traj.observation(idx, device)
            tokens = torch.from_numpy(traj.flat("tokens")[idx].astype(np.int64)).to(device)
            logp, _ = common.logp_and_entropy(policy, obs, tokens, False, False, temperature)
            a = adv[torch.from_numpy(idx // T)].to(logp.dtype).to(device)
            (a * logp).sum().backward()
        grads.append(torch.cat([p.grad.detach().reshape(-1).double() for p in params]).cpu())
        which.append(int(g))
    return grads, which


def snr(gram: np.ndarray, splits: int, seed: int) -> Dict[str, float]:
    """The figures of the module docstring from the groups' Gram matrix ``gram[j, k] = g_j . g_k``."""
    n = len(gram)
    off = ~np.eye(n, dtype=bool)
    sq = float(np.trace(gram))
    signal = float(gram[off].sum()) / (n * (n - 1))
    # with E g ~ 0, Var(signal) = 2 tr(Sigma^2) / (n (n - 1)), and E (g_j . g_k)^2 = tr(Sigma^2) for j != k
    signal_se = math.sqrt(2 * float((gram[off] ** 2).mean()) / (n * (n - 1)))
    noise = sq / n - signal
    rho = signal / noise if noise > 0 else float("inf")
    rho_upper = (max(signal, 0.0) + 1.96 * signal_se) / noise
    rng = np.random.default_rng(seed)
    cos = []
    for _ in range(splits):
        perm = rng.permutation(n)
        a, b = perm[:n // 2], perm[n // 2:2 * (n // 2)]
        ab, aa, bb = gram[np.ix_(a, b)].sum(), gram[np.ix_(a, a)].sum(), gram[np.ix_(b, b)].sum()
        cos.append(float(ab / math.sqrt(aa * bb)))
    h = n // 2
    out = {"groups": n, "signal": signal, "signal_se": signal_se, "noise_per_group": noise, "rho": rho,
           "rho_upper_95": rho_upper, "split_half_cos": float(np.mean(cos)), "split_half_cos_sd": float(np.std(cos)),
           "split_half_cos_predicted": rho * h / (1 + rho * h) if rho > 0 else 0.0}
    for c in (0.5, 0.7, 0.9):
        need = c * c / (1 - c * c)
        out[f"groups_for_cos_{c}"] = need / rho if rho > 0 else float("inf")
        out[f"groups_for_cos_{c}_at_least"] = need / rho_upper  # from the 95 % upper bound of rho
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="small-vla-base-v6", help="the policy: a registered name or a folder")
    ap.add_argument("--task", default="place-cube-on-target-v2", help="the target (its training seeds are used)")
    ap.add_argument("--groups", type=int, default=32, help="initial states, each rolled out --group-size times")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--seed-offset", type=int, default=10_000,
                    help="first training seed used, counted from the target's train_seed_start (away from a run's)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--splits", type=int, default=200, help="random half splits for the direct cosine")
    ap.add_argument("--out", required=True, help="folder for the probe's run folder and result.json")
    args = ap.parse_args(argv)

    from vla_forget.adapt import common
    from vla_forget.adapt.configs import RLOOConfig
    from vla_forget.adapt.rollouts import collector_for
    from vla_forget.adapt.run import Run

    cfg = RLOOConfig(base=args.policy, task=args.task, out=os.path.join(args.out, "run"), updates=1, save_every=1,
                     group_size=args.group_size, episodes_per_update=args.group_size, workers=args.workers,
                     threads=args.threads, seed=args.seed, progress=False, save_traces=False)
    run = Run(cfg, resume=os.path.isdir(os.path.join(cfg.out, "checkpoints")))
    run.begin(run.optimizer())
    collector = collector_for(run)
    K = args.group_size
    starts = [run.target.train_seed_start + args.seed_offset + i for i in range(args.groups)]
    seeds = [s for s in starts for _ in range(K)]
    t0 = time.perf_counter()
    try:
        traj = collector.collect(run.policy, seeds, common.sampling_seeds(args.seed, 1, len(seeds)), version=1)
    finally:
        collector.close()
    t_roll = time.perf_counter() - t0
    print(f"{len(seeds)} rollouts in {t_roll:.0f} s; success {traj.success_at_end.mean():.3f}", file=sys.stderr)
    t0 = time.perf_counter()
    run.policy.eval()  # as RLOO trains it (no dropout)
    grads, which = group_gradients(run.policy, run.params, traj, K, run.device, cfg.temperature)
    t_grad = time.perf_counter() - t0
    G = torch.stack(grads)
    gram = (G @ G.T).numpy()
    del G, grads
    informative = snr(gram, args.splits, args.seed)
    # per group drawn: the uninformative groups add zero vectors (no signal, no noise, but rollouts spent)
    n, m = len(which), args.groups
    drawn = dict(informative)
    drawn.update(groups=m, rho=informative["rho"] * n / m)
    drawn["rho_upper_95"] = informative["rho_upper_95"] * n / m
    for c in (0.5, 0.7, 0.9):
        for k in (f"groups_for_cos_{c}", f"groups_for_cos_{c}_at_least"):
            drawn[k] = informative[k] * m / n
    for k in ("signal", "signal_se", "noise_per_group", "split_half_cos", "split_half_cos_sd",
              "split_half_cos_predicted"):
        drawn.pop(k)
    result = {"policy": args.policy, "task": run.task, "rollouts": len(seeds), "group_size": K,
              "success": float(traj.success_at_end.mean()), "informative_groups": n, "groups": m,
              "parameters": int(sum(p.numel() for p in run.params)), "rollout_s": round(t_roll, 1),
              "gradient_s": round(t_grad, 1), "per_informative_group": informative, "per_group_drawn": drawn,
              "cos_of_a_4_group_update": math.sqrt(informative["rho"] * 4 / (1 + informative["rho"] * 4))
              if informative["rho"] > 0 else 0.0,
              "informative_group_seeds": [starts[g] for g in which], "gram": gram.tolist()}
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
