"""`bench --checkpoints`: every checkpoint of a sweep folder is evaluated, base outputs are computed once (N + 1 passes)."""

from __future__ import annotations

import json
import os

import pytest

from tests.fakes import FakeEnv, register_fake_tasks
from vla_forget import bench as bench_mod
from vla_forget import rollout
from vla_forget.bench import BenchConfig, BenchError, run_bench
from vla_forget.cli import main
from vla_forget.policies.small_vla import SmallVLA

TINY = dict(image_size=32, conv_channels=(8, 16), residual_stages=1, image_grid=2, state_dim=16, d_model=32,
            n_layers=1, context_layers=1, heads=2, ff_mult=2, text_layers=1, text_tokens=2, max_instruction_bytes=32)


def save_checkpoint(run_dir, update, model, method, seed=0):
    """A checkpoint in the adapt run-folder contract: policy folder + meta.json (written last)."""
    path = os.path.join(run_dir, "checkpoints", f"update-{update:06d}")
    model.save(path)
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump({"method": method, "update": update, "env_steps": 12 * update, "samples_seen": 8 * update,
                   "wall_time_s": 0.1 * update, "hparams": {"lr": 1e-4, "seed": seed}, "run": os.path.basename(run_dir)}, f)
    return path


def make_run(sweep, name, method, base_dir, target, seeds, seed=0):
    run = os.path.join(sweep, "runs", name)
    os.makedirs(run)
    with open(os.path.join(run, "run.json"), "w") as f:
        json.dump({"kind": "adapt", "method": method, "base": base_dir, "task": target, "config": {}}, f)
    save_checkpoint(run, 0, SmallVLA.load(base_dir), method, seed)  # the base copy: identical weights
    for u, s in zip((2, 4), seeds):
        save_checkpoint(run, u, SmallVLA.random_init(seed=s, **TINY), method, seed)
    return run


@pytest.fixture()
def world(tmp_path, monkeypatch):
    register_fake_tasks(monkeypatch)
    battery = tmp_path / "fake-v1.yaml"
    battery.write_text("id: fake\nversion: 1\nepisodes: 2\nseed_start: 10\ntasks: [FakeA-v1, FakeB-v1]\n")
    target = tmp_path / "fake-target-v1.yaml"
    target.write_text("id: fake-target\nversion: 1\ntask: FakeTarget-v1\nepisodes: 2\nseed_start: 500\n")
    counts = {"episodes": 0}
    real_run_job = rollout.run_job

    def counting_run_job(job):
        counts["episodes"] += len(job.seeds)
        return real_run_job(job)

    monkeypatch.setattr(rollout, "ENVS", lambda task, **kw: FakeEnv(task, num_envs=kw.get("num_envs", 1),
                                                                        max_episode_steps=kw.get("max_steps") or 4))
    monkeypatch.setattr(rollout, "run_job", counting_run_job)
    monkeypatch.setattr("vla_forget.envs.vulkan.check_vulkan", lambda *a, **k: "fake")
    monkeypatch.setenv("VLA_FORGET_CACHE", str(tmp_path / "cache"))
    base = str(tmp_path / "base")
    SmallVLA.random_init(seed=0, **TINY).save(base)
    sweep = str(tmp_path / "sweep")
    make_run(sweep, "ppo_lr1e-4_b8_s0", "ppo", base, str(target), (1, 2))
    make_run(sweep, "sft_lr1e-4_b8_s0", "sft", base, str(target), (3, 4))
    with open(os.path.join(sweep, "sweep.json"), "w") as f:
        json.dump({"kind": "sweep", "runs": [{"name": "ppo_lr1e-4_b8_s0"}, {"name": "sft_lr1e-4_b8_s0"}]}, f)
    return tmp_path, str(battery), str(target), base, sweep, counts


def config(tmp, battery, target, base, sweep, out, **kw):
    return BenchConfig(policies=[], base=base, out=str(tmp / out), battery=battery, target=target, workers=0,
                       image_size=16, videos_per_task=0, kl_states_per_task=4, kl_samples_per_state=2, progress=False,
                       checkpoints=[sweep], **kw)


