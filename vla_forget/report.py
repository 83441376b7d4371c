"""report.md: the success matrix, forgetting, gain and divergences as tables."""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Tuple


def pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return _no_negative_zero(f"{100 * x:.0f}", "{:.0f}")


def _cell(d: Dict[str, Any] | None) -> str:
    if not d:
        return "-"
    return f"{pct(d['rate'])} [{pct(d['ci_low'])}, {pct(d['ci_high'])}] (n={d['n']})"


def num(x: Any, fmt: str = "{:.4f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return _no_negative_zero(fmt.format(x), fmt)


def _no_negative_zero(text: str, fmt: str) -> str:
    """``-0.0`` (a tiny negative value rounded, e.g. a forgetting of -1e-17) printed as zero."""
    try:
        return fmt.format(0.0) if text.startswith("-") and float(text) == 0 else text
    except ValueError:
        return text


def _pm(e: Dict[str, Any], key: str) -> str:
    return f"{num(e.get(key))} ± {num(e.get(key + '_se'))}" if e and e.get(key) is not None else "-"


def points(d: Dict[str, Any] | None) -> Tuple[str, str] | None:
    """A difference of rates in points and its interval, ``("+12.5", "[+3.1, +21.9]")``; None for none."""
    if not d or d.get("value") is None:
        return None
    return (num(100 * d["value"], "{:+.1f}"),
            f"[{num(_times100(d.get('ci_low')), '{:+.1f}')}, {num(_times100(d.get('ci_high')), '{:+.1f}')}]")


def _times100(x: Any) -> Any:
    return None if x is None else 100 * x


def _pp_interval(d: Dict[str, Any] | None) -> str:
    """A difference of rates in points with its interval, ``+12.5 [+3.1, +21.9]`` ("-" for none)."""
    parts = points(d)
    return "-" if parts is None else " ".join(parts)


def _tv(e: Dict[str, Any]) -> str:
    if not e or e.get("tv") is None:
        return "-"
    return _pm(e, "tv") if e.get("tv_reliable", True) else "unreliable"


def success_table(success: Dict[str, Dict[str, Any]], tasks: List[str], policies: List[str]) -> List[str]:
    lines = ["| policy | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for p in policies:
        lines.append(f"| {p} | " + " | ".join(_cell(success.get(p, {}).get(t)) for t in tasks) + " |")
    return lines


def protocol_lines(protocol: Dict[str, Any] | None) -> List[str]:
    """One paragraph: camera size and what set it, decoding per task (grouped), prompt styles."""
    if not protocol:
        return []
    groups: Dict[str, List[str]] = {}
    for task, d in (protocol.get("decoding") or {}).items():
        how = "greedy" if d.get("greedy") else f"sampling at temperature {d.get('temperature', 1.0):g}"
        groups.setdefault(f"{how} ({d.get('source', '?')})", []).append(task)
    decoding = "; ".join(f"{how}: {', '.join(tasks)}" for how, tasks in groups.items())
    prompts = ", ".join(f"`{p}` {s}" for p, s in (protocol.get("prompt") or {}).items())
    return ["", f"Protocol: cameras at {protocol.get('image_size')} px ({protocol.get('image_size_source', '?')}). "
                f"Decoding: {decoding or '-'}." + (f" Prompt: {prompts}." if prompts else "")]


def policies_and_tasks(results: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """The ids of a bench's policies, and its battery's tasks with the target's last (every report's order)."""
    target = results.get("target")
    return ([p["id"] for p in results["policies"]],
            list(results["battery"]["tasks"]) + ([target["task"]] if target else []))


def write_report(results: Dict[str, Any], path: str, run_dir: str) -> None:
    policies, tasks = policies_and_tasks(results)
    battery = results["battery"]
    target = results.get("target")
    L: List[str] = [
        f"# vla-forget bench: {battery['id']}",
        "",
        f"Base: `{results['base']}`. Target: `{target['id'] + ' (' + target['task'] + ')' if target else '-'}`. "
        f"Episodes: {results['episodes']}. Software: torch {results['software'].get('torch', '?')}, "
        f"mani-skill {results['software'].get('mani-skill', '?')}.",
        *protocol_lines(results.get("protocol")),
        "",
        "## Success at the end of the episode, % [Wilson 95% CI]",
        "",
        *success_table(results["success"], tasks, policies),
        "",
        "## Success at any step, % [Wilson 95% CI]",
        "",
        *success_table(results["success_once"], tasks, policies),
        "",
        "## Forgetting and gain (percentage points, relative to the base)",
        "",
        "Forgetting = mean over battery tasks of (base - policy) success at end; gain = policy - base on the target. "
        "Intervals: Newcombe (gain); forgetting: Newcombe per task, paired by seed where both ran the same seeds, "
        "combined over tasks by MOVER, within [-100, +100] (docs/metrics.md).",
        "",
        "| policy | battery mean % | forgetting | gain on target |",
        "|---|---|---|---|",
    ]
    for p in policies:
        f = results["forgetting_detail"].get(p, {})
        g = results.get("gain_detail", {}).get(p)
        L.append(f"| {p} | {pct(results['battery_mean_success'].get(p))} | {_pp_interval(f)} | {_pp_interval(g)} |")
    L += [
        "",
        "## Action-distribution divergence to the base",
        "",
        "Nats, summed over the 7 action tokens, of the temperature-1 distributions (whatever the bench's decoding); "
        "chain rule, exact 256-way divergence per token (see docs/metrics.md). Forward KL and TV on token prefixes "
        "sampled from the base, reverse KL on prefixes sampled from the policy. ± is one standard error over states. "
        "TV needs importance weights: its effective sample size (ESS, % of samples) is shown, and below "
        f"{100 * results.get('divergences', {}).get('tv_min_ess', 0.1):.0f} % TV is not reported as a number.",
        "",
        "| policy | states | forward KL (target) | reverse KL (target) | TV (target) | ESS of TV | forward KL (battery) |",
        "|---|---|---|---|---|---|---|",
    ]
    dv = results.get("divergences", {})
    by_phase: List[str] = []
    for p in policies:
        k = results["kl_to_base"].get(p)
        if k is None:
            L.append(f"| {p} | - | no action distribution | | | | |")
            continue
        d = k.get("detail", {})
        t, b = d.get("target"), d.get("battery")
        L.append(f"| {p} | {k['n_states']} | {_pm(t, 'forward') if t else num(k['forward'])} | "
                 f"{_pm(t, 'reverse') if t else num(k['reverse'])} | {_tv(t) if t else num(k['tv'])} | "
                 f"{num(100 * t['tv_ess'], '{:.2g}') if t and t.get('tv_ess') is not None else '-'} | "
                 f"{_pm(b, 'forward') if b else '-'} |")
        for name in ("target", "target_policy"):
            rows = (d.get(name) or {}).get("forward_by_phase")
            if rows:
                by_phase.append(f"| {p} | {name} | " + " | ".join(
                    f"{num(r['forward'])} ± {num(r['forward_se'])} (n={r['n_states']})" for r in rows) + " |")
        own = d.get("target_policy")
        if own:
            L.append(f"| {p} (own target states: target_policy) | {own['n_states']} | {_pm(own, 'forward')} | "
                     f"{_pm(own, 'reverse')} | {_tv(own)} | {num(100 * own['tv_ess'], '{:.2g}')} | - |")
    if by_phase:
        phases = next(r for r in (results["kl_to_base"].values()) if r and r.get("forward_by_phase"))["forward_by_phase"]
        L += ["", "### Forward KL by phase of the target episodes",
              "", "Each state's phase is where its step lies in its episode (quarters of the episode's steps); "
              "a policy that changed one part of the task (the approach, the grasp, the carry, the placement) "
              "shows there.", "",
              "| policy | states | " + " | ".join(f"{100 * r['from']:.0f}-{100 * r['to']:.0f} %" for r in phases) + " |",
              "|---|---|" + "---|" * len(phases), *by_phase]
    if dv.get("state_rule"):
        L += ["", f"States: rule `{dv['state_rule']}` (docs/metrics.md), from "
                  f"{'the base' if dv.get('kl_states', 'base') == 'base' else 'the base and each policy'}: "
                  + ", ".join(f"{n} on {k.split(':', 1)[0]}" + (f" ({k.split(':', 1)[1]})" if ":" in k else "")
                              for k, n in (dv.get("n_states") or {}).items()) + "."]
    if dv.get("skipped"):
        L += ["", f"Divergences skipped: {dv['skipped']}."]
    elif "base_passes" in dv:
        L += ["", f"Model passes this run: {dv['base_passes']} base sampling, {dv.get('policy_sample_passes', 0)} policy "
                  f"sampling, {dv.get('base_reverse_passes', 0)} base on the policies' samples (cached outputs reused: "
                  f"{dv.get('cache_hits', 0)})."]
    L += checkpoint_section(results)
    vids = []
    vdir = os.path.join(run_dir, "videos")
    if os.path.isdir(vdir):
        for pol in sorted(os.listdir(vdir)):
            for v in sorted(os.listdir(os.path.join(vdir, pol))):
                vids.append(f"- `videos/{pol}/{v}`")
    if vids:
        L += ["", "## Videos", "", *vids]
    L += ["", f"Wall time of this invocation: {results['wall_s']} s."]
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


def checkpoint_section(results: Dict[str, Any]) -> List[str]:
    """The checkpoints table, the forgetting law and the plots (see vla_forget/law.py, vla_forget/plots.py)."""
    L: List[str] = []
    rows = results.get("checkpoints") or []
    if rows:
        L += ["", "## Checkpoints", "",
              "One row per adaptation checkpoint; `same as` names the policy whose episodes it shares "
              "(identical weights, e.g. update 0 = the base).", "",
              "| run | method | update | env steps | target % | battery % | forgetting (pp) | forward KL | same as |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            f = r.get("forgetting")
            L.append(f"| {r['run']} | {r.get('method') or '-'} | {r['update']} | {r.get('env_steps') if r.get('env_steps') is not None else '-'} | "
                     f"{pct(r.get('target_success'))} | {pct(r.get('battery_success'))} | "
                     f"{num(None if f is None else 100 * f, '{:+.1f}')} | {num(r.get('forward_kl'))} | "
                     f"{r['policy'] if r['policy'] != r['key'] else ''} |")
    seeds = results.get("across_seeds") or []
    if seeds:
        L += ["", "## Across seeds", "",
              "Checkpoints of runs that differ only in their seed, at the same update: the mean over the seeds "
              "and, in brackets, the lowest and highest seed.", "",
              "| method | update | seeds | target % | forgetting (pp) | forward KL |", "|---|---|---|---|---|---|"]

        def spread(st: Dict[str, Any], scale: float, fmt: str) -> str:
            if st.get("mean") is None:
                return "-"
            return f"{num(scale * st['mean'], fmt)} [{num(scale * st['min'], fmt)}, {num(scale * st['max'], fmt)}]"

        for g in seeds:
            name = g["method"] + (f" ({g['label']})" if g.get("label") else "")
            L.append(f"| {name} | {g['update']} | {', '.join(str(x) for x in g['seeds'])} | "
                     f"{spread(g['target_success'], 100, '{:.1f}')} | {spread(g['forgetting'], 100, '{:+.1f}')} | "
                     f"{spread(g['forward_kl'], 1, '{:.2f}')} |")
    law = results.get("law") or {}
    if law.get("n"):
        L += ["", "## Forgetting law", "",
              f"Least-squares fits of forgetting (fraction of battery success lost) against the forward KL to the base "
              f"on {law.get('states') or 'target'} states, over {law['n']} policies (the base excluded). "
              "R² is 1 − SS_res/SS_tot about the mean.", "",
              "| model | parameters | R² |", "|---|---|---|"]
        for m, fit in law.get("fits", {}).items():
            params = ", ".join(f"{k} = {v:.4g}" for k, v in fit["params"].items()) if fit["defined"] else fit.get("reason", "undefined")
            L.append(f"| `{fit['formula']}`{' (primary)' if m == law['model'] else ''} | {params} | {num(fit['r2'], '{:.3f}')} |")
        alt = law.get("predictors") or {}
        if alt:
            L += ["", f"Other predictors, {law['model']} fit: " + "; ".join(
                f"{k} R² = {num(v.get('r2'), '{:.3f}')} (n={v.get('n')})" for k, v in alt.items()) + "."]
        by_method = law.get("by_method") or {}
        if by_method:
            L += ["", f"Within each method ({law['model']} fit over the method's checkpoints and the base at (0, 0); "
                  "a slope in points of forgetting per nat):", "",
                  "| method | n | slope (pp per nat) | intercept (pp) | R² |", "|---|---|---|---|---|"]
            for m, fit in by_method.items():
                if not fit.get("defined"):
                    L.append(f"| {m} | {fit.get('n')} | {fit.get('reason', 'undefined')} | | |")
                    continue
                a, b = fit["params"].get("a"), fit["params"].get("b")
                L.append(f"| {m} | {fit['n']} | {num(None if a is None else 100 * a, '{:.2f}')} | "
                         f"{num(None if b is None else 100 * b, '{:+.1f}')} | {num(fit.get('r2'), '{:.3f}')} |")
    matched = results.get("matched") or []
    if matched:
        L += ["", "## Forgetting at matched target success", "",
              f"Per pair of methods, the checkpoints whose target success differs by at most "
              f"{100 * matched[0].get('tolerance', 0.05):.0f} points, the highest such pair. The difference is A's "
              "forgetting minus B's (B's battery success minus A's), its 95 % interval paired over the battery tasks; "
              "an interval that contains 0 does not resolve the two methods.", "",
              "| A | B | target % (A / B) | forgetting A (pp) | forgetting B (pp) | A − B (pp, 95 %) | forward KL (A / B) |",
              "|---|---|---|---|---|---|---|"]
        def pp(x):
            return num(None if x is None else 100 * x, "{:+.1f}")

        for m in matched:
            ma, mb = m["methods"]
            if "a" not in m:
                L.append(f"| {ma} | {mb} | {m.get('reason', '')} | | | | |")
                continue
            lo, hi = m.get("forgetting_difference_ci") or [None, None]
            L.append(f"| {ma}: `{m['a']}` | {mb}: `{m['b']}` | {pct(m.get('a_target_success'))} / "
                     f"{pct(m.get('b_target_success'))} | {pp(m.get('a_forgetting'))} | {pp(m.get('b_forgetting'))} | "
                     f"{pp(m.get('forgetting_difference'))} [{pp(lo)}, {pp(hi)}] | "
                     f"{num(m.get('a_forward_kl'), '{:.2f}')} / {num(m.get('b_forward_kl'), '{:.2f}')} |")
    plots = results.get("plots") or {}
    if plots.get("skipped"):
        L += ["", f"Plots skipped: {plots['skipped']}."]
    elif plots:
        L += ["", "## Plots", ""]
        if plots.get("pareto"):
            L += [f"![target vs battery success, Pareto frontier per method]({plots['pareto']})", ""]
        if plots.get("law"):
            L += [f"![forgetting against forward KL, with the law fit]({plots['law']})"]
    return L


def summary_lines(results: Dict[str, Any], run_dir: str, max_rows: int = 15) -> List[str]:
    """The end of a bench on one screen: per policy, battery success and forgetting, target success and gain
    (with their 95 % intervals) and the forward KL to the base; then where the report, results and videos are.
    At most ``max_rows`` policies (the rest are counted; report.md has them all)."""
    policies = [p["id"] for p in results["policies"]]
    target = (results.get("target") or {}).get("task")
    kl = results.get("kl_to_base") or {}

    rows = []
    for p in policies:
        t = (results["success"].get(p) or {}).get(target) if target else None
        k = kl.get(p)
        rows.append((p, pct(results["battery_mean_success"].get(p)), _pp_interval(results["forgetting_detail"].get(p)),
                     pct(t["rate"]) if t else "-", _pp_interval((results.get("gain_detail") or {}).get(p)),
                     "base" if p == results["base"] else (num(k.get("forward"), "{:.2f}") if k else "-")))
    head = ("policy", "battery %", "forgetting, pp [95 %]", "target %", "gain, pp [95 %]", "forward KL")
    shown = rows[:max_rows]
    width = [max(len(str(r[i])) for r in [head, *shown]) for i in range(len(head))]
    width[0] = min(width[0], 48)

    def line(r) -> str:
        name = r[0] if len(r[0]) <= width[0] else "…" + r[0][-(width[0] - 1):]
        return "  ".join([name.ljust(width[0])] + [str(c).rjust(w) for c, w in zip(r[1:], width[1:])])

    battery = results["battery"]
    out = [f"vla-forget bench: {battery['id']}{' + ' + target if target else ''}, base {results['base']}, "
           f"{results['episodes']} episodes in {results.get('wall_s', 0):.0f} s", "", line(head)]
    out += [line(r) for r in shown]
    if len(rows) > max_rows:
        out.append(f"... and {len(rows) - max_rows} more policies (report.md has them all)")
    if not any(p != results["base"] and kl.get(p) for p in policies):
        reason = (results.get("divergences") or {}).get("skipped")
        out.append(f"Divergences: {reason or 'none computed'}.")
    out += ["", f"report:  {os.path.join(run_dir, 'report.html')} (open in a browser: tables, plots and the videos "
                "side by side)",
            f"         {os.path.join(run_dir, 'report.md')} (every table, divergences by phase of the episode)",
            f"results: {os.path.join(run_dir, 'results.json')}"]
    if os.path.isdir(os.path.join(run_dir, "videos")):
        out.append(f"videos:  {os.path.join(run_dir, 'videos')}")
    return out
