"""Config dataclasses to command lines: one generator for the commands whose options are their config's fields.

Each field of a config dataclass becomes ``--field-name``; its help is the docstring under the field (read
from the source with :func:`field_docs`), its type and default come from the annotation and the default. A
command adds what the fields cannot say (required options, choices, another flag name, a metavar) and its
own non-config options (``--resume``). :func:`config_from_args` builds the config back from the parsed
arguments. Light: no torch.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence


def field_docs(cls) -> Dict[str, str]:
    """The doc under each field of a config dataclass (read from its source), on one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs: Dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _kind(t: Any) -> str:
    """A field's annotation as text ("int", "Optional[float]", "List[str]"), postponed or not."""
    text = t if isinstance(t, str) else (t.__name__ if isinstance(t, type) else str(t))
    return text.replace("typing.", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_config_arguments(parser: argparse.ArgumentParser, cls, *, required: Iterable[str] = (),
                         choices: Optional[Mapping[str, Sequence[Any]]] = None, flags: Optional[Mapping[str, str]] = None,
                         metavars: Optional[Mapping[str, str]] = None, skip: Iterable[str] = ()) -> None:
    """One option per field of ``cls`` (see the module's docstring). Booleans take ``--x/--no-x``; lists are
    repeatable; an option not given parses to the field's default."""
    docs = field_docs(cls)
    required, skip = set(required), set(skip)
    choices, flags, metavars = dict(choices or {}), dict(flags or {}), dict(metavars or {})
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        doc = docs.get(f.name, "")
        default = _default(f)
        kind = _kind(f.type)
        kw: Dict[str, Any] = dict(dest=f.name, help=doc)
        if f.name in choices:
            kw["choices"] = list(choices[f.name])
        if f.name in metavars:
            kw["metavar"] = metavars[f.name]
        if f.name in required:
            kw["required"] = True
        if kind == "bool":
            kw.update(action=argparse.BooleanOptionalAction, default=default)
            kw["help"] = f"{doc} (default: {'on' if default else 'off'})"
        elif kind.startswith("List"):
            kw.update(action="append", default=None)
            kw["help"] = f"{doc} (repeatable)"
        else:
            kw.update(type=int if "int" in kind else float if "float" in kind else str, default=default)
            if default is not None and f.name not in required:
                kw["help"] = f"{doc} (default: {default})"
        parser.add_argument(flag, **kw)


def config_from_args(cls, args: argparse.Namespace, **overrides: Any):
    """``cls`` from the parsed ``args`` (a list option not given: the field's default)."""
    kw: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            kw[f.name] = overrides[f.name]
        elif hasattr(args, f.name):
            v = getattr(args, f.name)
            kw[f.name] = _default(f) if v is None and _kind(f.type).startswith("List") else v
    return cls(**kw)
