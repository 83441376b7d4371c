"""Success rates with Wilson intervals, forgetting and gain.

* success rate of a (policy, task): ``k / n`` with the Wilson score interval;
* forgetting of a policy on the battery: mean over battery tasks of
  ``base rate - policy rate`` (positive = skills lost);
* gain on the target task: ``policy rate - base rate``.

A difference of two independent rates carries Newcombe's hybrid score interval
(method 10 of Newcombe 1998, Stat Med 17:873), built from the two Wilson
intervals; a difference of paired rates carries its paired counterpart (method
10 of Newcombe 1998, Stat Med 17:2635), which adds the phi correlation of the
pairs.

Forgetting comes in two forms with the same result shape:

* ``forgetting_from_episodes(base_records, policy_records, tasks)`` is the one
  the bench reports (``forgetting`` and ``forgetting_once`` of every policy,
  and the difference of two policies' forgetting at matched target success).
  It works from episode records and pairs the two sides' outcomes by seed on
  every task where both ran the same seeds, using the unpaired interval
  elsewhere. The base's own episodes against themselves (equal records on
  every task and seed) give exactly 0 with the interval [0, 0].
* ``forgetting(base_rates, policy_rates, tasks)`` works from success counts
  alone, for callers without episode records: every task is unpaired, which
  is valid but wider when the outcomes are correlated, and never exactly 0.

Both combine the per-task intervals into the interval of the mean over tasks
by MOVER for a linear combination of independent parameters (Zou & Donner
2008, ``mover_mean``), so the interval stays within [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (``(0, 1)`` when n == 0)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: no rounding past the estimate
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


@dataclass(frozen=True)
class Rate:
    k: int
    n: int

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def interval(self, z: float = Z95) -> Tuple[float, float]:
        return wilson_interval(self.k, self.n, z)

    def to_dict(self) -> Dict[str, float]:
        lo, hi = self.interval()
        return {"rate": self.rate, "ci_low": lo, "ci_high": hi, "n": self.n, "successes": self.k}


def newcombe_difference(a: Rate, b: Rate, z: float = Z95) -> Tuple[float, float, float]:
    """``a.rate - b.rate`` with Newcombe's hybrid score 95% interval."""
    p1, p2 = a.rate, b.rate
    l1, u1 = a.interval(z)
    l2, u2 = b.interval(z)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, max(-1.0, lo), min(1.0, hi)


def newcombe_paired_difference(a: int, b: int, c: int, d: int, z: float = Z95) -> Tuple[float, float, float]:
    """``p1 - p2`` for paired binary outcomes, with Newcombe's interval (method 10 of Newcombe 1998, paired).

    The 2x2 table of the ``n = a + b + c + d`` pairs: ``a`` both succeed, ``b`` only the first, ``c`` only
    the second, ``d`` neither; ``p1 = (a + b) / n``, ``p2 = (a + c) / n``. The two margins' Wilson
    intervals ``(l1, u1)`` and ``(l2, u2)`` are combined with the phi coefficient of the table,
    ``phi = (ad - bc) / sqrt((a+b)(c+d)(a+c)(b+d))`` (0 when a margin is empty):

        lower = (p1 - p2) - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)
        upper = (p1 - p2) + sqrt((u1 - p1)^2 - 2 phi (u1 - p1)(p2 - l2) + (p2 - l2)^2)
    """
    if min(a, b, c, d) < 0:
        raise ValueError(f"negative count in the paired table {(a, b, c, d)}")
    n = a + b + c + d
    if n == 0:
        return float("nan"), -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    den = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(den) if den > 0 else 0.0
    diff = (b - c) / n
    x, y = p1 - l1, u2 - p2
    lo = diff - math.sqrt(max(0.0, x * x - 2 * phi * x * y + y * y))
    x, y = u1 - p1, p2 - l2
    hi = diff + math.sqrt(max(0.0, x * x - 2 * phi * x * y + y * y))
    return diff, max(-1.0, lo), min(1.0, hi)


def mover_mean(parts: Sequence[Tuple[float, float, float]]) -> Tuple[float, float, float]:
    """Mean of independent estimates ``(value, low, high)`` with its MOVER interval (Zou & Donner 2008).

    ``mean - sqrt(sum (d - l)^2) / T`` to ``mean + sqrt(sum (u - d)^2) / T``, clipped to [-1, 1]
    (the range of a difference of two rates). NaN for no parts.
    """
    if not parts:
        return float("nan"), float("nan"), float("nan")
    T = len(parts)
    mean = sum(d for d, _, _ in parts) / T
    lo = mean - math.sqrt(sum((d - l) ** 2 for d, l, _ in parts)) / T
    hi = mean + math.sqrt(sum((u - d) ** 2 for d, _, u in parts)) / T
    return mean, max(-1.0, lo), min(1.0, hi)


def _forgetting_result(per_task: Dict[str, Dict[str, object]], method: str) -> Dict[str, object]:
    mean, lo, hi = mover_mean([(v["value"], v["ci_low"], v["ci_high"]) for v in per_task.values()])
    return {"value": mean, "ci_low": lo, "ci_high": hi, "per_task": per_task, "n_tasks": len(per_task), "method": method}


