"""`vla-forget sweep`: a grid of adaptation runs (method x learning rate x batch size x seed).

A sweep spec (``benchmarks/sweeps/NAME-vN.yaml``, or any YAML path)::

    id: forgetting              # the registered id is "{id}-v{version}"
    version: 1
    description: ...
    base: small-vla-base-v5     # passed to every run as --base
    task: place-cube-on-target-v1   # --task (a target spec id or a task id)
    updates: 100                # optional: --updates (default: the method's)
    save_every: 10              # optional: --save-every, a checkpoint every N updates (all are kept)
    grid:                       # the product of these lists is the set of runs
      method: [ppo, sft, iterative-sft]
      lr: [1.0e-4, 3.0e-4]
      batch_size: [32]          # samples per optimiser step (see batch_option)
      seed: [0, 1]
    options:                    # optional: more `vla-forget adapt` options for every run
      workers: 1                #   key -> --key (underscores become dashes); true -> --key,
      data: [data/a, data/b]    #   false -> --no-key; a list repeats the option; null leaves it out
    method_options:             # optional: per method, added to (and overriding) options,
      sft: {data: data/place-cube-on-target, updates: 400}   # updates and save_every too,
      ppo: {lr: [1.0e-5], batch_size: [64]}   # and the lr and batch_size axes (a list, or one value)

A method's ``lr`` or ``batch_size`` in ``method_options`` replaces that grid
axis for the method alone: on-policy RL usually needs a smaller learning rate
than SFT, and the grid would otherwise run every method at every rate.

The ``batch_size`` axis is the number of samples per optimiser step: ``adapt
--batch-size`` for the supervised methods and ``--minibatch-size`` for ppo and
grpo. REINFORCE takes one step per update over its whole rollout batch, so the
axis does not change it (vary ``episodes_per_update`` in ``method_options``).

Each run is a subprocess ``vla-forget adapt --method M ... --no-progress --out
SWEEP/runs/NAME`` named ``{method}_lr{lr}_b{batch_size}_s{seed}`` (e.g.
``ppo_lr3e-4_b32_s0``), so runs are isolated; its output goes to
``SWEEP/logs/NAME.log``.
``SWEEP/sweep.json`` lists every run with its command and status (pending,
running, done, failed, interrupted) and is rewritten after each change.
``--resume`` skips runs that are done and restarts the others, passing
``--resume`` to `adapt` when the run folder already exists. ``--parallel N``
runs N at a time. Adaptation keeps every checkpoint;
``vla-forget bench --checkpoints SWEEP`` evaluates them all.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional

from vla_forget.jsonio import write_json
from vla_forget.runfolder import RunFolder, RunKind
from vla_forget.spec import SpecError, check_id_version, check_keys, spec_int, read_spec
from vla_forget.errors import VlaForgetError

SWEEP_FORMAT = 1
SWEEP_KEYS = {"kind", "id", "version", "description", "base", "task", "updates", "save_every", "grid", "options",
              "method_options"}
GRID_KEYS = ("method", "lr", "batch_size", "seed")
RESERVED_OPTIONS = {"method", "lr", "batch_size", "minibatch_size", "seed", "base", "task", "updates", "save_every",
                    "out", "resume"}
PER_METHOD = {"updates", "save_every"}  # fixed options that method_options may override
#: the numeric grid axes: how their values are checked (method_options may replace lr and batch_size for one method)
AXIS_CHECKS = {"lr": dict(kind=float, minimum=0.0, positive=True), "batch_size": dict(kind=int, minimum=1),
               "seed": dict(kind=int, minimum=0)}
METHOD_AXES = ("lr", "batch_size")
#: adapt options that a resumed run may change (more updates: finished runs continue)
VOLATILE_PARAMS = {"updates", "save_every", "progress", "threads", "workers", "device"}
#: sweep folders (their state in ``sweep.json``, which each run's progress rewrites)
OPTION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: the command prefix that runs `vla-forget` in a subprocess (the same interpreter as this one)
ADAPT_PROGRAM = (sys.executable, "-m", "vla_forget.cli")
STATUSES = ("pending", "running", "done", "failed", "interrupted")


class SweepError(VlaForgetError, RuntimeError):
    """A sweep that cannot start or continue; the message says what to do."""


#: sweep folders (their state in ``sweep.json``, which each run's progress rewrites)
RUN_KIND = RunKind("sweep", "a sweep", "sweep.json", format=SWEEP_FORMAT, error=SweepError)


@dataclass
class SweepSpec:
    id: str
    version: int
    base: str
    task: str
    updates: Optional[int]
    methods: List[str]
    lrs: List[float]
    batch_sizes: List[int]
    seeds: List[int]
    save_every: Optional[int] = None
    options: Dict[str, Any] = field(default_factory=dict)
    method_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    method_axes: Dict[str, Dict[str, List]] = field(default_factory=dict)
    """per method, the grid axes (lr, batch_size) that replace the grid's for it"""
    description: str = ""
    source: str = ""

    @property
    def full_id(self) -> str:
        return f"{self.id}-v{self.version}"

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d


