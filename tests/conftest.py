"""Shared test helpers: tiny specs, a CLI runner, toy passes (registered in-process)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent / "helpers"))


@pytest.fixture
def cli(tmp_path, capsys, monkeypatch):
    """Runs `convert ...` in-process in tmp_path; returns (exit code, stdout, stderr)."""
    from convert.cli import main

    monkeypatch.chdir(tmp_path)

    def run(*argv: str):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
