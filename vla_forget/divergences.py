"""Action-distribution divergences between two autoregressive token policies.

OpenVLA-style policies emit an action as D tokens (D = 7), each over K bins
(K = 256). The joint distribution has K^D outcomes, so the divergences are
computed with the chain rule, *exactly per token* from logits, and by Monte
Carlo over the token prefix only. For a state s, write ``p0_j = pi0(.|s, a_<j)``
and ``p1_j = pi(.|s, a_<j)`` for the two policies teacher-forced on a token
sequence ``a`` (one forward pass each):

* forward KL (RL's Razor's predictor), prefixes sampled from the BASE:
  ``KL(pi0 || pi)(s) = E_{a~pi0} sum_j KL(p0_j || p1_j)``;
* reverse KL, prefixes sampled from the POLICY itself (the same chain rule
  with the roles swapped; no importance weights):
  ``KL(pi || pi0)(s) = E_{a~pi} sum_j KL(p1_j || p0_j)``;
* total variation of the joint, prefixes sampled from the base, with the prefix
  likelihood ratio ``r_j = prod_{k<j} p1_k(a_k) / p0_k(a_k)``:
  ``TV(s) = E_{a~pi0} sum_b (p0_D(b) - r_D p1_D(b))_+``
  (``TV = sum_a (pi0(a) - pi(a))_+``, summed exactly over the last token).

All three are unbiased: their expectations equal the divergences of the joint
256^7-way distributions (the tests enumerate small joints to check this). The
two KLs need no weights. TV does: when the policies are far apart its weights
degenerate, so its summary carries the Kish effective sample size fraction of
``r_D`` and is marked unreliable below :data:`TV_MIN_ESS`. (The importance-
weighted reverse KL on the base's prefixes, ``E_{a~pi0} sum_j r_j KL(p1_j ||
p0_j)``, is still returned as ``reverse_weighted`` for comparison: for a far
pair it came out several times too low, which is why reverse KL is taken from
the policy's own samples.)

The per-state values are averaged over a recorded set of states (RL's Razor
measures on the new task's states); standard errors treat the state as the
unit (the samples of one state are averaged first). All figures are those of
the temperature-1 distributions, in nats. This exact estimator is this
project's definition: RL's Razor does not publish its robot KL estimator.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

#: below this Kish effective-sample-size fraction of its prefix weights, TV is reported as unreliable
TV_MIN_ESS = 0.1


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), dim=-1)


def token_divergences(base_logits: torch.Tensor, logits: torch.Tensor, tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-sample chain-rule divergences.

    base_logits, logits: ``[N, D, K]`` teacher-forced on ``tokens`` ``[N, D]``
    (sampled from the base). Returns float64 tensors ``[N]`` for ``forward``,
    ``reverse_weighted`` (importance-weighted reverse KL), ``tv``, the log
    prefix weight of TV's last token ``log_ratio_tv`` (``log r_D``), that of the
    full sequence ``log_ratio``, and the per-dimension forward KL
    ``forward_per_dim`` ``[N, D]``.
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
        "reverse_weighted": reverse,
        "tv": tv,
        "log_ratio_tv": log_r[:, -1],
        "log_ratio": step_log_ratio.sum(-1),
        "forward_per_dim": fwd_j,
    }


def reverse_on_policy_samples(policy_logits: torch.Tensor, base_logits: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-sample reverse KL ``KL(pi || pi0)`` from tokens sampled from the POLICY.

    ``policy_logits``, ``base_logits``: ``[N, D, K]``, both teacher-forced on the policy's own samples (the
    policy's are those its sampling pass returned). Returns ``reverse`` ``[N]`` and ``reverse_per_dim`` ``[N, D]``:
    the chain rule of :func:`token_divergences` with the roles of the two policies swapped, exact per token.
    """
    if policy_logits.shape != base_logits.shape or policy_logits.dim() != 3:
        raise ValueError(f"need two logit tensors [N, D, K] of one shape; got {tuple(policy_logits.shape)} and "
                         f"{tuple(base_logits.shape)}")
    lp1 = _log_softmax(policy_logits)
    lp0 = _log_softmax(base_logits)
    rev_j = (lp1.exp() * (lp1 - lp0)).sum(-1)
    return {"reverse": rev_j.sum(-1), "reverse_per_dim": rev_j}


