"""The manager: cache hits and invalidation, contract and failure handling, lockfile, publishing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from convert.errors import ConvertError
from convert.manager import Manager, key_material, lockfile_path
from convert.spec import load_spec
from convert.store import Store
from convert.versions import verify as verify_version

import toy_passes  # noqa: F401

HELPERS = Path(__file__).resolve().parents[1] / "helpers"

SPEC = """
stages:
  w: {pass: toy_write, with: {text: "a", src: data.txt}}
  u: {pass: toy_upper, with: {times: 1}}
  v: {pass: toy_upper, with: {times: 2}}
"""


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text("xyz")
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(SPEC))

    def run(*overrides, **kw):
        spec = load_spec("spec.yaml", list(overrides))
        return Manager(spec, Store(tmp_path / "store"), tmp_path / "artifacts", progress=False).run(**kw)

    return run


def statuses(report):
    return {s.name: s.status for s in report.stages}


def test_rerun_is_cached_and_change_reruns_only_downstream(env, tmp_path):
    assert statuses(env()) == {"w": "ran", "u": "ran", "v": "ran"}
    assert statuses(env()) == {"w": "cached", "u": "cached", "v": "cached"}
    assert statuses(env("stages.u.with.times=3")) == {"w": "cached", "u": "ran", "v": "ran"}
    # a file's content at the same path invalidates the stage reading it and everything after
    (tmp_path / "data.txt").write_text("changed")
    assert statuses(env("stages.u.with.times=3")) == {"w": "ran", "u": "ran", "v": "ran"}


def test_a_file_in_a_nested_config_is_keyed_by_content_and_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text("xyz")
    (tmp_path / "s.yaml").write_text("stages: {n: {pass: toy_nested, with: {sub: {text: a, src: data.txt}}}}")
    run = lambda: Manager(load_spec("s.yaml"), Store(tmp_path / "store"), tmp_path / "a", progress=False).run()
    assert statuses(run()) == {"n": "ran"}
    assert statuses(run()) == {"n": "cached"}
    (tmp_path / "data.txt").write_text("changed")
    assert statuses(run()) == {"n": "ran"}
    (tmp_path / "data.txt").unlink()
    with pytest.raises(ConvertError, match=r"stages\.n\.with\.sub\.src: file 'data.txt' not found"):
        run()


def test_same_output_downstream_stays_cached(env):
    env()
    # v's output depends only on u's output: re-running u with force yields equal bytes, so v stays cached
    assert statuses(env(force={"u"})) == {"w": "cached", "u": "ran", "v": "cached"}


def test_publish_lockfile_verify(env, tmp_path):
    report = env()
    pub = report.published
    assert pub == tmp_path / "artifacts" / "spec" / report.version
    assert (pub / "v" / "out.txt").read_text() == "AXYZAXYZ"
    assert os.readlink(tmp_path / "artifacts" / "spec" / "latest") == report.version
    manifest = json.loads((pub / "manifest.json").read_text())
    assert manifest["stages"]["w"]["files"]["src"][0]["sha256"] == sha256_file(tmp_path / "data.txt")
    assert manifest["stage_configs"]["u"]["times"] == 1
    lock = json.loads(lockfile_path(load_spec("spec.yaml")).read_text())
    assert lock["stages"]["v"]["input_digests"]["model"] == [manifest["stages"]["u"]["output"]]
    assert verify_version(pub) == []
    target = pub / "u" / "out.txt"
    target.chmod(0o644)
    target.write_text("tampered")
    assert verify_version(pub) == ["u/out.txt: content changed"]


def sha256_file(p):
    import hashlib

    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_frozen_detects_changes(env, tmp_path):
    env()
    env(frozen=True)  # same spec, same outputs: passes
    with pytest.raises(ConvertError, match=r"--frozen: stage .u. does not match .*its parameters \(with:\) changed"):
        env("stages.u.with.times=5", frozen=True)


def test_until_stops_and_publishes_nothing(env, tmp_path):
    report = env(until="u")
    assert [s.name for s in report.stages] == ["w", "u"]
    assert report.published is None and not (tmp_path / "artifacts").exists()


def test_unexpected_error_names_stage_and_previous_ones(env, tmp_path):
    with pytest.raises(ConvertError) as e:
        env("stages.v.with.fail=true")
    msg = str(e.value)
    assert msg.startswith("stage 'v' (pass toy_upper) failed after w, u: RuntimeError: boom")
    assert "traceback is in" in msg
    store = Store(tmp_path / "store")
    assert not list((tmp_path / "store" / "tmp").iterdir())  # nothing half-written left
    assert len(list((tmp_path / "store" / "cache").glob("*.json"))) == 2  # w and u only
    assert store.root.joinpath("logs").is_dir()


def test_optional_stage_skipped_when_backend_missing(env, tmp_path):
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(SPEC) + "  m: {pass: toy_missing, optional: true}\n"
                                        "  after: {pass: toy_upper, inputs: {model: m}}\n")
    report = env()
    assert statuses(report)["m"] == "skipped" and "not installed" in report.stages[3].reason
    assert statuses(report)["after"] == "skipped"
    lock = json.loads(lockfile_path(load_spec("spec.yaml")).read_text())
    assert "surely_not_installed_module_xyz is not installed" in lock["stages"]["m"]["skipped"]
    # a `many` role just loses the skipped member
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(SPEC) + "  m: {pass: toy_missing, optional: true}\n"
                                        "  j: {pass: toy_join, inputs: {parts: [u, m, v]}}\n")
    report = env()
    assert statuses(report)["j"] == "ran"
    assert (report.published / "j" / "out.txt").read_text() == "AXYZ+AXYZAXYZ"
    manifest = json.loads((report.published / "manifest.json").read_text())
    assert manifest["stage_order"] == ["w", "u", "v", "m", "j"]
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(SPEC) + "  m: {pass: toy_missing}\n")
    with pytest.raises(ConvertError, match=r"stage 'm' \(pass toy_missing\) needs the Python module "
                       r"'surely_not_installed_module_xyz'.*Hint: install it"):
        env()


def test_golden_cache_key(tmp_path, monkeypatch):
    """Pins the key of a fixed stage: if this changes, every user's cache is invalidated — bump KEY_SCHEMA
    on purpose or fix the accident."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text("xyz")
    (tmp_path / "s.yaml").write_text("stages: {w: {pass: toy_write, with: {text: a, src: data.txt}}}")
    stage = load_spec("s.yaml").stage("w")
    digest = sha256_file(tmp_path / "data.txt")
    assert key_material(stage, {}, {"src": [digest]}, {}) == {
        "schema": 1, "pass": "toy_write", "version": 1, "inputs": {}, "tools": {},
        "config": {"text": "a", "src": digest, "sleep": 0.0, "marker": None}}
    plan = Manager(load_spec("s.yaml"), Store(tmp_path / "store"), tmp_path / "artifacts").plan()
    assert plan[0].key == "ae8334418318c35ff1a595e2760d9f6d43ac51948133a468c62df8433e7b60bf"


