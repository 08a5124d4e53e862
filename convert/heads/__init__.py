"""Head families: one module per family, each the single owner of its output layout.

A *head family* (``convert/heads/<family>.py``) defines a pydantic subclass of :class:`Head`,
the typed form of the ``meta["head"]`` dict that ``truncate_head`` records and every later
artifact carries, with:

* the layout schema (fields, validated when the metadata is read);
* :meth:`Head.decode`: host-side numpy decode of the raw maps into
  :class:`convert.postprocess.Candidates` (step 1 of :mod:`convert.postprocess`);
* :meth:`Head.decode_graph`: the same decode appended to an ONNX graph;
* :meth:`Head.decoded_candidates`: candidates from the model's *decoded* (not truncated)
  output, for evaluating untruncated models;
* :meth:`Head.torch_candidates`: the PyTorch reading of that decoded output, used by the
  PyTorch reference (:mod:`convert.heads.reference`) that tests and benchmarks check against.

The registry is discovered: every module of this package defining ``Head`` subclasses with a
``type`` literal registers those types, so adding a family is one module here plus its
architecture code under :mod:`convert.models`. Consumers never branch on the family name: they
call :func:`parse` and the methods of what it returns.
"""

from __future__ import annotations

import importlib
import pkgutil
import typing
from collections.abc import Sequence
from functools import cache
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from convert.errors import ConvertError


class Head(BaseModel):
    """Metadata of a detection head (``meta["head"]``); subclassed once per family.

    Attributes:
        type: The head type; each subclass narrows it to its own literal values.
        strides: Pixels per cell of each level.
        nc: Number of classes.
        nk: Keypoints per object (0: no keypoints).
        names: Class names.
        layout: Human-readable description of the maps and the decoded output.
        outputs: Names of the model's outputs (raw maps when truncated, in decode order).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    strides: list[float]
    nc: int
    nk: int = 0
    names: list[str] = []
    layout: str = ""
    outputs: list[str] = []

    family: ClassVar[str] = ""
    """Module (family) name, for messages."""

    @property
    def keypoints(self) -> bool:
        """Whether the head predicts keypoints."""
        return self.nk > 0

    def decode(self, maps: Sequence[np.ndarray]):
        """Raw per-level maps (in :attr:`outputs` order) -> :class:`convert.postprocess.Candidates`."""
        raise NotImplementedError

    def decode_graph(self, b, maps: Sequence[Any], score_threshold: float | None = None):
        """Appends the decode to a graph (:class:`convert.graph.builder.Builder`, ``gs.Variable`` maps)
        -> :class:`convert.graph.decode.GraphCandidates`.

        ``score_threshold``: the candidates may be reduced to those that can score above it (in
        their original order, so the detections do not change); a family that has no cheap bound
        on its scores decodes them all."""
        raise NotImplementedError

    def decoded_candidates(self, decoded: np.ndarray):
        """The model's decoded output -> :class:`convert.postprocess.Candidates`."""
        raise NotImplementedError

    def torch_candidates(self, decoded):
        """The model's decoded output (a torch tensor) -> torch ``(boxes [B,N,4] xyxy, scores [B,N,C],
        keypoints [B,N,nk,3] or None)``, written independently of the numpy code."""
        raise NotImplementedError

    def check_maps(self, shapes: Sequence[Sequence[Any]], what: str = "head output") -> None:
        """Checks the maps' count and channel counts against the metadata (unknown dims pass).

        Raises:
            ConvertError: A map count or a channel count does not match.
        """
        expected = self.map_channels()
        if len(shapes) != len(expected):
            raise ConvertError(f"{len(shapes)} {what}s for a {self.type!r} head of {len(self.strides)} levels, "
                               f"which has {len(expected)} raw maps ({', '.join(self.outputs) or '?'}).",
                               hint="the model's head metadata does not describe it; re-export it.")
        for i, (shape, ch) in enumerate(zip(shapes, expected)):
            if shape is not None and len(shape) == 4 and isinstance(shape[1], int) and shape[1] != ch:
                name = self.outputs[i] if i < len(self.outputs) else str(i)
                raise ConvertError(f"{what} {name!r} has {shape[1]} channels, but the {self.type!r} head metadata "
                                   f"says {ch}.", hint="check the head's nc/nk against the model.")

    def map_channels(self) -> list[int]:
        """Channel count of each raw map, in :attr:`outputs` order."""
        raise NotImplementedError


