"""Spec mutations for the reliability battery: what careless and hostile users write.

:func:`mutants` yields ``(label, spec text, overrides)`` from a bundled spec; every one must
make ``convert validate`` exit 0 or 2 with at most one line of error, never a traceback or a
hang. Used by ``tests/convert/test_fuzz_specs.py`` (a few hundred) and ``bench/fuzz_specs.py``
(thousands).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from typing import Any

import yaml

ODD_VALUES: list[Any] = [
    None, 0, -1, 7, 1e308, float("nan"), True, "", " ", "x" * 5000, "/", "/proc", "/dev/zero", ".", "..",
    "../../../../tmp/x", "${x}", "${oc.env:HOME}", "${", "}", "é", "a\nb", [], [1, 2], [{"k": 1}], {}, {"k": 1},
    {"k": {"k": {"k": []}}}, "manifest.json", "latest", "-1", "1e9",
]
ODD_NAMES: list[Any] = ["../../../../tmp/x", "/tmp/x", "manifest.json", "latest", 7, "", "a b", "x" * 300, ".hidden",
                        "ok_name", "with.dot", "ünï"]
ODD_OVERRIDES = ["x=}", "model.input_size[5]=1", "=1", "modle.weights=x", "stages.load.with.nope=1",
                 "stages.load.with.input_size=[1]", "stages.nope.with.x=1", "stages=3", "name=../x", "a.b.c.d=1",
                 "stages.load.inputs.model={k: 1}", "stages.load.pass=nope", "store=/proc"]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _set(root: Any, path: tuple, value: Any) -> None:
    node = root
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _delete(root: Any, path: tuple) -> None:
    node = root
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]


def _rename_stage(spec: dict, rng: random.Random) -> None:
    stages = spec.get("stages")
    if isinstance(stages, dict) and stages:
        old = rng.choice(list(stages))
        spec["stages"] = {(rng.choice(ODD_NAMES) if k == old else k): v for k, v in stages.items()}


def _dump(spec: Any) -> str:
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def mutants(text: str, n: int, seed: int = 0) -> Iterator[tuple[str, str, list[str]]]:
    """``n`` mutants of the spec ``text``: leaf replacements, deletions, renamed stages, odd
    overrides, and raw-text attacks (duplicate keys, deep nesting, alias bombs, _base_ tricks)."""
    rng = random.Random(seed)
    base = yaml.safe_load(text)
    for i in range(n):
        spec = copy.deepcopy(base)
        kind = rng.choice(["leaf", "leaf", "leaf", "delete", "rename", "override", "raw"])
        overrides: list[str] = []
        if kind == "leaf":
            path = rng.choice(_paths(spec))
            _set(spec, path, copy.deepcopy(rng.choice(ODD_VALUES)))
            out = _dump(spec)
        elif kind == "delete":
            _delete(spec, rng.choice(_paths(spec)))
            out = _dump(spec)
        elif kind == "rename":
            _rename_stage(spec, rng)
            out = _dump(spec)
        elif kind == "override":
            overrides = rng.sample(ODD_OVERRIDES, rng.randint(1, 2))
            out = text
        else:
            attack = rng.choice(["dup", "deep", "bomb", "base_int", "base_interp", "base_self", "stages_list",
                                 "top_list", "binary", "tabs"])
            out = {
                "dup": text + "\nstages: {}\n",
                "deep": text + "\nextra: " + "[" * 500 + "]" * 500 + "\n",
                "bomb": "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
                    f"{c}: &{c} [{', '.join('*' + p for _ in range(9))}]\n"
                    for p, c in zip("abcdefgh", "bcdefghi")) + text,
                "base_int": "_base_: 3\n" + text,
                "base_interp": "_base_: ['${x}']\n" + text,
                "base_self": "_base_: [spec.yaml]\n" + text,
                "stages_list": text + "\n_extra_base: 1\n".replace("_extra_base: 1", "stages: [a, b]"),
                "top_list": "- 1\n- 2\n",
                "binary": "\x00\x01\x02",
                "tabs": "stages:\n\tload: {}\n",
            }[attack]
            kind = f"raw:{attack}"
        yield f"{i}:{kind}", out, overrides
