"""Worker processes of the bench/adapt pools end when the process that started them is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent('''
    import os, sys, time
    from vla_forget.rollout import run_parallel

    def job(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)

    if __name__ == "__main__":
        run_parallel(job, [sys.argv[1]], 1, lambda r: None)
''')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its (new) parent to reap it counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_killed_run_leaves_no_worker_behind(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    pid_file = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)], cwd=os.getcwd())
    try:
        deadline = time.time() + 120
        while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)  # no chance to clean up
        parent.wait()
        deadline = time.time() + 20
        while _alive(worker) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), "the worker outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
