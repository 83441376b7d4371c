"""``report.html``: a bench's results for review in a browser, next to ``report.md``.

Self-contained: it opens from the file system (no server, no network); styles and the filter script are inline,
the plots and videos are the run folder's own files, referenced relatively (move the folder as a whole).

- the success matrix with Wilson intervals, coloured by success, each adapted policy's cell marked where it
  differs significantly from the base on that task (the per-task intervals of the forgetting; the gain's on the
  target);
- forgetting and gain with their intervals, coloured where significant;
- the divergences to the base, with the forward KL by phase of the target episodes;
- the Pareto and forgetting-vs-KL plots, and for checkpoint benches the per-checkpoint table;
- the video gallery: per task, one row per seed with every policy's video of that seed side by side (the base
  first), the instruction and outcome under each, filters for outcome and policy, a button that plays a row in
  step.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from vla_forget import __version__
from vla_forget.report import num, pct, points, policies_and_tasks
from vla_forget.video import poster_name, slug

REPORT_HTML = "report.html"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;padding:0 24px 48px;
max-width:1600px;color:#1d2327;background:#fff}
h1{font-size:22px;margin:20px 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}.meta{color:#555;margin:0 0 8px}nav a{margin-right:14px}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #d6d9dc;padding:4px 8px;text-align:right;
white-space:nowrap}th{background:#f3f5f6;text-align:center}td.name,th.name{text-align:left}
td small{color:#444;margin-left:4px}th.target{background:#e7eef8}.scroll{overflow-x:auto}
.sig-bad{background:#f8d2d0}.sig-good{background:#cdeccf}.mark{font-weight:700;margin-left:4px}
.mark.down{color:#b3261e}.mark.up{color:#1e7a34}.note{color:#555;max-width:1100px}
.plots img{max-width:48%;margin-right:1%;border:1px solid #ddd}
.filters{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #eee;z-index:1}
.filters label{margin-right:12px}.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start;margin:6px 0 14px}
.row .seed{width:90px;font-weight:600;padding-top:6px}figure{margin:0;width:264px}
figure video{width:256px;border:4px solid #ccc;border-radius:3px;background:#000}
figure.success video{border-color:#37b24d}figure.fail video{border-color:#e03131}
figcaption{font-size:12px;color:#333;word-wrap:break-word;white-space:normal}
figcaption .pol{font-weight:600}figcaption .ok{color:#1e7a34;font-weight:600}figcaption .ko{color:#b3261e;font-weight:600}
.hidden{display:none!important}button{font-size:12px}
"""

