"""The executor options, refused before any work where they cannot run (no Ray needed)."""

from __future__ import annotations

import sys

from vla_forget.cli import main
from vla_forget.executors import executor_problem


def test_executor_options_are_checked_before_any_work(monkeypatch, tmp_path, capsys):
    assert executor_problem("local", 0) is None
    assert "choose one of local, ray" in executor_problem("spark", 2)
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert "pip install 'vla-forget[ray]'" in executor_problem("ray", 2)
    out = tmp_path / "b"
    rc = main(["bench", "--policy", "zero-v1", "--base", "zero-v1", "--executor", "ray", "--out", str(out),
               "--no-progress"])
    assert rc != 0 and "pip install 'vla-forget[ray]'" in capsys.readouterr().err
    assert not out.exists()
    rc = main(["demos", "--task", "PushCube-v2", "--episodes", "2", "--executor", "ray", "--out", str(tmp_path / "d"),
               "--no-progress"])
    assert rc != 0 and "pip install 'vla-forget[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
