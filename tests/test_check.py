"""`vla-forget check`: a bench's results as a pass/fail answer (vla_forget.check), on the golden results."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vla_forget.check import CheckError, junit_xml, run_check
from vla_forget.cli import main

GOLDEN = Path(__file__).parent / "golden" / "bench-results.json"


@pytest.fixture
def bench(tmp_path):
    """A finished bench's folder holding the golden results: base small-vla-random-v1; zero-v1 forgets
    (+41.7 pp [+7.8, +65.8], FakeA-v1 +50.0 [+0.006, +81.2]); small-vla-random-s1-v1 does better than the base."""
    out = tmp_path / "bench"
    out.mkdir()
    shutil.copy(GOLDEN, out / "results.json")
    return out


def test_against_the_base_a_significant_loss_fails(bench, tmp_path, capsys):
    junit = tmp_path / "reports" / "check.xml"
    assert main(["check", str(bench), "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "ok   small-vla-random-s1-v1: forgetting -33.3 pp [-56.3, +2.0]" in out
    assert "FAIL zero-v1: forgetting +41.7 pp [+7.8, +65.8] against small-vla-random-v1: significantly above 0 pp" in out
    assert "FAIL zero-v1: FakeA-v1: drop +50.0 pp" in out and "FakeB-v1" not in out  # FakeB's interval holds 0
    assert "2 violation(s) in 1 of 2 policies" in out
    summary = json.loads((bench / "check.json").read_text())
    assert summary["passed"] is False and summary["violations"] == 2
    assert {(f["policy"], f["check"]) for f in summary["findings"] if f["violation"]} == {("zero-v1", "forgetting"),
                                                                                          ("zero-v1", "task:FakeA-v1")}
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "6" and suite.get("failures") == "2"  # 2 policies x (forgetting + 2 tasks)
    failed = [(c.get("classname"), c.get("name")) for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == [("zero-v1", "forgetting"), ("zero-v1", "task:FakeA-v1")]


def test_thresholds_in_points(bench):
    r = run_check(str(bench), max_forgetting=10.0)  # zero-v1's forgetting interval starts at +7.8: within 10
    assert [(f.policy, f.check) for f in r.violations] == [("zero-v1", "task:FakeA-v1")]
    r = run_check(str(bench), max_forgetting=10.0, max_task_drop=1.0)
    assert r.passed
    assert main(["check", str(bench), "--max-forgetting", "10", "--max-task-drop", "1"]) == 0
    # a required target gain: s1 gains +33.3 [-17.2, +67.4] on the target, zero-v1 -50.0 [-81.2, -0.0]
    r = run_check(str(bench), max_forgetting=100, max_task_drop=100, min_gain=70.0)
    assert {f.policy for f in r.violations if f.check == "gain"} == {"zero-v1", "small-vla-random-s1-v1"}
    r = run_check(str(bench), max_forgetting=100, max_task_drop=100, min_gain=60.0)
    assert {f.policy for f in r.violations} == {"zero-v1"}  # s1's interval reaches past 60


def test_against_a_saved_baseline(bench, tmp_path):
    base = tmp_path / "baseline.json"
    shutil.copy(GOLDEN, base)
    # zero-v1 against itself in another bench: no difference; the others against zero-v1 do better
    r = run_check(str(bench), baseline=str(base), baseline_policy="zero-v1")
    assert r.reference == f"zero-v1 of {base}" and r.passed
    assert {f.policy for f in r.findings} == {"small-vla-random-v1", "small-vla-random-s1-v1", "zero-v1"}
    own = next(f for f in r.findings if f.policy == "zero-v1" and f.check == "forgetting")
    assert own.value == 0 and own.ci_low < 0 < own.ci_high  # unpaired across benches: an interval around 0
    # against the baseline's base, zero-v1 forgets, as it does against the bench's own base
    r = run_check(str(bench), baseline=str(base))
    assert ("zero-v1", "forgetting") in {(f.policy, f.check) for f in r.violations}


def test_bad_input_is_refused_with_what_to_do(bench, tmp_path, capsys):
    assert main(["check", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["check", str(bench), "--policy", "ppo@update-000010"]) == 2
    assert "--policy ppo@update-000010: not in" in capsys.readouterr().err
    other = json.loads(GOLDEN.read_text())
    other["battery"]["hash"] = "0123456789abcdef"  # the battery's tasks or seeds changed
    other["protocol"]["image_size"] = 224
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(CheckError, match=r"not comparable .*battery hash: '0123456789abcdef' in the baseline, "
                                         r"'c6d6277a1e5e93f7' here; protocol image_size: 224 in the baseline, 16 here"):
        run_check(str(bench), baseline=str(tmp_path / "other.json"))
    with pytest.raises(CheckError, match="--baseline-policy needs --baseline"):
        run_check(str(bench), baseline_policy="zero-v1")
    with pytest.raises(CheckError, match="'nobody' is not in"):
        run_check(str(bench), baseline=str(GOLDEN), baseline_policy="nobody")


def test_thresholds_and_schema_are_checked_before_anything(bench, tmp_path):
    with pytest.raises(CheckError, match="--max-forgetting 150 is outside 0-100 points"):
        run_check(str(bench), max_forgetting=150)
    with pytest.raises(CheckError, match="--max-task-drop -1 is outside"):
        run_check(str(bench), max_task_drop=-1)
    old = json.loads(GOLDEN.read_text())
    old["format"] = 0
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(old))
    with pytest.raises(CheckError, match=r"results format 0, this version reads 1: rebuild .*vla-forget analyze"):
        run_check(str(tmp_path / "old"))
    assert not (tmp_path / "old" / "check.json").exists()  # nothing written


def test_junit_escapes_and_counts():
    r = run_check(str(GOLDEN))
    xml = junit_xml(r)
    root = ET.fromstring(xml)
    assert root.tag == "testsuites" and len(list(root.iter("testcase"))) == len(r.findings)
