"""Where episode jobs run: ``local`` (this machine's process pool) or ``ray`` (actors on a Ray cluster).

:func:`run_jobs` is the one seam: ``fn(job)`` for each job, each result handed to ``on_result`` in this process as
it finishes (bench appends its episodes there, so ``episodes.jsonl`` stays append-only on the driver and
``--resume`` works the same under both executors).

**local** (:func:`vla_forget.rollout.run_parallel`): ``workers`` spawned processes, one simulator each.

**ray**: ``workers`` actors (:class:`RayExecutor`) on the cluster at ``ray_address`` (``auto``: the cluster this machine belongs to, as
``ray start`` left it; ``HOST:PORT``; ``local``: a one-machine cluster started for this run). Each actor is one
process that keeps its env and policy warm across jobs, as a local worker does, and asks the cluster for one CPU
(and, with ``device="cuda"``, its share of a GPU). Before the first episode every actor reports what its node has
(:func:`node_facts`): the same vla-forget, Python, torch and ManiSkill versions as the driver, a Vulkan device for
the simulator, and the run folder, which the actors write videos and recorded states into (on several machines a
path every node shares). Any difference stops the run with one line per node, before any episode.

A job whose actor (or node) dies is run again on a fresh actor, at most ``retries`` times; then the run stops
with the reason, every finished episode saved. A result reaches ``on_result`` once: a job is counted only when its
result comes back, so a lost job is never counted and a retried one never twice. An error raised by the job itself
(a bug, a bad checkpoint) is raised here as it would be locally.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

from vla_forget import __version__, rollout
from vla_forget.errors import VlaForgetError

EXECUTORS = ("local", "ray")
#: how often a job whose actor died is tried again on a fresh actor
RETRIES = 2
RAY_INSTALL = "pip install 'vla-forget[ray]'"


class ExecutorError(VlaForgetError, RuntimeError):
    """The executor cannot run the jobs: no cluster, nodes that differ from the driver, a job lost too often."""


def run_jobs(fn: Callable[[Any], Any], jobs: Iterable[Any], on_result: Callable[[Any], None], *,
             executor: str = "local", workers: int = 1, ray_address: str = "auto", device: str = "cpu",
             run_dir: Optional[str] = None, more: Callable[[int], bool] = lambda n_pending: True,
             log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)) -> None:
    """Run ``fn(job)`` for each job on ``executor`` (see the module docstring)."""
    if executor == "local":
        rollout.run_parallel(fn, jobs, workers, on_result, more=more)
    elif executor == "ray":
        RayExecutor(ray_address, max(1, int(workers)), device=device, run_dir=run_dir, log=log).run(
            fn, jobs, on_result, more=more)
    else:
        raise ExecutorError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")


def executor_problem(executor: str, workers: int, num_envs: int = 1) -> Optional[str]:
    """What is wrong with these options, in one line (None: nothing); Ray not installed says how to install it."""
    if executor not in EXECUTORS:
        return f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}"
    if executor == "ray":
        try:
            import_ray()
        except ExecutorError as e:
            return str(e)
        if workers < 1:
            return "--executor ray runs one Ray actor per worker: give --workers N >= 1"
        if num_envs > 1:
            return ("--executor ray runs CPU-simulation workers; GPU simulation (--num-envs N > 1) runs in this "
                    "process: use --executor local")
    return None


def import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def node_facts() -> Dict[str, Any]:
    """What this process's node runs: the versions that must match the driver's."""
    import torch

    try:
        from importlib.metadata import version

        ms = version("mani-skill")
    except Exception:  # noqa: BLE001 (not installed: said as such)
        ms = None
    return {"vla_forget": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "mani_skill": ms}


def node_problems(driver: Dict[str, Any], node: Dict[str, Any]) -> List[str]:
    """Where a node's facts differ from the driver's (version skew), one phrase each."""
    return [f"{k} {node.get(k)} (the driver has {v})" for k, v in driver.items() if node.get(k) != v]


class _Worker:
    """A Ray actor's body: one simulator process, warm across jobs (decorated with ``ray.remote`` at run time)."""

    def __init__(self):
        rollout.worker_init(0)  # one torch thread; the software renderer in this thread

    def hello(self, driver: Dict[str, Any], run_dir: Optional[str], needs_vulkan: bool) -> Dict[str, Any]:
        facts = node_facts()
        problems = node_problems(driver, facts)
        if needs_vulkan:
            try:
                from vla_forget.envs.vulkan import check_vulkan

                check_vulkan()
            except Exception as e:  # noqa: BLE001 (reported per node, before the first episode)
                problems.append(f"no Vulkan device for the simulator ({str(e).splitlines()[0]})")
        if run_dir is not None and not (os.path.isdir(run_dir) and os.access(run_dir, os.W_OK)):
            problems.append(f"cannot write to the run folder {run_dir} (on several machines it must be a path "
                            "every node shares)")
        return {"node": socket.gethostname(), "pid": os.getpid(), "problems": problems, **facts}

    def run(self, fn: Callable[[Any], Any], job: Any) -> Any:
        return fn(job)

    def die(self) -> None:
        """End this actor's process now (tests: a worker lost mid-run)."""
        os._exit(1)


