"""Harness logic on a fake env: resume after an interrupt, base-output caching, results layout."""

import json
import os

import pytest

from tests.fakes import patch_fake_rollouts
from vla_forget import bench as bench_mod
from vla_forget.bench import BenchConfig, BenchError, run_bench



@pytest.fixture()
def fake_world(tmp_path, monkeypatch):
    battery = tmp_path / "fake-v1.yaml"
    battery.write_text("id: fake\nversion: 1\nepisodes: 5\nseed_start: 10\ntasks: [FakeA-v1, FakeB-v1]\n")
    target = tmp_path / "fake-target-v1.yaml"
    target.write_text("id: fake-target\nversion: 1\ntask: FakeTarget-v1\nepisodes: 4\nseed_start: 500\n")
    calls = {"episodes": 0, "interrupt_after": None}

    def count(job):
        if calls["interrupt_after"] is not None and calls["episodes"] >= calls["interrupt_after"]:
            raise KeyboardInterrupt
        calls["episodes"] += len(job.seeds)

    patch_fake_rollouts(monkeypatch, tmp_path, on_job=count)
    return tmp_path, str(battery), str(target), calls


def config(tmp_path, battery, target, out="run", **kw):
    return BenchConfig(policies=["small-vla-random-v1", "zero-v1"], base="small-vla-random-v1", out=str(tmp_path / out),
                       battery=battery, target=target, workers=0, image_size=16, videos_per_task=1,
                       kl_states_per_task=6, kl_samples_per_state=2, progress=False, **kw)


def strip_volatile(results):
    r = dict(results)
    for k in ("software", "wall_s"):
        r.pop(k)
    r["divergences"] = {k: v for k, v in r["divergences"].items() if k not in ("base_passes", "cache_hits")}
    return r


def test_interrupted_run_resumes_without_redoing_episodes(fake_world):
    tmp, battery, target, calls = fake_world
    full = run_bench(config(tmp, battery, target, out="full"), log=lambda *_: None)
    n_total = 2 * (5 + 5 + 4)
    assert full["episodes"] == n_total and calls["episodes"] == n_total

    calls["episodes"], calls["interrupt_after"] = 0, 9
    with pytest.raises(BenchError, match="interrupted: 9 finished episodes are saved"):
        run_bench(config(tmp, battery, target, out="cut"), log=lambda *_: None)
    lines = open(tmp / "cut" / "episodes.jsonl").read().splitlines()
    assert len(lines) == 9

    with pytest.raises(BenchError, match="already holds a run"):
        run_bench(config(tmp, battery, target, out="cut"), log=lambda *_: None)

    calls["episodes"], calls["interrupt_after"] = 0, None
    resumed = run_bench(config(tmp, battery, target, out="cut"), resume=True, log=lambda *_: None)
    assert calls["episodes"] == n_total - 9  # nothing that finished is redone
    assert strip_volatile(resumed) == strip_volatile(full)


def test_resume_refuses_a_changed_configuration(fake_world):
    tmp, battery, target, calls = fake_world
    run_bench(config(tmp, battery, target, out="r"), log=lambda *_: None)
    with pytest.raises(BenchError, match="different configuration.*image_size"):
        cfg = config(tmp, battery, target, out="r")
        cfg.image_size = 32
        run_bench(cfg, resume=True, log=lambda *_: None)


def test_resume_adds_a_policy_and_rolls_out_only_its_episodes(fake_world):
    tmp, battery, target, calls = fake_world
    one = config(tmp, battery, target, out="grow")
    one.policies = ["small-vla-random-v1"]
    first = run_bench(one, log=lambda *_: None)
    per_policy = 5 + 5 + 4
    assert calls["episodes"] == per_policy
    calls["episodes"] = 0
    grown = run_bench(config(tmp, battery, target, out="grow"), resume=True, log=lambda *_: None)
    assert calls["episodes"] == per_policy  # zero-v1's only
    assert {p["id"] for p in grown["policies"]} == {"small-vla-random-v1", "zero-v1"}
    assert grown["success"]["small-vla-random-v1"] == first["success"]["small-vla-random-v1"]
    # the grown bench equals one that had both policies from the start
    assert strip_volatile(grown) == strip_volatile(run_bench(config(tmp, battery, target, out="both"),
                                                             log=lambda *_: None))
    # leaving a policy out is still a changed configuration
    with pytest.raises(BenchError, match="different configuration"):
        run_bench(one, resume=True, log=lambda *_: None)


