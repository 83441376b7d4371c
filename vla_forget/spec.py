"""Battery, target and preset specs: versioned YAML data, validated with exact messages.

A **battery** (``benchmarks/batteries/NAME-vN.yaml``) is a versioned list of
held-out tasks with episode counts and seeds::

    kind: battery           # every spec names its kind: battery, target, sweep or preset
    id: tabletop            # the registered id is "{id}-v{version}"
    version: 1
    description: ...
    episodes: 50            # default episodes per task
    seed_start: 100000      # default: seeds seed_start .. seed_start+episodes-1
    target: place-cube-on-target-v1   # default adaptation target (a target spec id)
    decoding: greedy        # how policies act in its episodes: greedy, sample (temperature 1, the
                            # default) or {temperature: T}; --greedy / --temperature override it
    tasks:
      - task: PickCube-v1
      - task: PushCube-v1
        episodes: 30        # per-task override
        seeds: [1, 2, 3]    # or explicit seeds (then episodes = len(seeds))
        max_episode_steps: 60

A **target** spec (``benchmarks/targets/NAME-vN.yaml``) names the adaptation task::

    kind: target
    id: place-cube-on-target
    version: 1
    task: PlaceCubeOnTarget-v1
    episodes: 50
    seed_start: 200000      # evaluation seeds, disjoint from training seeds
    train_seed_start: 0
    decoding: greedy        # optional, as in a battery

A task, its seeds, its success test or its decoding changing means a new version. ``vla-forget validate FILE``
reads the kind a file names (:data:`KINDS`); the loaders (``load_battery``, ...) also take a file without one,
and refuse a file that names another kind.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Dict, List, Optional, Tuple

import yaml

from vla_forget.registry import UnknownIdError
from vla_forget.errors import VlaForgetError


#: the battery of bench, adapt and the presets where none is given
DEFAULT_BATTERY = "tabletop-v2"


class SpecError(VlaForgetError, ValueError):
    """A spec that does not validate; ``errors`` lists every problem with its location."""

    def __init__(self, source: str, errors: List[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + ("; ".join(errors) if len(errors) == 1 else "\n  - " + "\n  - ".join(errors)))


@dataclass(frozen=True)
class Decoding:
    """How a policy picks its action tokens in a spec's episodes: greedily, or sampling at a temperature."""

    greedy: bool = False
    temperature: float = 1.0

    def to_dict(self) -> Dict[str, Any]:
        return {"greedy": True} if self.greedy else {"greedy": False, "temperature": self.temperature}

    def describe(self) -> str:
        return "greedy" if self.greedy else f"sampling at temperature {self.temperature:g}"


#: what a spec without ``decoding`` means (every battery and target before the key existed)
DEFAULT_DECODING = Decoding()


def parse_decoding(value: Any, where: str, errors: List[str]) -> Optional[Decoding]:
    """``greedy`` | ``sample`` | ``{temperature: T}`` (T > 0) | ``{greedy: true}``; None when absent."""
    if value is None:
        return None
    if value == "greedy" or value == {"greedy": True}:
        return Decoding(greedy=True)
    if value == "sample":
        return Decoding()
    if isinstance(value, dict) and set(value) <= {"temperature", "greedy"} and not value.get("greedy", False):
        t = value.get("temperature", 1.0)
        if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0:
            return Decoding(temperature=float(t))
    errors.append(f"{where}decoding: must be greedy, sample or {{temperature: T}} with T > 0, got {value!r}")
    return None


@dataclass
class TaskEntry:
    task: str
    seeds: List[int]
    max_episode_steps: Optional[int] = None

    @property
    def episodes(self) -> int:
        return len(self.seeds)


