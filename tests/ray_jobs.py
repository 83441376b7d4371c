"""Jobs for the Ray executor's tests (importable by the actors): each job is ``(n, marker)`` or ``n``."""

from __future__ import annotations

import os


def die_once(job):
    """n * n; the worker that takes job 3 first ends its process (a node lost mid-job), once."""
    n, marker = job
    if n == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return n * n


def always_die(job):
    os._exit(1)


def refuse(n):
    if n == 2:
        raise ValueError(f"job {n} is bad")
    return n
