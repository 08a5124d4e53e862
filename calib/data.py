"""Calibration data: where the images come from, which ones are used, how they become inputs.

A source is resolved into an ordered list of candidate images; a :class:`CalibrationSet` draws
a deterministic sample from it (``num`` images, ``seed``), loads each image with
:func:`convert.preprocess.load_image` (EXIF orientation, grayscale, palette, CMYK, RGBA and
16-bit images are converted to 8-bit RGB) and turns it into a network input with the model's
own recorded preprocessing (:func:`convert.preprocess.preprocess`), so calibration sees exactly
what inference sees. An image that cannot be read is skipped and counted, or is an error,
as ``on_bad_image`` says; a skipped image is replaced by the next candidate in the sampled order.

Sources (``kind``):
    ``folder``: every image under a directory (recursive).
    ``list``: a text file with one image path per line (relative to the file's directory;
        blank lines and ``#`` comments ignored), as YOLO datasets use.
    ``yolo``: a YOLO dataset directory (``images/`` and ``labels/``; ``images/<split>`` when it
        exists) or its dataset YAML (``path``, ``train``, ``val``, ``test``: directories, list
        files or lists of them).
    ``coco``: a COCO annotation JSON; images are looked up in ``images`` or next to the file.
    ``builtin``: the photos shipped with scikit-image (:mod:`calib.builtin`).
    ``auto`` picks one from the path: none -> builtin, a directory with ``images/`` -> yolo,
        other directories -> folder, ``.yaml`` -> yolo, ``.json`` -> coco, an image -> that
        image alone, anything else -> list.

The digest of a calibration set is the sha256 of the content digests of the images actually
used, in order: it changes when an image's bytes change, not when the dataset moves.

The same vocabulary describes every pass's images (:class:`DataSource`: ``data``, ``source``,
``split``, ``images``, ``num``, ``seed``; :class:`LabelledSource` adds ``labels``): calibrate
and its ``auto`` scoring, evaluate, compare, and the calibration images of tensorrt and openvino.
A source described by a file (list, dataset YAML, COCO JSON) is resolved once per process
(:func:`resolve_source` is memoised on the file's identity and modification time), so the
validator, ``key_files`` and ``run`` of a stage, and the stages sharing it, parse it once.
"""

from __future__ import annotations

import hashlib
import io
import json
import queue
import random
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import Field, model_serializer

from convert.base import InputPath, PassConfig
from convert.errors import BackendMissing, ConvertError
from convert.preprocess import IMAGE_SUFFIXES, list_images, load_image, preprocess

SourceKind = Literal["auto", "folder", "list", "yolo", "coco", "builtin"]
SOURCE_KINDS = get_args(SourceKind)
BAD_IMAGE_POLICIES = ("skip", "error")


@dataclass(frozen=True)
class Candidate:
    """One image that may be drawn: a file, or a built-in image by name.

    Attributes:
        name: How the image is reported (path relative to the source, or the built-in name).
        path: The file, or None for a built-in image.
    """

    name: str
    path: Path | None = None

    def load(self) -> tuple[np.ndarray, str, bytes | None]:
        """Returns (HxWx3 uint8 RGB image, sha256 of its content, the file's bytes or None if built in).

        Raises:
            ConvertError: The file is missing or cannot be decoded.
        """
        if self.path is None:
            from calib.builtin import load_builtin

            img = load_builtin(self.name)
            return img, hashlib.sha256(img.tobytes()).hexdigest(), None
        if self.path.exists() and not self.path.is_file():  # a FIFO would hang, /dev/zero never end
            raise ConvertError(f"image {self.name}: {self.path} is not a regular file (a folder, FIFO or device).",
                               hint="remove it from the calibration data.")
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise ConvertError(f"image {self.name}: cannot be read ({e.strerror or e}).",
                               hint="remove it from the calibration data.") from None
        return load_image(io.BytesIO(raw)), hashlib.sha256(raw).hexdigest(), raw


@dataclass(frozen=True)
class Source:
    """A resolved calibration source.

    Attributes:
        kind: The source kind (never ``auto``).
        location: The path given (or ``builtin``).
        candidates: Images that may be drawn, sorted by name.
        root: The folder candidate names are relative to (for a COCO source, the folder its
            ``file_name`` entries are relative to); None for the built-in set.
    """

    kind: str
    location: str
    candidates: tuple[Candidate, ...]
    root: Path | None = None


