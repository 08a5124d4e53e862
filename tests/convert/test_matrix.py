"""Matrices: one spec expanding into a pipeline per combination, shared stages built once, one summary."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from convert.errors import SpecError
from convert.manager import Manager
from convert.matrix import expand
from convert.matrix import run as run_matrix
from convert.store import Store
from convert.versions import verify as verify_version

import toy_passes  # noqa: F401

MATRIX_SPEC = """
name: toy
model: {text: a}
variant: {times: 1}
matrix:
  model.text: [a, b]
  variant.times: [1, 2]
stages:
  w: {pass: toy_write, with: {text: "${model.text}", src: data.txt}}
  base: {pass: toy_write, with: {text: shared}}
  u: {pass: toy_upper, inputs: {model: w}, with: {times: "${variant.times}"}, resources: {CPU: 1}}
  v: {pass: toy_upper, inputs: {model: base}}
  j: {pass: toy_join, inputs: {parts: [u, v]}}
"""


@pytest.fixture
def matrix_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text("xyz")
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(MATRIX_SPEC))
    return tmp_path


def run_it(tmp_path: Path, executor=None):
    variants = expand(tmp_path / "spec.yaml")
    make = lambda spec: Manager(spec, Store(tmp_path / "store"), tmp_path / "artifacts", progress=False,  # noqa: E731
                                executor=executor)
    return variants, *run_matrix(variants, make)


def check_matrix_run(tmp_path: Path, variants, reports, summary: Path) -> None:
    """Four versions, one summary, and each stage key built once over all combinations."""
    assert [v.spec.name for v in variants] == ["toy-a-1", "toy-a-2", "toy-b-1", "toy-b-2"]
    assert [v.values for v in variants] == [{"model.text": t, "variant.times": n} for t in "ab" for n in (1, 2)]
    versions = [r.published for r in reports]
    assert len(set(versions)) == 4 and all((p / "manifest.json").is_file() for p in versions)
    assert all(verify_version(p) == [] for p in versions)
    assert {p.parent.name for p in versions} == {"toy-a-1", "toy-a-2", "toy-b-1", "toy-b-2"}
    ran = [(s.name, s.key) for r in reports for s in r.stages if s.status == "ran"]
    assert len(ran) == len(set(ran))  # no key was built twice
    by_stage = {n: sum(1 for name, _ in ran if name == n) for n in ("w", "base", "u", "v", "j")}
    assert by_stage == {"w": 2, "base": 1, "u": 4, "v": 1, "j": 4}
    # the outputs are what each combination asks for
    j = {r.spec: (r.published / "j" / "out.txt").read_text() for r in reports}
    assert j == {"toy-a-1": "AXYZ+SHARED", "toy-a-2": "AXYZAXYZ+SHARED", "toy-b-1": "BXYZ+SHARED",
                 "toy-b-2": "BXYZBXYZ+SHARED"}
    assert summary.parent == tmp_path / "artifacts" / "toy" and summary.name.startswith("matrix-")
    data = json.loads((summary / "summary.json").read_text())
    assert data["variables"] == ["model.text", "variant.times"] and data["shared_stages"] == ["base", "v"]
    assert [c["version"] for c in data["combinations"]] == [r.version for r in reports]
    md = (summary / "comparison.md").read_text()
    assert all(f"{r.spec}/{r.version}" in md for r in reports) and (summary / "comparison.html").is_file()
    assert sorted(p.name for p in tmp_path.glob("spec*.lock")) == [
        "spec.a-1.lock", "spec.a-2.lock", "spec.b-1.lock", "spec.b-2.lock"]


def test_a_matrix_publishes_one_version_per_combination_and_builds_shared_stages_once(matrix_dir):
    variants, reports, summary = run_it(matrix_dir)
    check_matrix_run(matrix_dir, variants, reports, summary)
    # a second run rebuilds nothing
    _, again, summary2 = run_it(matrix_dir)
    assert {s.status for r in again for s in r.stages} == {"cached"} and summary2 == summary


def test_plan_of_a_matrix_says_which_keys_are_shared(matrix_dir, cli):
    code, out, err = cli("plan", matrix_dir / "spec.yaml")
    assert code == 0, err
    blocks = out.split("== ")[1:]
    assert [b.splitlines()[0] for b in blocks] == ["toy-a-1", "toy-a-2", "toy-b-1", "toy-b-2"]
    assert "same key as in" not in blocks[0]
    base_lines = [line for b in blocks[1:] for line in b.splitlines() if line.startswith("base ")]
    assert all("same key as in toy-a-1: built once" in line for line in base_lines)
    code, out, _ = cli("run", matrix_dir / "spec.yaml", "--json")
    rep = json.loads(out)
    assert code == 0 and len(rep["combinations"]) == 4 and Path(rep["summary"]).is_dir()


@pytest.mark.parametrize("matrix,error", [
    ("{modle.text: [a, b]}", "matrix combination modle.text=a: command line: override 'modle.text' names no key"),
    ("{model.text: a}", "matrix.model.text: expected a non-empty list of values"),
    ("{model.text: []}", "matrix.model.text: expected a non-empty list"),
    ("{model.text: [a, a]}", "a value is listed twice"),
    ("[a, b]", "matrix: expected a mapping"),
    ("{variant.times: [1, 0]}", "matrix combination variant.times=0: "),  # a value the pass refuses
])
def test_bad_matrices_are_one_line_errors(matrix_dir, cli, matrix, error):
    text = textwrap.dedent(MATRIX_SPEC).replace("""matrix:
  model.text: [a, b]
  variant.times: [1, 2]""", f"matrix: {matrix}")
    (matrix_dir / "spec.yaml").write_text(text)
    with pytest.raises(SpecError, match=re.escape(error)):
        expand(matrix_dir / "spec.yaml")
    code, _, err = cli("validate", matrix_dir / "spec.yaml")
    assert code == 2 and err.count("\n") == 1


def test_too_many_combinations_are_refused(matrix_dir):
    text = textwrap.dedent(MATRIX_SPEC).replace("variant.times: [1, 2]",
                                                f"variant.times: {list(range(1, 200))}")
    (matrix_dir / "spec.yaml").write_text(text)
    with pytest.raises(SpecError, match="398 combinations"):
        expand(matrix_dir / "spec.yaml")
