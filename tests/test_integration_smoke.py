"""The real CLI on the real CPU simulator: `vla-forget bench --preset smoke`.

This is the end-to-end check of the harness (ManiSkill3 envs in worker
processes, the scripted expert, the small VLA, videos, divergences, report).
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # two benches of the real CLI on the real simulator: minutes


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    env = dict(os.environ, VLA_FORGET_CACHE=str(out.parent / "cache"))
    proc = subprocess.run([sys.executable, "-m", "vla_forget.cli", "bench", "--preset", "smoke", "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_smoke_results(smoke_run):
    out, proc = smoke_run
    res = json.loads((out / "results.json").read_text())
    assert res["battery"]["id"] == "tabletop-v2"  # the default: the low-poly suite
    assert set(res["visual_assets"]) == set(res["battery"]["tasks"] + [res["target"]["task"]])
    tasks = res["battery"]["tasks"] + [res["target"]["task"]]
    for pol in ("expert-v1", "small-vla-random-v1"):
        assert set(res["success"][pol]) == set(tasks)
        assert all(v["n"] == 2 for v in res["success"][pol].values())
    # the scripted expert really succeeds in simulation, and success is detected
    exp = res["success"]["expert-v1"]
    assert sum(v["successes"] for t, v in exp.items() if t in ("PickCube-v2", "StackCube-v2", "PlaceCubeOnTarget-v2")) >= 5
    assert res["forgetting"]["expert-v1"] < 0  # the expert is far better than a random base
    assert res["kl_to_base"]["expert-v1"] is None
    lines = (out / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * len(tasks)
    videos = list((out / "videos").rglob("*.mp4"))
    assert len(videos) == 2 * len(tasks) and all(v.stat().st_size > 1000 for v in videos)
    assert "Success at the end" in (out / "report.md").read_text()


def test_smoke_resume_is_a_no_op(smoke_run):
    out, _ = smoke_run
    before = (out / "episodes.jsonl").read_text()
    env = dict(os.environ, VLA_FORGET_CACHE=str(out.parent / "cache"))
    proc = subprocess.run([sys.executable, "-m", "vla_forget.cli", "bench", "--preset", "smoke", "--out", str(out),
                           "--resume", "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "episodes.jsonl").read_text() == before  # nothing redone