def check_source(data: str | Path | None, kind: str = "auto", split: str = "train",
                 images: str | Path | None = None, key: str = "data") -> None:
    """For a pass config's validator: :func:`resolve_source`, its error raised as a ``ValueError``.

    Pydantic reports a ``ValueError`` with the stage's key path, so a wrong calibration source
    fails ``convert validate`` rather than the run.
    """
    try:
        resolve_source(data, kind, split, images)
    except ConvertError as e:
        raise ValueError(f"{key}: {e.message}{' ' + e.hint if e.hint else ''}") from None


class DataSource(PassConfig):
    """Where a pass's images come from and which of them it uses (the module docstring tells the kinds).

    Passes embed it (flat, or as a block such as tensorrt's ``calib``) so every pass says the
    same thing the same way; the pass decides the order (calibration: the drawn order;
    evaluation and comparison: path order).
    """

    data: InputPath | None = Field(None, description="images: a folder (searched recursively), a list file, a "
                                   "YOLO dataset (directory or dataset YAML), a COCO annotation JSON, or one image; "
                                   "null: the built-in sample photos (scikit-image's)")
    source: SourceKind = Field("auto", description="kind of `data` (auto: guessed from the path)")
    split: str = Field("train", min_length=1, description="split of a YOLO dataset (YAML key or images/<split>)")
    images: InputPath | None = Field(None, description="image folder of a COCO annotation file given as `data` "
                                     "(default: searched next to it)")
    num: int | None = Field(None, ge=1, description="number of images used, drawn in a seeded random order "
                            "(null: all of them)")
    seed: int = Field(0, description="seed of the draw")

    def resolve(self) -> Source:
        """The candidate images (memoised, see :func:`resolve_source`).

        Raises:
            ConvertError: The source is missing, of the wrong kind, or holds no image.
        """
        return resolve_source(self.data, self.source, self.split, self.images)

    def check(self, key: str = "data") -> None:
        """For a config validator: :meth:`resolve`, its error raised as a ``ValueError`` naming ``key``."""
        check_source(self.data, self.source, self.split, self.images, key=key)

    def drawn(self, seed: int | None = None) -> list[Candidate]:
        """The images used: ``num`` of them drawn with ``seed`` (default: :attr:`seed`), in path order."""
        return sorted(draw(self.resolve().candidates, self.num, self.seed if seed is None else seed),
                      key=lambda c: c.name)

    def files(self) -> list[Path]:
        """Every candidate image file (for ``key_files``: a list file or dataset YAML names them)."""
        return [c.path for c in self.resolve().candidates if c.path is not None]

    def named_files(self, candidates: list[Candidate]) -> list[Path]:
        """For ``key_files``: the files of ``candidates`` when a file (list, dataset YAML, COCO JSON) names
        them; none when ``data`` is a folder, which is keyed whole as a config path."""
        if self.data is None or Path(self.data).is_dir():
            return []
        return [c.path for c in candidates if c.path is not None]


def moved_into(block: str, renames: dict[str, str]) -> dict[str, str]:
    """:attr:`convert.base.PassConfig.replaced` entries for parameters that became fields of a
    :class:`DataSource` block of a pass config (old name -> field)."""
    fields = ", ".join(DataSource.model_fields)
    return {old: f"{block}.{new}, in the {block} block ({block}: {{{fields}}}, as the calibrate pass takes them)"
            for old, new in renames.items()}