@cache
def registry() -> dict[str, type[Head]]:
    """Head type -> its :class:`Head` subclass, from every module of this package."""
    out: dict[str, type[Head]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            own = isinstance(obj, type) and obj.__module__ == module.__name__
            if own and issubclass(obj, Head) and obj is not Head:
                for t in typing.get_args(obj.model_fields["type"].annotation):
                    out[t] = obj
    return out


class XyxyScoresOutput:
    """The decoded layout ``[B, N, 4 + nc]`` (xyxy boxes, class scores), read the same way by every family
    whose end-to-end output has no keypoints and no objectness column (mmyolo's distance and YOLOX heads).
    Mixed into those :class:`Head` subclasses."""

    def decoded_candidates(self, decoded: np.ndarray):
        from convert.postprocess import Candidates

        d = np.asarray(decoded, dtype=np.float32)
        if d.ndim != 3 or d.shape[-1] != 4 + self.nc:
            raise ConvertError(f"decoded output has shape {list(d.shape)}, the {self.type!r} head says "
                               f"[B, N, 4+nc = {4 + self.nc}].")
        return Candidates(np.ascontiguousarray(d[..., :4]), np.ascontiguousarray(d[..., 4:]))

    def torch_candidates(self, decoded):
        d = decoded.detach().float().cpu()
        return d[..., :4], d[..., 4:], None

def types() -> list[str]:
    """The supported head types."""
    return list(registry())


def has_keypoints(head_type: str) -> bool:
    """Whether a head type predicts keypoints (its name ends in ``_pose``, the convention of every family)."""
    return head_type.endswith("_pose")


def parse(head: dict[str, Any] | Head | None) -> Head:
    """The typed head of a ``meta["head"]`` dict.

    Raises:
        ConvertError: No head metadata, an unsupported type, or fields that do not fit it.
    """
    if isinstance(head, Head):
        return head
    if not head or not isinstance(head, dict) or "type" not in head:
        raise ConvertError("the model has no head metadata (meta.head.type).",
                           hint="post-processing needs a model exported by this project (load -> truncate_head "
                           "-> export_onnx), whose metadata describes the head.")
    cls = registry().get(head["type"])
    if cls is None:
        raise ConvertError(f"head type {head['type']!r} is not supported.", hint=f"supported: {', '.join(types())}.")
    try:
        return cls.model_validate(head)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConvertError(f"head metadata ({head['type']}): {where}: {err['msg']}.",
                           hint="the artifact's metadata is damaged or from another version; re-export it.") from None


def decode(maps: Sequence[np.ndarray], head: dict[str, Any] | Head):
    """Step 1 of :mod:`convert.postprocess` for any supported head: :func:`parse`, then its family's decode."""
    return parse(head).decode(maps)


def postprocess(maps: Sequence[np.ndarray], head: dict[str, Any] | Head, settings, keypoints: bool | None = None):
    """Host-side post-processing of a truncated model's raw maps: every step of :mod:`convert.postprocess`.

    Step 1 is the head family's decode (:meth:`Head.decode`), steps 2-6 :func:`convert.postprocess.select`.

    Args:
        maps: Raw per-level maps, in the order of ``head["strides"]``.
        head: The model's head metadata (``meta["head"]``).
        settings: Thresholds and limits (:class:`convert.postprocess.NMSSettings`).
        keypoints: Whether to return keypoints; default: when the head has them.

    Returns:
        The padded :class:`convert.postprocess.Detections` in network-input pixels.
    """
    from dataclasses import replace

    from convert.postprocess import select

    cands = decode(maps, head)
    if keypoints is False:
        cands = replace(cands, keypoints=None)
    return select(cands, settings)
