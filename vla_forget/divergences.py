"""Action-distribution divergences between two autoregressive token policies.

OpenVLA-style policies emit an action as D tokens (D = 7), each over K bins
(K = 256). The joint distribution has K^D outcomes, so the divergences are
computed with the chain rule, *exactly per token* from logits, and by Monte
Carlo over the token prefix only. For a state s, with a ~ pi0(.|s) sampled
from the BASE policy and both policies teacher-forced on it (one forward pass
each), write ``p0_j = pi0(.|s, a_<j)``, ``p1_j = pi(.|s, a_<j)`` and the prefix
likelihood ratio ``r_j = prod_{k<j} p1_k(a_k) / p0_k(a_k)``:

* forward KL (RL's Razor's predictor):
  ``KL(pi0 || pi)(s) = E_{a~pi0} sum_j KL(p0_j || p1_j)``;
* reverse KL: ``KL(pi || pi0)(s) = E_{a~pi0} sum_j r_j KL(p1_j || p0_j)``
  (the prefix of token j is distributed as pi; importance weights turn the
  base's prefixes into the policy's, so the base's samples are reused);
* total variation of the joint:
  ``TV(s) = E_{a~pi0} sum_b (p0_D(b) - r_D p1_D(b))_+``
  (``TV = sum_a (pi0(a) - pi(a))_+``, summed exactly over the last token).

All three estimators are unbiased; their expectations equal the divergences of
the joint 256^7-way distributions (the tests enumerate small joints to check
this). Forward KL has the lowest variance (no weights); the importance-weighted
two grow noisy when the policies are far apart, so the harness also reports
the effective sample size of the weights. The per-state values are averaged
over a recorded set of states (RL's Razor measures on the new task's states).
This exact estimator is this project's definition: RL's Razor does not publish
its robot KL estimator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), dim=-1)


def token_divergences(base_logits: torch.Tensor, logits: torch.Tensor, tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-sample chain-rule divergences.

    base_logits, logits: ``[N, D, K]`` teacher-forced on ``tokens`` ``[N, D]``
    (sampled from the base). Returns float64 tensors ``[N]`` for ``forward``,
    ``reverse``, ``tv``, the log prefix weight of the full sequence
    ``log_ratio`` and the per-dimension forward KL ``forward_per_dim`` ``[N, D]``.
    """
    if base_logits.shape != logits.shape:
        raise ValueError(f"logit shapes differ: base {tuple(base_logits.shape)} vs policy {tuple(logits.shape)}")
    if base_logits.dim() != 3 or tokens.shape != base_logits.shape[:2]:
        raise ValueError(f"need logits [N, D, K] and tokens [N, D]; got {tuple(base_logits.shape)} and {tuple(tokens.shape)}")
    lp0 = _log_softmax(base_logits)
    lp1 = _log_softmax(logits)
    p0, p1 = lp0.exp(), lp1.exp()
    fwd_j = (p0 * (lp0 - lp1)).sum(-1)  # [N, D]
    rev_j = (p1 * (lp1 - lp0)).sum(-1)  # [N, D]
    idx = tokens.long().unsqueeze(-1)
    step_log_ratio = (lp1.gather(-1, idx) - lp0.gather(-1, idx)).squeeze(-1)  # [N, D]
    # log r_j = sum_{k<j} step_log_ratio_k (exclusive cumulative sum)
    log_r = torch.cumsum(step_log_ratio, dim=1) - step_log_ratio
    reverse = (log_r.exp() * rev_j).sum(-1)
    r_last = log_r[:, -1].exp().unsqueeze(-1)
    tv = torch.clamp(p0[:, -1] - r_last * p1[:, -1], min=0.0).sum(-1)
    return {
        "forward": fwd_j.sum(-1),
        "reverse": reverse,
        "tv": tv,
        "log_ratio": step_log_ratio.sum(-1),
        "forward_per_dim": fwd_j,
    }


@dataclass
class DivergenceSummary:
    forward: float
    reverse: float
    tv: float
    forward_se: float
    reverse_se: float
    tv_se: float
    n_states: int
    n_samples: int
    reverse_ess: float
    forward_per_dim: list

    def to_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)


def summarize(per_sample: Dict[str, torch.Tensor], n_states: int) -> DivergenceSummary:
    """Means, standard errors and the effective sample size of the prefix weights."""

    def mean_se(x: torch.Tensor) -> tuple[float, float]:
        n = x.numel()
        m = float(x.mean())
        se = float(x.std(unbiased=True) / n**0.5) if n > 1 else float("nan")
        return m, se

    f, fse = mean_se(per_sample["forward"])
    r, rse = mean_se(per_sample["reverse"])
    t, tse = mean_se(per_sample["tv"])
    w = per_sample["log_ratio"].exp()
    ess = float(w.sum() ** 2 / (w.pow(2).sum() + 1e-300)) / max(1, w.numel())
    return DivergenceSummary(
        forward=f, reverse=r, tv=t, forward_se=fse, reverse_se=rse, tv_se=tse,
        n_states=n_states, n_samples=int(per_sample["forward"].numel()),
        reverse_ess=ess, forward_per_dim=[float(x) for x in per_sample["forward_per_dim"].mean(0)],
    )
