"""Plots of a bench run (the ``plots`` extra: matplotlib, drawn headless on the Agg canvas).

* ``pareto.png``: target-task success against battery success, one colour per
  adaptation method, each method's Pareto frontier as a step line, the base as
  a star (RL's Razor's protocol: checkpoints along training x hyper-parameters).
* ``forgetting_vs_kl.png``: forgetting against the forward KL to the base on the
  target task's states, with the primary law fit and its R^2.

Both read only ``results.json``'s content, so they can be redrawn from a
finished run: ``vla_forget.plots.write_plots(json.load(open("RUN/results.json")), "RUN")``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from vla_forget import law

PARETO_PNG = "pareto.png"
LAW_PNG = "forgetting_vs_kl.png"
OTHER = "other policies"


def available() -> Optional[str]:
    """None when matplotlib can be imported, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "plots need matplotlib: pip install 'vla-forget[plots]'"
    return None


def _figure(size=(6.4, 4.8)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _colours(methods: List[str]) -> Dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: ("0.45" if m == OTHER else cmap(i % 10)) for i, m in enumerate(methods)}


def _base_point(results: Dict[str, Any]) -> Tuple[Optional[float], Optional[float]]:
    base = results.get("base")
    target = (results.get("target") or {}).get("task")
    t = (results.get("success", {}).get(base, {}).get(target) or {}).get("rate") if target else None
    return results.get("battery_mean_success", {}).get(base), t


def pareto_points(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Checkpoint rows (aliases of the base included: they are a run's update 0) plus the other policies."""
    rows = list(results.get("checkpoints") or [])
    in_rows = {r["policy"] for r in rows}
    for p in (results.get("law") or {}).get("points", []):
        if p["policy"] not in in_rows:
            rows.append({**p, "key": p["policy"], "method": p.get("method")})
    return rows


def pareto_label(method: str, rows: List[Dict[str, Any]], base: Optional[str]) -> str:
    """Legend entry of a method: its own checkpoints counted, not the runs' update-0 copies of the base
    (drawn at the base's star, and counted once, as the base)."""
    n = sum(1 for r in rows if r.get("policy") != base)
    return f"{method} ({n})"


#: the Pareto plot names the policies outside any run (shipped policies, an expert) when there are this few
MAX_NAMED_OTHERS = 6


def plot_pareto(results: Dict[str, Any], path: str) -> str:
    fig, ax = _figure()
    groups = law.group_by_method(pareto_points(results), other=OTHER)
    colours = _colours(list(groups))
    for method, rows in groups.items():
        shown = [(r, 100 * r["battery_success"], 100 * r["target_success"]) for r in rows
                 if r.get("battery_success") is not None and r.get("target_success") is not None]
        pts = [(x, y) for _, x, y in shown]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=22, alpha=0.55, color=colours[method],
                   label=pareto_label(method, rows, results.get("base")))
        if method == OTHER and len(shown) <= MAX_NAMED_OTHERS:  # a few policies outside any run: name them
            for r, x, y in shown:
                ax.annotate(r.get("key") or r.get("policy"), (x, y), xytext=(4, 3), textcoords="offset points",
                            fontsize=6, color="dimgray")
        front = [pts[i] for i in law.pareto_frontier(pts)]
        if method != OTHER and len(front) > 0:
            fx, fy = [front[0][0]], [front[0][1]]
            for x, y in front[1:]:  # staircase: what the frontier guarantees between its points
                fx += [x, x]
                fy += [fy[-1], y]
            ax.plot(fx, fy, color=colours[method], lw=1.8)
    bx, by = _base_point(results)
    if bx is not None and by is not None:
        ax.scatter([100 * bx], [100 * by], marker="*", s=160, color="black", zorder=5, label=f"base ({results['base']})")
    ax.set_xlabel("battery success, mean over tasks (%)")
    target = (results.get("target") or {}).get("task", "target")
    ax.set_ylabel(f"target success: {target} (%)")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.set_title("Target vs battery success; lines: Pareto frontier per method", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_law(results: Dict[str, Any], path: str) -> str:
    import numpy as np

    fig, ax = _figure((6.4, 5.8))
    section = results.get("law") or {}
    points = [p for p in section.get("points", []) if p.get("forward_kl") is not None and p.get("forgetting") is not None]
    groups = law.group_by_method(points, other=OTHER)
    colours = _colours(list(groups))
    for method, rows in groups.items():
        ax.scatter([r["forward_kl"] for r in rows], [100 * r["forgetting"] for r in rows], s=22, alpha=0.7,
                   color=colours[method], label=f"{method} ({len(rows)})")
    ax.scatter([0.0], [0.0], marker="*", s=160, color="black", zorder=5, label="base")
    for method, fd in (section.get("by_method") or {}).items():  # each method's own line, through its points and the base
        rows = groups.get(method) or []
        if not fd.get("defined") or not rows:
            continue
        fit = law.Fit.from_dict(fd)
        xs = np.linspace(0.0, max(r["forward_kl"] for r in rows), 50)
        r2 = "undefined" if fit.r2 is None else f"{fit.r2:.2f}"
        ax.plot(xs, [100 * fit.predict(float(x)) for x in xs], color=colours[method], lw=1.0, ls=":",
                label=f"{method} alone: R² = {r2}")
    if section.get("defined"):
        fit = law.Fit.from_dict(section)
        hi = max([p["forward_kl"] for p in points] + [1e-6])
        xs = np.linspace(0.0, 1.05 * hi, 100)
        r2 = "undefined" if fit.r2 is None else f"{fit.r2:.2f}"
        params = ", ".join(f"{k} = {v:.3g}" for k, v in fit.params.items())
        ax.plot(xs, [100 * fit.predict(float(x)) for x in xs], color="black", lw=1.5, ls="--",
                label="pooled: " + f"{section['formula'].replace('x', 'KL')} ({params}); R² = {r2}, n = {fit.n}")
    else:
        ax.text(0.02, 0.96, f"law fit {section.get('reason', 'undefined')}", transform=ax.transAxes, va="top", fontsize=8)
    states = section.get("states") or "target"
    ax.set_xlabel(f"forward KL(π_base ‖ π) on {states} states (nats, summed over 7 tokens)")
    ax.set_ylabel("forgetting: base − policy battery success (pp)")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.grid(alpha=0.3)
    ax.set_title("Forgetting against forward KL to the base", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)  # below: no point hidden
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_plots(results: Dict[str, Any], run_dir: str) -> Dict[str, Any]:
    """Draw both plots into ``run_dir``; returns ``{"pareto": file, "law": file}`` or ``{"skipped": why}``."""
    why = available()
    if why:
        return {"skipped": why}
    return {"pareto": os.path.basename(plot_pareto(results, os.path.join(run_dir, PARETO_PNG))),
            "law": os.path.basename(plot_law(results, os.path.join(run_dir, LAW_PNG)))}