def _toy_cli(*args):
    code = ("import sys, toy_passes; from convert.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, *args]


def test_killed_pass_leaves_no_entry_and_next_run_completes(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{HELPERS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    (tmp_path / "s.yaml").write_text(
        "stages: {w: {pass: toy_write, with: {text: a, sleep: 60, marker: started}}, u: {pass: toy_upper}}")
    proc = subprocess.Popen(_toy_cli("run", "s.yaml", "--no-progress"), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (tmp_path / "started").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = tmp_path / ".convert" / "store"
    assert not list((store / "cache").glob("*.json")) if (store / "cache").exists() else True
    assert not (store / "objects").exists() or not list((store / "objects").iterdir())
    done = subprocess.run(_toy_cli("run", "s.yaml", "stages.w.with.sleep=0", "--no-progress"), cwd=tmp_path,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "u (toy_upper): ran" in done.stdout
    gc = subprocess.run(_toy_cli("gc"), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "removed 1 temporary dirs" in gc.stdout  # the killed run's leftovers


def test_two_runs_at_once_build_each_stage_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{HELPERS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    (tmp_path / "s.yaml").write_text("stages: {w: {pass: toy_write, with: {text: a, sleep: 1}}, u: {pass: toy_upper}}")
    procs = [subprocess.Popen(_toy_cli("run", "s.yaml", "--json", "--no-progress"), cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate()[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    ran = sorted(r["stages"][0]["status"] for r in results)
    assert ran == ["cached", "ran"]
    assert results[0]["version"] == results[1]["version"]


def test_machine_dependent_stage_is_keyed_by_the_machine_and_frozen_checks_only_its_key(tmp_path, monkeypatch):
    import convert.manager as manager

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("stages: {w: {pass: toy_write}, c: {pass: toy_clock}}")
    machine = {"cpu": "A", "cpus": 2, "arch": "x86_64", "system": "Linux", "gpus": []}
    monkeypatch.setattr(manager, "machine_identity", lambda: dict(machine))

    def run(store, **kw):
        return Manager(load_spec("s.yaml"), Store(tmp_path / store), tmp_path / "a", progress=False).run(**kw)

    first = run("s1")
    # a fresh store rebuilds the clock's output with other bytes: --frozen accepts it (same machine, same key)
    again = run("s2", frozen=True)
    assert statuses(again) == {"w": "ran", "c": "ran"}
    assert first.stages[1].key == again.stages[1].key and first.stages[1].digest != again.stages[1].digest
    assert first.stages[0].digest == again.stages[0].digest
    # another machine: the machine-dependent stage's key changes, the other one's does not
    machine["cpu"] = "B"
    plan = Manager(load_spec("s.yaml"), Store(tmp_path / "s1"), tmp_path / "a").plan()
    assert [r.status for r in plan] == ["cached", "pending"]
    with pytest.raises(ConvertError, match=r"stage 'c' does not match .*built on another machine.*'cpu': 'A'"):
        run("s3", frozen=True)


def test_plan_skips_what_run_skips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""
        stages:
          w: {pass: toy_write}
          m: {pass: toy_missing, optional: true}
          after: {pass: toy_upper, inputs: {model: m}}
          j: {pass: toy_join, inputs: {parts: [w, m]}}
    """))
    mgr = Manager(load_spec("s.yaml"), Store(tmp_path / "store"), tmp_path / "a", progress=False)
    planned = [(r.name, r.status) for r in mgr.plan()]
    ran = [(r.name, r.status) for r in mgr.run().stages]
    assert planned == [("w", "pending"), ("m", "skipped"), ("after", "skipped"), ("j", "pending")]
    assert ran == [("w", "ran"), ("m", "skipped"), ("after", "skipped"), ("j", "ran")]
    assert [r.status for r in mgr.plan()] == ["cached", "skipped", "skipped", "cached"]


def test_published_files_hold_no_value_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONVERT_TEST_SECRET", "s3cr3t-token")
    (tmp_path / "base.yaml").write_text("unused_secret: ${oc.env:CONVERT_TEST_SECRET}\nliteral: also-secret\n")
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""
        _base_: [base.yaml]
        who: ${oc.env:CONVERT_TEST_SECRET}
        stages:
          w: {pass: toy_write, with: {text: "${who}"}}
    """))
    report = Manager(load_spec("s.yaml"), Store(tmp_path / "store"), tmp_path / "a", progress=False).run()
    assert (report.published / "w" / "out.txt").read_text() == "s3cr3t-token"  # the stage did get the value
    manifest = json.loads((report.published / "manifest.json").read_text())
    assert manifest["stage_configs"]["w"]["text"] == "${oc.env:CONVERT_TEST_SECRET}"
    assert manifest["spec_written"]["who"] == "${oc.env:CONVERT_TEST_SECRET}"
    text = (report.published / "manifest.json").read_text() + lockfile_path(load_spec("s.yaml")).read_text()
    assert "s3cr3t-token" not in text and "also-secret" not in text


def test_gc_during_a_build_leaves_what_the_build_owns(tmp_path):
    """w is committed, u is running when gc runs: neither w's object nor u's staging dir may go."""
    env = {**os.environ, "PYTHONPATH": f"{HELPERS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    (tmp_path / "s.yaml").write_text(
        "stages: {w: {pass: toy_write, with: {text: a}}, v: {pass: toy_write, with: {text: b, sleep: 3, "
        "marker: started}}, j: {pass: toy_join, inputs: {parts: [w, v]}}}")
    (tmp_path / "artifacts" / "s").mkdir(parents=True)
    (tmp_path / "artifacts" / "s" / ".tmp-999999999-x").mkdir()  # a killed publish's leftover
    proc = subprocess.Popen(_toy_cli("run", "s.yaml", "--no-progress"), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "started").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    gc = subprocess.run(_toy_cli("gc"), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert gc.returncode == 0, gc.stderr
    assert "removed 1 temporary dirs, 0 cache entries, 0 objects" in gc.stdout  # only the dead leftover
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "published" in out and not (tmp_path / "artifacts" / "s" / ".tmp-999999999-x").exists()


def test_cold_rebuilds_in_fresh_stores_publish_identical_files(tmp_path, monkeypatch):
    """Export, simplify, calibration, quantization and post-processing are deterministic: two cold
    builds publish byte-identical stage files (the manifest and the version's report, which record
    timings, aside), and --frozen
    with the first build's lockfile passes on a third, fresh store."""
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""
        stages:
          load: {with: {arch: yolov5n, input_size: [64, 64], nc: 2}}
          truncate_head: {}
          export_onnx: {}
          simplify: {}
          calibrate: {with: {num: 3}}
          quantize: {inputs: {model: simplify, table: calibrate}}
          postprocess: {}
    """))

    def build(store):
        with pytest.warns(UserWarning, match="randomly initialised"):
            return Manager(load_spec("s.yaml"), Store(tmp_path / store), tmp_path / f"a-{store}",
                           progress=False).run(frozen=store == "s3")

    first, second = build("s1"), build("s2")
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*"))
                          if p.is_file() and p.parent != root}
    a, b = files(first.published), files(second.published)
    top = {p.name for p in first.published.iterdir() if p.is_file()}
    assert {"manifest.json", "report.html", "report.md"} <= top
    assert all(n.startswith(("manifest", "report")) for n in top)
    assert len(a) >= 14 and a.keys() == b.keys()
    assert [str(k) for k in a if a[k] != b[k]] == []
    assert first.version == second.version
    assert [s.status for s in build("s3").stages] == ["ran"] * 7


def test_frozen_names_the_input_that_changed_and_refuses_bad_lockfiles(env, tmp_path):
    env()
    (tmp_path / "data.txt").write_text("other")
    plan = Manager(load_spec("spec.yaml"), Store(tmp_path / "store"), tmp_path / "artifacts").plan()
    assert plan[0].reason == "changed since the lockfile: the file data.txt (src) changed"
    with pytest.raises(ConvertError, match=r"stage 'w' does not match .*the file data.txt \(src\) changed"):
        env(frozen=True)
    lock = lockfile_path(load_spec("spec.yaml"))
    for text, match in [("{not json", "is corrupted"), ('{"format": 9, "stages": {}}', "has format 9"),
                        ('{"stages": []}', "not a convert lockfile")]:
        lock.write_text(text)
        with pytest.raises(ConvertError, match=match):
            env(frozen=True)
