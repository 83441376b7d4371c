"""`vla-forget sweep`: spec validation, grid expansion, running against a fake `adapt`, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vla_forget.cli import main
from vla_forget.spec import SpecError, available, validate
from vla_forget.sweep import (
    SweepError,
    expand,
    format_lr,
    load_sweep,
    option_args,
    parse_sweep,
    run_sweep,
)

FAKE_ADAPT = os.path.join(os.path.dirname(__file__), "fake_adapt.py")

SPEC = """
kind: sweep
id: tiny
version: 1
base: small-vla-random-v1
task: place-cube-on-target-v1
updates: 2
save_every: 1
grid:
  method: [ppo, sft]
  lr: [1e-4, 3.0e-4]
  batch_size: [8]
  seed: [0, 1]
options: {workers: 0, save_traces: false, max_episode_steps: null}
method_options:
  sft: {data: [d/a, d/b], updates: 4}
"""


def write(tmp_path, text, name="sweep.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def fake_launcher(argv, log):
    assert argv[0] == "adapt"
    return subprocess.Popen([sys.executable, FAKE_ADAPT, *argv[1:]], stdout=log, stderr=subprocess.STDOUT)


def calls(run_dir):
    with open(os.path.join(run_dir, "calls.jsonl")) as f:
        return [json.loads(line) for line in f]


def quiet(*_):
    pass


def test_shipped_sweeps_validate():
    assert {"forgetting-v2", "forgetting-v3", "forgetting-cpu-v1", "forgetting-cpu-v2", "forgetting-cpu-v3", "forgetting-cpu-v4",
            "smoke-v2"} <= set(available("sweeps"))
    spec = load_sweep("forgetting-v2")
    assert set(spec.methods) == {"ppo", "sft", "iterative-sft"} and spec.base == "small-vla-base-v5"
    assert len(expand(spec)) == len(spec.methods) * len(spec.lrs) * len(spec.batch_sizes) * len(spec.seeds) >= 12
    assert validate("smoke-v2").startswith("OK sweep smoke-v2: 2 runs")
    cpu2_spec = load_sweep("forgetting-cpu-v2")
    cpu2 = {run.method: run for run in expand(cpu2_spec)}
    assert cpu2_spec.base == "small-vla-base-v6" and set(cpu2) == {"ppo", "sft", "iterative-sft"}
    assert cpu2["sft"].params["transport_fraction"] == 0.4 and cpu2["ppo"].lr == 3e-5 and cpu2["ppo"].params["updates"] == 50
    cpu3 = expand(load_sweep("forgetting-cpu-v3"))  # v2's runs, each with seeds 0 and 1
    assert sorted((r.method, r.seed) for r in cpu3) == sorted((m, s) for m in cpu2 for s in (0, 1))
    assert all(r.params == {**cpu2[r.method].params, "seed": r.seed} for r in cpu3)


def test_sweep_errors_say_exactly_what_is_wrong(tmp_path):
    path = write(tmp_path, """
kind: sweep
id: bad
base: no-such-policy-v9
task: NoSuchTask-v1
save_every: 0
colour: red
grid:
  method: [ppo, dance, ppo]
  lr: [-1, abc]
  batch_size: [0]
  speed: [1]
options: {lr: 0.1, Bad-Name: 1, episodes_per_update: {a: 1}, episodes_per_updat: 2}
method_options:
  sft: {data: x}
  ppo: {updates: 3, seed: 1}
