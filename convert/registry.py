"""Finds passes by entry point: built-in ones and third-party ones alike.

Every pass, the project's own (``passes/``, listed in its ``pyproject.toml``) and a third-party
package's, registers a pass class under the entry-point group ``convert.passes``::

    [project.entry-points."convert.passes"]
    my_pass = "my_pkg.my_module:MyPass"

A pass module is imported only when a spec uses that pass (or ``convert passes`` lists them
all), so the engine never imports ``passes/`` itself and a spec that uses three passes loads three.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from convert.base import Pass
from convert.errors import SpecError

ENTRY_POINT_GROUP = "convert.passes"
_registered: dict[str, type[Pass]] = {}
_loaded: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Registers a pass class programmatically (plugins loaded in-process, tests); usable as a decorator."""
    _registered[cls.name] = cls
    return cls


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, EntryPoint]:
    """Pass name -> entry point; the project's own first, so a plugin cannot shadow a built-in."""
    found: dict[str, EntryPoint] = {}
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: not ep.value.startswith("passes."))
    for ep in eps:
        found.setdefault(ep.name, ep)
    return found


def _load(ep: EntryPoint) -> type[Pass]:
    if ep.name not in _loaded:
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise SpecError(f"entry point {ep.name!r} of group {ENTRY_POINT_GROUP} is not a Pass subclass",
                            hint=f"point it at a class deriving from convert.base.Pass (it is {ep.value}).")
        _loaded[ep.name] = cls
    return _loaded[ep.name]


def pass_names() -> list[str]:
    """Every known pass name, without importing any pass."""
    return sorted({*_entry_points(), *_registered})


def all_passes() -> dict[str, type[Pass]]:
    """Every known pass class by name (imports them all: for listings)."""
    return {**{name: _load(ep) for name, ep in _entry_points().items()}, **_registered}


def get_pass(name: str, where: str = "") -> type[Pass]:
    """Returns the pass class called ``name``, importing only its module.

    Raises:
        SpecError: No such pass; the message lists the known ones.
    """
    if name in _registered:
        return _registered[name]
    eps = _entry_points()
    if name not in eps:
        import difflib

        known = pass_names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "run `convert passes` to list them."
        if not known:
            hint = "no pass is registered: install the project (pip install -e .), which registers the built-ins."
        raise SpecError(f"{where}unknown pass {name!r} (known: {', '.join(known) or 'none'}).", hint=hint)
    return _load(eps[name])


RENDERER_GROUP = "convert.renderers"


def renderer(name: str):
    """The report renderer registered as ``name`` (``version`` or ``comparison``), or None.

    Reports are rendered by the report pass's package, which the engine reaches only through
    this entry point, so the engine imports no pass and a missing renderer costs only the report.
    """
    eps = sorted((ep for ep in entry_points(group=RENDERER_GROUP) if ep.name == name),
                 key=lambda ep: not ep.value.startswith("passes."))
    return eps[0].load() if eps else None