class RayExecutor:
    """Episode jobs on Ray actors (see the module docstring)."""

    def __init__(self, address: str, workers: int, *, device: str = "cpu", run_dir: Optional[str] = None,
                 retries: int = RETRIES, log: Callable[[str], None] = lambda msg: None, needs_vulkan: bool = True):
        self.ray = import_ray()
        self.address, self.workers, self.device = address, int(workers), device
        self.run_dir = None if run_dir is None else os.path.abspath(run_dir)
        self.retries, self.log, self.needs_vulkan = int(retries), log, needs_vulkan
        self._cls = None
        self.actors: List[Any] = []
        self.replaced = 0

    # --- the cluster ----------------------------------------------------------------------
    def connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        try:
            if self.address == "local":
                ray.init(num_cpus=max(self.workers, 1), include_dashboard=False, log_to_driver=False,
                         _node_ip_address="127.0.0.1", configure_logging=False)
            else:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ExecutorError(
                f"--ray-address {self.address}: no Ray cluster there ({str(e).splitlines()[0]}). Start one with "
                "`ray start --head` (docs/ray.md), pass --ray-address HOST:PORT, or --ray-address local for a "
                "one-machine cluster started for this run") from None

    def _actor(self):
        if self._cls is None:
            gpus = (1.0 / self.workers) if self.device.startswith("cuda") else 0
            self._cls = self.ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(_Worker)
        return self._cls.remote()

    def _greet(self, actors: List[Any]) -> None:
        """Every actor's node facts against the driver's; any problem stops the run before the first episode."""
        ray = self.ray
        driver = node_facts()
        try:
            hellos = ray.get([a.hello.remote(driver, self.run_dir, self.needs_vulkan) for a in actors])
        except ray.exceptions.RayActorError as e:
            raise ExecutorError(f"a Ray worker could not start: {_cause(e)}. Is vla-forget installed on every node "
                                f"({RAY_INSTALL}, the same version as here: {__version__})?") from None
        except ray.exceptions.RayTaskError as e:
            raise ExecutorError(f"a Ray worker could not check its node: {_cause(e)}") from None
        bad = [f"{h['node']} (pid {h['pid']}): " + "; ".join(h["problems"]) for h in hellos if h["problems"]]
        if bad:
            raise ExecutorError("Ray workers that cannot run this run's episodes:\n  " + "\n  ".join(bad))

    def start(self) -> None:
        self.connect()
        have = self.ray.cluster_resources()
        want = {"CPU": float(self.workers), "GPU": 1.0 if self.device.startswith("cuda") else 0.0}
        short = [f"{int(n) if k == 'CPU' else n:g} {k}{'s' if n != 1 else ''} (it has {have.get(k, 0):g})"
                 for k, n in want.items() if n > have.get(k, 0)]
        if short:  # actors would wait for resources that never come
            raise ExecutorError(f"the Ray cluster is too small for --workers {self.workers}: it needs "
                                f"{', '.join(short)}; give fewer --workers or add nodes (`ray status` shows them)")
        self.actors = [self._actor() for _ in range(self.workers)]
        try:
            self._greet(self.actors)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 (already gone)
                pass
        self.actors = []

    # --- the jobs ---------------------------------------------------------------------------
    def run(self, fn: Callable[[Any], Any], jobs: Iterable[Any], on_result: Callable[[Any], None], *,
            more: Callable[[int], bool] = lambda n_pending: True, keep_workers: bool = False) -> None:
        """``keep_workers``: leave the actors running for the next call (adaptation: one set for every update;
        :meth:`stop` ends them)."""
        ray = self.ray
        if not self.actors:
            self.start()
        jobs = iter(jobs)
        queue: Deque[Tuple[Any, int]] = deque()  # jobs to run again (their actor died), with their tries so far
        inflight: Dict[Any, Tuple[Any, Any, int]] = {}  # ObjectRef -> (actor, job, tries)
        idle = list(self.actors)
        exhausted = False
        try:
            while True:
                while idle and more(len(inflight)):
                    if queue:
                        job, tries = queue.popleft()
                    elif not exhausted:
                        job = next(jobs, None)
                        if job is None:
                            exhausted = True
                            continue
                        tries = 0
                    else:
                        break
                    actor = idle.pop()
                    inflight[actor.run.remote(fn, job)] = (actor, job, tries)
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    actor, job, tries = inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayActorError as e:  # the actor or its node died: a fresh actor runs it
                        if tries + 1 > self.retries:
                            raise ExecutorError(f"an episode job was lost {tries + 1} times with its Ray worker "
                                                f"(last: {_cause(e)}); the finished episodes are saved: continue "
                                                "with --resume") from None
                        self.log(f"ray: a worker died ({_cause(e)}); its job runs again on a fresh worker "
                                 f"(try {tries + 2} of {self.retries + 1})")
                        self.actors.remove(actor)
                        fresh = self._actor()
                        self._greet([fresh])
                        self.actors.append(fresh)
                        self.replaced += 1
                        idle.append(fresh)
                        queue.appendleft((job, tries + 1))
                        continue
                    except ray.exceptions.RayTaskError as e:  # the job itself failed: as it would locally
                        raise e.as_instanceof_cause() from None
                    on_result(result)
                    idle.append(actor)
        except BaseException:
            for ref in inflight:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001
                    pass
            self.stop()
            raise
        if not keep_workers:
            self.stop()


def _cause(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
