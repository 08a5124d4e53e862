"""The CLI: exit codes, one-line errors, commands, and a fully cached run that never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import toy_passes  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def test_run_validate_plan_versions_show_verify(cli, tmp_path):
    (tmp_path / "s.yaml").write_text("stages: {w: {pass: toy_write}, u: {pass: toy_upper}}")
    assert cli("validate", "s.yaml")[0] == 0
    code, out, _ = cli("plan", "s.yaml")
    assert code == 0 and out.count("will run") == 2
    code, out, _ = cli("run", "s.yaml", "--no-progress")
    assert code == 0 and "u (toy_upper): ran" in out and "published artifacts/s/" in out
    code, out, _ = cli("plan", "s.yaml", "--json")
    assert [r["status"] for r in json.loads(out)] == ["cached", "cached"]
    code, out, _ = cli("run", "s.yaml", "--json", "--force", "u")
    assert [s["status"] for s in json.loads(out)["stages"]] == ["cached", "ran"]
    code, out, _ = cli("versions")
    assert code == 0 and "(latest)" in out
    assert cli("show", "s")[0] == 0
    code, out, _ = cli("verify", "s")
    assert code == 0 and out.strip().endswith(": ok")


def test_passes_list_and_show(cli):
    code, out, _ = cli("passes")
    assert code == 0
    for name in ("load", "truncate_head", "export_onnx", "simplify"):
        assert name in out
    code, out, _ = cli("passes", "show", "export_onnx")
    assert code == 0 and "opset: int (default 17)" in out and "ONNX opset version" in out
    code, out, _ = cli("passes", "show", "calibrate")  # nested settings are listed under their dotted keys
    assert code == 0 and "auto: mapping | null (optional)" in out
    assert "  auto.quantize.keep_head_float: bool (default False)" in out
    assert "method: one of 'minmax', 'entropy', 'percentile', 'mse', 'auto' (default 'minmax')" in out
    assert "data: path | null (default None)" in out
    code, _, err = cli("passes", "show", "exprt_onnx")
    assert code == 2 and "unknown pass 'exprt_onnx'" in err and "did you mean 'export_onnx'" in err


@pytest.mark.parametrize("spec, args, expected", [
    ("stages: {w: {pass: toy_write, with: {bogus: 1}}}", [], "s.yaml: stages.w.with.bogus: unknown parameter"),
    ("stages: {w: {pass: toy_write}}\n  bad: [", [], "malformed YAML"),
    ("stages: {w: {pass: nope}}", [], "unknown pass 'nope'"),
    ("stages: {w: {pass: toy_write, with: {sleep: x}}}", [], "stages.w.with.sleep"),
    ("stages: {w: {pass: toy_write, with: {src: missing.txt}}}", [], "file 'missing.txt' not found"),
    ("_base_: s.yaml\nstages: {w: {pass: toy_write}}", [], "cyclic _base_"),
    ("stages: {w: {pass: load, with: {source: onnx, weights: bad.onnx}}}", [], "is corrupt or invalid"),
    ("stages: {w: {pass: load, with: {source: yolov5, weights: trunc.pt}}}", [], "truncated or not a PyTorch"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(cli, tmp_path, spec, args, expected):
    (tmp_path / "s.yaml").write_text(spec)
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage-not-onnx")
    (tmp_path / "trunc.pt").write_bytes(_truncated_checkpoint())
    code, out, err = cli("run", "s.yaml", *args)
    assert code == 2, err
    assert expected in err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "artifacts").exists()
    cache = tmp_path / ".convert/store/cache"
    assert not cache.exists() or not any(cache.iterdir())


def _truncated_checkpoint() -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(100)}}, buf)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def test_fully_cached_run_imports_no_heavy_backend(tmp_path):
    """A real pipeline (load -> truncate -> export -> simplify) re-run from cache, in a fresh process, loads
    neither torch nor a runtime (what keeps it fast; its time is a figure for bench/, not a test bound)."""
    spec = tmp_path / "p.yaml"
    spec.write_text(textwrap.dedent("""
        stages:
          load: {with: {source: yolov5, arch: yolov5n, input_size: [64, 64], nc: 2}}
          truncate_head: {}
          export_onnx: {}
          simplify: {}
    """))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.run([sys.executable, "-m", "convert", "run", str(spec), "--no-progress"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    probe = ("import sys; from convert.cli import main; "
             "code = main(['run', 'p.yaml', '--json', '--no-progress']); "
             "heavy = ('torch', 'onnx', 'onnxruntime', 'openvino', 'tensorrt', 'matplotlib'); "
             "print(','.join(m for m in heavy if m in sys.modules) or 'NONE', file=sys.stderr); sys.exit(code)")
    second = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert [s["status"] for s in json.loads(second.stdout)["stages"]] == ["cached"] * 4
    assert second.stderr.split()[-1] == "NONE"


def test_a_full_disk_is_one_line_and_leaves_no_half_written_entry(cli, tmp_path, monkeypatch):
    """ENOSPC while the store takes a stage's output: one line with a hint, exit 2, no cache entry."""
    import errno

    import convert.store as store

    (tmp_path / "s.yaml").write_text("stages: {w: {pass: toy_write}, u: {pass: toy_upper}}")
    real = store.tree_digest

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store, "tree_digest", full)
    code, out, err = cli("run", "s.yaml", "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and "Hint: free disk space" in err
    assert not list((tmp_path / ".convert" / "store").glob("cache/*.json"))
    monkeypatch.setattr(store, "tree_digest", real)
    assert cli("run", "s.yaml", "--no-progress")[0] == 0


def test_a_store_whose_memo_cannot_be_opened_still_runs(cli, tmp_path):
    (tmp_path / "s.yaml").write_text("stages: {w: {pass: toy_write}}")
    store = tmp_path / ".convert" / "store"
    store.mkdir(parents=True)
    (store / "filehash.sqlite").mkdir()  # sqlite cannot open a folder: "unable to open database file"
    code, out, err = cli("run", "s.yaml", "--no-progress")
    assert code == 0, err
