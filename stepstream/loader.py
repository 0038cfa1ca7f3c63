"""Resolve `module:attribute` (as uvicorn names apps) to an `Orchestrator`.

The attribute is an `Orchestrator` or a zero-argument callable returning one. Every way this can
go wrong raises `LoadError` with one line that says what to fix.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

from .orchestrator import Orchestrator


class LoadError(Exception):
    """`module:attribute` does not name an Orchestrator; the message says why, in one line."""


def load_orchestrator(spec: str) -> Orchestrator:
    """The `Orchestrator` named by `spec` (`module:attribute`, the attribute may be dotted),
    importing the module with the current directory first on `sys.path`."""
    obj = load_object(spec, "APP", "myjobs:orch")
    if isinstance(obj, Orchestrator):
        return obj
    if not callable(obj):
        raise LoadError(f"{spec} is {_describe(obj)}, not an Orchestrator (or a callable returning one)")
    try:
        made = obj()
    except Exception as exc:
        raise LoadError(f"calling {spec}() failed: {_exception(exc)}") from None
    if not isinstance(made, Orchestrator):
        raise LoadError(f"{spec}() returned {_describe(made)}, not an Orchestrator")
    return made


def load_object(spec: str, what: str = "APP", example: str = "myjobs:orch") -> Any:
    """What `spec` (`module:attribute`, dotted attributes too) names, importing the module with the
    current directory first on `sys.path`; LoadError in one line if it cannot."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise LoadError(f"{what} must be module:attribute (e.g. {example}), not {spec!r}")
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)
    module = _import(module_name)
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise LoadError(f"{module_name!r} ({_where(module)}) has no attribute {attribute!r}"
                            + _candidates(module))
        obj = getattr(obj, part)
    return obj


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except SyntaxError as exc:  # the user's file does not parse: point at the line
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else "its source"
        raise LoadError(f"cannot import {module_name!r}: {exc.msg} ({where})") from None
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise LoadError(f"cannot import {module_name!r}: no module named {exc.name!r} "
                            f"(looked in {os.getcwd()} and sys.path)") from None
        raise LoadError(f"cannot import {module_name!r}: {_exception(exc)}") from None
    except (Exception, SystemExit) as exc:  # whatever the module's own code raised while importing
        raise LoadError(f"cannot import {module_name!r}: {_exception(exc)}") from None


def _exception(exc: BaseException) -> str:
    """`Type: message (file, line N)`, the line being where it was raised."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename != __file__ and not f.filename.startswith("<frozen")]
    if frames:
        text += f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return text


def _describe(obj: Any) -> str:
    kind = type(obj)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    if obj is None:
        return "None"
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def _where(module: Any) -> str:
    return getattr(module, "__file__", None) or "a namespace package"


def _candidates(module: Any) -> str:
    names = [name for name, value in vars(module).items() if isinstance(value, Orchestrator)]
    return f"; Orchestrators in it: {', '.join(names)}" if names else ""
