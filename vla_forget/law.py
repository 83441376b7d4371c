"""The forgetting law: least-squares fits of forgetting against a divergence, and Pareto frontiers.

RL's Razor finds that forgetting grows with the forward KL ``KL(pi0 || pi)``
measured on the new task's states. Across checkpoints (runs x updates x
methods) we fit, by ordinary least squares:

* ``proportional``: ``forgetting = a * x``           (no forgetting without divergence)
* ``linear``:       ``forgetting = a * x + b``       (the primary law reported in results.json)
* ``quadratic``:    ``forgetting = a * x**2 + b * x + c``  (the form of RL's Razor's toy fit, R^2 = 0.96)

and report ``R^2 = 1 - SS_res / SS_tot`` with ``SS_tot`` taken about the mean
of the observed forgetting, for every model alike (so the proportional fit,
which has no intercept, can have a negative R^2 when it fits worse than a
constant). A fit is *undefined* rather than an error when there are fewer than
3 points, no more points than parameters, or the predictor takes one value
only; R^2 alone is undefined when every forgetting value is the same.

``pareto_frontier`` picks the checkpoints that no other checkpoint beats on both
target success and battery success (the per-method frontier of RL's Razor's
protocol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

MODELS: Dict[str, Tuple[str, ...]] = {
    "proportional": ("a",),
    "linear": ("a", "b"),
    "quadratic": ("a", "b", "c"),
}
FORMULAS = {
    "proportional": "forgetting = a * x",
    "linear": "forgetting = a * x + b",
    "quadratic": "forgetting = a * x^2 + b * x + c",
}
PRIMARY_MODEL = "linear"
MIN_POINTS = 3


@dataclass
class Fit:
    """One least-squares fit; ``params`` is empty and ``reason`` says why when the fit is undefined."""

    model: str
    n: int
    params: Dict[str, float] = field(default_factory=dict)
    r2: Optional[float] = None
    reason: str = ""

    @property
    def defined(self) -> bool:
        return bool(self.params)

    def predict(self, x: float) -> float:
        p = self.params
        if self.model == "proportional":
            return p["a"] * x
        if self.model == "linear":
            return p["a"] * x + p["b"]
        return p["a"] * x * x + p["b"] * x + p["c"]

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Fit":
        """The fit that ``to_dict`` wrote (as results.json holds it)."""
        return cls(d["model"], d["n"], dict(d.get("params") or {}), d.get("r2"), d.get("reason", ""))

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"model": self.model, "formula": FORMULAS[self.model], "params": dict(self.params),
                             "r2": self.r2, "n": self.n, "defined": self.defined}
        if self.reason:
            d["reason"] = self.reason
        return d


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def r_squared(y: Sequence[float], y_hat: Sequence[float]) -> Optional[float]:
    """``1 - SS_res / SS_tot`` (SS_tot about the mean of ``y``); None when ``y`` is constant or empty."""
    if not y:
        return None
    mean = sum(y) / len(y)
    ss_tot = sum((v - mean) ** 2 for v in y)
    if ss_tot <= 1e-18 * max(1.0, mean * mean) * len(y):
        return None
    ss_res = sum((v - h) ** 2 for v, h in zip(y, y_hat))
    return 1.0 - ss_res / ss_tot


def fit(x: Sequence[float], y: Sequence[float], model: str = PRIMARY_MODEL) -> Fit:
    """Least-squares fit of ``y`` against ``x`` with one of :data:`MODELS`; pairs with a non-finite value are dropped."""
    import numpy as np

    if model not in MODELS:
        raise ValueError(f"unknown law model {model!r}; choose one of {', '.join(MODELS)}")
    pts = [(float(a), float(b)) for a, b in zip(x, y) if _finite(a) and _finite(b)]
    n, k = len(pts), len(MODELS[model])
    out = Fit(model, n)
    if n < max(MIN_POINTS, k + 1):
        need = max(MIN_POINTS, k + 1)
        out.reason = f"undefined: {n} point{'s' if n != 1 else ''}, the {model} fit needs at least {need}"
        return out
    xs = np.array([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    if k > 1 and float(np.ptp(xs)) == 0.0:
        out.reason = "undefined: the predictor takes a single value"
        return out
    if k == 1 and not np.any(xs):
        out.reason = "undefined: the predictor is zero at every point"
        return out
    columns = {"proportional": [xs], "linear": [xs, np.ones(n)], "quadratic": [xs * xs, xs, np.ones(n)]}[model]
    design = np.stack(columns, axis=1)
    coef, _, rank, _ = np.linalg.lstsq(design, ys, rcond=None)
    if rank < k:
        out.reason = f"undefined: the predictor takes too few distinct values for the {model} fit"
        return out
    out.params = {name: float(c) for name, c in zip(MODELS[model], coef)}
    out.r2 = r_squared(list(ys), [out.predict(v) for v in xs])
    if out.r2 is None:
        out.reason = "R^2 undefined: every forgetting value is the same"
    return out


def fit_all(x: Sequence[float], y: Sequence[float]) -> Dict[str, Fit]:
    return {m: fit(x, y, m) for m in MODELS}


PREDICTORS = ("forward_kl", "reverse_kl", "tv", "forward_kl_battery")


def law_section(points: List[Dict[str, Any]], predictor: str = "forward_kl", model: str = PRIMARY_MODEL) -> Dict[str, Any]:
    """The ``law`` section of results.json from per-policy points (dicts with ``forgetting`` and predictor values).

    ``{model, formula, params, r2, n, defined, predictor, fits: {model: ...}, predictors: {name: {r2, n}}}``:
    the primary fit, every model's fit on the same predictor, and the primary model's R^2 for each
    alternative predictor (reverse KL, total variation, forward KL on battery states), as in RL's Razor.
    """
    y = [p.get("forgetting") for p in points]
    fits = fit_all([p.get(predictor) for p in points], y)
    section = fits[model].to_dict()
    section["predictor"] = predictor
    section["fits"] = {m: f.to_dict() for m, f in fits.items()}
    alt = {}
    for name in PREDICTORS:
        f = fit([p.get(name) for p in points], y, model)
        alt[name] = {"r2": f.r2, "n": f.n, **({"reason": f.reason} if f.reason else {})}
    section["predictors"] = alt
    return section


def group_by_method(points: Sequence[Dict[str, Any]], other: Optional[str] = None) -> Dict[str, List[Dict[str, Any]]]:
    """``{method: its points}`` in sorted method order, in the points' order within a method; points without a
    method are left out, or, with ``other``, grouped under that name and placed last."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for p in points:
        method = p.get("method") or other
        if method:
            groups.setdefault(method, []).append(p)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] == other, kv[0])))


