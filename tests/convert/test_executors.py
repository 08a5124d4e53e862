"""The Ray executor, on a local Ray instance (ray.init(num_cpus=2)): independent stages at once,
per-stage resources, errors, and a 2 x 2 matrix building its shared stages once."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from convert.errors import ConvertError
from convert.executors import RayExecutor, ray_options
from convert.manager import Manager
from convert.spec import load_spec
from convert.store import Store

import toy_passes  # noqa: F401

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A local Ray instance with 2 CPUs whose workers import this checkout and the toy passes, and
    act as other nodes: with a remote cache they keep their own store (``node_store``)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (the `ray` extra)")
    if ray.is_initialized():
        ray.shutdown()
    node_store = tmp_path_factory.mktemp("node") / "store"
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 << 20,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), str(HELPERS)]),
                                           "CONVERT_NODE_STORE": str(node_store)}})
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"a local Ray instance did not start: {type(e).__name__}: {e}")
    ray.node_store = node_store
    yield ray
    ray.shutdown()


def test_workers_with_their_own_store_share_through_the_remote(ray_local, tmp_path, monkeypatch):
    from convert.remote import Remote

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text("xyz")
    (tmp_path / "spec.yaml").write_text("stages: {w: {pass: toy_write, with: {text: n, src: data.txt}}, "
                                        "u: {pass: toy_upper}, v: {pass: toy_upper, with: {times: 3}}}")
    remote = Remote(str(tmp_path / "remote"))
    report = Manager(load_spec(tmp_path / "spec.yaml"), Store(tmp_path / "store", remote=remote),
                     tmp_path / "artifacts", progress=False, executor=RayExecutor()).run()
    assert [s.status for s in report.stages] == ["ran"] * 3
    for s in report.stages:  # built in the workers' store, pushed, pulled by the driver to publish
        assert (ray_local.node_store / "objects" / s.digest / "artifact.json").is_file()
        assert (tmp_path / "remote" / "objects" / f"{s.digest}.tar").is_file()
        assert (tmp_path / "store" / "objects" / s.digest / "artifact.json").is_file()
    assert not (tmp_path / "store" / "cache").exists()  # the driver built nothing itself
    assert (report.published / "v" / "out.txt").read_text() == "NXYZ" * 3
    local = Manager(load_spec(tmp_path / "spec.yaml"), Store(tmp_path / "s2"), tmp_path / "a2", progress=False).run()
    assert local.version == report.version


def manager(tmp_path: Path, spec_text: str, **kw) -> Manager:
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(spec_text))
    return Manager(load_spec(tmp_path / "spec.yaml"), Store(tmp_path / "store"), tmp_path / "artifacts",
                   progress=False, executor=RayExecutor(), **kw)


def test_independent_stages_run_at_once_and_dependent_ones_after(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "a.started", tmp_path / "b.started"
    # each of a and b waits for the other to have started: they finish only when run at the same time
    mgr = manager(tmp_path, f"""
        stages:
          a: {{pass: toy_meet, with: {{me: {a}, peer: {b}}}}}
          b: {{pass: toy_meet, with: {{me: {b}, peer: {a}}}}}
          j: {{pass: toy_join, inputs: {{parts: [a, b]}}}}
    """)
    lines = []
    mgr.log = lines.append
    report = mgr.run()
    assert {s.name: s.status for s in report.stages} == {"a": "ran", "b": "ran", "j": "ran"}
    assert (report.published / "j" / "out.txt").read_text() == f"{a}+{b}"
    assert lines[-1].startswith("[3/3] j")
    # the driver answers cached stages itself, without tasks
    again = manager(tmp_path, (tmp_path / "spec.yaml").read_text()).run()
    assert {s.status for s in again.stages} == {"cached"}


def test_ray_and_local_runs_publish_the_same_version(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text("xyz")
    spec = """
        stages:
          w: {pass: toy_write, with: {text: a, src: data.txt}}
          u: {pass: toy_upper, with: {times: 2}, resources: {CPU: 2}}
          v: {pass: toy_upper, inputs: {model: w}}
    """
    ray_report = manager(tmp_path, spec).run()
    local = Manager(load_spec(tmp_path / "spec.yaml"), Store(tmp_path / "store2"), tmp_path / "artifacts2",
                    progress=False).run()
    assert ray_report.version == local.version
    assert [s.status for s in ray_report.stages] == ["ran"] * 3


def test_a_failing_stage_on_ray_is_a_one_line_error_naming_it(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mgr = manager(tmp_path, """
        stages:
          w: {pass: toy_write}
          u: {pass: toy_upper, with: {fail: true}}
    """)
    with pytest.raises(ConvertError, match=r"stage 'u' \(pass toy_upper\) failed after w: RuntimeError: boom") as e:
        mgr.run()
    assert "traceback is in" in e.value.hint
    assert not (tmp_path / "artifacts").exists()


def test_a_resource_no_node_has_is_refused_before_anything_runs(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mgr = manager(tmp_path, """
        stages:
          w: {pass: toy_write}
          engine: {pass: toy_upper, resources: {GPU: 1, trt_sm86: 1}}
    """)
    with pytest.raises(ConvertError, match=r"stage 'engine' needs resources \{GPU: 1\} but the Ray cluster has 0"):
        mgr.run()
    assert not (tmp_path / "store" / "cache").exists()


def test_resources_become_ray_task_options():
    assert ray_options({}) == {"num_cpus": 1, "max_retries": 0}
    assert ray_options({"CPU": 2, "GPU": 1, "trt_sm86": 1, "memory": 1e9}) == {
        "num_cpus": 2, "num_gpus": 1, "memory": 1e9, "resources": {"trt_sm86": 1}, "max_retries": 0}


def test_a_2x2_matrix_on_ray_publishes_four_versions_one_report_and_builds_shared_stages_once(
        ray_local, tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_matrix import MATRIX_SPEC, check_matrix_run, run_it

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text("xyz")
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(MATRIX_SPEC))
    variants, reports, summary = run_it(tmp_path, executor=RayExecutor())
    check_matrix_run(tmp_path, variants, reports, summary)


def test_cli_executor_flags(ray_local, tmp_path, cli):
    (tmp_path / "spec.yaml").write_text("stages: {w: {pass: toy_write}, u: {pass: toy_upper}}")
    code, out, err = cli("run", tmp_path / "spec.yaml", "--executor", "ray")
    assert code == 0 and "published" in out, err
    code, _, err = cli("run", tmp_path / "spec.yaml", "--address", "127.0.0.1:6379")
    assert code == 2 and "--address is for --executor ray" in err