""")
    with pytest.raises(SpecError) as e:
        validate(path)
    errs = "\n".join(e.value.errors)
    for want in (
        "version: missing",
        "colour: unknown field",
        "base: unknown policy id 'no-such-policy-v9'",
        "task: unknown",
        "save_every: must be an integer >= 1, got 0",
        "grid.speed: unknown field",
        "grid.seed: missing (give a list)",
        "grid.method[1]: unknown adaptation method 'dance'; methods: ppo,",
        "grid.method: contains duplicates",
        "grid.lr[0]: must be a positive number, got -1",
        "grid.lr[1]: must be a positive number, got 'abc'",
        "grid.batch_size[0]: must be an integer >= 1, got 0",
        "options.lr: set by the sweep itself",
        "options.Bad-Name: option names are lower_case words",
        "options.episodes_per_update: must be a string, number, boolean or list",
        "options.episodes_per_updat: not an option of vla-forget adapt; did you mean episodes_per_update",
        "method_options.sft: not a method of the grid (ppo)",
        "method_options.ppo.seed: set by the sweep itself",
    ):
        assert want in errs, (want, errs)
    assert "method_options.ppo.updates" not in errs  # a method may override updates
    with pytest.raises(SpecError, match="grid: must be a mapping"):
        parse_sweep({"id": "x", "version": 1, "base": "zero-v1", "task": "place-cube-on-target-v1", "updates": 1,
                     "grid": [1, 2]})


def test_expansion_names_and_commands(tmp_path):
    spec = load_sweep(write(tmp_path, SPEC))
    runs = expand(spec)
    assert len(runs) == 2 * 2 * 1 * 2
    assert [r.name for r in runs[:4]] == ["ppo_lr1e-4_b8_s0", "ppo_lr1e-4_b8_s1", "ppo_lr3e-4_b8_s0", "ppo_lr3e-4_b8_s1"]
    assert len({r.name for r in runs}) == len(runs)
    ppo, sft = runs[0], runs[4]
    assert ppo.argv("S/runs/x") == [
        "adapt", "--method", "ppo", "--base", "small-vla-random-v1", "--task", "place-cube-on-target-v1", "--lr", "0.0001",
        "--minibatch-size", "8", "--seed", "0", "--updates", "2", "--save-every", "1", "--no-progress", "--workers", "0",
        "--no-save-traces", "--out", "S/runs/x"]
    a = sft.argv("S/runs/y", resume=True)
    assert a[a.index("--updates") + 1] == "4" and a.count("--data") == 2 and a[-1] == "--resume"
    assert a[a.index("--batch-size") + 1] == "8" and "--minibatch-size" not in a
    assert format_lr(3e-4) == "3e-4" and format_lr(2.5e-5) == "2.5e-5" and format_lr(1.0) == "1e0"
    assert option_args({"a_b": [1, 2], "c": None, "d": False, "e": True}) == ["--a-b", "1", "--a-b", "2", "--no-d", "--e"]


def test_a_method_can_have_its_own_lr_and_batch_axes(tmp_path):
    spec = load_sweep(write(tmp_path, SPEC.replace("sft: {data: [d/a, d/b], updates: 4}",
                                                   "sft: {data: [d/a, d/b], updates: 4}\n  ppo: {lr: 1.0e-5, batch_size: [16, 64]}")))
    names = [r.name for r in expand(spec)]
    # ppo: its own lr (one value) and batch sizes; sft keeps the grid's two lrs and batch 8
    assert names == ["ppo_lr1e-5_b16_s0", "ppo_lr1e-5_b16_s1", "ppo_lr1e-5_b64_s0", "ppo_lr1e-5_b64_s1",
                     "sft_lr1e-4_b8_s0", "sft_lr1e-4_b8_s1", "sft_lr3e-4_b8_s0", "sft_lr3e-4_b8_s1"]
    ppo = expand(spec)[2]
    a = ppo.argv("S/runs/x")
    assert a[a.index("--lr") + 1] == "1e-05" and a[a.index("--minibatch-size") + 1] == "64"
    assert "batch_size" not in ppo.params and "--batch-size" not in a
    bad = write(tmp_path, SPEC.replace("sft: {data: [d/a, d/b], updates: 4}", "sft: {lr: [-1], batch_size: 0}"), "bad.yaml")
    with pytest.raises(SpecError) as e:
        validate(bad)
    errs = "\n".join(e.value.errors)
    assert "method_options.sft.lr[0]: must be a positive number, got -1" in errs
    assert "method_options.sft.batch_size[0]: must be an integer >= 1, got 0" in errs


def test_dry_run_prints_commands_and_writes_nothing(tmp_path, capsys):
    path = write(tmp_path, SPEC)
    out = tmp_path / "dry"
    assert main(["sweep", path, "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and all(line.startswith("vla-forget adapt --method ") for line in lines)
    assert f"--out {out}/runs/ppo_lr1e-4_b8_s0" in lines[0]
    assert not out.exists()


def test_sweep_runs_in_parallel_then_resume_skips_finished_runs(tmp_path, monkeypatch):
    spec = load_sweep(write(tmp_path, SPEC))
    out = str(tmp_path / "sweep")
    monkeypatch.setenv("FAKE_ADAPT_FAIL", "sft_lr3e-4_b8_s1")
    state = run_sweep(spec, out, parallel=3, launcher=fake_launcher, poll_s=0.02, log=quiet)
    status = {e["name"]: e["status"] for e in state["runs"]}
    assert status.pop("sft_lr3e-4_b8_s1") == "failed" and set(status.values()) == {"done"}
    on_disk = json.load(open(os.path.join(out, "sweep.json")))
    assert on_disk["summary"] == {"done": 7, "failed": 1} and on_disk["spec"]["id"] == "tiny"
    e = next(r for r in on_disk["runs"] if r["name"] == "ppo_lr1e-4_b8_s0")
    assert e["command"].startswith("vla-forget adapt --method ppo") and e["returncode"] == 0 and e["attempts"] == 1
    assert os.path.exists(os.path.join(out, "runs", "ppo_lr1e-4_b8_s0", "checkpoints", "update-000002", "meta.json"))
    assert os.path.exists(os.path.join(out, "runs", "sft_lr1e-4_b8_s0", "checkpoints", "update-000004", "meta.json"))
    assert "failing on purpose" in open(os.path.join(out, "logs", "sft_lr3e-4_b8_s1.log")).read()

    with pytest.raises(SweepError, match="already holds a sweep: pass --resume"):
        run_sweep(spec, out, launcher=fake_launcher, log=quiet)

    monkeypatch.delenv("FAKE_ADAPT_FAIL")
    state = run_sweep(spec, out, parallel=2, resume=True, launcher=fake_launcher, poll_s=0.02, log=quiet)
    assert state["summary"] == {"done": 8}
    for e in state["runs"]:
        c = calls(os.path.join(out, e["out"]))
        if e["name"] == "sft_lr3e-4_b8_s1":  # retried, continuing its run folder
            assert len(c) == 2 and "resume" in c[1]["flags"] and e["attempts"] == 2
        else:  # finished runs are not started again
            assert len(c) == 1 and e["attempts"] == 1
    assert os.path.exists(os.path.join(out, "runs", "sft_lr3e-4_b8_s1", "checkpoints", "update-000004", "meta.json"))
    # the sweep's events.jsonl: each invocation's start or resume and end, every run's start and outcome
    events = [json.loads(x) for x in open(os.path.join(out, "events.jsonl"))]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and events[0]["to_run"] == 8 and kinds.count("run_started") == 9
    assert kinds.count("run_failed") == 1 and kinds.count("run_done") == 8 and kinds.count("done") == 2
    assert next(e for e in events if e["event"] == "resume")["to_run"] == 1


def test_resume_refuses_changed_options(tmp_path):
    out = str(tmp_path / "s")
    run_sweep(load_sweep(write(tmp_path, SPEC)), out, parallel=4, launcher=fake_launcher, poll_s=0.02, log=quiet)
    changed = load_sweep(write(tmp_path, SPEC.replace("workers: 0", "workers: 0, kl_coef: 0.1"), "changed.yaml"))
    with pytest.raises(SweepError, match="other options.*ppo_lr1e-4_b8_s0"):
        run_sweep(changed, out, resume=True, launcher=fake_launcher, log=quiet)
    longer = load_sweep(write(tmp_path, SPEC.replace("updates: 2", "updates: 3"), "longer.yaml"))
    state = run_sweep(longer, out, resume=True, launcher=fake_launcher, poll_s=0.02, log=quiet)
    ppo = os.path.join(out, "runs", "ppo_lr1e-4_b8_s0")  # more updates: finished runs continue
    assert state["summary"] == {"done": 8} and "resume" in calls(ppo)[-1]["flags"]
    assert os.path.exists(os.path.join(ppo, "checkpoints", "update-000003", "meta.json"))
    fewer = load_sweep(write(tmp_path, SPEC.replace("seed: [0, 1]", "seed: [0]"), "fewer.yaml"))
    with pytest.raises(SweepError, match="ppo_lr1e-4_b8_s1.* not in the grid"):
        run_sweep(fewer, out, resume=True, launcher=fake_launcher, log=quiet)


def test_interrupt_stops_runs_and_resume_continues_them(tmp_path, monkeypatch):
    spec = load_sweep(write(tmp_path, SPEC.replace("method: [ppo, sft]", "method: [ppo]").replace("seed: [0, 1]", "seed: [0]")
                            .replace("sft: {data: [d/a, d/b], updates: 4}", "ppo: {updates: 2}")))
    out = str(tmp_path / "int")
    started = []

    def launcher(argv, log):
        if started:
            raise KeyboardInterrupt
        started.append(argv)
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=log)

    with pytest.raises(SweepError, match="interrupted.*--resume"):
        run_sweep(spec, out, parallel=2, launcher=launcher, poll_s=0.02, log=quiet)
    st = {e["name"]: e["status"] for e in json.load(open(os.path.join(out, "sweep.json")))["runs"]}
    assert st == {"ppo_lr1e-4_b8_s0": "interrupted", "ppo_lr3e-4_b8_s0": "pending"}
    state = run_sweep(spec, out, resume=True, launcher=fake_launcher, poll_s=0.02, log=quiet)
    assert state["summary"] == {"done": 2}


def test_cli_sweep_exit_status(tmp_path, monkeypatch, capsys):
    import vla_forget.sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "ADAPT_PROGRAM", (sys.executable, FAKE_ADAPT))  # runs `FAKE_ADAPT adapt ...`
    path = write(tmp_path, SPEC.replace("seed: [0, 1]", "seed: [0]").replace("lr: [1e-4, 3.0e-4]", "lr: [1e-4]"))
    out = str(tmp_path / "cli")
    monkeypatch.setenv("FAKE_ADAPT_FAIL", "sft_")
    assert main(["sweep", path, "--out", out, "--parallel", "2"]) == 1
    assert "not done: sft_lr1e-4_b8_s0" in capsys.readouterr().err
    monkeypatch.delenv("FAKE_ADAPT_FAIL")
    assert main(["sweep", path, "--out", out, "--resume"]) == 0
    assert f"vla-forget bench --checkpoints {out}" in capsys.readouterr().out
    assert main(["sweep", "no-such-sweep-v1", "--out", out]) == 2


@pytest.mark.parametrize("sweep", ["smoke-v2", "forgetting-v2", "forgetting-v3",
                                   "forgetting-cpu-v4"])
def test_shipped_sweep_commands_parse_as_adapt_commands(sweep):
    from vla_forget.adapt.common import config_from_args
    from vla_forget.cli import build_parser

    parser = build_parser()
    for r in expand(load_sweep(sweep)):
        args = parser.parse_args(r.argv(f"runs/{r.name}", resume=True))
        cfg = config_from_args(args)
        assert args.command == "adapt" and args.resume and cfg.method == r.method and cfg.lr == r.lr
        assert cfg.seed == r.seed and cfg.progress is False
        assert (cfg.minibatch_size if r.method in ("ppo", "grpo") else cfg.batch_size) == r.batch_size
