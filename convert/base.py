"""What a pass is: a small class with a typed config and one ``run`` method.

A pass declares its name, version, config schema, the artifact kinds it accepts per input
role, the kind it produces and the tools whose versions shape its output. The manager
(:mod:`convert.manager`) binds inputs, computes the cache key, runs the pass into a
temporary directory and checks the returned :class:`PassResult` against the declaration.

Pass modules must stay light to import: heavy backends (torch, openvino, tensorrt) are
imported inside ``run`` so that ``convert validate`` and cached runs never load them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

ARTIFACT_JSON = "artifact.json"


class InputFile:
    """Marks a config field as a file or directory the pass reads.

    The manager checks it exists before anything runs and puts its content digest (not its
    path) into the cache key, so moving a file does not rebuild and editing one does.
    """


InputPath = Annotated[Path, InputFile()]
"""A path whose content is part of the cache key (see :class:`InputFile`)."""


class PassConfig(BaseModel):
    """Base of every pass config: unknown keys are rejected, every field is described.

    ``replaced`` names parameters a config no longer has and what took their place: a spec still
    using one fails with that said (``convert validate`` reports it as a one-line error).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    replaced: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, values):
        if cls.replaced and isinstance(values, dict):
            old = next((k for k in values if k in cls.replaced), None)
            if old is not None:
                raise PydanticCustomError("replaced", "{key} was replaced: {by}", {"key": old, "by": cls.replaced[old]})
        return values


@dataclass(frozen=True)
class Input:
    """One input role of a pass.

    Attributes:
        kinds: Artifact kinds accepted for this role.
        required: Whether the role must be bound.
        many: Whether the role takes a list of artifacts.
        doc: What the role is for (shown by ``convert passes show``).
    """

    kinds: tuple[str, ...]
    required: bool = True
    many: bool = False
    doc: str = ""


@dataclass
class Artifact:
    """A stored pass output: a directory of files plus its kind and metadata.

    Attributes:
        kind: ``torch``, ``onnx``, ``calib_table``, ``openvino``, ``tensorrt``, ``metrics``...
        path: The directory holding the files.
        main: Name of the main file inside ``path`` (e.g. ``model.onnx``).
        meta: JSON metadata carried to later passes (head, preprocessing, names...).
        digest: sha256 of the directory's content.
    """

    kind: str
    path: Path
    main: str
    meta: dict[str, Any]
    digest: str

    @property
    def file(self) -> Path:
        """Path of the main file."""
        return self.path / self.main

    @classmethod
    def open(cls, path: Path, digest: str) -> Artifact:
        """Reads an artifact directory written by the manager."""
        rec = json.loads((path / ARTIFACT_JSON).read_text())
        return cls(kind=rec["kind"], path=path, main=rec["main"], meta=rec["meta"], digest=digest)


@dataclass
class PassResult:
    """What ``Pass.run`` returns.

    Attributes:
        kind: Kind of the artifact written (must equal the pass's ``output``).
        main: Main file written into the output directory.
        meta: Metadata for later passes; usually the input's meta updated.
        summary: Small JSON figures shown by ``convert run`` and kept in the manifest.
        gate_failures: Messages of failed accuracy gates; a non-empty list fails the run
            after the artifact is stored, so the figures stay inspectable.
    """

    kind: str
    main: str
    meta: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    gate_failures: list[str] = field(default_factory=list)


@dataclass
class RunContext:
    """What a running pass may know about its surroundings.

    Attributes:
        stage: Name of the stage being run.
        progress: Whether progress bars are wanted.
    """

    stage: str
    progress: bool = True

    def bar(self, iterable=None, total: int | None = None, desc: str = ""):
        """A progress bar on stderr named after the stage, silent when progress is off
        (:func:`convert.progress.bar`)."""
        from convert.progress import bar

        return bar(iterable, total, f"{self.stage}: {desc}".rstrip(": "), self.progress)


class Pass:
    """Base class of passes.

    Subclasses set the class attributes and implement :meth:`run`. Bump ``version`` whenever
    a change to the code changes the bytes a pass writes: it is part of the cache key.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    Config: ClassVar[type[PassConfig]] = PassConfig
    inputs: ClassVar[dict[str, Input]] = {}
    output: ClassVar[str]
    tools: ClassVar[tuple[str, ...]] = ()
    """Distributions whose versions shape the output (part of the cache key)."""
    requires: ClassVar[tuple[str, ...]] = ()
    """Importable modules the pass needs; a missing one makes the stage fail, or skip if optional."""
    machine_dependent: ClassVar[bool] = False
    """The output depends on the machine (timings, engines built for its GPU): the machine's identity
    joins the key, and ``--frozen`` checks the key but not the bytes."""

    def __init__(self, config: PassConfig):
        self.config = config

    @classmethod
    def output_kind(cls, config: PassConfig) -> str:
        """The kind this pass produces with ``config`` (``output`` unless the config decides it)."""
        return cls.output

    @classmethod
    def key_files(cls, config: PassConfig) -> list[Path]:
        """Files the pass reads that its config names only indirectly, e.g. the images a list
        file or dataset YAML points to, or the YOLO labels beside an image folder.

        Their content digests (in the order returned) join the cache key, so editing one
        re-runs the stage. A file that does not exist is keyed as missing, not an error: the
        pass decides what a missing file means. Keep it cheap: it runs at every plan.
        """
        return []

    @classmethod
    def runs_code(cls, config: PassConfig) -> str | None:
        """What code named by the spec the stage would import or load (a Python factory, a shared
        library), or None. Such a stage runs only with ``--trust-code``: a shared spec must not be
        able to run code on the machine of whoever runs it."""
        return None

    def run(self, inputs: dict[str, Any], out: Path, ctx: RunContext) -> PassResult:
        """Runs the pass.

        Args:
            inputs: Role → :class:`Artifact` (or list of them for ``many`` roles).
            out: Empty directory to write the output files into.
            ctx: Stage name and progress settings.

        Returns:
            The result describing what was written.
        """
        raise NotImplementedError
