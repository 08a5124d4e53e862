"""Finds passes: built-in ones in the ``passes`` package, third-party ones by entry point.

A third-party package registers a pass class under the entry-point group ``convert.passes``::

    [project.entry-points."convert.passes"]
    my_pass = "my_pkg.my_module:MyPass"
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from importlib.metadata import entry_points

from convert.base import Pass
from convert.errors import SpecError

ENTRY_POINT_GROUP = "convert.passes"
_registered: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Registers a pass class programmatically (plugins loaded in-process, tests); usable as a decorator."""
    _registered[cls.name] = cls
    return cls


@lru_cache(maxsize=1)
def all_passes() -> dict[str, type[Pass]]:
    """Returns every known pass class by name (built-ins first, then entry points)."""
    import passes

    found: dict[str, type[Pass]] = {}
    for mod in pkgutil.iter_modules(passes.__path__):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"passes.{mod.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Pass) and obj is not Pass
                    and obj.__module__ == module.__name__ and getattr(obj, "name", None)):
                found[obj.name] = obj
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise SpecError(f"entry point {ep.name!r} of group {ENTRY_POINT_GROUP} is not a Pass subclass",
                            hint=f"point it at a class deriving from convert.base.Pass (it is {ep.value}).")
        found.setdefault(cls.name, cls)
    return found


def _known() -> dict[str, type[Pass]]:
    return {**all_passes(), **_registered}


def get_pass(name: str, where: str = "") -> type[Pass]:
    """Returns the pass class called ``name``.

    Raises:
        SpecError: No such pass; the message lists the known ones.
    """
    known = _known()
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "run `convert passes` to list them."
        raise SpecError(f"{where}unknown pass {name!r} (known: {', '.join(sorted(known))}).", hint=hint)
    return known[name]
