"""Published versions: ``artifacts/<spec>/<version>/`` and the ``manifest.json`` that describes it.

The one place that knows the layout of a published version; the manager publishes through it and
the CLI (``versions``, ``show``, ``verify``, ``gc``, ``report``) and the report read through it::

    artifacts/<spec>/<version>/manifest.json      spec as written, keys, digests, timings, host
    artifacts/<spec>/<version>/<stage>/...        each stage's files (hard links into the store)
    artifacts/<spec>/<version>/report.{html,md}   rendered after publishing (timings included)
    artifacts/<spec>/latest -> <version>

A version is assembled in ``.tmp-<pid>-*`` beside its final place and renamed into it, so a
reader never sees half a version; ``gc`` removes such folders once their process is gone.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from convert.base import Artifact
from convert.errors import ConvertError
from convert.store import _alive, _hash_file, _rmtree, link_tree, tree_digest

MANIFEST = "manifest.json"
LATEST = "latest"
FORMAT = 1  # manifest layout; bump when readers must tell old from new


@dataclass
class Version:
    """A published version: its folder and its manifest.

    Attributes:
        path: ``artifacts/<spec>/<version>``.
        manifest: The parsed ``manifest.json``.
    """

    path: Path
    manifest: dict[str, Any]

    @property
    def title(self) -> str:
        return f"{self.manifest['spec']}/{self.manifest['version']}"

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.manifest["stages"]

    def stage_order(self) -> list[str]:
        """The stages as run (older manifests: an order where each comes after its inputs)."""
        order = self.manifest.get("stage_order")
        if order:
            return [n for n in order if n in self.stages]
        deps = {n: {d for names in s.get("inputs", {}).values() for d in names if d in self.stages}
                for n, s in self.stages.items()}
        out: list[str] = []
        while len(out) < len(deps):
            ready = sorted(n for n in deps if n not in out and deps[n] <= set(out))
            out.append(ready[0] if ready else sorted(set(deps) - set(out))[0])
        return out

    def stage_dir(self, name: str) -> Path | None:
        """The folder of a built stage, or None for a skipped one."""
        d = self.path / name
        built = name in self.stages and self.stages[name].get("status") != "skipped"
        return d if built and d.is_dir() else None

    def artifact(self, name: str) -> Artifact:
        """A built stage as an artifact (the same object a pass receives)."""
        d = self.stage_dir(name)
        if d is None:
            raise ConvertError(f"{self.title}: stage {name!r} was not built in this version.",
                               hint=f"its stages: {', '.join(self.stage_order())}.")
        return open_artifact(d)


def read(path: Path) -> Version:
    """Reads a version folder.

    Raises:
        ConvertError: No manifest, or one this version of convert cannot read.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ConvertError(f"{path} is not a published version (no {MANIFEST}).",
                           hint="`convert versions` lists published versions.")
    manifest = parse_manifest(mpath.read_bytes(), str(mpath))
    return Version(path, manifest)


def parse_manifest(raw: bytes | str, where: str) -> dict[str, Any]:
    """A manifest's content (read from a version folder or a remote), checked.

    Args:
        raw: The JSON text.
        where: Where it came from, for messages.

    Raises:
        ConvertError: Not JSON, not a convert manifest, or a newer format than this convert reads.
    """
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConvertError(f"{where} is not valid JSON ({e}).",
                           hint="the version is damaged: delete it and re-run its spec.") from None
    if not isinstance(manifest, dict) or not {"spec", "version", "stages"} <= set(manifest) \
            or not isinstance(manifest["stages"], dict):
        raise ConvertError(f"{where} is not a convert manifest.", hint="delete the folder or point elsewhere.")
    if manifest.get("format", 1) > FORMAT:
        raise ConvertError(f"{where} has manifest format {manifest['format']}, newer than this convert "
                           f"reads ({FORMAT}).", hint="upgrade convert.")
    return manifest


def resolve(artifacts: Path, target: str) -> Path:
    """A version folder from ``NAME`` (its latest), ``NAME/VERSION`` or a path.

    Raises:
        ConvertError: Nothing published under that name.
    """
    p = Path(target)
    if (p / MANIFEST).is_file():
        return p
    name, _, version = target.partition("/")
    p = Path(artifacts) / name / (version or LATEST)
    if not (p / MANIFEST).is_file():
        raise ConvertError(f"no published version {target!r} under {artifacts}.",
                           hint="`convert versions` lists them; give NAME, NAME/VERSION or a version folder.")
    return p