class LabelledSource(DataSource):
    """A :class:`DataSource` whose images carry ground truth: a COCO source its annotations, any other
    YOLO labels (by convention, or under ``labels``)."""

    labels: InputPath | None = Field(None, description="folder of YOLO labels mirroring the images' paths under "
                                     "`data`; default: the YOLO convention (the last images/ of each path becomes "
                                     "labels/); a COCO source brings its own annotations")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # Left out when unset: the calibrate stages keyed before `labels` existed keep their keys.
        out = handler(self)
        if self.labels is None and isinstance(out, dict):
            out.pop("labels", None)
        return out

    def label_files(self, paths: list[Path]) -> list[Path]:
        """For ``key_files``: the YOLO label files of ``paths`` found by convention, which may lie outside
        ``data`` (none for a COCO source or a given ``labels`` folder: both are keyed config paths)."""
        from convert.evaluation import yolo_label_path

        if self.labels is not None or self.resolve().kind == "coco":
            return []
        return [yolo_label_path(p, None, None) for p in paths]

    def dataset(self, paths: list[Path], names: list[str], nk: int):
        """The labelled dataset of the image files ``paths`` (candidates of this source), in that order.

        Returns:
            A :class:`convert.evaluation.Dataset`.

        Raises:
            ConvertError: A COCO file with another keypoint count than the model's, or YOLO images
                of which none has a label file.
        """
        from convert.evaluation import load_coco, yolo_dataset

        source = self.resolve()
        if source.kind != "coco":
            return yolo_dataset(paths, names, nk, Path(self.labels) if self.labels is not None else None,
                                source.root)
        ds = load_coco(source.location, source.root, names, content=coco_json(Path(source.location)))
        if ds.nk != nk:
            raise ConvertError(f"the model predicts {nk} keypoints but {source.location} has {ds.nk}.",
                               hint="score on the annotation file of the model's dataset.")
        order = {p.resolve(): i for i, p in enumerate(paths)}
        kept = sorted((i for i, im in enumerate(ds.images) if im.path.resolve() in order),
                      key=lambda i: order[ds.images[i].path.resolve()])
        return ds.subset(kept)


_RESOLVED: dict[tuple, Source] = {}


def _identity(path: Path) -> tuple:
    """What says a file is unchanged within a process: where it is, its inode, size and mtime, and for a
    small file its content (a rewrite within the clock's granularity keeps the mtime)."""
    st = path.stat()
    small = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and st.st_size <= 1 << 20 else None
    return str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, small


def resolve_source(data: str | Path | None, kind: str = "auto", split: str = "train",
                   images: str | Path | None = None) -> Source:
    """:func:`find_source`, memoised for sources described by a file (list, dataset YAML, COCO JSON).

    The memo is keyed by the file's identity and modification time, so an edited file is read
    again; a folder is listed at every call (cheap, and its content has no single mtime).
    """
    path = Path(data) if data is not None else None
    if path is None or kind not in SOURCE_KINDS or not path.is_file():
        return find_source(data, kind, split, images)
    key = (kind, split, _identity(path), str(Path(images).resolve()) if images is not None else None)
    if key not in _RESOLVED:
        _RESOLVED[key] = find_source(data, kind, split, images)
    return _RESOLVED[key]


def find_source(data: str | Path | None, kind: str = "auto", split: str = "train",
                images: str | Path | None = None) -> Source:
    """Finds the candidate images of a source (see the module docstring).

    Args:
        data: A directory, list file, dataset YAML or COCO JSON; None for the built-in set.
        kind: One of :data:`SOURCE_KINDS`.
        split: Split of a YOLO dataset (YAML key, or ``images/<split>`` folder).
        images: Image folder of a COCO annotation file (default: searched next to it).

    Raises:
        ConvertError: The source is missing, of the wrong kind, or holds no image.
    """
    if kind not in SOURCE_KINDS:
        raise ConvertError(f"unknown source kind {kind!r}.", hint=f"use one of {', '.join(SOURCE_KINDS)}.")
    if data is None:
        if images is not None:
            raise ConvertError(f"images ({images}) is the image folder of a COCO annotation file given as data, "
                               "and data is null.", hint="give a folder of images (or a COCO JSON) as data.")
        if kind not in ("auto", "builtin"):
            raise ConvertError(f"source kind {kind!r} needs a path in 'data'.",
                               hint="give the data path, or leave data null for the built-in set.")
        from calib.builtin import BUILTIN_IMAGES

        return Source("builtin", "builtin", tuple(Candidate(n) for n in BUILTIN_IMAGES))
    if kind == "builtin":
        raise ConvertError("source kind 'builtin' takes no data path.", hint="set data to null.")
    path = Path(data)
    if not path.exists():
        raise ConvertError(f"data {str(path)!r} not found.",
                           hint="check the path (relative to the current directory).")
    if kind == "auto":
        kind = _guess_kind(path)
    if images is not None and kind != "coco":
        raise ConvertError(f"images ({images}) is the image folder of a COCO annotation file, and {path} is a "
                           f"{kind} source.", hint="give a folder of images as data, or a COCO JSON as data with "
                           "its image folder as images.")
    if kind == "folder":
        if not path.is_dir():
            raise ConvertError(f"data {path}: kind 'folder' needs a directory.")
        files, root = list_images(path), path
    elif kind == "list":
        files, root = _read_list(path), path.parent
    elif kind == "yolo":
        files, root = _yolo_files(path, split), path if path.is_dir() else path.parent
    else:
        files, root = _coco_files(path, images)
    cands = _from_files(files, root)
    if not cands:
        raise ConvertError(f"data {path} ({kind}) holds no image.",
                           hint=f"image files end in {', '.join(IMAGE_SUFFIXES)}.")
    return Source(kind, str(path), cands, root)