def test_bench_over_a_sweep_evaluates_every_checkpoint(world):
    tmp, battery, target, base, sweep, counts = world
    res = run_bench(config(tmp, battery, target, base, sweep, "b"), log=lambda *_: None)
    rows = res["checkpoints"]
    assert [r["key"] for r in rows] == [f"{run}@update-{u:06d}" for run in ("ppo_lr1e-4_b8_s0", "sft_lr1e-4_b8_s0")
                                        for u in (0, 2, 4)]
    # update 0 is the base copy: an alias of the base, not rolled out again
    assert [r["policy"] for r in rows if r["update"] == 0] == [base, base]
    evaluated = {p["id"] for p in res["policies"]}
    assert evaluated == {base} | {r["key"] for r in rows if r["update"] > 0}
    assert res["episodes"] == counts["episodes"] == 5 * (2 + 2 + 2)
    for r in rows:
        assert r["method"] == r["run"].split("_")[0] and r["env_steps"] == 12 * r["update"]
        assert 0 <= r["target_success"] <= 1 and 0 <= r["battery_success"] <= 1
        assert r["forgetting"] == pytest.approx(res["forgetting"][r["policy"]], nan_ok=True)
        if r["update"] == 0:
            assert r["forward_kl"] == 0.0 and r["forgetting"] == 0.0
        else:
            assert r["forward_kl"] > 0 and r["kl_state_set"] == "target" and r["forward_kl_battery"] > 0
    law = res["law"]
    assert law["n"] == 4 and law["model"] == "linear" and law["predictor"] == "forward_kl" and law["states"] == "target"
    assert set(law["fits"]) == {"proportional", "linear", "quadratic"}
    assert {p["policy"] for p in law["points"]} == {r["key"] for r in rows if r["update"] > 0}
    (m,) = res["matched"]  # one pair of methods
    assert m["methods"] == ["ppo", "sft"]
    if "a" in m:  # target success within 5 points: A's forgetting minus B's, paired over the battery
        assert m["a"].startswith("ppo_") and m["b"].startswith("sft_")
        assert abs(m["a_target_success"] - m["b_target_success"]) <= 0.05
        assert m["forgetting_difference"] == pytest.approx(m["a_forgetting"] - m["b_forgetting"])
        lo, hi = m["forgetting_difference_ci"]
        assert lo <= m["forgetting_difference"] <= hi
    else:
        assert "within 5 points" in m["reason"]
    report = open(tmp / "b" / "report.md").read()
    assert "## Forgetting at matched target success" in report
    assert "## Checkpoints" in report and "ppo_lr1e-4_b8_s0" in report and "## Forgetting law" in report
    assert json.load(open(tmp / "b" / "results.json"))["checkpoints"] == json.loads(json.dumps(rows))
    if "skipped" not in res["plots"]:
        for name in ("pareto.png", "forgetting_vs_kl.png"):
            assert (tmp / "b" / name).stat().st_size > 1000
            assert f"]({name})" in report


def test_n_checkpoints_cost_n_plus_one_base_sampling_passes(world, monkeypatch):
    tmp, battery, target, base, sweep, counts = world
    cfg = config(tmp, battery, target, base, sweep, "kl")
    first = run_bench(cfg, log=lambda *_: None)
    assert first["divergences"]["base_passes"] == 2  # one per state set (target, battery), however many checkpoints

    calls = {"sample": [], "logits": []}
    real_sample, real_logits = SmallVLA.sample_tokens, SmallVLA.action_logits
    monkeypatch.setattr(SmallVLA, "sample_tokens", lambda self, *a, **k: calls["sample"].append(self.checkpoint_hash())
                        or real_sample(self, *a, **k))
    monkeypatch.setattr(SmallVLA, "action_logits", lambda self, *a, **k: calls["logits"].append(self.checkpoint_hash())
                        or real_logits(self, *a, **k))
    monkeypatch.setenv("VLA_FORGET_CACHE", str(tmp / "empty-cache"))
    plan = bench_mod.make_plan(cfg)
    others = [r.hash for r in plan.refs if r.key != plan.base.key]
    n = len(others)
    assert n == 4 and len(plan.checkpoints) == 6
    res = bench_mod.compute_divergences(plan, cfg.out)
    # per state set: one base sampling pass (its logits come with the prefixes), then per checkpoint one
    # teacher-forced pass on them (forward KL, TV), one sampling pass of its own (reverse KL) and the base
    # teacher-forced on those samples
    assert res["base_passes"] == 2 and res["policy_sample_passes"] == 2 * n and res["base_reverse_passes"] == 2 * n
    assert sorted(calls["sample"]) == sorted([plan.base.hash] * 2 + others * 2)
    assert sorted(calls["logits"]) == sorted(others * 2 + [plan.base.hash] * 2 * n)
    calls["sample"].clear()
    calls["logits"].clear()
    again = bench_mod.compute_divergences(plan, cfg.out)  # cached by content: no base pass and no sampling at all
    assert again["base_passes"] == again["policy_sample_passes"] == again["base_reverse_passes"] == 0
    assert not calls["sample"] and sorted(calls["logits"]) == sorted(others * 2)
    assert again["policies"] == res["policies"]
    for entry in res["policies"].values():
        for name in ("target", "battery"):
            e = entry[name]
            assert e["reverse"] > 0 and e["reverse_se"] > 0 and e["reverse_estimator"] == "policy samples"
            assert 0 < e["tv_ess"] <= 1 and e["forward_se"] > 0


