"""The one run folder (vla_forget.runfolder): the resume check, the migration table, the stamp, atomic writes and
events, and every command's folder going through it."""

from __future__ import annotations

import json
import os

import pytest

from vla_forget.errors import VlaForgetError
from vla_forget.runfolder import EVENTS, RunFolder, RunFolderError, RunKind, diff_fields

KIND = RunKind("demo-kind", "a demo run", changeable=("steps",), ignored=("progress",), added={"rule": "old"})


def test_a_new_folder_starts_and_is_stamped(tmp_path):
    folder = RunFolder(str(tmp_path / "r"), KIND)
    assert folder.start({"lr": 0.1, "steps": 10, "rule": "new"}, resume=False) == []
    saved = json.loads(open(folder.config_path).read())
    assert list(saved)[:2] == ["kind", "format"] and saved["kind"] == "demo-kind" and saved["format"] == 1
    assert saved["lr"] == 0.1 and not os.path.exists(folder.config_path + ".tmp")


def test_an_existing_run_needs_resume_and_says_what_changed(tmp_path):
    folder = RunFolder(str(tmp_path / "r"), KIND)
    folder.start({"lr": 0.1, "steps": 10, "progress": True, "rule": "new"}, resume=False)
    with pytest.raises(RunFolderError, match=r"already holds a demo run: pass --resume"):
        folder.start({"lr": 0.1, "steps": 10, "progress": True, "rule": "new"}, resume=False)
    # changeable: returned to be said; ignored: silent
    assert folder.start({"lr": 0.1, "steps": 20, "progress": False, "rule": "new"}, resume=True) == ["steps: 10 -> 20"]
    with pytest.raises(RunFolderError, match=r"other settings \(lr: 0.1 -> 0.2; rule: 'new' -> 'x'\)"):
        folder.start({"lr": 0.2, "steps": 20, "progress": False, "rule": "x"}, resume=True)
    assert json.loads(open(folder.config_path).read())["lr"] == 0.1  # a refused resume leaves the folder as it was


def test_the_migration_table_reads_folders_from_before_a_field(tmp_path):
    folder = RunFolder(str(tmp_path / "r"), KIND)
    os.makedirs(folder.path)
    with open(folder.config_path, "w") as f:
        json.dump({"lr": 0.1}, f)  # format 0: no stamp, no "rule", no "extra"
    # "rule" was added later: the folder ran under "old"; "extra" counts as its default
    assert folder.resume_changes({"lr": 0.1, "rule": "old", "extra": 3}, defaults={"extra": 3}) == ([], [])
    assert folder.resume_changes({"lr": 0.1, "rule": "new"})[1] == ["rule: 'old' -> 'new'"]
    assert diff_fields({"a": [1, 2]}, {"a": (1, 2)}) == []  # as saved in JSON


def test_a_corrupt_config_is_named_and_the_callers_error_is_raised(tmp_path):
    class MyError(VlaForgetError, RuntimeError):
        pass

    folder = RunFolder(str(tmp_path), RunKind("k", "a k run", error=MyError))
    with open(folder.config_path, "w") as f:
        f.write('{"lr": ')
    with pytest.raises(MyError, match="config.json is not valid JSON"):
        folder.start({"lr": 1}, resume=True)


def test_events_are_appended_with_their_time(tmp_path):
    folder = RunFolder(str(tmp_path / "r"), KIND)
    folder.event("start", update=0)
    folder.event("resume", update=3, checkpoint="update-000003")
    lines = [json.loads(x) for x in open(folder.file(EVENTS))]
    assert [e["event"] for e in lines] == ["start", "resume"] and lines[1]["checkpoint"] == "update-000003"
    assert all(isinstance(e["time"], float) for e in lines)


def test_every_command_declares_its_folder():
    from vla_forget import bench, demos, pretrain, sweep
    from vla_forget.adapt import common

    kinds = {m.RUN_KIND.name: m.RUN_KIND for m in (bench, demos, pretrain, sweep, common)}
    assert set(kinds) == {"bench", "demos", "pretrain", "sweep", "adapt"}
    assert kinds["adapt"].config_file == "run.json" and kinds["sweep"].config_file == "sweep.json"
    assert kinds["bench"].error is bench.BenchError and kinds["adapt"].error is common.AdaptError
    assert "steps" in kinds["pretrain"].changeable and kinds["pretrain"].added["dagger_expert"] == "expert-v1"


def test_a_bench_logs_its_start_resume_and_end(tmp_path, monkeypatch):
    """bench writes events.jsonl in its run folder: start, then resume on --resume, each with its counts, and done."""
    from tests.fakes import patch_fake_rollouts
    from vla_forget.bench import BenchConfig, run_bench

    patch_fake_rollouts(monkeypatch, tmp_path)
    import yaml

    battery = tmp_path / "battery.yaml"
    battery.write_text(yaml.safe_dump({"kind": "battery", "id": "fake-battery", "version": 1, "description": "fake",
                                       "tasks": [{"task": "FakeA-v1", "episodes": 2}]}))
    target = tmp_path / "target.yaml"
    target.write_text(yaml.safe_dump({"kind": "target", "id": "fake-target", "version": 1, "task": "FakeTarget-v1",
                                      "episodes": 2, "seed_start": 200000, "train_seed_start": 0}))
    out = str(tmp_path / "b")
    cfg = BenchConfig(["small-vla-random-v1"], "small-vla-random-v1", out, battery=str(battery), target=str(target),
                      workers=0, videos_per_task=0, kl_states_per_task=4, progress=False)
    run_bench(cfg, log=lambda *_: None)
    run_bench(cfg, resume=True, log=lambda *_: None)
    events = [json.loads(x) for x in open(os.path.join(out, EVENTS))]
    assert [e["event"] for e in events] == ["start", "done", "resume", "done"]
    assert events[0]["to_run"] == 4 and events[2]["to_run"] == 0 and events[1]["episodes"] == 4
