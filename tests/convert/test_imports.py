"""The import graph: convert/ never imports passes/ or calib/ (passes are found by entry point), calib/
(the INT8 library) imports no pass, and no pass imports another pass."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imports(package: str):
    """(file, line, imported module) for every absolute import in a package, lazy ones included."""
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for n in names:
                yield path.relative_to(REPO), node.lineno, n


def test_convert_imports_neither_passes_nor_calib():
    offenders = [f"{f}:{line} {n}" for f, line, n in imports("convert") if n.split(".")[0] in ("passes", "calib")]
    assert not offenders, offenders


def test_calib_imports_no_pass_and_no_pass_imports_another():
    offenders = [f"{f}:{line} {n}" for f, line, n in imports("calib") if n.split(".")[0] == "passes"]
    for f, line, n in imports("passes"):
        parts = n.split(".")
        own = f.parts[1].removesuffix(".py")  # passes/<pass>.py or passes/<pass>/...
        if parts[0] == "passes" and len(parts) > 1 and parts[1] != own:
            offenders.append(f"{f}:{line} {n}")
    assert not offenders, offenders


def test_a_spec_imports_only_the_passes_it_uses(tmp_path):
    (tmp_path / "s.yaml").write_text("stages: {load: {with: {arch: yolov5n}}, export_onnx: {}, simplify: {}}")
    code = ("import sys; from convert.spec import load_spec; load_spec('s.yaml'); "
            "print(sorted(m for m in sys.modules if m.startswith(('passes.', 'calib', 'torch', 'openvino'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['passes.export_onnx', 'passes.load', 'passes.simplify']", out.stdout


def module_imports() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (lazy imports included)."""
    modules = {}
    for package in ("convert", "calib", "passes"):
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


def test_the_import_graph_has_no_circle():
    graph, state, circles = module_imports(), {}, []

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                circles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles
