"""Pass discovery: built-ins from passes/, third-party passes from the `convert.passes` entry-point group."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from convert.base import Pass
from convert.registry import all_passes


def test_builtin_passes_are_light_to_import():
    found = all_passes()
    assert {"load", "truncate_head", "export_onnx", "simplify"} <= set(found)
    for name, cls in found.items():
        assert issubclass(cls, Pass) and cls.name == name
        assert cls.__doc__, f"pass {name} has no docstring (it is its `convert passes` help)"
        for fname, field in cls.Config.model_fields.items():
            assert field.description, f"{name}.{fname} has no description"


def test_entry_point_plugin_is_listed_and_runs(tmp_path):
    site = tmp_path / "site"
    (site / "myplugin").mkdir(parents=True)
    (site / "myplugin" / "__init__.py").write_text(textwrap.dedent('''
        from convert.base import Pass, PassConfig, PassResult

        class Hello(Pass):
            """Says hello."""
            name = "hello"
            output = "text"

            def run(self, inputs, out, ctx):
                (out / "h.txt").write_text("hello")
                return PassResult("text", "h.txt")
    '''))
    dist = site / "myplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[convert.passes]\nhello = myplugin:Hello\n")
    (tmp_path / "s.yaml").write_text("stages: {hi: {pass: hello}}")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    listing = subprocess.run([sys.executable, "-m", "convert", "passes"], env=env, capture_output=True, text=True)
    assert "hello" in listing.stdout and "Says hello." in listing.stdout
    run = subprocess.run([sys.executable, "-m", "convert", "run", "s.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "artifacts" / "s" / "latest" / "hi" / "h.txt").read_text() == "hello"
