"""Spec loading: bases, interpolation, overrides, validation errors naming file and key."""

from __future__ import annotations

import textwrap

import pytest

from convert.errors import SpecError
from convert.spec import load_spec

import toy_passes  # noqa: F401  (registers toy passes)


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_base_merge_interpolation_env_and_override(tmp_path, monkeypatch):
    write(tmp_path / "base.yaml", """
        vars: {greeting: hi, suffix: "${oc.env:TOY_SUFFIX,dflt}"}
        stages:
          w: {pass: toy_write, with: {text: "${vars.greeting}-${vars.suffix}"}}
          up: {pass: toy_upper}
    """)
    spec_path = write(tmp_path / "spec.yaml", """
        _base_: [base.yaml]
        vars: {greeting: hello}
        stages:
          up: {with: {times: 2}}
    """)
    spec = load_spec(spec_path)
    assert [s.name for s in spec.stages] == ["w", "up"]
    assert spec.stage("w").config.text == "hello-dflt"
    assert spec.stage("up").config.times == 2
    assert spec.stage("up").inputs == {"model": ["w"]}  # first role defaults to the previous stage
    monkeypatch.setenv("TOY_SUFFIX", "env")
    spec = load_spec(spec_path, ["vars.greeting=yo", "stages.up.with.times=3"])
    assert spec.stage("w").config.text == "yo-env"
    assert spec.stage("up").config.times == 3
    assert spec.name == "spec"


@pytest.mark.parametrize("text, overrides, expected", [
    ("stages: {w: {pass: toy_write, with: {txt: a}}}", [], "spec.yaml: stages.w.with.txt: unknown parameter"),
    ("stages: {w: {pass: toy_write, with: {sleep: abc}}}", [], "spec.yaml: stages.w.with.sleep: Input should be"),
    ("stages: {w: {pass: toy_wrte}}", [], "spec.yaml: stages.w.pass: unknown pass 'toy_wrte'"),
    ("stages: {w: {pass: toy_write, wth: {}}}", [], "spec.yaml: stages.w.wth: unknown stage key"),
    ("stages: {w: {pass: toy_write, with: {src: nope.txt}}}", [],
     "spec.yaml: stages.w.with.src: file 'nope.txt' not found"),
    ("stages: {w: {pass: toy_write}}", ["stages.w.with.times=2"],
     "command line: stages.w.with.times: unknown parameter"),
    ("stages: {w: {pass: toy_write}}", ["nokeyvalue"], "command line: override 'nokeyvalue'"),
    ("stages: {u: {pass: toy_upper}}", [], "stages.u.inputs.model: pass 'toy_upper' needs input 'model'"),
    ("stages: {w: {pass: toy_write}, u: {pass: toy_upper, inputs: {model: zz}}}", [], "'zz' is not an earlier stage"),
    ("stages: {w: {pass: toy_write, with: {text: '${nope.x}'}}}", [], "cannot resolve interpolation"),
    ("stages: []", [], "spec.yaml: stages: expected a non-empty mapping"),
    ("stages:\n  w: {pass: toy_write\n", [], "spec.yaml:3:1: malformed YAML"),
    ("- a\n- b\n", [], "the top level must be a mapping"),
])
def test_errors_name_file_and_key(tmp_path, monkeypatch, text, overrides, expected):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "spec.yaml", text)
    with pytest.raises(SpecError) as e:
        load_spec("spec.yaml", overrides)
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_error_names_the_base_file_that_set_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "base.yaml", "stages: {w: {pass: toy_write, with: {sleep: [1]}}}")
    write(tmp_path / "spec.yaml", "_base_: base.yaml\nname: x\n")
    with pytest.raises(SpecError, match=r"^base.yaml: stages.w.with.sleep"):
        load_spec("spec.yaml")


def test_cyclic_base_is_detected(tmp_path):
    write(tmp_path / "a.yaml", "_base_: [b.yaml]\n")
    write(tmp_path / "b.yaml", "_base_: [a.yaml]\n")
    with pytest.raises(SpecError, match="cyclic _base_"):
        load_spec(tmp_path / "a.yaml")


def test_missing_spec_and_base(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "none.yaml")
    write(tmp_path / "a.yaml", "_base_: [gone.yaml]\n")
    with pytest.raises(SpecError, match=r"_base_: file 'gone.yaml' not found"):
        load_spec(tmp_path / "a.yaml")


def test_kind_mismatch_is_rejected(tmp_path):
    write(tmp_path / "s.yaml", """
        stages:
          w: {pass: toy_write}
          m: {pass: toy_upper, inputs: {model: w}}
          l: {pass: load, with: {source: yolov5, arch: yolov5n}}
          u: {pass: toy_upper, inputs: {model: l}}
    """)
    with pytest.raises(SpecError, match=r"stage 'l' produces a 'torch' artifact, but toy_upper's 'model' takes 'text'"):
        load_spec(tmp_path / "s.yaml")