def _guess_kind(path: Path) -> str:
    if path.is_dir():
        return "yolo" if (path / "images").is_dir() else "folder"
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yolo"
    if suffix == ".json":
        return "coco"
    return "list"  # an image file reads as a one-line list, see _read_list


def _from_files(files: list[Path], root: Path) -> tuple[Candidate, ...]:
    out = {}
    for f in files:
        try:
            name = f.relative_to(root).as_posix()
        except ValueError:
            name = f.as_posix()
        out[name] = Candidate(name, f)
    return tuple(out[k] for k in sorted(out))


MAX_TEXT_BYTES = 256 << 20  # a list, dataset YAML or COCO JSON larger than this is not one


def read_text(path: Path, what: str) -> str:
    """A data description file's text; devices, FIFOs and oversized files are refused up front.

    Raises:
        ConvertError: Not a regular file, too large, unreadable or not text.
    """
    if not path.is_file():  # /dev/zero would never end, a FIFO would hang
        raise ConvertError(f"{what} {path} is not a regular file (a folder, FIFO or device).",
                           hint="point it at a list file, a dataset YAML or a COCO JSON.")
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise ConvertError(f"{what} {path} is {size >> 20} MiB, too large for a data description.",
                           hint="a list file names images, one per line; point at the folder of images instead.")
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise ConvertError(f"{what} {path} is not a text file.",
                           hint="a list file has one image path per line.") from None


