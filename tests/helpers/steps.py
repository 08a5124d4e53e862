"""Running a pass by hand in tests, without the manager."""

from __future__ import annotations

from convert.base import Artifact, RunContext


def step(pass_obj, tmp_path, name, **inputs):
    """Runs ``pass_obj`` into ``tmp_path/name``; returns (the artifact, the PassResult)."""
    out = tmp_path / name
    out.mkdir()
    res = pass_obj.run(inputs, out, RunContext(name, progress=False))
    return Artifact(res.kind, out, res.main, res.meta, name), res
