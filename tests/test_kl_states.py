"""The states of the divergences: spread over whole episodes, broken down by phase, the policy's own as an
option, never mixed with an older rule; and the faults found around them (wrist cameras, a torn
episodes.jsonl, bad options), through the public API and CLI on a fake env."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from tests.fakes import FakeEnv, register_fake_tasks
from vla_forget import rollout
from vla_forget.bench import BenchConfig, BenchError, run_bench
from vla_forget.cli import main
from vla_forget.policies.small_vla import SmallVLA
from vla_forget.states import SPREAD, STRIDE, episode_steps, load_states

TINY = dict(image_size=32, conv_channels=(8, 16), residual_stages=1, image_grid=2, state_dim=16, d_model=32,
            n_layers=1, context_layers=1, heads=2, ff_mult=2, text_layers=1, text_tokens=2, max_instruction_bytes=32)
STEPS = 40  # episode length of the fake tasks here


@pytest.fixture()
def world(tmp_path, monkeypatch):
    register_fake_tasks(monkeypatch)
    battery = tmp_path / "fake-v1.yaml"
    battery.write_text(f"id: fake\nversion: 1\nepisodes: 2\nseed_start: 10\nmax_episode_steps: {STEPS}\n"
                       "tasks: [FakeA-v1, FakeB-v1]\n")
    target = tmp_path / "fake-target-v1.yaml"
    target.write_text(f"id: fake-target\nversion: 1\ntask: FakeTarget-v1\nepisodes: 50\nseed_start: 500\n"
                      f"max_episode_steps: {STEPS}\n")
    runs = {"jobs": [], "wrist": []}
    real_run_job = rollout.run_job

    def get_env(task, **kw):
        runs["wrist"].append(bool(kw.get("wrist_camera")))
        return FakeEnv(task, num_envs=kw.get("num_envs", 1), max_episode_steps=kw.get("max_steps") or 6,
                       wrist_camera=kw.get("wrist_camera", False))

    def run_job(job):
        runs["jobs"].append(job)
        return real_run_job(job)

    monkeypatch.setattr(rollout, "ENVS", get_env)
    monkeypatch.setattr(rollout, "run_job", run_job)
    monkeypatch.setattr("vla_forget.envs.vulkan.check_vulkan", lambda *a, **k: "fake")
    monkeypatch.setenv("VLA_FORGET_CACHE", str(tmp_path / "cache"))
    base, policy, wrist = (str(tmp_path / n) for n in ("base", "policy", "wrist"))
    SmallVLA.random_init(seed=0, **TINY).save(base)
    SmallVLA.random_init(seed=1, **TINY).save(policy)
    SmallVLA.random_init(seed=2, wrist_camera=True, wrist_image_size=16, wrist_image_grid=1, **TINY).save(wrist)
    return dict(tmp=tmp_path, battery=str(battery), target=str(target), base=base, policy=policy, wrist=wrist, runs=runs)


def compare_benches():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("compare_benches", os.path.join(root, "benchmarks", "probes", "compare_benches.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def config(w, out, policies=None, **kw):
    kw = {"kl_states_per_task": 32, "kl_samples_per_state": 2, **kw}
    return BenchConfig(policies=policies or [w["policy"]], base=w["base"], out=str(w["tmp"] / out), battery=w["battery"],
                       target=w["target"], workers=0, image_size=16, videos_per_task=0, progress=False, **kw)


def target_states(w, out, sub="states"):
    seeds = list(range(500, 550))
    return load_states(str(w["tmp"] / out / sub), "FakeTarget-v1", seeds)


# --- the rule ----------------------------------------------------------------------------------------------
def test_spread_rule_deals_midpoints_round_robin():
    # 8 states over 3 episodes of 40 steps: states k = 0..7 at steps (2k+1)*40//16, episode k mod 3
    assert episode_steps(SPREAD, n_states=8, n_episodes=3, index=0, length=40) == [2, 17, 32]
    assert episode_steps(SPREAD, n_states=8, n_episodes=3, index=2, length=40) == [12, 27]
    assert episode_steps(SPREAD, n_states=2, n_episodes=3, index=2, length=40) == []
    assert episode_steps(SPREAD, n_states=100, n_episodes=1, index=0, length=10) == list(range(10))  # dedupe
    # the old rule: every 5th step from 0 until ceil(n/E) per episode
    assert episode_steps(STRIDE, n_states=32, n_episodes=50, index=3, length=100) == [0]
    assert episode_steps(STRIDE, n_states=32, n_episodes=16, index=0, length=100, stride=5) == [0, 5]


def test_recorded_states_cover_the_whole_episode_and_kl_is_reported_by_phase(world):
    w = world
    res = run_bench(config(w, "new"), log=lambda *_: None)
    obs, meta = target_states(w, "new")
    assert obs.batch_size == 32 and set(meta["length"]) == {STEPS}
    steps = meta["step"]
    assert steps.max() >= 0.75 * STEPS and steps.min() < 0.25 * STEPS  # late steps, not only the first few
    assert np.bincount(steps * 4 // STEPS, minlength=4).tolist() == [8, 8, 8, 8]  # each quarter in proportion
    k = res["kl_to_base"][w["policy"]]
    assert k["state_set"] == "target" and k["forward"] > 0 and k["forward_se"] > 0 and k["reverse_se"] > 0
    phases = k["forward_by_phase"]
    assert [p["n_states"] for p in phases] == [8, 8, 8, 8] and all(p["forward"] > 0 for p in phases)
    assert np.mean([p["forward"] for p in phases]) == pytest.approx(k["forward"])  # equal phases: mean of means
    assert res["divergences"]["state_rule"] == SPREAD
    report = open(w["tmp"] / "new" / "report.md").read()
    assert "Forward KL by phase of the target episodes" in report and "0-25 %" in report
    assert "States: rule `spread-v1`" in report and "32 on target" in report
    # forgetting's interval comes from the episodes: exactly 0 for the base, never outside [-1, 1]
    assert res["forgetting_detail"][w["base"]]["ci_low"] == res["forgetting_detail"][w["base"]]["ci_high"] == 0.0
    f = res["forgetting_detail"][w["policy"]]
    assert -1.0 <= f["ci_low"] <= f["value"] <= f["ci_high"] <= 1.0 and f["ci_high"] > f["ci_low"]
    assert all(t["paired"] for t in f["per_task"].values())

    # the same bench under the old rule records the first steps only: what this test guards against
    run_bench(config(w, "old", kl_state_rule=STRIDE), log=lambda *_: None)
    _, old_meta = target_states(w, "old")
    assert set(old_meta["step"].tolist()) == {0}


def test_resuming_a_bench_recorded_under_the_old_rule_rerecords_states_only(world):
    w = world
    run_bench(config(w, "b", kl_state_rule=STRIDE), log=lambda *_: None)
    cfg_path = w["tmp"] / "b" / "config.json"
    saved = json.loads(cfg_path.read_text())
    del saved["config"]["kl_state_rule"], saved["config"]["kl_states"]  # as a bench of the earlier version saved it
    cfg_path.write_text(json.dumps(saved))
    lines = (w["tmp"] / "b" / "episodes.jsonl").read_text()
    os.makedirs(w["tmp"] / "b-old")
    shutil.copy(w["tmp"] / "b" / "results.json", w["tmp"] / "b-old" / "results.json")
    w["runs"]["jobs"].clear()
    said = []
    res = run_bench(config(w, "b"), resume=True, log=said.append)
    assert any("config.kl_state_rule: 'stride-v0' -> 'spread-v1'" in s and "re-run for their states only" in s for s in said)
    assert (w["tmp"] / "b" / "episodes.jsonl").read_text() == lines  # no episode record changes
    rerun = w["runs"]["jobs"]
    assert rerun and all(not j.record and j.policy_key == w["base"] for j in rerun)
    # the target's 32 recording episodes and the battery's 2 + 2 (32 states per task over 2 episodes each)
    assert sum(len(j.seeds) for j in rerun) == 32 + 2 + 2
    _, meta = target_states(w, "b")
    assert meta["step"].max() >= 0.75 * STEPS
    assert res["divergences"]["state_rule"] == SPREAD and res["kl_to_base"][w["policy"]]["forward_by_phase"]
    assert json.loads(cfg_path.read_text())["config"]["kl_state_rule"] == SPREAD
    # the two measurements side by side (benchmarks/probes/compare_benches.py)
    table = compare_benches().compare(json.loads((w["tmp"] / "b-old" / "results.json").read_text()), res,
                                      ["first steps", "whole episode"])
    old = json.loads((w["tmp"] / "b-old" / "results.json").read_text())["kl_to_base"][w["policy"]]
    new = res["kl_to_base"][w["policy"]]
    assert table[0].startswith("| policy | forgetting") and table[2].split(" | ")[2:4] == [
        f"{old['forward']:.2f} ± {old['forward_se']:.2f}", f"{new['forward']:.2f} ± {new['forward_se']:.2f}"]
    assert any(x.startswith("| pooled, linear |") for x in table)
    # resumed again: nothing to re-record, nothing to roll out
    w["runs"]["jobs"].clear()
    run_bench(config(w, "b"), resume=True, log=lambda *_: None)
    assert not w["runs"]["jobs"]


def test_policy_states_as_a_second_state_set(world):
    w = world
    res = run_bench(config(w, "both", kl_states="both"), log=lambda *_: None)
    k = res["kl_to_base"][w["policy"]]
    assert k["state_set"] == "target" and set(k["detail"]) == {"target", "battery", "target_policy"}
    own = k["detail"]["target_policy"]
    assert own["n_states"] == 32 and own["forward"] > 0 and own["reverse"] > 0 and len(own["forward_by_phase"]) == 4
    assert own["forward"] != k["detail"]["target"]["forward"]  # other states, another figure
    policy_dir = w["tmp"] / "both" / "states-policy"
    assert len(os.listdir(policy_dir)) == 1
    (sub,) = os.listdir(policy_dir)
    assert target_states(w, "both", f"states-policy/{sub}")[0].batch_size == 32
    assert "target_policy" in open(w["tmp"] / "both" / "report.md").read()
    # 'policy': the policy's own states are the main figure
    res2 = run_bench(config(w, "own", kl_states="policy"), log=lambda *_: None)
    k2 = res2["kl_to_base"][w["policy"]]
    assert k2["state_set"] == "target_policy" and k2["forward"] == pytest.approx(own["forward"])


# --- faults --------------------------------------------------------------------------------------------------
def test_front_only_base_and_a_wrist_policy(world):
    """The base records with the wrist camera when a policy measured on its states reads it: no crash at the
    divergence step (it used to come after every rollout), and the base still acts on its front view."""
    w = world
    res = run_bench(config(w, "bench-wrist", policies=[w["wrist"]]), log=lambda *_: None)
    k = res["kl_to_base"][w["wrist"]]
    assert k["forward"] > 0 and k["reverse"] > 0 and set(k["detail"]) == {"target", "battery"}
    obs, _ = target_states(w, "bench-wrist")
    assert obs.image.shape[1:] == (16, 32, 3)  # front and wrist side by side
    assert True in w["runs"]["wrist"]


def test_a_torn_last_line_is_cut_before_resuming_through_the_cli(world, capsys):
    w = world
    out = str(w["tmp"] / "torn")
    args = ["bench", "--policy", w["policy"], "--base", w["base"], "--battery", w["battery"], "--target", w["target"],
            "--target-episodes", "4", "--out", out, "--workers", "0", "--image-size", "16", "--videos-per-task", "0",
            "--kl-states-per-task", "8", "--kl-samples-per-state", "2", "--no-progress"]
    assert main(args) == 0
    path = os.path.join(out, "episodes.jsonl")
    lines = open(path).read().splitlines()
    n = len(lines)
    # a kill while the last episode was being written: its line is half there, without a newline
    open(path, "w").write("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    capsys.readouterr()
    assert main(["bench", "--out", out, "--resume", "--workers", "0", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "dropping a partly written last line" in err
    after = open(path).read().splitlines()
    assert len(after) == n and all(json.loads(x) for x in after)  # the episode redone, every line valid
    assert os.path.exists(os.path.join(out, "results.json"))


@pytest.mark.parametrize("flag,value,message", [
    ("--image-size", "-5", "--image-size must be a whole number >= 1, got -5"),
    ("--image-size", "0", "--image-size must be a whole number >= 1"),
    ("--kl-samples-per-state", "0", "--kl-samples-per-state must be a whole number >= 1"),
    ("--kl-states-per-task", "-1", "--kl-states-per-task must be a whole number >= 0"),
])
def test_bad_options_are_refused_before_any_work(world, capsys, flag, value, message):
    w = world
    out = w["tmp"] / "bad"
    code = main(["bench", "--policy", w["policy"], "--base", w["base"], "--battery", w["battery"], "--out", str(out),
                 "--workers", "0", flag, value, "--no-progress"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not w["runs"]["jobs"]


def test_bad_rule_and_state_set_are_refused(world):
    w = world
    with pytest.raises(BenchError, match="unknown kl_state_rule 'every-step'"):
        run_bench(config(w, "x", kl_state_rule="every-step"), log=lambda *_: None)
    with pytest.raises(BenchError, match="--kl-states must be one of base, policy, both"):
        run_bench(config(w, "x", kl_states="mine"), log=lambda *_: None)