def kish_ess_fraction(log_w: torch.Tensor) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of the weights ``exp(log_w)``, as a fraction of their count."""
    if log_w.numel() == 0:
        return float("nan")
    lw = log_w.double() - log_w.double().max()  # scale-free: shift before exponentiating
    w = lw.exp()
    return float(w.sum() ** 2 / w.pow(2).sum()) / w.numel()


def _by_state(x: torch.Tensor, samples_per_state: int) -> torch.Tensor:
    """Per-state means of per-sample values laid out state-major (``samples_per_state`` consecutive per state)."""
    return x.double().reshape(-1, samples_per_state).mean(1)


def _mean_se(per_state: torch.Tensor) -> tuple[float, Optional[float]]:
    n = per_state.numel()
    if n == 0:
        return float("nan"), None
    m = float(per_state.mean())
    return m, (float(per_state.std(unbiased=True) / n**0.5) if n > 1 else None)


def summarize(per_sample: Dict[str, torch.Tensor], samples_per_state: int, reverse: Optional[Dict[str, torch.Tensor]] = None,
              phases: Optional[Sequence[int]] = None, n_phases: int = 4) -> Dict[str, Any]:
    """Means and standard errors of one state set.

    ``per_sample``: :func:`token_divergences` on the base's samples; ``reverse``:
    :func:`reverse_on_policy_samples` on the policy's (both state-major, ``samples_per_state`` per state).
    ``phases``: the phase (0..n_phases-1) of each state, for ``forward_by_phase``. Standard errors are over
    states (a state's samples averaged first). TV carries ``tv_ess`` (Kish fraction of its prefix weights) and
    ``tv_reliable`` (``tv_ess >= TV_MIN_ESS``).
    """
    S = int(samples_per_state)
    fwd_state = _by_state(per_sample["forward"], S)
    n_states = fwd_state.numel()
    f, fse = _mean_se(fwd_state)
    t, tse = _mean_se(_by_state(per_sample["tv"], S))
    ess = kish_ess_fraction(per_sample["log_ratio_tv"])
    out: Dict[str, Any] = {
        "forward": f, "forward_se": fse,
        "tv": t, "tv_se": tse, "tv_ess": ess, "tv_reliable": bool(ess >= TV_MIN_ESS),
        "reverse_weighted": _mean_se(_by_state(per_sample["reverse_weighted"], S))[0],
        "reverse_weighted_ess": kish_ess_fraction(per_sample["log_ratio"]),
        "n_states": int(n_states), "n_samples": int(per_sample["forward"].numel()), "samples_per_state": S,
        "forward_per_dim": [float(x) for x in per_sample["forward_per_dim"].double().mean(0)],
    }
    if reverse is not None:
        r, rse = _mean_se(_by_state(reverse["reverse"], S))
        out.update(reverse=r, reverse_se=rse, reverse_estimator="policy samples",
                   reverse_per_dim=[float(x) for x in reverse["reverse_per_dim"].double().mean(0)])
    if phases is not None:
        ph = torch.as_tensor(list(phases), dtype=torch.long)
        if ph.numel() != n_states:
            raise ValueError(f"{ph.numel()} phases for {n_states} states")
        rows: List[Dict[str, Any]] = []
        for q in range(n_phases):
            m, se = _mean_se(fwd_state[ph == q])
            rows.append({"phase": q, "from": q / n_phases, "to": (q + 1) / n_phases, "n_states": int((ph == q).sum()),
                         "forward": None if int((ph == q).sum()) == 0 else m, "forward_se": se})
        out["forward_by_phase"] = rows
    return out
