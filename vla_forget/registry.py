"""Registries of tasks, policies and batteries: versioned ids mapped to import strings.

Entries are registered as ``"package.module:attr"`` strings, so that listing ids
imports nothing heavy; the object is imported when it is first used
(Gymnasium's ``entry_point`` convention).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Optional

from vla_forget.errors import VlaForgetError

_VERSION_RE = re.compile(r"-v\d+$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*-v\d+$")


def unversioned(id: str) -> str:
    """``PickCube-v2`` -> ``PickCube``: an id without its version suffix (the same task, spec or policy at any version)."""
    return _VERSION_RE.sub("", id)


class UnknownIdError(VlaForgetError, KeyError):
    """An id that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass
class Entry:
    id: str
    entry_point: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    description: str = ""
    metadata: Dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        module_name, _, attr = self.entry_point.partition(":")
        obj = importlib.import_module(module_name)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
        return obj


class Registry:
    """A mapping from versioned ids (``Name-vN``) to lazily imported entries."""

    def __init__(self, kind: str, populate: Optional[Callable[[], None]] = None):
        self.kind = kind
        self._entries: Dict[str, Entry] = {}
        self._populate = populate
        self._populated = populate is None

    def _ensure(self) -> None:
        if not self._populated:
            self._populated = True
            assert self._populate is not None
            self._populate()

    def register(self, id: str, entry_point: str, *, description: str = "", **kwargs: Any) -> None:
        if not _ID_RE.match(id):
            raise ValueError(f"{self.kind} id {id!r} must look like 'Name-vN' (a version suffix is required)")
        if id in self._entries:
            raise ValueError(f"{self.kind} id {id!r} is registered twice")
        metadata = kwargs.pop("metadata", {})
        self._entries[id] = Entry(id, entry_point, kwargs, description, metadata)

    @property
    def by_id(self) -> Dict[str, Entry]:
        """The entries by id: the registry's own dict (filled), so that a test or a plug-in can add one for a
        while (``monkeypatch.setitem(TASKS.by_id, id, entry)``) without going through :meth:`register`."""
        self._ensure()
        return self._entries

    def ids(self) -> list[str]:
        self._ensure()
        return sorted(self._entries)

    def entries(self) -> Iterable[Entry]:
        self._ensure()
        return [self._entries[k] for k in sorted(self._entries)]

    def __contains__(self, id: str) -> bool:
        self._ensure()
        return id in self._entries

    def get(self, id: str) -> Entry:
        self._ensure()
        try:
            return self._entries[id]
        except KeyError:
            raise UnknownIdError(self.unknown_message(id)) from None

    def unknown_message(self, id: str) -> str:
        import difflib

        valid = self.ids()
        close = difflib.get_close_matches(id, valid, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return f"unknown {self.kind} id {id!r}.{hint} Valid {self.kind} ids: {', '.join(valid)}"
