"""One run folder for every command that writes one: bench, adapt, pretrain, demos and sweep.

A run folder holds its command's settings in one JSON file (``config.json``; an adaptation run's is
``run.json``, a sweep's ``sweep.json``), stamped with its kind and format version, and an
append-only ``events.jsonl``. :class:`RunFolder` is the one place that

- refuses a folder that already holds a run unless ``--resume`` is given (one message for every command);
- on ``--resume``, compares the saved settings with the new ones: the fields a kind declares changeable
  (:attr:`RunKind.changeable`: more steps, other workers, another device) may change and are returned, to be
  said; any other difference is refused, naming each field with its old and new value;
- reads folders written before a field existed through one migration table (:attr:`RunKind.added`): a field
  missing from a saved config counts with the value that older runs had in effect;
- writes every JSON file atomically (a temporary file, then a rename) and appends events one line at a time.

Light on purpose (no torch, no simulator): the CLI, sweeps and tests import it freely.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Type

from vla_forget.errors import VlaForgetError
from vla_forget.jsonio import append_jsonl, write_json

#: The format a kind's config is written in unless the kind says otherwise (:attr:`RunKind.format`).
FORMAT = 1
EVENTS = "events.jsonl"


class RunFolderError(VlaForgetError, ValueError):
    """A run folder that cannot be started or resumed as asked (the caller's own error class is raised instead
    where it passes one)."""


@dataclass(frozen=True)
class RunKind:
    """What one command's run folders hold."""

    name: str
    """the ``kind`` stamped into the config: bench, adapt, pretrain, demos, sweep"""
    what: str
    """how a message names a run of this kind ("a bench", "an adaptation run", ...)"""
    config_file: str = "config.json"
    changeable: Tuple[str, ...] = ()
    """config fields a resume may change (said, not refused)"""
    ignored: Tuple[str, ...] = ()
    """config fields a resume may change silently (where the run goes, how it shows progress)"""
    added: Mapping[str, Any] = field(default_factory=dict)
    """the migration table: fields added after runs of this kind were first written, with the value runs from
    before them had in effect; a saved config that lacks one reads as that value"""
    error: Type[Exception] = RunFolderError
    format: int = FORMAT
    """the format version stamped into the config (raised when its layout changes; folders written before the
    stamp read as format 0)"""


def saved_value(old: Mapping[str, Any], name: str, *, added: Mapping[str, Any] = {},
                defaults: Mapping[str, Any] = {}) -> Any:
    """What a saved config says of ``name``: its value, or for a config from before the field ``added[name]``,
    else ``defaults[name]``, else None."""
    return old[name] if name in old else added.get(name, defaults.get(name))


def diff_fields(old: Mapping[str, Any], new: Mapping[str, Any], *, added: Mapping[str, Any] = {},
                defaults: Mapping[str, Any] = {}) -> List[str]:
    """The fields of ``new`` whose saved value differs, in ``new``'s order. A field missing from ``old`` counts as
    ``added[field]`` (a run from before the field), else ``defaults[field]``, else ``None``. Values compare as
    JSON (a tuple equals the list it was saved as)."""

    def norm(v: Any) -> Any:
        return json.loads(json.dumps(v))

    out = []
    for k, v in new.items():
        if norm(saved_value(old, k, added=added, defaults=defaults)) != norm(v):
            out.append(k)
    return out


class RunFolder:
    """A command's run folder at ``path`` (see the module's docstring)."""

    def __init__(self, path: str, kind: RunKind):
        self.path = str(path)
        self.kind = kind

    # --- files ------------------------------------------------------------------------
    def file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def config_path(self) -> str:
        return self.file(self.kind.config_file)

    def has_config(self) -> bool:
        return os.path.exists(self.config_path)

    def read_config(self) -> Optional[Dict[str, Any]]:
        """The saved config, or None where there is none; a config that is not a JSON object is an error that
        names the file."""
        if not self.has_config():
            return None
        try:
            with open(self.config_path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise self.kind.error(f"{self.config_path} is not valid JSON ({e}): the folder's settings are unreadable; "
                                  "choose another --out") from None
        if not isinstance(data, dict):
            raise self.kind.error(f"{self.config_path}: expected a JSON object; choose another --out")
        return data

    def write_json(self, name: str, data: Any, **kwargs: Any) -> str:
        """Write ``name`` in the folder atomically; returns its path."""
        os.makedirs(self.path, exist_ok=True)
        path = self.file(name)
        write_json(path, data, **kwargs)
        return path

    def write_config(self, config: Mapping[str, Any], **kwargs: Any) -> Dict[str, Any]:
        """Save ``config`` stamped with the folder's kind and format (they lead the file); returns what was
        written."""
        data = {"kind": self.kind.name, "format": self.kind.format,
                **{k: v for k, v in config.items() if k not in ("kind", "format")}}
        self.write_json(self.kind.config_file, data, **kwargs)
        return data

    def event(self, name: str, **fields: Any) -> None:
        """Append one event (with the wall-clock time) to ``events.jsonl``."""
        os.makedirs(self.path, exist_ok=True)
        append_jsonl(self.file(EVENTS), {"event": name, "time": round(time.time(), 3), **fields})

    # --- starting and resuming ------------------------------------------------------------
    def refuse_unless_resume(self, resume: bool, started: Optional[bool] = None) -> None:
        """Refuse a folder that holds a run (``started``; by default: its config exists) unless ``resume``."""
        if (self.has_config() if started is None else started) and not resume:
            raise self.kind.error(f"{self.path} already holds {self.kind.what}: pass --resume to continue it, "
                                  "or choose another --out")

    def resume_changes(self, new: Mapping[str, Any], old: Optional[Mapping[str, Any]] = None, *,
                       defaults: Mapping[str, Any] = {}, prefix: str = "") -> Tuple[List[str], List[str]]:
        """Compare the settings ``new`` with the saved ones (``old``: the saved config by default). Returns
        ``(allowed, refused)``, one ``"field: old -> new"`` line each: ``allowed`` the changeable fields that
        changed, ``refused`` the others; ignored fields are left out."""
        if old is None:
            old = self.read_config() or {}
        added = self.kind.added
        allowed: List[str] = []
        refused: List[str] = []
        for k in diff_fields(old, new, added=added, defaults=defaults):
            if k in self.kind.ignored:
                continue
            have = saved_value(old, k, added=added, defaults=defaults)
            line = f"{prefix}{k}: {have!r} -> {new[k]!r}"
            (allowed if k in self.kind.changeable else refused).append(line)
        return allowed, refused

    def refuse(self, refused: Iterable[str], hint: str = "") -> None:
        refused = list(refused)
        if refused:
            raise self.kind.error(f"--resume: {self.path} was started with other settings ({'; '.join(refused)}); "
                                  f"resume with the same ones{hint}, or choose another --out")

    def start(self, config: Mapping[str, Any], *, resume: bool, defaults: Mapping[str, Any] = {},
              started: Optional[bool] = None, hint: str = "", saved: Optional[Mapping[str, Any]] = None) -> List[str]:
        """The whole check for a flat config: refuse an existing run without ``resume``; with it, refuse changed
        settings other than the changeable ones; then save ``config``. Returns the changeable fields that changed
        (one line each, for the caller to say). ``saved``: the saved config where the caller has read it already."""
        self.refuse_unless_resume(resume, started)
        allowed: List[str] = []
        if resume and self.has_config():
            allowed, refused = self.resume_changes(config, saved, defaults=defaults)
            self.refuse(refused, hint)
        self.write_config(config)
        return allowed