@dataclass
class Battery:
    id: str
    version: int
    tasks: List[TaskEntry]
    description: str = ""
    target: Optional[str] = None
    source: str = ""
    decoding: Optional[Decoding] = None
    """None: the default (sampling at temperature 1)"""

    @property
    def full_id(self) -> str:
        return f"{self.id}-v{self.version}"

    @property
    def task_ids(self) -> List[str]:
        return [t.task for t in self.tasks]

    def with_episodes(self, episodes: int) -> "Battery":
        """The same battery with the first ``episodes`` seeds of each task (for quick runs)."""
        tasks = [TaskEntry(t.task, t.seeds[:episodes] if episodes <= len(t.seeds) else t.seeds + list(range(t.seeds[-1] + 1, t.seeds[-1] + 1 + episodes - len(t.seeds))), t.max_episode_steps) for t in self.tasks]
        return Battery(self.id, self.version, tasks, self.description, self.target, self.source, self.decoding)

    def to_dict(self) -> Dict[str, Any]:
        out = {"id": self.id, "version": self.version, "description": self.description, "target": self.target,
               "tasks": [asdict(t) for t in self.tasks]}
        if self.decoding is not None:  # absent before the key existed: keeps older runs' battery hashes
            out["decoding"] = self.decoding.to_dict()
        return out

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Target:
    id: str
    version: int
    task: TaskEntry
    description: str = ""
    train_seed_start: int = 0
    source: str = ""
    decoding: Optional[Decoding] = None
    """None: the default (sampling at temperature 1)"""

    @property
    def full_id(self) -> str:
        return f"{self.id}-v{self.version}"

    def to_dict(self) -> Dict[str, Any]:
        out = {"id": self.id, "version": self.version, "description": self.description,
               "task": asdict(self.task), "train_seed_start": self.train_seed_start}
        if self.decoding is not None:
            out["decoding"] = self.decoding.to_dict()
        return out


# --------------------------------------------------------------------------
# discovery

def _spec_dir(kind: str):
    return resources.files("vla_forget.benchmarks").joinpath(kind)


def available(kind: str) -> List[str]:
    """Registered spec ids of a kind ("batteries", "targets", "presets")."""
    d = _spec_dir(kind)
    if not d.is_dir():
        return []
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))


def read_spec(kind: str, ref: str) -> tuple[Dict[str, Any], str]:
    if os.path.isfile(ref):
        path, text = ref, open(ref).read()
    elif os.path.isdir(ref) and not _spec_dir(kind).joinpath(f"{ref}.yaml").is_file():
        raise SpecError(ref, ["is a folder, not a YAML spec file"])
    else:
        f = _spec_dir(kind).joinpath(f"{ref}.yaml")
        if not f.is_file():
            valid = available(kind)
            raise UnknownIdError(f"unknown {kind[:-1] if kind != 'batteries' else 'battery'} id {ref!r} (and no such file). Valid ids: {', '.join(valid)}")
        path, text = f"{kind}/{ref}.yaml", f.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(path, [f"not valid YAML: {e}"]) from None
    if not isinstance(data, dict):
        raise SpecError(path, ["expected a mapping at the top level"])
    want = KIND_OF_FOLDER[kind]
    if "kind" in data and data["kind"] != want:
        raise SpecError(path, [f"kind: {data['kind']!r}: this is not a {want} spec; give it where a {data['kind']} is "
                               f"expected (`vla-forget validate {ref}` says what it is)"])
    return data, path


#: Each spec kind: the folder of its registered YAMLs, and the function that validates one and sums it up in a line
#: (``module:function``, imported when used: the sweep's loader needs the adaptation config). Every YAML names its
#: kind on its first line (``kind: battery``); loaders also take files without it, where the kind is known.
KINDS: Dict[str, Tuple[str, str]] = {
    "battery": ("batteries", "vla_forget.spec:_summary_battery"),
    "target": ("targets", "vla_forget.spec:_summary_target"),
    "sweep": ("sweeps", "vla_forget.sweep:summary"),
    "preset": ("presets", "vla_forget.spec:_summary_preset"),
}
KIND_OF_FOLDER = {folder: kind for kind, (folder, _) in KINDS.items()}


# --------------------------------------------------------------------------
# validation helpers

def spec_int(d: Dict[str, Any], key: str, where: str, errors: List[str], *, minimum: int = 0, default: Any = None) -> Any:
    v = d.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        errors.append(f"{where}{key}: must be an integer >= {minimum}, got {v!r}")
        return None
    return v


def _seeds(d: Dict[str, Any], where: str, errors: List[str], default_episodes: Optional[int], default_start: Optional[int]) -> List[int]:
    if "seeds" in d:
        s = d["seeds"]
        if not isinstance(s, list) or not s or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in s):
            errors.append(f"{where}seeds: must be a non-empty list of non-negative integers, got {s!r}")
            return []
        if len(set(s)) != len(s):
            errors.append(f"{where}seeds: contains duplicates")
        if "episodes" in d and d["episodes"] != len(s):
            errors.append(f"{where}episodes: {d['episodes']} disagrees with the {len(s)} seeds given")
        return list(s)
    episodes = spec_int(d, "episodes", where, errors, minimum=1, default=default_episodes)
    start = spec_int(d, "seed_start", where, errors, minimum=0, default=default_start)
    if episodes is None:
        if default_episodes is None and "episodes" not in d:
            errors.append(f"{where}episodes: missing (give episodes or seeds)")
        return []
    return list(range(start or 0, (start or 0) + episodes))