@dataclass
class RunPlan:
    """One run of the grid: its name, grid values and the `vla-forget adapt` arguments."""

    name: str
    method: str
    lr: float
    batch_size: int
    seed: int
    params: Dict[str, Any]
    """every option passed to adapt, but --out and --resume (what a resumed run must not change)"""

    def argv(self, out: str, resume: bool = False) -> List[str]:
        return ["adapt", *option_args(self.params), "--out", out] + (["--resume"] if resume else [])


# --------------------------------------------------------------------------
# the spec

def _number_list(v: Any, where: str, errors: List[str], *, kind: type, minimum: float, positive: bool = False) -> List:
    if not isinstance(v, list) or not v:
        errors.append(f"{where}: must be a non-empty list, got {v!r}")
        return []
    out = []
    for i, x in enumerate(v):
        if kind is float and isinstance(x, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                x = float(x)
            except ValueError:
                pass
        ok = isinstance(x, (int, float)) and not isinstance(x, bool) if kind is float else \
            isinstance(x, int) and not isinstance(x, bool)
        if not ok or (positive and x <= minimum) or (not positive and x < minimum):
            what = "a positive number" if kind is float else f"an integer >= {int(minimum)}"
            errors.append(f"{where}[{i}]: must be {what}, got {v[i]!r}")
            continue
        out.append(kind(x))
    if len(set(out)) != len(out):
        errors.append(f"{where}: contains duplicates")
    return out


def _options(v: Any, where: str, errors: List[str], reserved=RESERVED_OPTIONS,
             methods: Optional[List[str]] = None) -> Dict[str, Any]:
    """Options for the adapt runs of ``methods`` (None: any method); an option none of them has is refused."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        errors.append(f"{where}: must be a mapping of adapt options, got {v!r}")
        return {}
    out = {}
    for k, x in v.items():
        if not isinstance(k, str) or not OPTION_NAME.match(k):
            errors.append(f"{where}.{k}: option names are lower_case words (they become --lower-case flags)")
            continue
        if k in reserved:
            errors.append(f"{where}.{k}: set by the sweep itself (use the top-level field or the grid)")
            continue
        fields = adapt_options()
        if k not in fields:
            close = difflib.get_close_matches(k, fields, n=1)
            errors.append(f"{where}.{k}: not an option of vla-forget adapt{f'; did you mean {close[0]}' if close else ''} "
                          "(see vla-forget adapt --help)")
            continue
        if methods is not None and not any(k in adapt_options(m) for m in methods):
            errors.append(f"{where}.{k}: not an option of {' or '.join(methods) or 'the grid'}'s runs (see vla-forget "
                          "adapt --help: each option says the methods it applies to)")
            continue
        scalar = (str, int, float, bool, type(None))
        if isinstance(x, list):
            if not all(isinstance(e, (str, int, float)) and not isinstance(e, bool) for e in x):
                errors.append(f"{where}.{k}: a list option holds strings or numbers, got {x!r}")
                continue
        elif not isinstance(x, scalar):
            errors.append(f"{where}.{k}: must be a string, number, boolean or list, got {x!r}")
            continue
        out[k] = x
    return out


def adapt_options(method: Optional[str] = None) -> List[str]:
    """The option names of `vla-forget adapt`: of ``method``'s config, or of any method's."""
    from vla_forget.adapt.configs import option_names

    return option_names(method)


def batch_option(method: str) -> str:
    """The adapt option that the grid's batch_size sets for ``method``: its ``batch_size`` (the SFT methods),
    else its ``minibatch_size``."""
    return "batch_size" if "batch_size" in adapt_options(method) else "minibatch_size"


def known_methods() -> List[str]:
    from vla_forget.adapt import METHODS

    return list(METHODS)


def parse_sweep(data: Dict[str, Any], source: str = "<sweep>") -> SweepSpec:
    from vla_forget.policies import POLICIES
    from vla_forget.registry import UnknownIdError
    from vla_forget.spec import load_target

    errors: List[str] = []
    check_keys(data, SWEEP_KEYS, "", errors)
    id_, version = check_id_version(data, errors)
    base = data.get("base")
    if not isinstance(base, str) or not base:
        errors.append(f"base: must be a policy id or checkpoint folder, got {base!r}")
    elif base not in POLICIES and not os.path.exists(base):
        errors.append(f"base: {POLICIES.unknown_message(base)}; or give the path of a checkpoint folder (no such path: {base})")
    task = data.get("task")
    if not isinstance(task, str) or not task:
        errors.append(f"task: must be a target spec id or task id, got {task!r}")
    else:
        try:
            load_target(task)
        except (UnknownIdError, SpecError) as e:
            errors.append(f"task: {e}")
    updates = spec_int(data, "updates", "", errors, minimum=1)
    every = spec_int(data, "save_every", "", errors, minimum=1)
    grid = data.get("grid")
    methods: List[str] = []
    lrs: List[float] = []
    batches: List[int] = []
    seeds: List[int] = []
    if not isinstance(grid, dict):
        errors.append(f"grid: must be a mapping with {', '.join(GRID_KEYS)}, got {grid!r}")
    else:
        check_keys(grid, set(GRID_KEYS), "grid.", errors)
        for k in GRID_KEYS:
            if k not in grid:
                errors.append(f"grid.{k}: missing (give a list)")
        if "method" in grid:
            m = grid["method"]
            valid = known_methods()
            if not isinstance(m, list) or not m:
                errors.append(f"grid.method: must be a non-empty list, got {m!r}")
            else:
                for i, x in enumerate(m):
                    if x not in valid:
                        errors.append(f"grid.method[{i}]: unknown adaptation method {x!r}; methods: {', '.join(valid)}")
                    elif x not in methods:
                        methods.append(x)
                if len(set(m)) != len(m):
                    errors.append("grid.method: contains duplicates")
        if "lr" in grid:
            lrs = _number_list(grid["lr"], "grid.lr", errors, **AXIS_CHECKS["lr"])
        if "batch_size" in grid:
            batches = _number_list(grid["batch_size"], "grid.batch_size", errors, **AXIS_CHECKS["batch_size"])
        if "seed" in grid:
            seeds = _number_list(grid["seed"], "grid.seed", errors, **AXIS_CHECKS["seed"])
    options = _options(data.get("options"), "options", errors, methods=methods)
    method_options: Dict[str, Dict[str, Any]] = {}
    method_axes: Dict[str, Dict[str, List]] = {}
    mo = data.get("method_options")
    if mo is not None:
        if not isinstance(mo, dict):
            errors.append(f"method_options: must be a mapping of method -> options, got {mo!r}")
        else:
            for m, opts in mo.items():
                if m not in methods:
                    errors.append(f"method_options.{m}: not a method of the grid ({', '.join(methods) or 'none'})")
                    continue
                if isinstance(opts, dict):
                    opts = dict(opts)
                    axes = {axis: opts.pop(axis) for axis in METHOD_AXES if axis in opts}
                    for axis, v in axes.items():
                        axes[axis] = _number_list(v if isinstance(v, list) else [v], f"method_options.{m}.{axis}",
                                                  errors, **AXIS_CHECKS[axis])
                    if axes:
                        method_axes[m] = axes
                method_options[m] = _options(opts, f"method_options.{m}", errors, RESERVED_OPTIONS - PER_METHOD, [m])
    if errors:
        raise SpecError(source, errors)
    return SweepSpec(id_, version, base, task, updates, methods, lrs, batches, seeds, every, options, method_options,
                     method_axes, str(data.get("description", "")), source)


def load_sweep(ref: str) -> SweepSpec:
    """A sweep spec by registered id (``forgetting-v3``) or path to a YAML file."""
    data, path = read_spec("sweeps", ref)
    spec = parse_sweep(data, path)
    if not os.path.exists(ref) and spec.full_id != ref:
        raise SpecError(path, [f"sweep file {ref}.yaml declares id/version {spec.full_id!r}; they must match the file name"])
    return spec


# --------------------------------------------------------------------------
# expansion

def format_lr(lr: float) -> str:
    """A short, exact-enough learning rate for run names: 0.0003 -> 3e-4, 2.5e-05 -> 2.5e-5, 1.0 -> 1e0."""
    mantissa, exp = f"{lr:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


def run_name(method: str, lr: float, batch_size: int, seed: int) -> str:
    return f"{method}_lr{format_lr(lr)}_b{batch_size}_s{seed}"


def option_args(options: Dict[str, Any]) -> List[str]:
    """``{"batch_size": 32, "greedy": True, "progress": False, "data": [a, b]}`` ->
    ``--batch-size 32 --greedy --no-progress --data a --data b`` (None: left out)."""
    out: List[str] = []
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if v is None:
            continue
        if v is True:
            out.append(flag)
        elif v is False:
            out.append("--no-" + k.replace("_", "-"))
        elif isinstance(v, list):
            for x in v:
                out += [flag, str(x)]
        else:
            out += [flag, str(v)]
    return out


def summary(ref: str) -> str:
    """``vla-forget validate``'s line for a sweep spec (raises SpecError)."""
    s = load_sweep(ref)
    return f"OK sweep {s.full_id}: {len(expand(s))} runs ({', '.join(s.methods)}) on {s.task} from {s.base}"


def expand(spec: SweepSpec) -> List[RunPlan]:
    """The runs of the grid, in method, lr, batch size, seed order (a method's own axes where it has them)."""
    combos = []
    for method in spec.methods:
        axes = spec.method_axes.get(method, {})
        combos += [(method, *c) for c in itertools.product(axes.get("lr", spec.lrs), axes.get("batch_size", spec.batch_sizes),
                                                           spec.seeds)]
    runs = []
    for method, lr, batch, seed in combos:
        params: Dict[str, Any] = {"method": method, "base": spec.base, "task": spec.task, "lr": lr,
                                  batch_option(method): batch, "seed": seed,
                                  "updates": spec.updates, "save_every": spec.save_every, "progress": False}
        own = adapt_options(method)  # the grid's options apply to the methods that have them
        params.update({k: v for k, v in spec.options.items() if k in own})
        params.update(spec.method_options.get(method, {}))
        runs.append(RunPlan(run_name(method, lr, batch, seed), method, lr, batch, seed, params))
    return runs


def command_line(argv: List[str]) -> str:
    """The command a user would type: ``vla-forget adapt ...``."""
    return shlex.join(["vla-forget", *argv])


# --------------------------------------------------------------------------
# sweep.json

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: str, data: Any) -> None:
    write_json(path, data, indent=2)


