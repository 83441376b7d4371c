"""Success rates with Wilson intervals, forgetting and gain.

* success rate of a (policy, task): ``k / n`` with the Wilson score interval;
* forgetting of a policy on the battery: mean over battery tasks of
  ``base rate - policy rate`` (positive = skills lost);
* gain on the target task: ``policy rate - base rate``.

Differences of two rates carry Newcombe's hybrid score interval (method 10 of
Newcombe 1998), built from the two Wilson intervals; the battery mean carries
a normal-approximation interval from the binomial variances of its tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

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


def forgetting(base: Mapping[str, Rate], policy: Mapping[str, Rate], tasks: Sequence[str], z: float = Z95) -> Dict[str, object]:
    """Mean drop ``base - policy`` over ``tasks``, with per-task Newcombe intervals."""
    per_task = {}
    diffs, var = [], 0.0
    for t in tasks:
        b, p = base.get(t), policy.get(t)
        if b is None or p is None or b.n == 0 or p.n == 0:
            continue
        d, lo, hi = newcombe_difference(b, p, z)
        per_task[t] = {"value": d, "ci_low": lo, "ci_high": hi}
        diffs.append(d)
        var += b.rate * (1 - b.rate) / b.n + p.rate * (1 - p.rate) / p.n
    if not diffs:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "per_task": {}, "n_tasks": 0}
    mean = sum(diffs) / len(diffs)
    half = z * math.sqrt(var) / len(diffs)
    return {"value": mean, "ci_low": mean - half, "ci_high": mean + half, "per_task": per_task, "n_tasks": len(diffs)}


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