def test_resume_adds_new_checkpoints_and_refuses_changed_ones(world):
    tmp, battery, target, base, sweep, counts = world
    cfg = config(tmp, battery, target, base, sweep, "r")
    run_bench(cfg, log=lambda *_: None)
    counts["episodes"] = 0
    run = os.path.join(sweep, "runs", "sft_lr1e-4_b8_s0")
    save_checkpoint(run, 6, SmallVLA.random_init(seed=5, **TINY), "sft")  # the run trained on
    with pytest.raises(BenchError, match="already holds a run"):
        run_bench(cfg, log=lambda *_: None)
    res = run_bench(cfg, resume=True, log=lambda *_: None)
    assert counts["episodes"] == 2 + 2 + 2  # only the new checkpoint is rolled out
    assert res["checkpoints"][-1]["key"] == "sft_lr1e-4_b8_s0@update-000006" and res["law"]["n"] == 5
    save_checkpoint(run, 2, SmallVLA.random_init(seed=9, **TINY), "sft")  # a checkpoint overwritten
    with pytest.raises(BenchError, match="different configuration.*policies"):
        run_bench(cfg, resume=True, log=lambda *_: None)


def test_resume_with_an_added_checkpoints_folder_rolls_out_only_its_runs(world):
    tmp, battery, target, base, sweep, counts = world
    first = os.path.join(sweep, "runs", "ppo_lr1e-4_b8_s0")
    cfg = config(tmp, battery, target, base, first, "seeds")
    run_bench(cfg, log=lambda *_: None)
    episodes = [json.loads(l) for l in open(os.path.join(cfg.out, "episodes.jsonl"))]
    counts["episodes"] = 0
    seed1 = make_run(str(tmp / "more"), "ppo_lr1e-4_b8_s1", "ppo", base, target, (7, 8), seed=1)
    cfg.checkpoints = [first, seed1]
    with pytest.raises(BenchError, match="already holds a run"):
        run_bench(cfg, log=lambda *_: None)
    res = run_bench(cfg, resume=True, log=lambda *_: None)
    assert counts["episodes"] == 2 * (2 + 2 + 2)  # the second seed's two checkpoints only; its update 0 is the base
    assert [c["key"] for c in res["checkpoints"] if c["update"]] == [
        "ppo_lr1e-4_b8_s0@update-000002", "ppo_lr1e-4_b8_s0@update-000004",
        "ppo_lr1e-4_b8_s1@update-000002", "ppo_lr1e-4_b8_s1@update-000004"]
    again = [json.loads(l) for l in open(os.path.join(cfg.out, "episodes.jsonl"))]
    assert again[:len(episodes)] == episodes  # the first bench's episodes are kept as they were
    # the two seeds side by side, per update: means, lowest and highest over the seeds
    groups = res["across_seeds"]
    assert [(g["method"], g["update"], g["seeds"], g["label"]) for g in groups] == [("ppo", 2, [0, 1], ""), ("ppo", 4, [0, 1], "")]
    rows = {c["key"]: c for c in res["checkpoints"]}
    pair = [rows[f"ppo_lr1e-4_b8_s{s}@update-000004"] for s in (0, 1)]
    assert [r["seed"] for r in pair] == [0, 1]
    assert groups[1]["target_success"]["mean"] == pytest.approx(sum(r["target_success"] for r in pair) / 2)
    assert groups[1]["forgetting"]["min"] == pytest.approx(min(r["forgetting"] for r in pair))
    assert groups[1]["forward_kl"]["max"] == pytest.approx(max(r["forward_kl"] for r in pair))
    assert "## Across seeds" in open(os.path.join(cfg.out, "report.md")).read()
    cfg.checkpoints = [seed1]  # a folder dropped: not a continuation
    with pytest.raises(BenchError, match="different configuration.*config.checkpoints"):
        run_bench(cfg, resume=True, log=lambda *_: None)