def _read_list(path: Path) -> list[Path]:
    """Paths of a list file (or of one image given directly)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [path]
    if path.is_dir():
        raise ConvertError(f"data {path}: kind 'list' needs a text file, found a directory.")
    text = read_text(path, "image list")
    files = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            p = Path(line)
            files.append(p if p.is_absolute() else path.parent / p)
    return files


def _yolo_files(path: Path, split: str) -> list[Path]:
    """Images of a YOLO dataset directory or dataset YAML, for one split."""
    if path.is_dir():
        base = path / "images"
        if not base.is_dir():
            raise ConvertError(f"data {path}: a YOLO dataset directory needs an images/ folder.")
        return list_images(base / split if (base / split).is_dir() else base)
    import yaml

    try:
        spec = yaml.safe_load(read_text(path, "dataset YAML"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConvertError(f"dataset YAML {path}: malformed ({str(e).splitlines()[0]}).") from None
    if not isinstance(spec, dict):
        raise ConvertError(f"dataset YAML {path}: expected a mapping with path/train/val keys.")
    if spec.get(split) is None:
        present = [k for k in ("train", "val", "test") if spec.get(k)]
        raise ConvertError(f"dataset YAML {path}: no {split!r} split.",
                           hint=f"set split to one of: {', '.join(present) or 'none present'}.")
    root = Path(spec["path"]) if spec.get("path") else path.parent
    if not root.is_absolute():
        root = path.parent / root
    entries = spec[split] if isinstance(spec[split], list) else [spec[split]]
    files: list[Path] = []
    for e in entries:
        p = Path(str(e))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            files += list_images(p)
        elif p.is_file():
            files += _read_list(p)
        else:
            raise ConvertError(f"dataset YAML {path}: {split} entry {str(e)!r} not found (looked at {p}).",
                               hint="paths are relative to the YAML's 'path' key, itself relative to the YAML.")
    return files


_COCO: dict[tuple, Any] = {}


def coco_json(path: Path) -> Any:
    """A COCO annotation file's content, parsed once per process (memoised like :func:`resolve_source`).

    Callers must not modify it.

    Raises:
        ConvertError: Not a regular file, too large, or not JSON.
    """
    key = _identity(path) if path.is_file() else None  # anything else is refused by read_text, unread
    if key is None or key not in _COCO:
        try:
            _COCO[key] = json.loads(read_text(path, "COCO annotation file"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConvertError(f"COCO annotation file {path}: not valid JSON ({e}).") from None
    return _COCO[key]


def _coco_files(path: Path, images: str | Path | None) -> tuple[list[Path], Path]:
    """Images named by a COCO annotation file, and the folder they are in."""
    if path.is_dir():
        raise ConvertError(f"data {path}: kind 'coco' needs an annotation JSON file.")
    ann = coco_json(path)
    entries = ann.get("images") if isinstance(ann, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "file_name" in e for e in entries):
        raise ConvertError(f"COCO annotation file {path}: no 'images' list with file_name entries.")
    names = [str(e["file_name"]) for e in entries]
    if not names:
        return [], path.parent
    if images is not None:
        root = Path(images)
    else:
        split = path.stem.split("_")[-1]  # instances_val2017.json -> val2017
        tried = [path.parent, path.parent / split, path.parent.parent / split,
                 path.parent.parent / "images" / split, path.parent.parent / "images"]
        root = next((d for d in tried if (d / names[0]).is_file()), None)
        if root is None:
            raise ConvertError(f"COCO annotation file {path}: cannot find its images "
                               f"(looked for {names[0]} in {', '.join(str(d) for d in tried)}).",
                               hint="set the 'images' parameter to the image folder.")
    return [root / n for n in names], root


@dataclass(frozen=True)
class Sample:
    """One image used for calibration.

    Attributes:
        name: As reported (see :class:`Candidate`).
        digest: sha256 of the file's bytes (of the pixels for a built-in image).
        image: HxWx3 uint8 RGB.
        raw: The file's bytes, None for a built-in image.
    """

    name: str
    digest: str
    image: np.ndarray = field(repr=False)
    raw: bytes | None = field(default=None, repr=False)

    def save(self, stem: Path) -> Path:
        """Writes the image losslessly as ``stem`` + suffix: the file's own bytes, or a PNG."""
        if self.raw is not None:
            path = stem.with_suffix(Path(self.name).suffix.lower() or ".img")
            path.write_bytes(self.raw)
        else:
            from PIL import Image

            path = stem.with_suffix(".png")
            Image.fromarray(self.image).save(path)
        return path