_JS = """
(function(){
  const figs = Array.from(document.querySelectorAll('figure[data-policy]'));
  function apply(){
    const outcome = document.querySelector('input[name=outcome]:checked').value;
    const shown = new Set(Array.from(document.querySelectorAll('input.pol:checked')).map(e => e.value));
    figs.forEach(f => {
      const ok = shown.has(f.dataset.policy) && (outcome === 'all' || f.dataset.outcome === outcome);
      f.classList.toggle('hidden', !ok);
    });
    document.querySelectorAll('.row').forEach(r => {
      r.classList.toggle('hidden', !r.querySelector('figure:not(.hidden)'));
    });
  }
  document.querySelectorAll('.filters input').forEach(e => e.addEventListener('change', apply));
  document.querySelectorAll('button.play-row').forEach(b => b.addEventListener('click', () => {
    const vids = Array.from(b.closest('.row').querySelectorAll('figure:not(.hidden) video'));
    vids.forEach(v => { v.pause(); v.currentTime = 0; });
    vids.forEach(v => v.play());
  }));
  // each video says whether the browser could decode it (read by the tests through the DOM)
  let loaded = 0, failed = 0;
  const vids = Array.from(document.querySelectorAll('video'));
  function count(){ document.body.dataset.videosLoaded = loaded; document.body.dataset.videosFailed = failed; }
  vids.forEach(v => {
    v.addEventListener('loadeddata', () => { v.dataset.state = 'loaded'; loaded++; count(); }, {once: true});
    v.addEventListener('error', () => { v.dataset.state = 'error'; failed++; count(); }, {once: true});
  });
  count();
})();
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: Optional[float]) -> str:
    text = pct(x)
    return text if text == "-" else f"{text} %"


def _pp(d: Optional[Dict[str, Any]]) -> str:
    """A difference in points with its interval (report.points), the interval small."""
    parts = points(d)
    return "-" if parts is None else f"{parts[0]} <small>{parts[1]}</small>"


def _significant(d: Optional[Dict[str, Any]]) -> int:
    """+1 when the interval lies above zero, -1 below, 0 otherwise."""
    if not d or d.get("ci_low") is None or d.get("ci_high") is None:
        return 0
    return 1 if d["ci_low"] > 0 else (-1 if d["ci_high"] < 0 else 0)


def _success_colour(rate: float) -> str:
    """Red (0 %) through yellow to green (100 %), pale enough to read the numbers on."""
    return f"hsl({int(round(120 * rate))}, 65%, 86%)"


def _heat(v: Optional[float], top: float) -> str:
    """White (0 or no value) to orange (``top`` and above): the divergences."""
    t = 0.0 if top <= 0 or v is None else max(0.0, min(1.0, v / top))
    return f"hsl(28, 90%, {int(round(100 - 30 * t))}%)"


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    return num(x, fmt)


def success_matrix(results: Dict[str, Any], tasks: Sequence[str], policies: Sequence[str], key: str = "success") -> str:
    """One row per policy, one column per task (the target last)."""
    base = results["base"]
    target = (results.get("target") or {}).get("task")
    head = "".join(f"<th{' class=target' if t == target else ''}>{_e(t)}{'<br>(target)' if t == target else ''}</th>"
                   for t in tasks)
    rows = [f"<div class=scroll><table class=matrix><tr><th class=name>policy</th>{head}</tr>"]
    for p in policies:
        cells = []
        for t in tasks:
            s = results[key].get(p, {}).get(t)
            if not s:
                cells.append("<td>-</td>")
                continue
            mark = ""
            if key == "success" and p != base:
                if t == target:
                    sig = _significant((results.get("gain_detail") or {}).get(p))
                else:  # forgetting is base - policy: above zero is a loss
                    per = ((results.get("forgetting_detail") or {}).get(p) or {}).get("per_task", {})
                    sig = -_significant(per.get(t))
                if sig:
                    mark = (f"<span class='mark {'up' if sig > 0 else 'down'}' title='significantly "
                            f"{'above' if sig > 0 else 'below'} the base (95 % interval of the difference)'>"
                            f"{'▲' if sig > 0 else '▼'}</span>")
            title = f"{s['successes']}/{s['n']} episodes; Wilson 95 % interval {_pct(s['ci_low'])} to {_pct(s['ci_high'])}"
            cells.append(f"<td style='background:{_success_colour(s['rate'])}' title='{_e(title)}'>{_pct(s['rate'])}"
                         f"<small>[{pct(s['ci_low'])}, {pct(s['ci_high'])}]</small>{mark}</td>")
        rows.append(f"<tr><td class=name>{_e(p)}{' (base)' if p == base else ''}</td>{''.join(cells)}</tr>")
    rows.append("</table></div>")
    return "\n".join(rows)


def forgetting_table(results: Dict[str, Any], policies: Sequence[str]) -> str:
    rows = ["<table><tr><th class=name>policy</th><th>battery mean</th><th>forgetting (points)</th>"
            "<th>gain on the target (points)</th></tr>"]
    for p in policies:
        f = (results.get("forgetting_detail") or {}).get(p)
        g = (results.get("gain_detail") or {}).get(p)
        fc = {1: " class=sig-bad", -1: " class=sig-good"}.get(_significant(f) if p != results["base"] else 0, "")
        gc = {1: " class=sig-good", -1: " class=sig-bad"}.get(_significant(g) if p != results["base"] else 0, "")
        rows.append(f"<tr><td class=name>{_e(p)}</td><td>{_pct(results['battery_mean_success'].get(p))}</td>"
                    f"<td{fc}>{_pp(f)}</td><td{gc}>{_pp(g)}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def divergence_tables(results: Dict[str, Any], policies: Sequence[str]) -> str:
    kl = results.get("kl_to_base") or {}
    dv = results.get("divergences") or {}
    if dv.get("skipped"):
        return f"<p class=note>Divergences skipped: {_e(dv['skipped'])}.</p>"
    top = max([(k or {}).get("forward") or 0.0 for k in kl.values()] + [1e-9])
    rows = ["<table><tr><th class=name>policy</th><th>states</th><th>forward KL (target)</th><th>reverse KL (target)</th>"
            "<th>TV (target)</th><th>forward KL (battery)</th></tr>"]
    phases: List[Tuple[str, List[Dict[str, Any]]]] = []
    for p in policies:
        k = kl.get(p)
        if k is None:
            rows.append(f"<tr><td class=name>{_e(p)}</td><td colspan=5>no action distribution</td></tr>")
            continue
        d = k.get("detail") or {}
        t, b = d.get("target") or {}, d.get("battery") or {}
        fwd = t.get("forward", k.get("forward"))
        tv = t.get("tv", k.get("tv"))
        tv_text = _num(tv) if t.get("tv_reliable", True) else f"<span title='too few effective samples'>({_num(tv)})</span>"
        rows.append(
            f"<tr><td class=name>{_e(p)}</td><td>{k.get('n_states', '-')}</td>"
            f"<td style='background:{_heat(fwd, top)}'>{_num(fwd)} <small>± {_num(t.get('forward_se'))}</small></td>"
            f"<td>{_num(t.get('reverse', k.get('reverse')))} <small>± {_num(t.get('reverse_se'))}</small></td>"
            f"<td>{tv_text}</td><td>{_num(b.get('forward'))}</td></tr>")
        if t.get("forward_by_phase"):
            phases.append((p, t["forward_by_phase"]))
    rows.append("</table>")
    out = "\n".join(rows)
    if phases:
        head = phases[0][1]
        out += ("\n<h3>Forward KL by phase of the target episodes</h3>\n<p class=note>Quarters of each episode's steps: "
                "a policy that changed one part of the task (the approach, the grasp, the carry, the placement) "
                "shows there.</p>\n<table><tr><th class=name>policy</th>"
                + "".join(f"<th>{100 * r['from']:.0f}-{100 * r['to']:.0f} %</th>" for r in head) + "</tr>")
        for p, rs in phases:
            out += (f"<tr><td class=name>{_e(p)}</td>" + "".join(
                f"<td style='background:{_heat(r.get('forward'), top)}'>{_num(r.get('forward'))} <small>± "
                f"{_num(r.get('forward_se'))}</small></td>" for r in rs) + "</tr>")
        out += "</table>"
    return out


def checkpoint_table(results: Dict[str, Any]) -> str:
    rows = results.get("checkpoints") or []
    if not rows:
        return ""
    out = ["<h2 id=checkpoints>Checkpoints</h2>", "<table><tr><th class=name>checkpoint</th><th>method</th><th>update</th>"
           "<th>target success</th><th>gain</th><th>forgetting [95 %]</th><th>forward KL</th></tr>"]
    for c in rows:
        ci = c.get("forgetting_ci") or [None, None]
        f = {"value": c.get("forgetting"), "ci_low": ci[0], "ci_high": ci[1]}
        out.append(f"<tr><td class=name>{_e(c.get('key'))}</td><td>{_e(c.get('method', '-'))}</td><td>{c.get('update', '-')}</td>"
                   f"<td>{_pct(c.get('target_success'))}</td><td>{_num(c.get('gain') and 100 * c['gain'], '{:+.1f}')}</td>"
                   f"<td{' class=sig-bad' if _significant(f) > 0 else ''}>{_pp(f)}</td><td>{_num(c.get('forward_kl'))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def video_episodes(run_dir: str) -> List[Dict[str, Any]]:
    """The episodes of ``run_dir/episodes.jsonl`` that have a video, with ``path`` relative to the run folder."""
    path = os.path.join(run_dir, "episodes.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of an interrupted run
            if r.get("video") and not r.get("states_only"):
                r["path"] = f"videos/{slug(r['policy'], 80)}/{r['video']}"
                out.append(r)
    return out


def gallery(results: Dict[str, Any], tasks: Sequence[str], policies: Sequence[str], run_dir: str) -> str:
    eps = video_episodes(run_dir)
    if not eps:
        return ("<p class=note>This run has no videos (<code>--videos-per-task 0</code>, or a run from before videos were "
                "recorded): bench again with <code>--videos-per-task N</code> to review episodes here.</p>")
    by: Dict[Tuple[str, int], Dict[str, Dict[str, Any]]] = {}
    for r in eps:
        by.setdefault((r["task"], int(r["seed"])), {})[r["policy"]] = r
    order = [p for p in policies if any(p in d for d in by.values())]
    filt = ["<div class=filters><strong>Show:</strong> "]
    for v, label in (("all", "all"), ("success", "successes"), ("fail", "failures")):
        filt.append(f"<label><input type=radio name=outcome value={v}{' checked' if v == 'all' else ''}> {label}</label>")
    filt.append(" <strong>Policies:</strong> ")
    for p in order:
        filt.append(f"<label><input type=checkbox class=pol value='{_e(p)}' checked> {_e(p)}</label>")
    filt.append("</div>")
    out = ["\n".join(filt)]
    for t in tasks:
        seeds = sorted(s for (task, s) in by if task == t)
        if not seeds:
            continue
        out.append(f"<h3>{_e(t)}</h3>")
        for s in seeds:
            cells = [f"<div class=seed>seed {s}<br><button class=play-row>▶ play row</button></div>"]
            for p in order:
                r = by[(t, s)].get(p)
                if r is None:
                    continue
                ok = bool(r.get("success_at_end"))
                exists = os.path.exists(os.path.join(run_dir, r["path"]))
                poster = poster_name(r["path"])
                poster_attr = f" poster='{_e(poster)}'" if os.path.exists(os.path.join(run_dir, poster)) else ""
                media = (f"<video src='{_e(r['path'])}'{poster_attr} controls muted loop preload=metadata></video>"
                         if exists else f"<p class=note>missing: {_e(r['path'])}</p>")
                cells.append(
                    f"<figure class={'success' if ok else 'fail'} data-policy='{_e(p)}' data-outcome={'success' if ok else 'fail'}>"
                    f"{media}<figcaption><span class=pol>{_e(p)}</span> · "
                    f"{'<span class=ok>✓ success</span>' if ok else '<span class=ko>✗ failure</span>'}"
                    f"<br>{_e(r.get('instruction', ''))}</figcaption></figure>")
            out.append(f"<div class=row>{''.join(cells)}</div>")
    return "\n".join(out)


def write_html(results: Dict[str, Any], path: str, run_dir: str) -> str:
    """Write ``report.html`` for ``results`` (the bench in ``run_dir``); returns ``path``."""
    policies, tasks = policies_and_tasks(results)
    battery = results["battery"]
    target = results.get("target")
    plots = results.get("plots") or {}
    imgs = [f"<img src='{_e(plots[k])}' alt='{k}'>" for k in ("pareto", "law")
            if plots.get(k) and os.path.exists(os.path.join(run_dir, plots[k]))]
    sw = results.get("software") or {}
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>vla-forget bench: {_e(battery['id'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>vla-forget bench: {_e(battery['id'])}</h1>",
        f"<p class=meta>Base <strong>{_e(results['base'])}</strong> · target "
        f"<strong>{_e(target['id'] + ' (' + target['task'] + ')') if target else '-'}</strong> · {results['episodes']} episodes · "
        f"torch {_e(sw.get('torch', '?'))}, mani-skill {_e(sw.get('mani-skill', '?'))} · vla-forget {_e(__version__)} · "
        f"{results.get('wall_s', '?')} s</p>",
        "<nav><a href=#success>success</a><a href=#forgetting>forgetting and gain</a><a href=#divergences>divergences</a>"
        + ("<a href=#plots>plots</a>" if imgs else "") + ("<a href=#checkpoints>checkpoints</a>" if results.get("checkpoints") else "")
        + "<a href=#videos>videos</a></nav>",
        "<h2 id=success>Success at the end of the episode</h2>",
        "<p class=note>% of episodes, [Wilson 95 % interval]; ▲/▼: significantly above/below the base on that task "
        "(the 95 % interval of the difference excludes zero; on the target, the gain's).</p>",
        success_matrix(results, tasks, policies),
        "<h2 id=forgetting>Forgetting and gain</h2>",
        "<p class=note>Points relative to the base. Forgetting: mean over the battery of (base − policy); red where "
        "its 95 % interval lies above zero. Gain: policy − base on the target; green where its interval lies above "
        "zero (docs/metrics.md).</p>",
        forgetting_table(results, policies),
        "<h2 id=divergences>Action-distribution divergence to the base</h2>",
        "<p class=note>Nats over the 7 action tokens, temperature-1 distributions; forward KL on the base's states "
        "(RL's Razor's measure), ± one standard error over states.</p>",
        divergence_tables(results, policies),
    ]
    if imgs:
        parts += ["<h2 id=plots>Plots</h2>", f"<div class=plots>{''.join(imgs)}</div>"]
    parts.append(checkpoint_table(results))
    parts += ["<h2 id=videos>Videos</h2>",
              "<p class=note>Each row is one seed: every policy from the same initial state, the base first. Border: "
              "green success, red failure.</p>",
              gallery(results, tasks, policies, run_dir),
              f"<script>{_JS}</script></body></html>"]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(x for x in parts if x))
    os.replace(tmp, path)
    return path
