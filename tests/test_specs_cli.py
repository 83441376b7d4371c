"""Spec validation messages and the thin CLI commands that need no simulator."""

import pytest

from vla_forget.cli import main
from vla_forget.registry import UnknownIdError
from vla_forget.spec import SpecError, available, load_battery, load_target, validate


def test_shipped_specs_validate():
    assert "tabletop-v1" in available("batteries")
    b = load_battery("tabletop-v1")
    assert b.full_id == "tabletop-v1" and len(b.tasks) >= 6
    t = load_target(b.target)
    assert t.task.task not in b.task_ids
    assert all(s >= 100000 for e in b.tasks for s in e.seeds)


def write(tmp_path, text):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return str(p)


def test_battery_errors_say_exactly_what_is_wrong(tmp_path):
    path = write(tmp_path, """
kind: battery
id: mine
episodes: -3
tasks:
  - task: PickCub-v1
  - task: PushCube-v1
    seeds: [1, 1]
  - task: PushCube-v1
    colour: red
""")
    with pytest.raises(SpecError) as e:
        validate(path)
    errs = "\n".join(e.value.errors)
    assert "version: missing" in errs
    assert "episodes: must be an integer >= 1, got -3" in errs
    assert "tasks[0].task: unknown task id 'PickCub-v1'. Did you mean PickCube-v1" in errs
    assert "tasks[1].seeds: contains duplicates" in errs
    assert "tasks[2].task: 'PushCube-v1' appears twice" in errs
    assert "tasks[2].colour: unknown field" in errs


def test_target_inside_battery_is_refused(tmp_path):
    path = write(tmp_path, "id: x\nversion: 1\nepisodes: 2\ntarget: place-cube-on-target-v1\ntasks: [PlaceCubeOnTarget-v1]\n")
    with pytest.raises(SpecError, match="also in the battery"):
        load_battery(path)


def test_unknown_ids_list_the_valid_ones():
    with pytest.raises(UnknownIdError, match="Valid ids: .*tabletop-v1"):
        load_battery("tabletop-v9")


def test_cli_validate_and_ls(tmp_path, capsys):
    assert main(["validate", "tabletop-v1", "place-cube-on-target-v1"]) == 0
    assert "OK battery tabletop-v1" in capsys.readouterr().out
    bad = write(tmp_path, "kind: battery\nid: x\nversion: 1\ntasks: []\n")
    assert main(["validate", bad]) == 1
    assert "tasks: must be a non-empty list" in capsys.readouterr().err
    # a file names its kind: none is guessed from the keys
    unnamed = write(tmp_path, "id: x\nversion: 1\nepisodes: 2\ntasks: [PickCube-v2]\n")
    assert main(["validate", unnamed]) == 1
    assert "kind: missing; name the spec's kind on its first line: `kind: battery | target | sweep | preset`" in \
        capsys.readouterr().err
    load_battery(unnamed)  # where the kind is known, a file without it still loads
    # a spec of one kind given where another is expected
    with pytest.raises(SpecError, match="kind: 'battery': this is not a target spec"):
        load_target(write(tmp_path, "kind: battery\nid: x\nversion: 1\nepisodes: 2\ntasks: [PickCube-v2]\n"))
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for word in ("PickCube-v1", "tabletop-v1", "expert-v1", "small-vla-random-v1", "smoke"):
        assert word in out


