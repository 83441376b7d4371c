"""`vla-forget demos`: the real CLI on the CPU simulator, resume, and the checks made before any simulation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets", reason="needs the rlds extra: pip install 'vla-forget[rlds]'")

TASK = "PullCube-v1"
INSTRUCTION = "pull the blue cube back onto the red and white target"


def _demos(out, *extra, timeout=300):
    env = dict(os.environ, VLA_FORGET_CACHE=str(out.parent / "cache"))
    cmd = [sys.executable, "-m", "vla_forget.cli", "demos", "--task", TASK, "--episodes", "2", "--out", str(out),
           "--image-size", "64", "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "pull"
    proc = _demos(out, "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demos_writes_an_rlds_dataset(demo_run):
    from vla_forget.datasets import open_dataset

    out, proc = demo_run
    assert "kept 2/2" in proc.stdout and "pull_cube_v1" in proc.stdout
    ds = open_dataset(str(out))
    assert ds.num_episodes == 2 and ds.seeds == [0, 1]
    assert ds.image_shape == (64, 64, 3) and ds.state_dim == 16
    ep = ds.episode(0)
    assert ep.instruction == INSTRUCTION and ds.instructions == [INSTRUCTION] * 2
    assert ep.metadata["task"] == TASK and ep.metadata["source"] == "expert-v2"  # the default expert
    assert ep.reward[-1] == 1.0 and ep.is_last[-1] and ep.is_terminal[-1]  # ends solved, success held
    assert np.all(np.abs(ep.action) <= 1.0) and ep.image.std() > 0  # clipped actions, rendered frames
    m = json.loads((out / "dataset.json").read_text())
    assert m["collection"]["kept_fraction"] == 1.0 and m["source"] == "expert-v2"
    stats = json.loads((out / "dataset_statistics.json").read_text())["pull_cube_v1"]
    assert stats["num_trajectories"] == 2 and stats["num_transitions"] == ds.num_steps


def test_resume_redoes_only_what_is_missing(demo_run):
    out, _ = demo_run
    raw = out / "raw"
    lines = (raw / "attempts.jsonl").read_text().splitlines()
    # as if killed after seed 0: seed 1's episode and record are gone
    (raw / "attempts.jsonl").write_text(lines[0] + "\n")
    os.remove(raw / f"{TASK}__seed00001.npz")
    proc = _demos(out, "--workers", "0", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    redone = [json.loads(x)["seed"] for x in (raw / "attempts.jsonl").read_text().splitlines()]
    assert redone == [0, 1]
    from vla_forget.datasets import open_dataset

    assert open_dataset(str(out)).seeds == [0, 1]
    # nothing left to do: a no-op that starts no simulator
    proc = _demos(out, "--resume", timeout=60)
    assert proc.returncode == 0 and len((raw / "attempts.jsonl").read_text().splitlines()) == 2


def test_refusals_before_simulation(tmp_path, demo_run):
    from vla_forget.demos import MOTION_PLANNING, DemoConfig, DemoError, collect_demos, demo_source

    out, _ = demo_run
    with pytest.raises(DemoError, match="--resume"):
        collect_demos(DemoConfig(task=TASK, episodes=2, out=str(out), image_size=64, progress=False))
    with pytest.raises(DemoError, match="image_size: 64 -> 128"):
        collect_demos(DemoConfig(task=TASK, episodes=2, out=str(out), image_size=128, progress=False), resume=True)
    with pytest.raises(DemoError, match="evaluation seeds"):
        collect_demos(DemoConfig(task=TASK, episodes=5, out=str(tmp_path / "x"), seed_start=99_990, progress=False))
    assert demo_source("PickCube-v1") == "expert-v2" and demo_source("PickCube-v1", "expert-v1") == "expert-v1"
    assert demo_source("LiftPegUpright-v1", "expert-v1") == MOTION_PLANNING
    assert demo_source("LiftPegUpright-v2", "expert-v1") == MOTION_PLANNING  # the low-poly twin, same planner
    with pytest.raises(DemoError, match="expert-v2, expert-v1"):
        demo_source("PickCube-v1", "expert-v9")
    with pytest.raises(DemoError, match="expert: 'expert-v2' -> 'expert-v1'"):
        collect_demos(DemoConfig(task=TASK, episodes=2, out=str(out), image_size=64, expert="expert-v1", progress=False),
                      resume=True)
    # a collection from before expert-v2 has no expert in its config: expert-v1 made it, and resuming says so
    old = tmp_path / "old"
    shutil.copytree(out, old)
    cfg = json.loads((old / "raw" / "config.json").read_text())
    del cfg["expert"]
    cfg["source"] = "expert-v1"
    (old / "raw" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DemoError, match="resume it with --expert expert-v1"):
        collect_demos(DemoConfig(task=TASK, episodes=2, out=str(old), image_size=64, progress=False), resume=True)
    from vla_forget.registry import UnknownIdError

    with pytest.raises(UnknownIdError):
        demo_source("NoSuchTask-v1")


def test_all_instructions_demonstrates_each_scene_under_every_instruction(tmp_path):
    from vla_forget.datasets import open_dataset
    from vla_forget.demos import DemoConfig, DemoError, collect_demos
    from vla_forget.envs import task_instructions

    task, names = "PlaceCubeOnTarget-v1", task_instructions("PlaceCubeOnTarget-v1")
    out = tmp_path / "pairs"
    env = dict(os.environ, VLA_FORGET_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "vla_forget.cli", "demos", "--task", task, "--episodes", "4", "--out", str(out),
           "--image-size", "64", "--no-progress", "--workers", "0", "--all-instructions", "--seed-start", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ds = open_dataset(str(out))
    assert ds.num_episodes == 4 and ds.seeds == [5, 5, 5, 5] and ds.instructions == names[:4]
    first = [ds.episode(i).image[0] for i in range(4)]
    assert all(np.array_equal(first[0], f) for f in first[1:])  # one scene ...
    assert len({ds.episode(i).action.tobytes() for i in range(4)}) == 4  # ... four demonstrations
    m = json.loads((out / "dataset.json").read_text())
    assert m["instruction_indices"] == [0, 1, 2, 3]
    # interrupted after the second: resume redoes only the missing ones, and goes on into the next seed
    raw = out / "raw"
    lines = (raw / "attempts.jsonl").read_text().splitlines()
    (raw / "attempts.jsonl").write_text("\n".join(lines[:2]) + "\n")
    os.remove(raw / f"{task}__seed00005__i2.npz")
    os.remove(raw / f"{task}__seed00005__i3.npz")
    proc = subprocess.run([*cmd[:7], "11", *cmd[8:], "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = [(json.loads(x)["seed"], json.loads(x)["instruction_index"]) for x in (raw / "attempts.jsonl").read_text().splitlines()]
    assert done == [(5, k) for k in range(9)] + [(6, 0), (6, 1)]
    ds = open_dataset(str(out))
    assert ds.seeds == [5] * 9 + [6, 6] and ds.instructions == names + names[:2]
    # a collection of single demonstrations is not resumed as pairs, and a one-instruction task has no pairs
    with pytest.raises(DemoError, match="all_instructions: True -> False"):
        collect_demos(DemoConfig(task=task, episodes=2, out=str(out), image_size=64, progress=False), resume=True)
    with pytest.raises(DemoError, match="one instruction"):
        collect_demos(DemoConfig(task=TASK, episodes=2, out=str(tmp_path / "y"), all_instructions=True, progress=False))


def test_cli_help_has_examples():
    from vla_forget.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "vla-forget demos --task PickCube-v2" in sub.choices["demos"].format_help()