class CalibrationSet:
    """A deterministic sample of a source, loaded lazily, skipping bad images as configured.

    Args:
        source: The resolved source.
        num: How many images to use (all of them if the source has fewer).
        seed: Seed of the sampling order.
        on_bad_image: ``skip`` (count it and draw the next candidate) or ``error``.

    Attributes:
        used: (name, digest) of the images used so far, in order.
        skipped: (name, reason) of the images skipped so far.
    """

    def __init__(self, source: Source, num: int, seed: int = 0, on_bad_image: str = "skip"):
        if num < 1:
            raise ConvertError(f"the number of calibration images must be at least 1, found {num}.")
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConvertError(f"on_bad_image: unknown policy {on_bad_image!r}.", hint="use skip or error.")
        self.source = source
        self.num = num
        self.seed = seed
        self.on_bad_image = on_bad_image
        self.order = draw(source.candidates, None, seed)
        self.used: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []

    @property
    def expected(self) -> int:
        """How many images the set will yield if none is bad."""
        return min(self.num, len(self.order))

    def samples(self) -> Iterator[Sample]:
        """Yields up to ``num`` readable images in sampling order.

        Raises:
            ConvertError: An image is bad and ``on_bad_image`` is ``error``, or no image is readable.
        """
        self.used, self.skipped = [], []
        for cand in self.order:
            if len(self.used) == self.num:
                break
            try:
                img, digest, raw = cand.load()
            except BackendMissing:
                raise
            except ConvertError as e:
                if self.on_bad_image == "error":
                    raise ConvertError(f"calibration image {cand.name}: {_reason(e)}",
                                       hint="fix or remove it, or set on_bad_image: skip.") from None
                self.skipped.append((cand.name, _reason(e)))
                continue
            self.used.append((cand.name, digest))
            yield Sample(cand.name, digest, img, raw)
        if not self.used:
            first = f" (first: {self.skipped[0][0]}: {self.skipped[0][1]})" if self.skipped else ""
            raise ConvertError(f"calibration data {self.source.location}: none of the {len(self.order)} "
                               f"candidate images could be read{first}.", hint="check the image files.")

    def digest(self) -> str:
        """sha256 of the content digests of the images used, in order (call after iterating)."""
        return hashlib.sha256("\n".join(d for _, d in self.used).encode()).hexdigest()

    def record(self) -> dict[str, Any]:
        """What to keep of the set in an artifact: source, digest, files used and skipped."""
        return {"source": self.source.kind, "location": self.source.location, "digest": self.digest(),
                "num_candidates": len(self.order), "seed": self.seed, "num_samples": len(self.used),
                "files": [{"name": n, "sha256": d} for n, d in self.used],
                "skipped": [{"name": n, "reason": r} for n, r in self.skipped]}


def draw(candidates, num: int | None, seed: int) -> list:
    """The sampling rule of every source: ``candidates`` in a seeded random order, the first ``num``
    (all with None). Calibration uses them in this order; evaluation and comparison in path order."""
    order = list(candidates)
    random.Random(seed).shuffle(order)
    return order[:num]


def _reason(e: ConvertError) -> str:
    msg = e.message
    return msg.split(": ", 1)[1] if msg.startswith("image ") and ": " in msg else msg


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """What ``items`` yields, in order, computed up to ``depth`` items ahead in a thread.

    Images are read, decoded and letterboxed (OpenCV, NumPy: the GIL released) while ONNX Runtime
    runs the previous one, whose two threads leave the cores idle between kernels. An exception of
    ``items`` is raised where it would have been; a consumer that stops early stops the thread.
    """
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for x in items:
                if not put((x, None)):
                    return
            put((end, None))
        except BaseException as e:  # handed over to the consumer
            put((end, e))

    threading.Thread(target=produce, daemon=True, name="prefetch").start()
    try:
        while True:
            x, error = ready.get()
            if x is end:
                if error is not None:
                    raise error
                return
            yield x
    finally:
        stop.set()


def batches(samples: Iterator[Sample], pp: dict[str, Any], batch_size: int) -> Iterator[np.ndarray]:
    """Preprocesses samples and groups them into batches.

    Consecutive inputs of the same shape share a batch; with ``minimal_pad`` letterboxing
    shapes differ, and a batch is cut short where the shape changes.

    Args:
        samples: Images to preprocess.
        pp: The model's preprocessing (``meta["preprocess"]``).
        batch_size: Largest batch.

    Yields:
        float32 arrays [n, ...] in the model's layout.
    """
    pending: list[np.ndarray] = []
    for s in samples:
        x, _ = preprocess(s.image, pp)
        if pending and (len(pending) == batch_size or pending[0].shape != x.shape):
            yield np.concatenate(pending)
            pending = []
        pending.append(x)
    if pending:
        yield np.concatenate(pending)


@dataclass(frozen=True)
class ModelInput:
    """The image input of an ONNX model.

    Attributes:
        name: Input name.
        shape: Dimensions, None where dynamic.
    """

    name: str
    shape: tuple[int | None, ...]