def test_cli_bench_unknown_policy_lists_valid_ids(tmp_path, capsys):
    assert main(["bench", "--policy", "nope-v1", "--base", "small-vla-random-v1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown policy id 'nope-v1'" in err and "expert-v1" in err


def test_cli_bench_bad_checkpoint_is_a_clear_error(tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text('{"policy_class": "Nope"}')
    assert main(["bench", "--policy", str(ck), "--base", "small-vla-random-v1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "known classes:" in err and "SmallVLA" in err and "Nope" in err


def test_a_folder_named_like_an_id_does_not_shadow_it(tmp_path, monkeypatch, capsys):
    """`ls` and `validate` in a folder that holds a sub-folder named like a preset id: the id wins;
    a folder given where a spec file is expected is a clear error."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()
    assert main(["ls", "presets"]) == 0
    assert "smoke" in capsys.readouterr().out
    assert main(["validate", "smoke"]) == 0
    assert "OK preset smoke" in capsys.readouterr().out
    (tmp_path / "mine").mkdir()
    assert main(["validate", "mine"]) != 0
    assert "is a folder, not a YAML spec file" in capsys.readouterr().err


def test_bench_without_preset_takes_episode_counts_from_the_specs(tmp_path, monkeypatch):
    import vla_forget.bench as bench

    seen = {}

    def fake_run_bench(config, **kw):
        seen["config"] = config
        return {}

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    main(["bench", "--policy", "zero-v1", "--base", "zero-v1", "--out", str(tmp_path / "a")])
    assert seen["config"].episodes is None and seen["config"].target_episodes is None  # the battery's 50
    main(["bench", "--preset", "smoke", "--out", str(tmp_path / "b")])
    assert seen["config"].episodes == 2 and seen["config"].policies == ["expert-v1", "small-vla-random-v1"]
    main(["bench", "--preset", "smoke", "--episodes", "3", "--out", str(tmp_path / "c")])
    assert seen["config"].episodes == 3


def test_library_callers_get_the_presets_and_resume_of_the_cli(tmp_path):
    """bench.resolve_config applies a preset and a resumed run's saved options as `vla-forget bench` does, so a
    library caller of run_bench continues a bench with its own settings."""
    from vla_forget import bench
    from vla_forget.bench import BenchError, make_plan, resolve_config
    from vla_forget.runfolder import RunFolder

    out = str(tmp_path / "b")
    cfg = resolve_config(out, preset="default", workers=1, episodes=3)
    shipped = ["expert-v2", "small-vla-base-v6", "small-vla-v6-sft-v1", "small-vla-v6-ppo-v1"]
    assert cfg.policies == shipped and cfg.base == "small-vla-base-v6"
    assert (cfg.episodes, cfg.target_episodes, cfg.videos_per_task, cfg.battery) == (3, 20, 2, "tabletop-v2")
    RunFolder(out, bench.RUN_KIND).write_config(make_plan(cfg).resolved())
    again = resolve_config(out, resume=True, policies=["small-vla-random-v1"])
    assert again.policies == shipped + ["small-vla-random-v1"]
    assert (again.episodes, again.base, again.kl_states_per_task) == (3, "small-vla-base-v6", 128)
    with pytest.raises(BenchError, match="give --policy"):
        resolve_config(str(tmp_path / "empty"))
    open(str(tmp_path / "b" / "config.json"), "w").write("{")
    with pytest.raises(BenchError, match="cannot read .*config.json"):
        resolve_config(out, resume=True)


def test_one_generator_turns_a_config_dataclass_into_options(capsys):
    """vla_forget.config: a field is an option with its docstring as help, its type and default; booleans take
    --x/--no-x, lists repeat, and the config comes back from the parsed arguments."""
    import argparse
    from dataclasses import dataclass, field
    from typing import List

    from vla_forget.config import add_config_arguments, config_from_args

    @dataclass
    class Demo:
        out: str
        """where it goes"""
        steps: int = 3
        """how many"""
        paths: List[str] = field(default_factory=list)
        """inputs"""
        fast: bool = True
        """go fast"""
        mode: str = "a"
        """the mode"""

    p = argparse.ArgumentParser()
    add_config_arguments(p, Demo, required=("out",), choices={"mode": ("a", "b")}, flags={"paths": "--path"})
    cfg = config_from_args(Demo, p.parse_args(["--out", "o", "--path", "x", "--path", "y", "--no-fast"]))
    assert cfg == Demo(out="o", steps=3, paths=["x", "y"], fast=False, mode="a")
    assert config_from_args(Demo, p.parse_args(["--out", "o", "--steps", "7"])) == Demo(out="o", steps=7)
    with pytest.raises(SystemExit):
        p.parse_args(["--out", "o", "--mode", "c"])
    p.print_help()
    assert "how many (default: 3)" in capsys.readouterr().out
