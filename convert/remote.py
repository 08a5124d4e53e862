"""A shared remote cache for the store, through fsspec (S3, GCS, Azure, a folder, or read-only HTTP).

Layout under the remote URL (the same names as the local store, so a remote is readable by eye)::

    objects/<sha256>.tar   one pass output: a tar of its directory, named by the tree digest of its content
    cache/<key>.json       cache entry: pass key -> output digest, written only after its object is there
    versions/<spec>/<version>.json   a published version's manifest (``convert push VERSION``)

What makes it safe to share:

* Content addressing: a pulled object is unpacked into the store's staging area and its tree digest
  recomputed; an object whose digest does not match its name (tampered, truncated) is refused with a
  warning and the stage is rebuilt locally, and the rebuilt object replaces the bad one on push.
* Order: a key's entry is written after its object, each with one atomic write (an object store's
  PUT; a temporary name and a rename on a folder), so a push killed midway leaves at most an
  object nobody points to, never an entry another machine accepts.
* Concurrency: two machines pushing one key write the same object bytes (tars are deterministic)
  and equivalent entries; whichever lands last is as good as the other.
* Credentials: never part of the URL (refused) or of anything written; each backend reads its own
  (``AWS_*`` variables or ``~/.aws``, ``FSSPEC_S3_ENDPOINT_URL``, gcloud's or Azure's config).

fsspec and its backends (s3fs, gcsfs, adlfs, aiohttp) are imported only when a remote is used.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlsplit

from convert.errors import ConvertError

if TYPE_CHECKING:
    from convert.store import Store

READ_ONLY = ("http", "https")
KNOWN = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
         "abfss": "adlfs", "file": None, "local": None, "http": "aiohttp", "https": "aiohttp",
         "memory": None}
"""URL schemes and the package each needs (None: fsspec itself)."""
HEX64 = re.compile(r"[0-9a-f]{64}")
CONFIG_KEYS = {"remote": "remote cache URL", "push": "push what this machine builds (default true)"}
URL_HINT = ("use s3://BUCKET/PREFIX, gs://, az://, file:///PATH or https://HOST/PATH (read-only); credentials "
            "come from each backend's environment or config (AWS_ACCESS_KEY_ID..., ~/.aws), never the URL.")


def check_url(url: str, where: str) -> str:
    """Returns ``url`` if it names a usable remote, else raises a one-line error naming ``where``.

    A path without a scheme is a local folder (``file://``). A URL holding credentials
    (``s3://KEY:SECRET@bucket``) is refused: it would end up in specs, logs and shell histories.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConvertError(f"{where}: expected a remote URL, found {url!r}.", hint=URL_HINT)
    url = url.strip()
    last = url.split("::")[-1]  # fsspec chains (simplecache::s3://...) are read by the last URL's backend
    scheme = urlsplit(last).scheme.lower() if "://" in last else "file"
    if scheme not in KNOWN:
        raise ConvertError(f"{where}: unsupported remote URL scheme {scheme!r} in {_safe(url)!r}.", hint=URL_HINT)
    parts = urlsplit(last) if "://" in last else None
    if parts is not None and (parts.password or (parts.username and scheme not in ("file", "local"))):
        raise ConvertError(f"{where}: the remote URL holds credentials ({_safe(url)!r}).",
                           hint="remove them; each backend reads its own credentials from the environment or its "
                           "config files (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, gcloud, az).")
    if parts is not None and scheme in ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss") and not parts.netloc:
        raise ConvertError(f"{where}: remote URL {_safe(url)!r} names no bucket.", hint=URL_HINT)
    return url


def _safe(url: str) -> str:
    """``url`` with any user:password part masked (for messages)."""
    return re.sub(r"://[^/@]*@", "://***@", url)


def team_config(cwd: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """The team config file: ``$CONVERT_CONFIG``, else ``.convert/config.yaml`` in the working folder,
    else ``~/.config/convert/config.yaml``; keys ``remote`` and ``push``.

    Returns:
        (settings, the file read or None).
    """
    import yaml

    env = os.environ.get("CONVERT_CONFIG")
    candidates = [Path(env)] if env else [Path(cwd or ".") / ".convert" / "config.yaml",
                                          Path.home() / ".config" / "convert" / "config.yaml"]
    for path in candidates:
        if not path.is_file():
            if env:
                raise ConvertError(f"$CONVERT_CONFIG: file {env!r} not found.", hint="unset it or point it at a file.")
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConvertError(f"{path}: cannot be read as YAML: {str(e).splitlines()[0]}.") from None
        if not isinstance(data, dict):
            raise ConvertError(f"{path}: expected a mapping with keys {', '.join(CONFIG_KEYS)}.")
        unknown = sorted(set(data) - set(CONFIG_KEYS))
        if unknown:
            raise ConvertError(f"{path}: unknown key {unknown[0]!r}.",
                               hint="keys: " + "; ".join(f"{k}: {v}" for k, v in CONFIG_KEYS.items()) + ".")
        if "push" in data and not isinstance(data["push"], bool):
            raise ConvertError(f"{path}: push: expected true or false, found {data['push']!r}.")
        return data, path
    return {}, None


def resolve(cli_url: str | None, spec_url: str | None, no_push: bool = False) -> Remote | None:
    """The remote to use: ``--remote``, else ``$CONVERT_REMOTE``, else the spec's ``store.remote``, else
    the team config file's ``remote``; None when none is set (or the one that wins is ``none``)."""
    config, config_path = team_config()
    for url, where in ((cli_url, "--remote"), (os.environ.get("CONVERT_REMOTE"), "$CONVERT_REMOTE"),
                       (spec_url, "store.remote"), (config.get("remote"), f"{config_path}: remote")):
        if url:
            if url.strip().lower() == "none":
                return None
            push = not no_push and config.get("push", True)
            return Remote(check_url(url, where), push=push)
    return None


class Remote:
    """A remote cache at ``url``.

    Args:
        url: An fsspec URL (see :func:`check_url`).
        push: Whether builds are pushed (False for ``--no-push``); read-only schemes never push.
    """

    def __init__(self, url: str, push: bool = True):
        self.url = url.rstrip("/")
        last = url.split("::")[-1]
        self.scheme = urlsplit(last).scheme.lower() if "://" in last else "file"
        self.read_only = self.scheme in READ_ONLY
        self.push_enabled = push and not self.read_only
        self._fs = None
        self._root = ""
        self._bad: set[str] = set()  # digests found corrupt here: a push replaces them
        self._checked = False

    def __getstate__(self) -> dict[str, Any]:  # sent to Ray workers: they open their own connection
        return {**self.__dict__, "_fs": None, "_checked": False}

    def __repr__(self) -> str:
        return f"Remote({_safe(self.url)!r}{', read-only' if self.read_only else ''})"

    # -- connection ---------------------------------------------------------------------------
    @property
    def fs(self):
        if self._fs is None:
            try:
                import fsspec.core
            except ImportError:
                raise ConvertError(f"remote {_safe(self.url)}: fsspec is not installed.",
                                   hint='pip install "convert[remote]" (fsspec, s3fs).') from None
            try:
                self._fs, self._root = fsspec.core.url_to_fs(self.url)
            except ImportError as e:
                pkg = KNOWN.get(self.scheme) or str(e).split()[-1]
                raise ConvertError(f"remote {_safe(self.url)}: the {self.scheme}:// backend needs {pkg!r}, which "
                                   "is not installed.",
                                   hint=f'pip install {pkg} (s3: pip install "convert[remote]").') from None
            except (ValueError, TypeError) as e:
                raise ConvertError(f"remote {_safe(self.url)}: {e}.", hint=URL_HINT) from None
            self._root = self._root.rstrip("/")
        return self._fs

    def _path(self, *parts: str) -> str:
        self.fs  # noqa: B018 (connecting sets the root)
        if self.read_only:  # HTTPFileSystem takes full URLs
            return "/".join([self.url, *parts])
        return "/".join([self._root, *parts]) if self._root else "/".join(parts)

    @property
    def _local(self) -> bool:
        return "file" in _protocols(self.fs)

    def check(self) -> None:
        """Raises a one-line error if the remote cannot be reached or its bucket does not exist."""
        if self._checked:
            return
        fs = self.fs
        try:
            if self.read_only:  # a 404 is an answer; info() would hide a refused connection as one
                try:
                    fs.cat_file(self._path("cache", "0" * 64 + ".json"))
                except FileNotFoundError:
                    pass
            elif self._local:
                if not Path(self._root).is_dir() and not self.push_enabled:
                    raise FileNotFoundError(self._root)
            elif not fs.exists(self._root):
                bucket = self._root.split("/")[0]
                if not fs.exists(bucket):
                    raise ConvertError(f"remote {_safe(self.url)}: bucket {bucket!r} does not exist.",
                                       hint="create it (e.g. `aws s3 mb s3://BUCKET`) or fix --remote / "
                                       "$CONVERT_REMOTE / store.remote.")
        except ConvertError:
            raise
        except PermissionError as e:
            raise ConvertError(f"remote {_safe(self.url)}: access denied ({_why(e)}).",
                               hint="check the backend's credentials (AWS_ACCESS_KEY_ID..., ~/.aws, gcloud, az).") \
                from None
        except FileNotFoundError:
            raise ConvertError(f"remote {_safe(self.url)}: folder {self._root!r} does not exist.",
                               hint="create it, or fix --remote / $CONVERT_REMOTE / store.remote.") from None
        except Exception as e:  # each backend raises its own connection errors
            raise ConvertError(f"remote {_safe(self.url)} cannot be reached: {_why(e)}.",
                               hint="check the URL, the network, and for S3-compatible servers the endpoint "
                               "(FSSPEC_S3_ENDPOINT_URL or AWS_ENDPOINT_URL); or run without a remote "
                               "(--remote none).") from None
        self._checked = True

    # -- reading ------------------------------------------------------------------------------
    def entry(self, key: str) -> dict[str, Any] | None:
        """The remote's cache entry for ``key``, or None (absent, unreadable or malformed)."""
        try:
            data = json.loads(self.fs.cat_file(self._path("cache", f"{key}.json")))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            warnings.warn(f"remote {_safe(self.url)}: entry {key[:12]} is not valid JSON; ignored (rebuilding).")
            return None
        except Exception as e:
            warnings.warn(f"remote {_safe(self.url)}: cannot read entry {key[:12]} ({_why(e)}); building locally.")
            return None
        if not isinstance(data, dict) or data.get("key") != key or not HEX64.fullmatch(str(data.get("digest"))):
            warnings.warn(f"remote {_safe(self.url)}: entry {key[:12]} is malformed; ignored (rebuilding).")
            return None
        return data

    def pull(self, key: str, store: Store) -> dict[str, Any] | None:
        """Pulls ``key``'s entry and object into ``store``; returns the entry, or None where the remote
        does not have it or its object fails verification (then with a warning)."""
        entry = self.entry(key)
        if entry is None or not self.pull_object(entry["digest"], store, what=entry.get("stage")):
            return None
        record = {k: v for k, v in entry.items() if k not in ("key", "digest", "created")}
        store.write_entry(key, entry["digest"], record)
        return entry

    def pull_object(self, digest: str, store: Store, what: str | None = None) -> bool:
        """Makes object ``digest`` present in ``store``, verified by digest. Returns whether it is."""
        if (store.object_path(digest) / "artifact.json").is_file():
            return True
        from convert.store import tree_digest

        label = f"object {digest[:12]}" + (f" (stage {what})" if what else "")
        with store.staging() as tmp:
            archive = tmp / "object.tar"
            try:
                self.fs.get_file(self._path("objects", f"{digest}.tar"), str(archive))
            except FileNotFoundError:
                warnings.warn(f"remote {_safe(self.url)}: {label} is missing although its entry is there; "
                              "rebuilding locally.")
                return False
            except Exception as e:
                warnings.warn(f"remote {_safe(self.url)}: cannot fetch {label} ({_why(e)}); building locally.")
                return False
            out = tmp / "obj"
            try:
                _untar(archive, out)
                got = tree_digest(out)
            except (tarfile.TarError, OSError, ValueError) as e:
                got = f"unreadable ({_why(e)})"
            if got != digest:
                self._bad.add(digest)
                warnings.warn(f"remote {_safe(self.url)}: {label} does not match its digest (tampered with or "
                              f"corrupt: got {got[:12]}); not used, rebuilding locally.")
                return False
            store.add_object(out, digest)
        return True

    # -- writing ------------------------------------------------------------------------------
    def push(self, key: str, digest: str, record: dict[str, Any], obj_dir: Path, scratch: Path | None = None) -> bool:
        """Pushes object ``digest`` (from ``obj_dir``, tarred in ``scratch``) and then ``key``'s entry.
        Returns whether anything was written (False when the remote already had both)."""
        if not self.push_enabled:
            return False
        have = self.entry(key) if digest not in self._bad else None
        if have is not None and have["digest"] == digest and self._has_object(digest):
            return False
        if digest in self._bad or not self._has_object(digest):
            with _scratch(scratch) as archive:
                _tar(obj_dir, archive)
                self._put_file(archive, self._path("objects", f"{digest}.tar"))
            self._bad.discard(digest)
        entry = {k: v for k, v in record.items() if k not in ("key", "digest", "created")}
        self._write_entry(key, json.dumps({**entry, "key": key, "digest": digest}, indent=1, sort_keys=True))
        return True

    def _write_entry(self, key: str, text: str) -> None:
        """Writes an entry: the last step of a push (tests interrupt a push just before it)."""
        self._put_bytes(text.encode(), self._path("cache", f"{key}.json"))

    def _has_object(self, digest: str) -> bool:
        try:
            return bool(self.fs.exists(self._path("objects", f"{digest}.tar")))
        except FileNotFoundError:
            return False

    def put_version(self, spec: str, version: str, manifest: bytes) -> None:
        """Records a published version's manifest (after its stages were pushed)."""
        self._put_bytes(manifest, self._path("versions", spec, f"{version}.json"))

    def get_version(self, spec: str, version: str) -> bytes:
        try:
            return self.fs.cat_file(self._path("versions", spec, f"{version}.json"))
        except FileNotFoundError:
            raise ConvertError(f"remote {_safe(self.url)} has no version {spec}/{version}.",
                               hint="push it from the machine that built it: `convert push NAME/VERSION`.") from None

    def _put_file(self, local: Path, rpath: str) -> None:
        """Uploads one file so that readers see all of it or nothing."""
        if self._local:  # a folder: write a temporary name, then rename (os.replace is atomic)
            Path(rpath).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{rpath}.tmp-{uuid.uuid4().hex}"
            try:
                self.fs.put_file(str(local), tmp)
                os.replace(tmp, rpath)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        else:  # an object store's PUT (or multipart upload) is visible only once complete
            self.fs.put_file(str(local), rpath)

    def _put_bytes(self, data: bytes, rpath: str) -> None:
        if self._local:
            from convert.store import atomic_write

            atomic_write(Path(rpath), data)
        else:
            self.fs.pipe_file(rpath, data)


def _protocols(fs) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def _why(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:200] if text else type(e).__name__


@contextmanager
def _scratch(where: Path | None) -> Iterator[Path]:
    """A temporary file name in ``where`` (the store's tmp/: objects can be large), removed afterwards."""
    import tempfile

    if where is not None:
        Path(where).mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=where, prefix=f"{os.getpid()}-push-", suffix=".tar")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _tar(src: Path, dest: Path) -> None:
    """A deterministic tar of a directory's files: equal content gives equal bytes on every machine."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for f in sorted(p for p in Path(src).rglob("*") if p.is_file()):
            info = tarfile.TarInfo(f.relative_to(src).as_posix())
            info.size = f.stat().st_size
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o444, 0, 0, 0, "", ""
            with open(f, "rb") as fh:
                tar.addfile(info, fh)


def _untar(archive: Path, dest: Path) -> None:
    """Unpacks regular files only, refusing names that leave ``dest`` (a hostile archive)."""
    dest.mkdir(parents=True)
    with tarfile.open(archive, "r:") as tar:
        for m in tar:
            name = m.name
            parts = Path(name).parts
            if not m.isfile() or name.startswith("/") or ".." in parts or not parts:
                raise ValueError(f"unexpected member {name!r}")
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            with open(target, "xb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)


# -- explicit push / pull of published versions -------------------------------------------------


def push_version(version_dir: Path, remote: Remote, store: Store | None = None) -> int:
    """Pushes a published version: every stage's output (from the version's own folders, checked
    against the manifest's digests) and entry, then the manifest.

    Returns:
        How many stages were written (the others were there already).
    """
    from convert.store import tree_digest

    if not remote.push_enabled:
        raise ConvertError(f"remote {_safe(remote.url)} is read-only{'' if remote.read_only else ' (--no-push)'}.",
                           hint="push to an s3://, gs://, az:// or file:// remote.")
    remote.check()
    from convert import versions

    manifest_path = Path(version_dir) / versions.MANIFEST
    manifest = versions.read(version_dir).manifest
    written = 0
    for name, stage in manifest["stages"].items():
        digest, key = stage.get("output"), stage.get("key")
        if not digest or not key:  # skipped stage
            continue
        folder = Path(version_dir) / name
        if not folder.is_dir() or tree_digest(folder) != digest:
            raise ConvertError(f"{folder}: does not match the manifest's digest {digest[:12]}.",
                               hint=f"`convert verify {version_dir}` says what changed; rebuild it before pushing.")
        written += remote.push(key, digest, {"stage": name, "pass": stage.get("pass"),
                                             "summary": stage.get("summary", {})}, folder,
                               scratch=store.root / "tmp" if store is not None else None)
    remote.put_version(manifest["spec"], manifest["version"], manifest_path.read_bytes())
    return written


def pull_version(remote: Remote, spec: str, version: str, artifacts_dir: Path, store: Store) -> Path:
    """Pulls a version pushed with :func:`push_version` into ``store`` and publishes it under
    ``artifacts_dir/<spec>/<version>/`` (byte for byte what the pushing machine published).

    Returns:
        The version directory.
    """
    from convert import versions

    remote.check()
    raw = remote.get_version(spec, version)
    manifest = versions.parse_manifest(raw, f"remote {_safe(remote.url)}: versions/{spec}/{version}.json")
    if manifest.get("spec") != spec or manifest.get("version") != version:
        raise ConvertError(f"remote {_safe(remote.url)}: versions/{spec}/{version}.json describes "
                           f"{manifest.get('spec')}/{manifest.get('version')}.", hint="the remote is corrupt.")
    stages = {n: s for n, s in manifest["stages"].items() if s.get("output") and s.get("key")}
    for name, s in stages.items():
        if not (store.lookup(s["key"]) or {}).get("digest") == s["output"] and \
                not remote.pull_object(s["output"], store, what=name):
            raise ConvertError(f"remote {_safe(remote.url)}: stage {name!r} of {spec}/{version} cannot be pulled "
                               "(see the warning above).", hint="push it again from the machine that built it.")
    def fill(tmp: Path) -> None:
        (tmp / versions.MANIFEST).write_bytes(raw)  # byte for byte the pushing machine's
        versions.render_report(tmp)

    return versions.assemble(Path(artifacts_dir) / spec / version,
                             {name: store.object_path(s["output"]) for name, s in stages.items()}, fill)


__all__ = ["Remote", "check_url", "resolve", "team_config", "push_version", "pull_version"]