def _check_task(task: Any, where: str, errors: List[str]) -> None:
    from vla_forget.envs import TASKS

    if not isinstance(task, str):
        errors.append(f"{where}task: must be a task id string, got {task!r}")
    elif task not in TASKS:
        errors.append(f"{where}task: {TASKS.unknown_message(task)}")


def check_keys(d: Dict[str, Any], allowed: set, where: str, errors: List[str]) -> None:
    for k in d:
        if k not in allowed:
            errors.append(f"{where}{k}: unknown field (allowed: {', '.join(sorted(allowed))})")


def check_id_version(d: Dict[str, Any], errors: List[str]) -> tuple[str, int]:
    id_ = d.get("id")
    if not isinstance(id_, str) or not id_ or "/" in id_:
        errors.append(f"id: must be a non-empty name, got {id_!r}")
    version = spec_int(d, "version", "", errors, minimum=1)
    if "version" not in d:
        errors.append("version: missing (every spec is versioned)")
    return id_, version


BATTERY_KEYS = {"kind", "id", "version", "description", "episodes", "seed_start", "target", "tasks", "max_episode_steps", "decoding"}
TASK_KEYS = {"task", "episodes", "seeds", "seed_start", "max_episode_steps"}
TARGET_KEYS = {"kind", "id", "version", "description", "task", "episodes", "seeds", "seed_start", "train_seed_start", "max_episode_steps",
               "decoding"}


def parse_battery(data: Dict[str, Any], source: str = "<battery>") -> Battery:
    errors: List[str] = []
    check_keys(data, BATTERY_KEYS, "", errors)
    id_, version = check_id_version(data, errors)
    episodes = spec_int(data, "episodes", "", errors, minimum=1)
    seed_start = spec_int(data, "seed_start", "", errors, minimum=0, default=0)
    default_steps = spec_int(data, "max_episode_steps", "", errors, minimum=1)
    tasks_raw = data.get("tasks")
    tasks: List[TaskEntry] = []
    if not isinstance(tasks_raw, list) or not tasks_raw:
        errors.append("tasks: must be a non-empty list of {task: ID, ...} entries")
        tasks_raw = []
    seen = set()
    for i, t in enumerate(tasks_raw):
        where = f"tasks[{i}]."
        if isinstance(t, str):
            t = {"task": t}
        if not isinstance(t, dict):
            errors.append(f"tasks[{i}]: must be a mapping or a task id, got {t!r}")
            continue
        check_keys(t, TASK_KEYS, where, errors)
        _check_task(t.get("task"), where, errors)
        if t.get("task") in seen:
            errors.append(f"{where}task: {t.get('task')!r} appears twice")
        seen.add(t.get("task"))
        seeds = _seeds(t, where, errors, episodes, spec_int(t, "seed_start", where, errors, default=seed_start))
        steps = spec_int(t, "max_episode_steps", where, errors, minimum=1, default=default_steps)
        tasks.append(TaskEntry(str(t.get("task")), seeds, steps))
    target = data.get("target")
    if target is not None and not isinstance(target, str):
        errors.append(f"target: must be a target spec id, got {target!r}")
    elif isinstance(target, str):
        try:
            tgt = load_target(target)
            if tgt.task.task in seen:
                errors.append(f"target: the target task {tgt.task.task!r} is also in the battery; forgetting would be meaningless")
        except (UnknownIdError, SpecError) as e:
            errors.append(f"target: {e}")
    decoding = parse_decoding(data.get("decoding"), "", errors)
    if errors:
        raise SpecError(source, errors)
    return Battery(id_, version, tasks, str(data.get("description", "")), target, source, decoding)