def test_checkpoint_stride_and_errors(world):
    tmp, battery, target, base, sweep, counts = world
    plan = bench_mod.make_plan(config(tmp, battery, target, base, sweep, "e", checkpoint_stride=2))
    assert [c["update"] for c in plan.checkpoints] == [0, 4, 0, 4]
    plan = bench_mod.make_plan(config(tmp, battery, target, base, sweep, "e", checkpoint_stride=5))
    assert [c["update"] for c in plan.checkpoints] == [0, 4, 0, 4]  # the first and the last of each run
    with pytest.raises(BenchError, match="neither an adaptation run folder"):
        bench_mod.make_plan(config(tmp, battery, target, base, str(tmp), "e2"))
    single = bench_mod.make_plan(config(tmp, battery, target, base, os.path.join(sweep, "runs", "ppo_lr1e-4_b8_s0"), "e3"))
    assert [c["key"] for c in single.checkpoints][-1] == "ppo_lr1e-4_b8_s0@update-000004"
    with pytest.raises(BenchError, match="both called ppo_lr1e-4_b8_s0@update-000000"):
        cfg = config(tmp, battery, target, base, sweep, "e4")
        cfg.checkpoints = [sweep, os.path.join(sweep, "runs", "ppo_lr1e-4_b8_s0")]
        bench_mod.make_plan(cfg)


def test_cli_takes_base_and_target_from_the_runs(world, capsys):
    tmp, battery, target, base, sweep, counts = world
    out = str(tmp / "cli")
    rc = main(["bench", "--checkpoints", sweep, "--checkpoint-stride", "2", "--battery", battery, "--workers", "0",
               "--episodes", "1", "--target-episodes", "1",
               "--image-size", "16", "--videos-per-task", "0", "--kl-states-per-task", "2", "--kl-samples-per-state", "1",
               "--no-progress", "--out", out])
    assert rc == 0, capsys.readouterr().err
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["base"] == base and res["target"]["task"] == "FakeTarget-v1"
    assert [c["update"] for c in res["checkpoints"]] == [0, 4, 0, 4]
    assert len(res["policies"]) == 3  # no preset policies added
    # the end of the run on one screen: a row per policy with its figures, then where everything is
    printed = capsys.readouterr().out.splitlines()
    top = next(i for i, line in enumerate(printed) if line.startswith("policy "))
    assert "forgetting, pp [95 %]" in printed[top] and "forward KL" in printed[top]
    rows = printed[top + 1:top + 1 + len(res["policies"])]
    assert len(rows) == 3 and all(p["id"].endswith(r.split()[0].lstrip("…")) for r, p in zip(rows, res["policies"]))
    assert rows[0].rstrip().endswith("base")
    assert any(line.startswith(f"report:  {os.path.join(out, 'report.html')}") for line in printed)
    assert any(os.path.join(out, 'report.md') in line for line in printed)
    assert not any(line.startswith("## ") for line in printed)  # not the whole report


def test_cli_takes_the_battery_from_the_runs_when_not_given(world, capsys):
    """Runs adapted against a battery (run.json's config) are benched on it, not on the installed default."""
    tmp, battery, target, base, sweep, counts = world
    for name in ("ppo_lr1e-4_b8_s0", "sft_lr1e-4_b8_s0"):
        path = os.path.join(sweep, "runs", name, "run.json")
        run = json.load(open(path))
        run["config"]["battery"] = battery
        json.dump(run, open(path, "w"))
    out = str(tmp / "cli-battery")
    rc = main(["bench", "--checkpoints", sweep, "--checkpoint-stride", "2", "--workers", "0", "--episodes", "1",
               "--target-episodes", "1", "--image-size", "16", "--videos-per-task", "0", "--kl-states-per-task", "2",
               "--kl-samples-per-state", "1", "--no-progress", "--out", out])
    assert rc == 0, capsys.readouterr().err
    assert json.load(open(os.path.join(out, "results.json")))["battery"]["id"] == "fake-v1"
    run["config"]["battery"] = "tabletop-v2"  # one run against another battery: said, not guessed
    json.dump(run, open(path, "w"))
    assert main(["bench", "--checkpoints", sweep, "--workers", "0", "--no-progress", "--out", str(tmp / "x")]) == 2
    assert "do not share one battery" in capsys.readouterr().err


