"""Two benches of the same policies side by side: divergences, the forgetting law and matched pairs.

Made for a bench re-measured with other divergence settings (another state rule, other state counts:
``vla-forget bench --out COPY --resume ...`` re-records the states and recomputes the divergences, not the
episodes), so that what moved is the measurement alone. Prints Markdown tables:

* per policy: forgetting, and forward KL, reverse KL and TV on the target's states in each bench
  (± one standard error where the bench has it; TV marked when unreliable);
* the law: pooled fits (R^2 and slope of the linear model, n) and each method's own line;
* the R^2 of every predictor;
* the matched pairs (forgetting at matched target success).

    python benchmarks/probes/compare_benches.py runs/bench-old runs/bench-new --names "first steps" "whole episode"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional


def _load(folder: str) -> Dict[str, Any]:
    path = os.path.join(folder, "results.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"compare_benches: cannot read {path} ({e}); give two bench folders") from None


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _kl(k: Optional[Dict[str, Any]], name: str) -> str:
    if not k:
        return "-"
    if name == "tv" and k.get("tv_reliable") is False:
        return "unreliable"
    v, se = k.get(name), k.get(f"{name}_se")
    if v is None:
        return "-"
    return f"{v:.2f} ± {se:.2f}" if se is not None else f"{v:.2f}"


def _label(policy: str) -> str:
    return policy.replace("/checkpoints/update-", "@").rsplit("/", 1)[-1]


def compare(a: Dict[str, Any], b: Dict[str, Any], names: List[str]) -> List[str]:
    n1, n2 = names
    L: List[str] = []
    policies = [p["id"] for p in a["policies"] if p["id"] != a["base"]]
    missing = [p for p in policies if p not in b["kl_to_base"]]
    if missing:
        raise SystemExit(f"compare_benches: {len(missing)} policies of the first bench are not in the second "
                         f"(e.g. {missing[0]}): compare benches of the same policies")
    L += ["| policy | forgetting (pp) | forward KL: " + n1 + " | " + n2 + " | reverse KL: " + n1 + " | " + n2
          + " | TV: " + n1 + " | " + n2 + " |", "|---|---|---|---|---|---|---|---|"]
    for p in policies:
        ka, kb = a["kl_to_base"].get(p), b["kl_to_base"].get(p)
        f = a["forgetting"].get(p)
        L.append(f"| {_label(p)} | {_f(None if f is None else 100 * f, '{:+.1f}')} | {_kl(ka, 'forward')} | "
                 f"{_kl(kb, 'forward')} | {_kl(ka, 'reverse')} | {_kl(kb, 'reverse')} | {_kl(ka, 'tv')} | {_kl(kb, 'tv')} |")
    L += ["", "| law | " + n1 + ": R² | slope (pp/nat) | n | " + n2 + ": R² | slope (pp/nat) | n |",
          "|---|---|---|---|---|---|---|"]

    def fit_row(label: str, fa: Dict[str, Any], fb: Dict[str, Any]) -> str:
        def cells(fit: Dict[str, Any]) -> str:
            slope = (fit.get("params") or {}).get("a")
            return f"{_f(fit.get('r2'))} | {_f(None if slope is None else 100 * slope, '{:.2f}')} | {fit.get('n', '-')}"

        return f"| {label} | {cells(fa)} | {cells(fb)} |"

    la, lb = a.get("law") or {}, b.get("law") or {}
    L.append(fit_row("pooled, linear", la, lb))
    for m in sorted(set(la.get("by_method") or {}) | set(lb.get("by_method") or {})):
        L.append(fit_row(f"{m} (with the base)", (la.get("by_method") or {}).get(m, {}), (lb.get("by_method") or {}).get(m, {})))
    L += ["", "| predictor (linear R²) | " + n1 + " | " + n2 + " |", "|---|---|---|"]
    for name in sorted(set(la.get("predictors") or {}) | set(lb.get("predictors") or {})):
        pa, pb = (la.get("predictors") or {}).get(name, {}), (lb.get("predictors") or {}).get(name, {})
        note = lambda d: f" (n {d.get('n')}{', ' + str(d['excluded']) + ' unreliable left out' if d.get('excluded') else ''})"  # noqa: E731
        L.append(f"| {name} | {_f(pa.get('r2'))}{note(pa)} | {_f(pb.get('r2'))}{note(pb)} |")
    L += ["", "| matched pair | A − B forgetting (pp, 95 %) | forward KL A / B: " + n1 + " | " + n2 + " |", "|---|---|---|---|"]
    mb = {(m.get("a"), m.get("b")): m for m in b.get("matched") or []}
    for m in a.get("matched") or []:
        if "a" not in m:
            L.append(f"| {' / '.join(m['methods'])} | {m.get('reason')} | | |")
            continue
        o = mb.get((m["a"], m["b"]), {})
        d, (lo, hi) = m["forgetting_difference"], m["forgetting_difference_ci"]
        L.append(f"| {_label(m['a'])} − {_label(m['b'])} | {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                 f"{_f(m.get('a_forward_kl'))} / {_f(m.get('b_forward_kl'))} | "
                 f"{_f(o.get('a_forward_kl'))} / {_f(o.get('b_forward_kl'))} |")
    return L


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--names", nargs=2, default=["first", "second"], help="column names of the two benches")
    args = ap.parse_args(argv)
    print("\n".join(compare(_load(args.first), _load(args.second), args.names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
