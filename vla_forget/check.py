"""`vla-forget check`: a bench's results as a pass/fail answer for a lab's CI.

Each policy of a bench is compared with a reference: the base of the same bench (default), or a policy of a
saved baseline (``results.json`` of an earlier bench on the same battery and protocol). A **violation** is a
difference that is significant at the report's 95 % level *and* beyond the threshold:

* forgetting: the reference's battery mean minus the policy's, with the report's interval; a violation when
  the whole interval lies above ``max_forgetting`` points;
* a task of the battery: the reference's success minus the policy's; a violation when the whole interval lies
  above ``max_task_drop`` points;
* with ``min_gain``, the target: the policy's success minus the reference's; a violation when the whole
  interval lies below ``min_gain`` points.

Against the bench's own base the intervals are the report's (paired by seed, ``forgetting_detail``); against
a baseline from another bench they are Newcombe's unpaired intervals per task, MOVER over tasks
(:func:`vla_forget.metrics.forgetting`), from the success counts of both results.

:func:`run_check` returns a :class:`CheckReport`; :func:`junit_xml` writes it for CI systems. Light: no torch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence
from xml.sax.saxutils import escape, quoteattr

from vla_forget import metrics
from vla_forget.errors import VlaForgetError


class CheckError(VlaForgetError, ValueError):
    """Results that cannot be checked (missing, unreadable, or not comparable with the baseline)."""


@dataclass
class Finding:
    """One comparison of one policy: what was compared, the difference in points and its 95 % interval."""

    policy: str
    check: str
    """forgetting, task:<task id> or gain"""
    value: float
    ci_low: float
    ci_high: float
    threshold: float
    violation: bool
    message: str


@dataclass
class CheckReport:
    results: str
    reference: str
    """the policy compared against, and where it comes from"""
    thresholds: Dict[str, Optional[float]]
    findings: List[Finding] = field(default_factory=list)

    @property
    def violations(self) -> List[Finding]:
        return [f for f in self.findings if f.violation]

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> Dict[str, Any]:
        return {"results": self.results, "reference": self.reference, "thresholds": self.thresholds,
                "passed": self.passed, "violations": len(self.violations),
                "policies": sorted({f.policy for f in self.findings}),
                "findings": [asdict(f) for f in self.findings]}


def read_results(path: str) -> Dict[str, Any]:
    """A bench's results: ``path`` is its folder or its ``results.json``."""
    file = os.path.join(path, "results.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        hint = " (a bench folder holds one once its bench has finished)" if os.path.isdir(path) else ""
        raise CheckError(f"{file} does not exist{hint}")
    try:
        with open(file) as f:
            data = json.load(f)
        if not isinstance(data, dict) or "success" not in data or "base" not in data:
            raise ValueError("not the results of a bench (no 'success' or 'base')")
    except (OSError, ValueError) as e:
        raise CheckError(f"cannot read {file}: {e}") from None
    from vla_forget.analysis import RESULTS_FORMAT

    if data.get("format") != RESULTS_FORMAT:
        raise CheckError(f"{file} has results format {data.get('format')!r}, this version reads {RESULTS_FORMAT}: "
                         f"rebuild it from its episodes with `vla-forget analyze {os.path.dirname(file) or '.'}`")
    return data


def _rates(results: Dict[str, Any], policy: str) -> Dict[str, metrics.Rate]:
    return {t: metrics.Rate(int(v["successes"]), int(v["n"])) for t, v in results["success"].get(policy, {}).items()}


def _battery_tasks(results: Dict[str, Any]) -> List[str]:
    return list((results.get("battery") or {}).get("tasks") or [])


def _target_task(results: Dict[str, Any]) -> Optional[str]:
    return (results.get("target") or {}).get("task")


def comparable(results: Dict[str, Any], baseline: Dict[str, Any]) -> List[str]:
    """Why two benches' numbers cannot be compared (empty: they can): another battery or battery content,
    another target task, other decoding or image size."""
    out = []
    b1, b2 = results.get("battery") or {}, baseline.get("battery") or {}
    for key in ("id", "version", "hash"):
        if b1.get(key) != b2.get(key):
            out.append(f"battery {key}: {b2.get(key)!r} in the baseline, {b1.get(key)!r} here")
    if _target_task(results) != _target_task(baseline):
        out.append(f"target task: {_target_task(baseline)!r} in the baseline, {_target_task(results)!r} here")
    p1, p2 = results.get("protocol") or {}, baseline.get("protocol") or {}
    for key in ("decoding", "image_size"):
        if p1.get(key) != p2.get(key):
            out.append(f"protocol {key}: {p2.get(key)!r} in the baseline, {p1.get(key)!r} here")
    return out


def _pp(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.1f}"


def run_check(results_path: str, *, baseline: Optional[str] = None, baseline_policy: Optional[str] = None,
              policies: Sequence[str] = (), max_forgetting: float = 0.0, max_task_drop: float = 0.0,
              min_gain: Optional[float] = None) -> CheckReport:
    """Compare the policies of the bench at ``results_path`` (all but the reference, or ``policies``) with the
    reference (see the module's docstring); thresholds in points. Raises :class:`CheckError` on bad input."""
    bad = [f"{name} {v:g} is outside 0-100 points" for name, v in (("--max-forgetting", max_forgetting),
                                                                   ("--max-task-drop", max_task_drop)) if not 0 <= v <= 100]
    if min_gain is not None and not -100 <= min_gain <= 100:
        bad.append(f"--min-gain {min_gain:g} is outside -100-100 points")
    if bad:
        raise CheckError("; ".join(bad))
    results = read_results(results_path)
    if baseline is None:
        if baseline_policy is not None:
            raise CheckError("--baseline-policy needs --baseline (a saved results.json to take it from)")
        ref_results, ref = results, results["base"]
        reference = f"{ref} (the bench's base)"
    else:
        ref_results = read_results(baseline)
        problems = comparable(results, ref_results)
        if problems:
            raise CheckError(f"{baseline} is not comparable with {results_path}: {'; '.join(problems)}")
        ref = baseline_policy or ref_results["base"]
        if ref not in ref_results["success"]:
            raise CheckError(f"--baseline-policy {ref!r} is not in {baseline}; its policies: "
                             f"{', '.join(sorted(ref_results['success']))}")
        reference = f"{ref} of {baseline}"
    chosen = list(policies) or [p for p in results["success"] if not (baseline is None and p == ref)]
    unknown = [p for p in chosen if p not in results["success"]]
    if unknown:
        raise CheckError(f"--policy {', '.join(unknown)}: not in {results_path}; its policies: "
                         f"{', '.join(sorted(results['success']))}")
    if not chosen:
        raise CheckError(f"{results_path} holds no policy besides the base to check")
    report = CheckReport(results=results_path, reference=reference,
                         thresholds={"max_forgetting": max_forgetting, "max_task_drop": max_task_drop,
                                     "min_gain": min_gain})
    tasks = _battery_tasks(results)
    for p in chosen:
        if baseline is None:
            detail = (results.get("forgetting_detail") or {}).get(p)
            if detail is None:
                raise CheckError(f"{results_path} has no forgetting for {p} (a bench without a battery?)")
        else:
            detail = metrics.forgetting(_rates(ref_results, ref), _rates(results, p), tasks)
        v, lo, hi = detail["value"], detail["ci_low"], detail["ci_high"]
        bad = not math.isnan(lo) and lo > max_forgetting / 100
        report.findings.append(Finding(
            p, "forgetting", v, lo, hi, max_forgetting, bad,
            f"forgetting {_pp(v)} pp [{_pp(lo)}, {_pp(hi)}] against {ref}"
            + (f": significantly above {max_forgetting:g} pp" if bad else "")))
        for t, d in (detail.get("per_task") or {}).items():
            bad = d["ci_low"] > max_task_drop / 100
            report.findings.append(Finding(
                p, f"task:{t}", d["value"], d["ci_low"], d["ci_high"], max_task_drop, bad,
                f"{t}: drop {_pp(d['value'])} pp [{_pp(d['ci_low'])}, {_pp(d['ci_high'])}] against {ref}"
                + (f": significantly above {max_task_drop:g} pp" if bad else "")))
        target = _target_task(results)
        if min_gain is not None and target:
            mine, theirs = _rates(results, p).get(target), _rates(ref_results, ref).get(target)
            g = metrics.gain(theirs, mine)
            bad = not math.isnan(g["ci_high"]) and g["ci_high"] < min_gain / 100
            report.findings.append(Finding(
                p, "gain", g["value"], g["ci_low"], g["ci_high"], min_gain, bad,
                f"{target} gain {_pp(g['value'])} pp [{_pp(g['ci_low'])}, {_pp(g['ci_high'])}] against {ref}"
                + (f": significantly below {min_gain:g} pp" if bad else "")))
    return report


def junit_xml(report: CheckReport) -> str:
    """The report as JUnit XML: one test suite, one test case per policy and check, a failure per violation."""
    cases = []
    for f in report.findings:
        body = f"<failure message={quoteattr(f.message)} type=\"regression\">{escape(f.message)}</failure>" if f.violation else ""
        cases.append(f"    <testcase classname={quoteattr(f.policy)} name={quoteattr(f.check)}>{body}</testcase>")
    return ("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuites>\n"
            f"  <testsuite name=\"vla-forget check\" tests=\"{len(report.findings)}\" failures=\"{len(report.violations)}\" "
            f"errors=\"0\" skipped=\"0\">\n"
            f"    <properties><property name=\"reference\" value={quoteattr(report.reference)}/></properties>\n"
            + "\n".join(cases) + "\n  </testsuite>\n</testsuites>\n")