def test_across_seeds_groups_runs_that_differ_only_in_their_seed():
    def row(run, method, update, lr, seed, target, policy=None):
        return ({"run": run, "method": method, "update": update, "hparams": {"lr": lr, "seed": seed, "epochs": 2}},
                {"policy": policy or f"{run}@{update}", "target_success": target, "forgetting": target / 2,
                 "forward_kl": 1.0})

    pairs = [row("a", "ppo", 10, 1e-5, 0, 0.2), row("b", "ppo", 10, 1e-5, 1, 0.4),
             row("c", "ppo", 10, 3e-5, 0, 0.1), row("d", "ppo", 10, 3e-5, 1, 0.3), row("e", "ppo", 10, 3e-5, 2, 0.5),
             row("f", "sft", 10, 1e-4, 0, 0.6),  # one seed only: no group
             row("a", "ppo", 0, 1e-5, 0, 0.1, policy="base"), row("b", "ppo", 0, 1e-5, 1, 0.1, policy="base")]
    groups = bench_mod.across_seeds([p for p, _ in pairs], [r for _, r in pairs], "base")
    assert [(g["label"], g["seeds"], g["runs"]) for g in groups] == [
        ("lr=1e-05", [0, 1], ["a", "b"]), ("lr=3e-05", [0, 1, 2], ["c", "d", "e"])]
    assert groups[1]["target_success"] == pytest.approx({"mean": 0.3, "min": 0.1, "max": 0.5})
    assert groups[0]["forgetting"]["mean"] == pytest.approx(0.15)
    # datasets differ between two SFT configurations: the label names them, not the folders they lie in
    sft = [({"run": r, "method": "sft", "update": 5, "hparams": {"data": data, "seed": seed}},
            {"policy": f"{r}@5", "target_success": 0.5, "forgetting": 0.1, "forward_kl": 1.0})
           for r, data, seed in [("s0", ["/x/data/demos"], 0), ("s1", ["/x/data/demos"], 1),
                                 ("p0", ["/x/data/demos", "/x/data/pairs/"], 0), ("p1", ["/x/data/demos", "/x/data/pairs/"], 1)]]
    labels = [g["label"] for g in bench_mod.across_seeds([p for p, _ in sft], [r for _, r in sft], "base")]
    assert labels == ["data=[demos, pairs]", "data=[demos]"]


def test_cli_resume_takes_the_runs_own_settings_and_adds_checkpoints_folders(world, capsys):
    tmp, battery, target, base, sweep, counts = world
    out = str(tmp / "cli-resume")
    first = os.path.join(sweep, "runs", "ppo_lr1e-4_b8_s0")
    rc = main(["bench", "--checkpoints", first, "--battery", battery, "--workers", "0", "--episodes", "1",
               "--target-episodes", "1", "--image-size", "16", "--videos-per-task", "0", "--kl-states-per-task", "2",
               "--kl-samples-per-state", "1", "--no-progress", "--out", out])
    assert rc == 0, capsys.readouterr().err
    saved = json.load(open(os.path.join(out, "config.json")))
    counts["episodes"] = 0
    # only --out and --resume: every option comes from OUT/config.json, nothing is rolled out again
    assert main(["bench", "--out", out, "--resume", "--workers", "0", "--no-progress"]) == 0, capsys.readouterr().err
    assert counts["episodes"] == 0
    assert json.load(open(os.path.join(out, "config.json"))) == saved
    # another run folder: added to the saved ones, only its checkpoints are rolled out
    seed1 = make_run(str(tmp / "more"), "ppo_lr1e-4_b8_s1", "ppo", base, target, (7, 8), seed=1)
    assert main(["bench", "--out", out, "--resume", "--workers", "0", "--no-progress", "--checkpoints", seed1]) == 0
    assert counts["episodes"] == 2 * (1 + 1 + 1)  # two new checkpoints x (two battery tasks + the target), 1 each
    res = json.load(open(os.path.join(out, "results.json")))
    grown = json.load(open(os.path.join(out, "config.json")))["config"]
    assert grown["checkpoints"] == [first, seed1] and grown["episodes"] == 1
    assert [c["key"] for c in res["checkpoints"] if c["update"]] == [
        "ppo_lr1e-4_b8_s0@update-000002", "ppo_lr1e-4_b8_s0@update-000004",
        "ppo_lr1e-4_b8_s1@update-000002", "ppo_lr1e-4_b8_s1@update-000004"]
    # an option given that differs from the run's: refused as before, nothing lost
    capsys.readouterr()
    assert main(["bench", "--out", out, "--resume", "--workers", "0", "--no-progress", "--episodes", "3"]) != 0
    assert "different configuration (config.episodes: 1 -> 3" in capsys.readouterr().err
    assert json.load(open(os.path.join(out, "results.json")))["checkpoints"] == res["checkpoints"]
    # a corrupt config.json: a clear error, exit 2
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write("{not json")
    assert main(["bench", "--out", out, "--resume", "--workers", "0", "--no-progress"]) == 2
    assert "cannot read" in capsys.readouterr().err