def spec_names(artifacts: Path) -> list[str]:
    artifacts = Path(artifacts)
    return sorted(p.name for p in artifacts.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if artifacts.is_dir() else []


def list_versions(artifacts: Path, name: str) -> list[Version]:
    """The versions published under a spec name, oldest first."""
    base = Path(artifacts) / name
    found = []
    for p in base.glob("*") if base.is_dir() else []:
        if p.is_symlink() or p.name.startswith(".") or not (p / MANIFEST).is_file():
            continue
        try:
            found.append(read(p))
        except ConvertError as e:
            warnings.warn(e.message)
    return sorted(found, key=lambda v: (v.manifest.get("created", ""), v.path.stat().st_mtime))


def latest(artifacts: Path, name: str) -> str | None:
    link = Path(artifacts) / name / LATEST
    return os.readlink(link) if link.is_symlink() else None


def assemble(dest: Path, stage_dirs: dict[str, Path], fill: Callable[[Path], None]) -> Path:
    """Builds a version folder beside ``dest`` and renames it into place, so no reader sees half of it.

    Args:
        dest: ``artifacts/<spec>/<version>``. An existing one (the same stages built the same
            outputs, maybe by a concurrent run) is kept.
        stage_dirs: Stage name -> its store object folder (linked, or copied across file systems).
        fill: Writes the rest (manifest, report) into the folder being assembled.
    """
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-{os.getpid()}-"))  # gc knows its owner
    try:
        for name, src in stage_dirs.items():
            link_tree(src, tmp / name)
        fill(tmp)
        os.rename(tmp, dest)
    except OSError:
        _rmtree(tmp)
        if not dest.exists():  # else a concurrent run published the same version first
            raise
    except BaseException:
        _rmtree(tmp)
        raise
    return dest


def publish(artifacts: Path, manifest: dict[str, Any], stage_dirs: dict[str, Path], update_latest: bool,
            log: Callable[[str], None] | None = None) -> Path:
    """Publishes a version: stage folders linked from the store, the manifest, the report.

    Args:
        artifacts: The artifacts folder.
        manifest: The manifest; ``spec`` and ``version`` name the folder; ``files`` is filled here.
        stage_dirs: Stage name -> its store object folder.
        update_latest: Point ``latest`` at this version (not when a gate failed).
        log: Where a report that could not be rendered is mentioned (default: stderr).

    Returns:
        The version folder.
    """
    def fill(tmp: Path) -> None:
        full = {"format": FORMAT, **manifest, "files": {name: _file_list(tmp / name) for name in stage_dirs}}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=1, sort_keys=True) + "\n")
        render_report(tmp, log)

    base = Path(artifacts) / manifest["spec"]
    dest = assemble(base / manifest["version"], stage_dirs, fill)
    if update_latest:
        link = base / LATEST
        tmp_link = base / f".latest-{os.getpid()}"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(manifest["version"])
        os.replace(tmp_link, link)
    return dest


def render_report(version_dir: Path, log: Callable[[str], None] | None = None) -> None:
    """Writes a version's report.html / .md with the registered renderer; a failure costs the report only."""
    from convert import registry

    try:
        render = registry.renderer("version")
        if render is not None:
            render(version_dir, version_dir)
    except (ImportError, ConvertError, ValueError, KeyError, TypeError) as e:
        log = log or (lambda line: print(line, file=sys.stderr))  # stdout may carry --json
        log(f"warning: the version's report was not rendered ({type(e).__name__}: {e}); "
            "`convert report NAME/VERSION` renders it.")


def _file_list(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): _hash_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def verify(path: Path) -> list[str]:
    """Re-hashes a version's stage files against its manifest.

    Returns:
        Problems found (empty when the version is intact).
    """
    v = read(path)
    problems = []
    for stage, files in v.manifest["files"].items():
        sdir = v.path / stage
        for rel, digest in files.items():
            f = sdir / rel
            if not f.is_file():
                problems.append(f"{stage}/{rel}: missing")
            elif _hash_file(f) != digest:
                problems.append(f"{stage}/{rel}: content changed")
        for f in sdir.rglob("*") if sdir.is_dir() else []:
            if f.is_file() and f.relative_to(sdir).as_posix() not in files:
                problems.append(f"{stage}/{f.relative_to(sdir).as_posix()}: not in the manifest")
    return problems


def used_objects(artifacts: Path) -> set[str]:
    """Digests of every store object a published version uses (what ``gc`` keeps)."""
    keep: set[str] = set()
    for name in spec_names(artifacts):
        for v in list_versions(artifacts, name):
            keep |= {s["output"] for s in v.stages.values() if s.get("output")}
    return keep


def remove_leftovers(artifacts: Path) -> int:
    """Removes half-published versions of killed runs (a live run's own stay); returns how many."""
    n = 0
    for tmp in Path(artifacts).glob("*/.tmp-*") if Path(artifacts).is_dir() else []:
        pid = tmp.name.split("-")[1] if tmp.name.count("-") >= 2 else ""
        if tmp.is_dir() and not _alive(pid):
            _rmtree(tmp)
            n += 1
    return n


def open_artifact(path: Path) -> Artifact:
    """Opens a published stage folder (or a store object) as an artifact."""
    return Artifact.open(Path(path), tree_digest(Path(path)))
