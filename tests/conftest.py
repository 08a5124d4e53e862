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


TINY_E2E_SPEC = """
stages:
  load: {{with: {{arch: yolov5n, nc: 2, input_size: [64, 64]}}}}
  truncate_head: {{}}
  export_onnx: {{}}
  # a random-weight YOLOv5n scores below 0.01: a low threshold gives it a few detections to draw
  postprocess: {{with: {{score_threshold: 0.004, max_detections: 12}}}}
  evaluate: {{inputs: {{model: postprocess}}, with: {{data: {ds}}}}}
  benchmark: {{inputs: {{models: [export_onnx, postprocess]}}, with: {{iterations: 6, rounds: 2, warmup: 1}}}}
  report:
    inputs: {{metrics: [evaluate, benchmark], models: [postprocess, export_onnx]}}
    with: {{images: {ds}/images, conf: 0.004, max_det: 12}}
"""


@pytest.fixture(scope="session")
def tiny_e2e_run(tmp_path_factory):
    """A published run of a tiny random-weight YOLOv5n: raw-head and end-to-end ONNX, evaluation,
    benchmark, and a report drawing both models on two labelled photos.

    Returns:
        (root folder, version folder). ``root`` holds ``r.yaml``, ``ds/``, ``store/``, ``artifacts/``.
    """
    import numpy as np
    from PIL import Image

    from convert.cli import main

    root = tmp_path_factory.mktemp("tiny_e2e")
    rng = np.random.default_rng(0)
    (root / "ds" / "images").mkdir(parents=True)
    (root / "ds" / "labels").mkdir()
    for i, (h, w) in enumerate([(48, 64), (80, 56)]):  # both letterbox directions
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "ds" / "images" / f"{i}.jpg")
        (root / "ds" / "labels" / f"{i}.txt").write_text("1 0.5 0.5 0.3 0.4\n")
    (root / "r.yaml").write_text(TINY_E2E_SPEC.format(ds=root / "ds"))
    code = main(["--store", str(root / "store"), "--artifacts", str(root / "artifacts"), "run", str(root / "r.yaml"),
                 "--no-progress"])
    assert code == 0
    return root, (root / "artifacts" / "r" / "latest").resolve()
