"""Model code: one module per architecture family, reached through :data:`ARCHITECTURES`.

Each architecture module (``convert.models.yolo`` for the YOLOv5 repository's models,
``convert.models.ultralytics`` for ultralytics YOLOv8 / YOLO11, both built with the project's own
code; ``convert.models.mmyolo``, built by mmyolo from its configs) provides two functions the ``load`` pass and
:mod:`convert.torchmodel` dispatch to:

* ``load(request: ModelRequest) -> (module, recipe)``: a model from an architecture and/or a
  checkpoint (read without running pickled code); ``recipe`` is the JSON that rebuilds it;
* ``from_recipe(recipe) -> module``: the untrained module a recipe describes.

Its models expose ``truncate_head()`` and ``head_meta()`` (a head of a family in
:mod:`convert.heads`). This module stays light (no torch import) so ``convert validate`` can
list the sources.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ARCHITECTURES: dict[str, str] = {
    "yolov5": "convert.models.yolo",
    "ultralytics": "convert.models.ultralytics",
    "mmyolo": "convert.models.mmyolo",
}
"""``load`` source name -> architecture module."""


@dataclass(frozen=True)
class ModelRequest:
    """What the ``load`` pass asks an architecture module for.

    Attributes:
        arch: Built-in architecture name or model-YAML path (mmyolo: config name or file); None: the
            checkpoint's own.
        weights: Checkpoint or state-dict file; None: random weights (seeded).
        nc: Number of classes; None: the checkpoint's or the architecture's.
        names: Class names; None: the checkpoint's, else generated.
        seed: Seed of the initial weights.
        builder: ``own`` (this project's modules) or the name of the upstream package that builds
            the same architecture (``ultralytics``).
    """

    arch: str | Path | None = None
    weights: Path | None = None
    nc: int | None = None
    names: tuple[str, ...] | None = None
    seed: int = 0
    builder: str = "own"


def architecture(source: str) -> ModuleType:
    """The architecture module of a ``load`` source (``yolov5``, ``ultralytics``)."""
    return importlib.import_module(ARCHITECTURES[source])