def read_sweep_json(out: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(out, "sweep.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SweepError(f"{path} is not valid JSON ({e}); fix or remove it") from None


def _run_dir_started(path: str) -> bool:
    return os.path.isdir(path) and bool(os.listdir(path))


# --------------------------------------------------------------------------
# running

Launcher = Callable[[List[str], Any], "subprocess.Popen"]


def default_launcher(argv: List[str], log) -> "subprocess.Popen":
    """Start ``vla-forget ARGV`` as a child process writing to the open file ``log``."""
    from vla_forget.rollout import die_with_parent

    # a sweep killed outright takes its runs with it (they resume with `sweep --resume`)
    return subprocess.Popen([*ADAPT_PROGRAM, *argv], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)


def run_sweep(spec: SweepSpec, out: str, *, parallel: int = 1, resume: bool = False, dry_run: bool = False,
              launcher: Launcher = default_launcher, poll_s: float = 0.5, log=print) -> Dict[str, Any]:
    """Run (or, with ``dry_run``, print) every run of the grid; returns the sweep.json content.

    Without ``resume`` a folder that already holds a sweep is refused. With it,
    runs that are done are skipped, the others restarted (``adapt --resume``
    where the run folder exists); a run whose options changed is refused, but
    for :data:`VOLATILE_PARAMS` (a changed ``updates`` continues finished runs).
    """
    if parallel < 1:
        raise SweepError(f"--parallel must be >= 1, got {parallel}")
    runs = expand(spec)
    runs_root = os.path.join(out, "runs")
    previous = read_sweep_json(out)
    if dry_run:
        for r in runs:
            path = os.path.join(runs_root, r.name)
            done = bool(previous) and any(p["name"] == r.name and p.get("status") == "done" for p in previous["runs"])
            if resume and done:
                log(f"# {r.name}: done, skipped")
                continue
            log(command_line(r.argv(path, resume=resume and _run_dir_started(path))))
        return previous or {}
    RunFolder(out, RUN_KIND).refuse_unless_resume(resume, started=previous is not None)
    old = {p["name"]: p for p in (previous or {}).get("runs", [])}

    def fixed(params: Dict[str, Any]) -> Dict[str, Any]:
        """The options a resume must not change (an option its method does not have never counted)."""
        own = set(adapt_options(params.get("method"))) | {"method"} if params.get("method") in known_methods() else None
        return {k: v for k, v in json.loads(json.dumps(params)).items()
                if k not in VOLATILE_PARAMS and (own is None or k in own)}

    changed = [f"{r.name}: {fixed(old[r.name].get('params', {}))} -> {fixed(r.params)}" for r in runs
               if r.name in old and fixed(old[r.name].get("params", {})) != fixed(r.params)]
    gone = sorted(set(old) - {r.name for r in runs})
    if gone:
        changed.append(f"{', '.join(gone)} not in the grid any more")
    if changed:
        raise SweepError(f"--resume: runs of {out} were started with other options ({'; '.join(changed)}). "
                         "Resume with the same spec, or choose another --out")
    os.makedirs(runs_root, exist_ok=True)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    from vla_forget import __version__

    state: Dict[str, Any] = {
        "kind": "sweep", "format": SWEEP_FORMAT, "spec": spec.to_dict(), "source": spec.source,
        "vla_forget_version": __version__, "parallel": parallel, "runs": [],
    }
    for r in runs:
        prev = dict(old.get(r.name, {}))
        if prev.get("status") == "done" and any(prev.get("params", {}).get(k) != r.params.get(k) for k in ("updates", "save_every")):
            prev["status"] = "pending"  # asked for more (or other) updates: continue the run
        state["runs"].append({
            "name": r.name, "method": r.method, "lr": r.lr, "batch_size": r.batch_size, "seed": r.seed,
            "params": r.params, "out": os.path.join("runs", r.name), "log": os.path.join("logs", f"{r.name}.log"),
            "status": "pending" if prev.get("status") != "done" else "done",
            "command": prev.get("command"), "returncode": prev.get("returncode"), "attempts": prev.get("attempts", 0),
            "started": prev.get("started"), "finished": prev.get("finished"), "wall_s": prev.get("wall_s"),
        })
    entries = {e["name"]: e for e in state["runs"]}
    sweep_json = os.path.join(out, "sweep.json")
    _write_json(sweep_json, state)
    todo = [r for r in runs if entries[r.name]["status"] != "done"]
    skipped = len(runs) - len(todo)
    log(f"sweep {spec.full_id}: {len(runs)} runs, {len(todo)} to run{f' ({skipped} done, skipped)' if skipped else ''}, "
        f"{parallel} at a time -> {out}")
    active: Dict[str, Any] = {}

    def start(r: RunPlan) -> None:
        path = os.path.join(runs_root, r.name)
        argv = r.argv(path, resume=_run_dir_started(path))
        e = entries[r.name]
        e.update(command=command_line(argv), returncode=None, started=_now(), finished=None, wall_s=None,
                 attempts=e["attempts"] + 1)
        logf = open(os.path.join(out, e["log"]), "a")
        logf.write(f"\n# {e['started']} {e['command']}\n")
        logf.flush()
        try:
            proc = launcher(argv, logf)
        except OSError as err:
            logf.close()
            e.update(status="failed", finished=_now())
            log(f"  {r.name}: could not start ({err})")
            return
        except BaseException:
            logf.close()
            raise
        e["status"] = "running"
        active[r.name] = (proc, time.monotonic(), logf)
        folder.event("run_started", run=r.name, attempt=e["attempts"])
        log(f"  {r.name}: started")

    def finish(name: str, rc: Optional[int], status: Optional[str] = None) -> None:
        proc, t0, logf = active.pop(name)
        logf.close()
        e = entries[name]
        e.update(status=status or ("done" if rc == 0 else "failed"), returncode=rc, finished=_now(),
                 wall_s=round(time.monotonic() - t0, 1))
        folder.event("run_" + e["status"], run=name, returncode=rc, wall_s=e["wall_s"])
        log(f"  {name}: {e['status']}" + (f" (exit {rc}; see {os.path.join(out, e['log'])})" if e["status"] == "failed" else "")
            + f", {e['wall_s']} s")

    queue = list(todo)
    folder = RunFolder(out, RUN_KIND)
    folder.event("resume" if previous is not None else "start", runs=len(runs), to_run=len(todo), parallel=parallel)
    try:
        while queue or active:
            while queue and len(active) < parallel:
                start(queue.pop(0))
                _write_json(sweep_json, state)
            for name in list(active):
                rc = active[name][0].poll()
                if rc is not None:
                    finish(name, rc)
                    _write_json(sweep_json, state)
            if active:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for name in list(active):
            proc = active[name][0]
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            finish(name, proc.returncode, "interrupted")
        _write_json(sweep_json, state)
        raise SweepError(f"interrupted: finished runs are kept in {out}; continue with the same command and --resume") from None
    counts = {s: sum(e["status"] == s for e in state["runs"]) for s in STATUSES}
    state["summary"] = {k: v for k, v in counts.items() if v}
    _write_json(sweep_json, state)
    folder.event("done", **state["summary"])
    return state
