"""benchmarks/reference/ppo_vs_sb3.py drives this project's PPO update (vla_forget.adapt.ppo) on a
state-based ManiSkill task: one short run of that side (and of its two variants at the time limit), so that a change of the update's interface breaks a
test, not the reference comparison (stable-baselines3, an optional extra, is not needed here)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
    spec = importlib.util.spec_from_file_location("ppo_vs_sb3", os.path.join(ROOT, "benchmarks", "reference", "ppo_vs_sb3.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ppo_vs_sb3"] = mod  # (its dataclass looks its module up)
    spec.loader.exec_module(mod)
    return mod


def test_the_projects_learner_runs_on_the_state_based_task(tmp_path, monkeypatch):
    monkeypatch.setenv("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
    mod = _module()
    learners = ["vla-forget", "vla-forget+bootstrap", "vla-forget+time"]
    assert mod.main(["--steps", "1600", "--learners", *learners, "--out", str(tmp_path)]) == 0
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert (tmp_path / "curves.png").stat().st_size > 0  # the plot, with fewer updates than its window
    assert curves["task"] == "PushCube-v1" and [r["learner"] for r in curves["results"]] == learners
    for r in curves["results"]:
        assert [row["env_steps"] for row in r["rows"]] == [800, 1600]  # 16 episodes of 50 steps an update
        for row in r["rows"]:
            assert row["first_clipfrac"] == 0 and 0 <= row["success"] <= 1 and row["return"] > 0
    # a second call keeps what is there and adds nothing it already has
    assert mod.main(["--steps", "1600", "--learners", "vla-forget", "--out", str(tmp_path)]) == 0
    assert len(json.loads((tmp_path / "curves.json").read_text())["results"]) == 3