def parse_target(data: Dict[str, Any], source: str = "<target>") -> Target:
    errors: List[str] = []
    check_keys(data, TARGET_KEYS, "", errors)
    id_, version = check_id_version(data, errors)
    _check_task(data.get("task"), "", errors)
    seeds = _seeds(data, "", errors, None, spec_int(data, "seed_start", "", errors, default=0))
    steps = spec_int(data, "max_episode_steps", "", errors, minimum=1)
    train_start = spec_int(data, "train_seed_start", "", errors, default=0)
    if seeds and train_start is not None and train_start in range(min(seeds), max(seeds) + 1):
        errors.append("train_seed_start: training seeds overlap the evaluation seeds")
    decoding = parse_decoding(data.get("decoding"), "", errors)
    if errors:
        raise SpecError(source, errors)
    return Target(id_, version, TaskEntry(str(data["task"]), seeds, steps), str(data.get("description", "")), train_start or 0,
                  source, decoding)


def _check_name(data: Dict[str, Any], ref: str, path: str, kind: str) -> None:
    if not os.path.exists(ref):
        want = f"{data.get('id')}-v{data.get('version')}"
        if want != ref:
            raise SpecError(path, [f"{kind} file {ref}.yaml declares id/version {want!r}; they must match the file name"])


def load_battery(ref: str) -> Battery:
    """A battery by registered id (``tabletop-v1``) or path to a YAML file."""
    data, path = read_spec("batteries", ref)
    b = parse_battery(data, path)
    _check_name(data, ref, path, "battery")
    return b


def load_target(ref: str) -> Target:
    """A target spec by registered id or path; a bare task id makes an ad-hoc target."""
    from vla_forget.envs import TASKS

    if not os.path.exists(ref) and ref not in available("targets") and ref in TASKS:
        return Target(ref, 0, TaskEntry(ref, list(range(200000, 200050))), "ad-hoc target from a task id", 0, ref)
    data, path = read_spec("targets", ref)
    t = parse_target(data, path)
    _check_name(data, ref, path, "target")
    return t


PRESET_KEYS = {"kind", "description", "battery", "target", "policies", "base", "episodes", "target_episodes", "workers",
               "image_size", "videos_per_task", "kl_states_per_task", "kl_state_stride", "kl_samples_per_state", "kl_states",
               "greedy", "temperature", "prompt"}


def load_preset(ref: str) -> Dict[str, Any]:
    data, path = read_spec("presets", ref)
    errors: List[str] = []
    check_keys(data, PRESET_KEYS, "", errors)
    if errors:
        raise SpecError(path, errors)
    return data


def _summary_battery(ref: str) -> str:
    b = load_battery(ref)
    n = sum(t.episodes for t in b.tasks)
    return f"OK battery {b.full_id}: {len(b.tasks)} tasks, {n} episodes, target {b.target or '-'}"


def _summary_target(ref: str) -> str:
    t = load_target(ref)
    return f"OK target {t.full_id}: task {t.task.task}, {t.task.episodes} evaluation episodes"


def _summary_preset(ref: str) -> str:
    p = load_preset(ref)
    return f"OK preset {ref}: battery {p.get('battery', DEFAULT_BATTERY)}, policies {', '.join(p.get('policies', []))}"


def validate(ref: str) -> str:
    """Validate a battery, target, sweep or preset spec file or id; returns a one-line summary or raises SpecError.

    A file says its kind (``kind: battery``); a registered id is looked up in each kind's folder."""
    import importlib

    ids = {kind: available(folder) for kind, (folder, _) in KINDS.items()}
    registered = next((kind for kind, known in ids.items() if ref in known), None)
    if os.path.isfile(ref):
        with open(ref) as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise SpecError(ref, [f"not valid YAML: {e}"]) from None
        if not isinstance(data, dict):
            raise SpecError(ref, ["expected a mapping at the top level"])
        kind = data.get("kind")
        if kind not in KINDS:
            raise SpecError(ref, [f"kind: {'missing' if kind is None else repr(kind)}; name the spec's kind on its "
                                  f"first line: `kind: {' | '.join(KINDS)}`"])
    elif registered is not None:
        kind = registered
    elif os.path.isdir(ref):
        raise SpecError(ref, ["is a folder, not a YAML spec file"])
    else:
        known = "; ".join(f"{folder}: {', '.join(ids[kind])}" for kind, (folder, _) in KINDS.items())
        raise UnknownIdError(f"{ref!r} is neither a spec file nor a registered id. {known[0].upper()}{known[1:]}")
    module, _, fn = KINDS[kind][1].partition(":")
    return getattr(importlib.import_module(module), fn)(ref)
