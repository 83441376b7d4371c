"""Small JSON helpers shared by every writer of run folders (bench, adapt, sweep, datasets)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Type


def write_json(path: str, data: Any, *, indent: int = 1, sort_keys: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename): a crash never leaves half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=indent, sort_keys=sort_keys)
        f.write("\n")
    os.replace(tmp, path)


def read_json_object(path: str, error: Type[Exception] = ValueError) -> Dict[str, Any]:
    """A JSON file that must hold an object; ``error`` (the caller's exception class) names the file and the problem."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def append_jsonl(path: str, record: Dict[str, Any]) -> None:
    """Append one record as a line (append-only logs: what finished is never rewritten)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
