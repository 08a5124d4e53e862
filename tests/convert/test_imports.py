"""The engine's import graph: convert/ never imports passes/ or calib/ (passes are found by entry point)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CONVERT = Path(__file__).resolve().parents[2] / "convert"


def test_convert_imports_neither_passes_nor_calib():
    offenders = []
    for path in sorted(CONVERT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.relative_to(CONVERT.parent)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in ("passes", "calib")]
    assert not offenders, offenders


def test_a_spec_imports_only_the_passes_it_uses(tmp_path):
    (tmp_path / "s.yaml").write_text("stages: {load: {with: {arch: yolov5n}}, export_onnx: {}, simplify: {}}")
    code = ("import sys; from convert.spec import load_spec; load_spec('s.yaml'); "
            "print(sorted(m for m in sys.modules if m.startswith(('passes.', 'calib', 'torch', 'openvino'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['passes.export_onnx', 'passes.load', 'passes.simplify']", out.stdout