def forgetting(base: Mapping[str, Rate], policy: Mapping[str, Rate], tasks: Sequence[str], z: float = Z95) -> Dict[str, object]:
    """Mean drop ``base - policy`` over ``tasks`` from success counts alone.

    Per task the unpaired Newcombe interval; over tasks MOVER (``mover_mean``). Tasks missing or
    without episodes on either side are skipped. With episode records, use ``forgetting_from_episodes``.
    """
    per_task = {}
    for t in tasks:
        b, p = base.get(t), policy.get(t)
        if b is None or p is None or b.n == 0 or p.n == 0:
            continue
        d, lo, hi = newcombe_difference(b, p, z)
        per_task[t] = {"value": d, "ci_low": lo, "ci_high": hi, "paired": False, "n": min(b.n, p.n)}
    return _forgetting_result(per_task, "unpaired Newcombe per task (counts only), MOVER over tasks")


def _records_by_task(records: Iterable[Mapping[str, object]], tasks: Sequence[str]) -> Dict[str, List[Mapping[str, object]]]:
    wanted = set(tasks)
    out: Dict[str, List[Mapping[str, object]]] = {}
    for r in records:
        t = str(r["task"])
        if t in wanted:
            out.setdefault(t, []).append(r)
    return out


def _by_seed(records: List[Mapping[str, object]]) -> Optional[Dict[object, Mapping[str, object]]]:
    """``{seed: record}``, or None when a seed occurs more than once (the task then cannot be paired)."""
    d = {r["seed"]: r for r in records}
    return d if len(d) == len(records) else None


def forgetting_from_episodes(base: Sequence[Mapping], policy: Sequence[Mapping], tasks: Sequence[str],
                             key: str = "success_at_end", z: float = Z95) -> Dict[str, object]:
    """Mean drop ``base - policy`` over ``tasks`` from episode records, paired by seed where possible.

    ``base`` and ``policy`` are one policy's episode records each (at least ``task``, ``seed`` and the
    boolean ``key``). Per task: when both ran exactly the same seeds, once each, the outcomes are paired
    by seed and the difference gets Newcombe's paired interval (``newcombe_paired_difference``);
    otherwise the unpaired one on the two rates (``newcombe_difference``). Over tasks: MOVER
    (``mover_mean``), within [-1, 1]. Tasks without episodes on either side are skipped; with none
    left, value and interval are NaN.

    When the policy's records equal the base's on every task and seed (the base against itself), the
    value is 0 with the interval [0, 0], on every task and overall. Records are compared whole, so
    with the bench's records (which carry the policy key) this holds for the base's own episodes only:
    a different policy whose outcomes merely agree on the seeds run gets an ordinary interval, since
    agreement on a sample of seeds does not make its forgetting 0.

    Returns ``{"value", "ci_low", "ci_high", "per_task": {task: {"value", "ci_low", "ci_high",
    "paired", "n", "n_base", "n_policy"}}, "n_tasks", "method"}``, fractions; ``n`` is the number of
    seed pairs (paired) or the smaller side's number of episodes (unpaired).
    """
    br, pr = _records_by_task(base, tasks), _records_by_task(policy, tasks)
    per_task: Dict[str, Dict[str, object]] = {}
    n_paired, same = 0, True
    for t in dict.fromkeys(tasks):  # each task once, in order
        if not br.get(t) or not pr.get(t):
            continue
        bs, ps = _by_seed(br[t]), _by_seed(pr[t])
        nb, np_ = len(br[t]), len(pr[t])
        if bs is not None and ps is not None and bs.keys() == ps.keys():
            pairs = [(bool(bs[s][key]), bool(ps[s][key])) for s in bs]
            a = sum(x and y for x, y in pairs)
            b = sum(x and not y for x, y in pairs)
            c = sum(y and not x for x, y in pairs)
            d, lo, hi = newcombe_paired_difference(a, b, c, nb - a - b - c, z)
            paired, n = True, nb
            n_paired += 1
            same = same and all(bs[s] == ps[s] for s in bs)
        else:
            kb, kp = sum(bool(r[key]) for r in br[t]), sum(bool(r[key]) for r in pr[t])
            d, lo, hi = newcombe_difference(Rate(kb, nb), Rate(kp, np_), z)
            paired, n, same = False, min(nb, np_), False
        per_task[t] = {"value": d, "ci_low": lo, "ci_high": hi, "paired": paired, "n": n, "n_base": nb, "n_policy": np_}
    if per_task and same:
        for v in per_task.values():
            v.update(value=0.0, ci_low=0.0, ci_high=0.0)
        return _forgetting_result(per_task, "the same episodes on every task and seed: exactly 0")
    return _forgetting_result(per_task, f"Newcombe per task, paired by seed (method 10) on {n_paired} of "
                                        f"{len(per_task)} tasks, unpaired elsewhere; MOVER over tasks")


def gain(base: Optional[Rate], policy: Optional[Rate], z: float = Z95) -> Dict[str, float]:
    if base is None or policy is None or base.n == 0 or policy.n == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    d, lo, hi = newcombe_difference(policy, base, z)
    return {"value": d, "ci_low": lo, "ci_high": hi}


def count_rates(records: Iterable[Mapping[str, object]], key: str) -> Dict[str, Dict[str, Rate]]:
    """``{policy: {task: Rate}}`` from episode records, counting ``record[key]`` as success."""
    counts: Dict[str, Dict[str, list]] = {}
    for r in records:
        c = counts.setdefault(str(r["policy"]), {}).setdefault(str(r["task"]), [0, 0])
        c[0] += int(bool(r[key]))
        c[1] += 1
    return {p: {t: Rate(k, n) for t, (k, n) in tasks.items()} for p, tasks in counts.items()}