def model_input(model_path: str | Path) -> ModelInput:
    """Reads the single image input of an ONNX model.

    Raises:
        ConvertError: The model has no input, several, or one that is not a float 4-D tensor.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ConvertError(f"{model_path}: calibration needs a model with one image input, found "
                           f"{len(inputs)} ({', '.join(i.name for i in inputs) or 'none'}).")
    t = inputs[0].type.tensor_type
    if t.elem_type != onnx.TensorProto.FLOAT or len(t.shape.dim) != 4:
        raise ConvertError(f"{model_path}: input {inputs[0].name!r} is not a 4-D float32 tensor.",
                           hint="calibrate the float32 model, before any fp16 conversion.")
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)
    return ModelInput(inputs[0].name, shape)


def resolve_preprocess(recorded: dict[str, Any] | None, overrides: dict[str, Any] | None,
                       inp: ModelInput, batch_size: int = 1) -> dict[str, Any]:
    """The preprocessing calibration uses, checked against the model's input.

    The model's recorded preprocessing wins; ``overrides`` are for models whose artifact
    records none (a hand-made ONNX). Without a recorded size, a static input size is used.

    Raises:
        ConvertError: The input's channels, size or batch do not fit the preprocessing.
    """
    from convert.preprocess import DEFAULT_PREPROCESS

    pp = {**DEFAULT_PREPROCESS, **(recorded or {}), **(overrides or {})}
    c_axis, hw_axes = (1, (2, 3)) if pp["layout"] == "NCHW" else (3, (1, 2))
    n, c = inp.shape[0], inp.shape[c_axis]
    hw = tuple(inp.shape[a] for a in hw_axes)
    if c is not None and c != 3:
        raise ConvertError(f"model input {inp.name!r} has {c} channels ({pp['layout']} shape {list(inp.shape)}), "
                           "but calibration images are RGB with 3.",
                           hint="check the model's layout (preprocess.layout) or give a 3-channel model.")
    if not (recorded or {}).get("size") and not (overrides or {}).get("size") and None not in hw:
        pp["size"] = list(hw)
    if None not in hw and not pp["minimal_pad"] and list(hw) != list(pp["size"]):
        raise ConvertError(f"model input {inp.name!r} is {hw[0]}x{hw[1]} but the preprocessing makes "
                           f"{pp['size'][0]}x{pp['size'][1]} images.",
                           hint="the model's recorded preprocessing does not match its input; re-export it.")
    if n is not None and n != batch_size:
        raise ConvertError(f"model input {inp.name!r} has a fixed batch of {n}, calibration batch_size is "
                           f"{batch_size}.",
                           hint=f"set batch_size: {n}, or export the model with a dynamic batch.")
    if pp["minimal_pad"] and None not in hw:
        raise ConvertError(f"preprocess.minimal_pad makes images of varying size, but model input {inp.name!r} "
                           f"is fixed at {hw[0]}x{hw[1]}.", hint="export with dynamic height and width.")
    return pp


def check_feed(session, meta: dict, seed: int = 0, batch: int | None = None) -> tuple[dict, str]:
    """The input that conversions are checked on: sample photos, else seeded noise.

    Photos make a detector detect, so an end-to-end model (NMS in the graph) is compared on
    actual detections, where uniform noise detects nothing. The photos are the built-in
    calibration set (:mod:`calib.builtin`), preprocessed as the model's metadata says. Seeded
    uniform [0,1) noise of the model's input size is used where scikit-image (which ships the
    photos) is missing, or the model does not take one image.

    Args:
        session: An ONNX Runtime session of the reference model (for input names, shapes, types).
        meta: The model's metadata (``preprocess``).
        seed: Seed of the photo sample, or of the noise.
        batch: Batch size for a dynamic batch dimension (default 2; a static one is kept).

    Returns:
        (input name -> array, ``"photos"`` or ``"random"``).
    """
    from convert.errors import BackendMissing
    from convert.onnxutil import random_feed

    inputs = session.get_inputs()
    pp = meta.get("preprocess")
    if len(inputs) == 1 and pp and len(inputs[0].shape) == 4:
        n = inputs[0].shape[0] if isinstance(inputs[0].shape[0], int) else batch or 2
        dtype = np.float16 if "float16" in inputs[0].type else np.float32
        try:
            photos = CalibrationSet(resolve_source(None), n, seed)
            x = next(batches(photos.samples(), pp, n))
        except BackendMissing:
            x = None
        if x is not None and len(x) == n:
            return {inputs[0].name: x.astype(dtype)}, "photos"
    size = (pp or {}).get("size")
    return random_feed(session, seed=seed, batch=batch or 1, size=tuple(size) if size else None), "random"
