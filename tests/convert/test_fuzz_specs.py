"""The reliability battery as a property test: mutated bundled specs never crash `convert validate`."""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

import pytest

from convert.cli import main

from spec_fuzz import mutants

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "pipelines").glob("*.yaml"))
N = int(os.environ.get("CONVERT_FUZZ_N", "60"))  # per spec; bench/fuzz_specs.py runs thousands


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_mutated_specs_give_exit_0_or_2_and_one_line(spec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = spec.read_text()
    for label, mutant, overrides in mutants(text, N, seed=zlib.crc32(spec.stem.encode()) % 1000):
        (tmp_path / "spec.yaml").write_text(mutant, errors="surrogateescape")
        t0 = time.perf_counter()
        code = main(["validate", "spec.yaml", *overrides])  # an unexpected exception fails the test here
        seconds = time.perf_counter() - t0
        _, err = capsys.readouterr()
        assert code in (0, 2), (label, code, err)
        assert "Traceback" not in err, (label, err)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 0 or (len(lines) == 1 and len(err.strip().splitlines()) == 1), (label, err)
        assert seconds < 5, (label, seconds)
    assert not list(tmp_path.glob("**/*.lock")) and sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
