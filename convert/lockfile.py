"""The lockfile: what the tool writes beside a spec (``<spec>.lock``), as DVC's ``dvc.lock``.

It records, per stage, the key and the key's material that can change from outside the spec
(input artifacts' digests, files read and their digests, tool versions, a digest of the
parameters) and the output digest, so ``run --frozen`` can say *which* input of a stage
changed, not only that its key did. Deterministic: keys and digests only, sorted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convert.errors import ConvertError

FORMAT = 1
"""Version of the lockfile layout; a newer one is refused, an older one upgraded on write."""


@dataclass
class Lockfile:
    """A parsed lockfile.

    Attributes:
        path: Where it lives.
        spec: The spec's name.
        stages: Stage name -> entry (``pass``, ``inputs``, ``key``, ``params``, ``input_digests``,
            ``files``, ``tools``, ``output``; or ``skipped`` with the reason).
    """

    path: Path
    spec: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def text(self) -> str:
        return json.dumps({"format": FORMAT, "spec": self.spec, "stages": self.stages}, indent=1,
                          sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: Path) -> Lockfile:
        """Reads and checks a lockfile.

        Raises:
            ConvertError: Missing, not JSON, not a lockfile, or of a newer format.
        """
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConvertError(f"lockfile {path} not found.", hint="run once without --frozen and commit the "
                               "lockfile.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConvertError(f"lockfile {path} is corrupted (not JSON: {e}).",
                               hint="restore it from version control, or re-run without --frozen.") from None
        if not (isinstance(data, dict) and isinstance(data.get("stages"), dict)
                and all(isinstance(v, dict) for v in data["stages"].values())):
            raise ConvertError(f"lockfile {path} is not a convert lockfile (no 'stages' mapping).",
                               hint="restore it from version control, or re-run without --frozen.")
        fmt = data.get("format", 1)
        if not isinstance(fmt, int) or fmt > FORMAT:
            raise ConvertError(f"lockfile {path} has format {fmt!r}; this convert reads format {FORMAT} and older.",
                               hint="upgrade convert, or re-run without --frozen to rewrite it.")
        return cls(path, str(data.get("spec", "")), data["stages"])


def why_key_changed(want: dict[str, Any], got: dict[str, Any]) -> str:
    """Names what made a stage's key differ from the locked one (the first difference found)."""
    if want.get("pass") != got.get("pass"):
        return f"its pass changed ({want.get('pass')} -> {got.get('pass')})"
    if "params" in want and want.get("params") != got.get("params"):
        return "its parameters (with:) changed"
    for role, digests in (got.get("input_digests") or {}).items():
        if (want.get("input_digests") or {}).get(role) != digests:
            return f"its input {role!r} ({', '.join(got.get('inputs', {}).get(role, []))}) was rebuilt differently"
    for name, records in (got.get("files") or {}).items():
        old = {r["path"]: r["sha256"] for r in (want.get("files") or {}).get(name, [])}
        for r in records:
            if old.get(r["path"]) != r["sha256"]:
                return f"the file {r['path']} ({name}) changed"
    if want.get("machine") != got.get("machine"):
        return f"it was built on another machine ({want.get('machine')} -> {got.get('machine')})"
    for tool, version in (got.get("tools") or {}).items():
        if (want.get("tools") or {}).get(tool) != version:
            return f"{tool} is {version}, the lockfile has {(want.get('tools') or {}).get(tool)}"
    return "its inputs, parameters, files read through them, or the pass version changed"