def per_method(points: List[Dict[str, Any]], predictor: str = "forward_kl", model: str = PRIMARY_MODEL) -> Dict[str, Any]:
    """The law fitted within each method: ``{method: fit}`` over that method's points plus the base at (0, 0).

    The pooled fit asks whether one line serves every method; this one whether each method's checkpoints
    lie on a line of their own (they can, with different slopes, when the pooled R^2 is low). The base
    is the start of every method's trajectory, with no divergence and no forgetting by definition, so it
    is a point of each fit (``n`` counts it). Points without a method are left out.
    """
    out = {}
    for method, members in group_by_method(points).items():
        rows = [{predictor: 0.0, "forgetting": 0.0}] + members
        f = fit([r.get(predictor) for r in rows], [r.get("forgetting") for r in rows], model)
        out[method] = {**f.to_dict(), "with_base": True}
    return out


def pareto_frontier(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points that no other point dominates, maximising both coordinates, sorted by x.

    A point dominates another if it is at least as good in both coordinates and
    better in one; equal points do not dominate each other (both are kept).
    Points with a non-finite coordinate are ignored.
    """
    idx = [i for i, (a, b) in enumerate(points) if _finite(a) and _finite(b)]
    keep = []
    for i in idx:
        xi, yi = points[i]
        dominated = any(points[j][0] >= xi and points[j][1] >= yi and (points[j][0] > xi or points[j][1] > yi)
                        for j in idx if j != i)
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: (points[i][0], -points[i][1]))


#: two checkpoints are at "matched" target success when their rates differ by at most this much
MATCH_TOLERANCE = 0.05


def matched_pairs(points: Sequence[Dict[str, Any]], tolerance: float = MATCH_TOLERANCE) -> List[Dict[str, Any]]:
    """For each pair of methods, the two checkpoints (one of each) to compare at matched target success.

    ``points`` are dicts with ``policy``, ``method`` and ``target_success``. Among the pairs whose target
    success differs by at most ``tolerance``, the one with the highest mean target success is chosen
    (the comparison the experiment asks for: what each method forgets for the same gain), then the closer
    pair, then the policy names. A method pair with no such checkpoints gets ``reason`` instead.
    Returns ``[{methods: [A, B], a: policy of A, b: policy of B, target_difference: A - B}]``,
    methods in sorted order.
    """
    by_method = group_by_method([p for p in points if _finite(p.get("target_success"))])
    names = list(by_method)
    out: List[Dict[str, Any]] = []
    for i, ma in enumerate(names):
        for mb in names[i + 1:]:
            cands = [(a, b) for a in by_method[ma] for b in by_method[mb]
                     if abs(a["target_success"] - b["target_success"]) <= tolerance + 1e-12]
            if not cands:
                out.append({"methods": [ma, mb], "reason": f"no checkpoints within {100 * tolerance:.0f} points of "
                                                            "target success of each other"})
                continue
            a, b = max(cands, key=lambda ab: (ab[0]["target_success"] + ab[1]["target_success"],
                                              -abs(ab[0]["target_success"] - ab[1]["target_success"]),
                                              ab[0]["policy"], ab[1]["policy"]))
            out.append({"methods": [ma, mb], "a": a["policy"], "b": b["policy"],
                        "target_difference": a["target_success"] - b["target_success"]})
    return out
