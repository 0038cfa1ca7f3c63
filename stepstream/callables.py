"""Functions named so that another process can find them: `module:qualname`.

Children of a shared (Redis) deployment run in whichever worker process takes them, so what
they run is stored by name and imported there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def callable_name(fn: Callable[..., Any]) -> str | None:
    """`module:qualname` of a module-level function that another process can import, or None
    (a lambda, a closure, a bound method, something defined in `__main__`)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__" or "<" in qualname:
        return None
    try:
        found = resolve(f"{module}:{qualname}")
    except LookupError:
        return None
    return f"{module}:{qualname}" if found is fn else None


def resolve(name: str) -> Callable[..., Any]:
    """The function a `callable_name` names, imported here; LookupError saying why if there is none."""
    module_name, _, qualname = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise LookupError(f"this worker cannot find {name}: {exc}") from None
    if not callable(obj):
        raise LookupError(f"{name} is not callable")
    return obj