def test_results_layout_and_base_cache(fake_world, monkeypatch):
    tmp, battery, target, calls = fake_world
    res = run_bench(config(tmp, battery, target, out="a"), log=lambda *_: None)
    out = tmp / "a"
    for f in ("config.json", "episodes.jsonl", "results.json", "report.md"):
        assert (out / f).exists(), f
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["battery"]["id"] == "fake-v1" and on_disk["battery"]["version"] == 1
    assert {p["id"] for p in on_disk["policies"]} == {"small-vla-random-v1", "zero-v1"}
    assert all(len(p["checkpoint_hash"]) > 0 for p in on_disk["policies"])
    s = on_disk["success"]["zero-v1"]["FakeA-v1"]
    assert set(s) >= {"rate", "ci_low", "ci_high", "n"} and s["n"] == 5
    assert on_disk["seeds"]["FakeA-v1"] == list(range(10, 15))
    assert "torch" in on_disk["software"]
    # zero-v1 has no action distribution; the base has zero divergence to itself
    assert on_disk["kl_to_base"]["zero-v1"] is None
    assert on_disk["kl_to_base"]["small-vla-random-v1"]["forward"] == 0.0
    # no policy besides the base has an action distribution: no base pass is spent
    assert "no policy besides the base" in res["divergences"]["skipped"]
    vids = os.listdir(out / "videos" / "zero-v1")
    assert any(v.startswith("FakeA-v1__seed10__") and v.endswith(".mp4") for v in vids)
    report = (out / "report.md").read_text()
    assert "Success at the end" in report and "FakeTarget-v1" in report


def test_n_policies_cost_one_base_pass_and_cache_is_reused(fake_world, monkeypatch):
    tmp, battery, target, calls = fake_world
    from vla_forget.policies import small_vla

    # two distinct token policies + the base: base sampled once per state set, each policy teacher-forced once
    counts = {"sample": 0, "logits": 0}
    real_sample, real_logits = small_vla.SmallVLA.sample_tokens, small_vla.SmallVLA.action_logits

    def count_sample(self, *a, **k):
        counts["sample"] += 1
        return real_sample(self, *a, **k)

    def count_logits(self, *a, **k):
        counts["logits"] += 1
        return real_logits(self, *a, **k)

    cfg = config(tmp, battery, target, out="kl1")
    cfg.policies = ["small-vla-random-v1", str(tmp / "other")]
    small_vla.SmallVLA.random_init(seed=1).save(str(tmp / "other"))
    first = run_bench(cfg, log=lambda *_: None)
    assert first["divergences"]["base_passes"] == 2  # target and battery state sets, computed once each
    monkeypatch.setattr(small_vla.SmallVLA, "sample_tokens", count_sample)
    monkeypatch.setattr(small_vla.SmallVLA, "action_logits", count_logits)
    res = bench_mod.compute_divergences(bench_mod.make_plan(cfg), cfg.out)
    assert counts["sample"] == 0 and res["base_passes"] == 0  # cached by content
    assert counts["logits"] == 2  # one teacher-forced pass per (policy, state set), batch fits in one
    kl = res["policies"][str(tmp / "other")]["target"]
    assert kl["forward"] > 0 and kl["n_states"] > 0


def test_analyze_rebuilds_a_finished_bench_without_rolling_out(fake_world, capsys):
    from vla_forget.cli import main

    tmp, battery, target, calls = fake_world
    full = run_bench(config(tmp, battery, target, out="an"), log=lambda *_: None)
    results = tmp / "an" / "results.json"
    results.unlink()
    (tmp / "an" / "report.md").unlink()
    calls["episodes"] = 0
    assert main(["analyze", str(tmp / "an")]) == 0, capsys.readouterr().err
    assert calls["episodes"] == 0  # nothing rolled out
    rebuilt = json.loads(results.read_text())
    assert strip_volatile(rebuilt) == strip_volatile(json.loads(json.dumps(full)))
    assert (tmp / "an" / "report.md").exists()


def test_analyze_refuses_an_unfinished_bench_and_changes_nothing(fake_world, capsys):
    from vla_forget.cli import main

    tmp, battery, target, calls = fake_world
    calls["interrupt_after"] = 5
    with pytest.raises(BenchError, match="interrupted"):
        run_bench(config(tmp, battery, target, out="half"), log=lambda *_: None)
    before = sorted(os.listdir(tmp / "half"))
    calls["interrupt_after"] = None
    assert main(["analyze", str(tmp / "half")]) == 2
    err = capsys.readouterr().err
    assert "is not finished: 23 episodes to run" in err and f"vla-forget bench --out {tmp / 'half'} --resume" in err
    assert calls["episodes"] == 5 and sorted(os.listdir(tmp / "half")) == before
    assert main(["analyze", str(tmp / "nothing-here")]) == 2
    assert "holds no bench" in capsys.readouterr().err
