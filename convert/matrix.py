"""Matrices: one spec, many pipelines (models x precisions x targets).

A spec may declare::

    matrix:
      model.weights: [a.pt, b.pt]
      quantize.activation_type: [int8, uint8]

Each combination is the spec with those keys overridden (as ``key=value`` on the command line
would), named ``<name>-<values>`` (its own versions under ``artifacts/<name>-<values>/`` and its
own lockfile ``<spec>.<values>.lock``). Stages whose keys are equal across combinations (the
``load`` of one model for two precisions) are built once: the store is content-addressed, so
the second combination finds them cached. After all combinations ran, a summary comparing them
is written to ``artifacts/<name>/matrix-<id>/`` (``summary.json``, ``comparison.md`` / ``.html``).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from convert.errors import SpecError

MAX_COMBINATIONS = 256


@dataclass
class Variant:
    """One combination of a matrix."""

    values: dict[str, Any]
    spec: Any  # convert.spec.Spec
    base: str  # the spec's own name (the combination's is ``<base>-<values>``)


def read_matrix(path: Path) -> dict[str, list[Any]] | None:
    """The ``matrix:`` of a spec file (its bases merged), or None. Checked: keys are dotted key paths,
    values non-empty lists."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from convert.spec import _load_layers

    layers = _load_layers(Path(path))
    try:
        merged = OmegaConf.merge(*[c for _, c in layers])
        if "matrix" not in merged or merged.matrix is None:
            return None
        raw = OmegaConf.to_container(merged.matrix, resolve=False)
    except OmegaConfBaseException as e:
        raise SpecError(f"{path}: matrix: {str(e).splitlines()[0]}") from None
    except ValueError:  # matrix is a scalar: to_container refuses it
        raw = merged.matrix
    if not isinstance(raw, dict) or not raw:
        raise SpecError(f"{path}: matrix: expected a mapping of key path -> list of values, found {raw!r}.",
                        hint="e.g. matrix: {model.weights: [a.pt, b.pt], quantize.activation_type: [int8, uint8]}")
    total = 1
    for key, values in raw.items():
        if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", str(key)) or str(key).split(".")[0] in (
                "matrix", "name", "_base_"):
            raise SpecError(f"{path}: matrix.{key}: not a key path the matrix can vary.",
                            hint="name a spec key, e.g. model.weights or stages.quantize.with.activation_type.")
        if not isinstance(values, list) or not values:
            raise SpecError(f"{path}: matrix.{key}: expected a non-empty list of values, found {values!r}.")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise SpecError(f"{path}: matrix.{key}: a value is listed twice.")
        total *= len(values)
    if total > MAX_COMBINATIONS:
        raise SpecError(f"{path}: matrix: {total} combinations (at most {MAX_COMBINATIONS}).",
                        hint="split the spec, or list fewer values.")
    return raw


def expand(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> list[Variant] | None:
    """Loads one spec per combination of the spec's matrix (None when it has none).

    Raises:
        SpecError: The matrix or a combination is invalid (the message names the combination).
    """
    from convert.spec import load_spec

    matrix = read_matrix(path)
    if matrix is None:
        return None
    keys = list(matrix)
    variants: list[Variant] = []
    names: set[str] = set()
    for combo in itertools.product(*(matrix[k] for k in keys)):
        values = dict(zip(keys, combo))
        label = ", ".join(f"{k}={_show(v)}" for k, v in values.items())
        try:
            spec = load_spec(path, [*overrides, *(f"{k}={json.dumps(v)}" for k, v in values.items())])
        except SpecError as e:
            raise SpecError(f"matrix combination {label}: {e.message}", hint=e.hint) from None
        slug = "-".join(_slug(v) for v in combo)[:48].strip("-_") or "v"
        base = spec.name
        name = f"{base}-{slug}"[:64]
        n = 2
        while name in names:  # two values that read the same once shortened
            name, n = f"{base}-{slug}"[:60] + f"-{n}", n + 1
        names.add(name)
        spec.name, spec.variant = name, name[len(base) + 1:] or slug
        variants.append(Variant(values, spec, base))
    return variants


def _show(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _slug(v: Any) -> str:
    """A short folder-safe form of a value: a path's stem, a number, a word."""
    if isinstance(v, str):
        text = Path(v).stem if ("/" in v or "." in v.strip(".")) and not v.replace(".", "").isdigit() else v
    elif isinstance(v, (int, float, bool)):
        text = str(v)
    elif isinstance(v, list) and v and all(isinstance(x, (int, float, str)) for x in v):
        text = "x".join(str(x) for x in v)  # an input size [640, 640]: 640x640
    else:
        from convert.store import sha256_json

        text = sha256_json(v)[:8]
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")[:24] or "v"


def run(variants: list[Variant], manager: Callable[[Any], Any], log: Callable[[str], None] = lambda s: None,
        **run_kwargs) -> tuple[list[Any], Path | None]:
    """Runs every combination (in order; on Ray each one's independent stages at once) and writes the
    summary.

    Args:
        variants: From :func:`expand`.
        manager: Makes the :class:`~convert.manager.Manager` of one combination's spec.
        run_kwargs: Passed to each ``Manager.run`` (force, until, frozen).

    Returns:
        (each combination's run report, the summary folder or None when nothing was published).

    Raises:
        GateFailed: After all combinations ran and the summary is written, if any gate failed.
    """
    from convert.manager import GateFailed

    reports, failed = [], []
    managers = [manager(v.spec) for v in variants]
    for i, (v, mgr) in enumerate(zip(variants, managers), 1):
        log(f"== [{i}/{len(variants)}] {v.spec.name}: " + ", ".join(f"{k}={_show(x)}" for k, x in v.values.items()))
        try:
            reports.append(mgr.run(**run_kwargs))
        except GateFailed as e:
            failed.append(f"{v.spec.name}: {e.message}")
            reports.append(getattr(e, "report", None))
    published = [(v, r) for v, r in zip(variants, reports) if r is not None and r.published]
    out = write_summary(published, managers[0].artifacts_dir, variants[0].base) if published else None
    if failed:
        raise GateFailed("; ".join(failed), hint=f"the figures are in {out or 'each version'}; loosen a gate only if "
                         "the drop is acceptable.")
    return reports, out


def write_summary(runs: list[tuple[Variant, Any]], artifacts_dir: Path, name: str) -> Path:
    """Writes ``summary.json`` and the comparison report of a matrix's published versions.

    Returns:
        The summary folder ``artifacts/<name>/matrix-<id>/``.
    """
    from convert.store import atomic_write, sha256_json

    combos = []
    for v, rep in runs:
        combos.append({"values": v.values, "spec": rep.spec, "version": rep.version, "published": str(rep.published),
                       "stages": {s.name: {"status": s.status, "output": s.digest, "summary": s.summary}
                                  for s in rep.stages}})
    stage_names = list(dict.fromkeys(n for c in combos for n in c["stages"]))
    shared = [n for n in stage_names
              if len({(c["stages"].get(n) or {}).get("output") for c in combos}) == 1
              and combos[0]["stages"].get(n, {}).get("output")]
    out = Path(artifacts_dir) / name / f"matrix-{sha256_json([[c['spec'], c['version']] for c in combos])[:12]}"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"matrix": name, "variables": list(runs[0][0].values), "combinations": combos,
               "shared_stages": shared}
    atomic_write(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    from convert import registry

    render = registry.renderer("matrix")
    if render is not None:  # the report package renders comparison.md / .html
        render(summary, out)
    return out


__all__ = ["Variant", "expand", "read_matrix", "run", "write_summary"]
