"""The content-addressed artifact store.

Layout under the store root::

    objects/<sha256>/      a pass output directory, named by the digest of its content (read-only)
    cache/<key>.json       cache entry: pass key -> output digest (written last, atomically)
    tmp/                   directories of passes being run; leftovers of killed runs (gc removes them)
    locks/<key>.lock       one lock per key, so two runs on one store never build the same thing twice
    filehash.sqlite        memo of file digests by (path, size, mtime, inode), as DVC does

A pass writes into a fresh ``tmp/`` directory; only when it has finished is the directory
renamed into ``objects/`` and the cache entry written, so a failed or killed pass leaves no entry.

With a remote (:mod:`convert.remote`), a local miss is looked up remotely and pulled, and what is
committed is pushed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from convert.base import Artifact


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal data gives equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def atomic_write(path: Path, data: str | bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file and a rename: a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class FileHasher:
    """sha256 of files and directories, memoised by path, size, mtime and inode."""

    def __init__(self, db_path: Path | None):
        self._db = None
        if db_path is not None:
            try:
                db_path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(db_path, timeout=60, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INT, "
                                 "mtime_ns INT, inode INT, digest TEXT)")
            except (OSError, sqlite3.Error):  # read-only or full store: hash without the memo
                self._db = None

    def file(self, path: Path) -> str:
        """Digest of one file's bytes."""
        path = Path(os.path.abspath(path))
        st = path.stat()
        if self._db is None:
            return _hash_file(path)
        row = self._db.execute("SELECT size, mtime_ns, inode, digest FROM files WHERE path=?", (str(path),)).fetchone()
        if row and tuple(row[:3]) == (st.st_size, st.st_mtime_ns, st.st_ino):
            return row[3]
        digest = _hash_file(path)
        try:
            self._db.execute("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?)",
                             (str(path), st.st_size, st.st_mtime_ns, st.st_ino, digest))
        except sqlite3.Error:  # the memo is an optimisation; a store that cannot take it still works
            pass
        return digest

    def files(self, paths: list[Path]) -> list[str]:
        """Digests of many files, memo updates in one transaction; ``missing`` for a file that is not there."""
        in_tx = self._db is not None
        if in_tx:
            try:
                self._db.execute("BEGIN")
            except sqlite3.Error:
                in_tx = False
        try:
            return [self.file(p) if Path(p).is_file() else "missing" for p in paths]
        finally:
            if in_tx:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error:
                    pass

    def path(self, path: Path) -> str:
        """Digest of a file, or of a directory tree (relative names and file digests)."""
        path = Path(path)
        if path.is_file():
            return self.file(path)
        found = sorted(p for p in path.rglob("*") if p.is_file())
        lines = [f"{f.relative_to(path).as_posix()}\0{d}\n" for f, d in zip(found, self.files(found))]
        return hashlib.sha256("".join(lines).encode()).hexdigest()


def tree_digest(path: Path) -> str:
    """Digest of a directory's content (no memo: used on fresh outputs)."""
    return FileHasher(None).path(path)


class Store:
    """A content-addressed store of pass outputs.

    Args:
        root: The store directory (created on first write).
        remote: A shared remote cache (:class:`convert.remote.Remote`) or None.
    """

    def __init__(self, root: Path, remote: Any = None):
        self.root = Path(root)
        self.remote = remote
        self._hasher: FileHasher | None = None

    def __getstate__(self) -> dict[str, Any]:  # sent to Ray workers: the sqlite memo is per process
        return {**self.__dict__, "_hasher": None}

    @property
    def hasher(self) -> FileHasher:
        if self._hasher is None:
            self._hasher = FileHasher(self.root / "filehash.sqlite")
        return self._hasher

    def object_path(self, digest: str) -> Path:
        return self.root / "objects" / digest

    def lookup(self, key: str, pull: bool = True) -> dict[str, Any] | None:
        """Returns the cache entry for ``key`` if its object is present, else None.

        On a local miss the remote (if any, and ``pull``) is asked; an entry pulled from it has
        ``"pulled": True`` (only in what is returned, not in the store).
        """
        entry_path = self.root / "cache" / f"{key}.json"
        try:
            entry = json.loads(entry_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            entry = None
        if entry is not None and (self.object_path(entry["digest"]) / "artifact.json").is_file():
            return entry
        if pull and self.remote is not None:
            entry = self.remote.pull(key, self)
            if entry is not None:
                return {**entry, "pulled": True}
        return None

    def remote_entry(self, key: str) -> dict[str, Any] | None:
        """The remote's entry for ``key`` without pulling anything (for ``plan``), or None."""
        return self.remote.entry(key) if self.remote is not None else None

    def share(self, key: str) -> None:
        """Pushes ``key`` (entry and object, already in this store) where the remote lacks it: a
        stage built before the remote was set up, or whose push failed, is shared by the next run."""
        if self.remote is None or not self.remote.push_enabled:
            return
        entry = self.lookup(key, pull=False)
        if entry is not None:
            self._push(key, entry)

    def _push(self, key: str, entry: dict[str, Any]) -> None:
        """Pushes one entry; a failure is a warning (the build stays local), never a failed run."""
        import warnings

        try:
            self.remote.push(key, entry["digest"], entry, self.object_path(entry["digest"]), scratch=self.root / "tmp")
        except Exception as e:  # each backend raises its own errors
            warnings.warn(f"could not push stage {entry.get('stage')} to {self.remote!r} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); it stays in the local store.")

    def artifact(self, digest: str) -> Artifact:
        path = self.object_path(digest)
        if self.remote is not None and not (path / "artifact.json").is_file():
            self.remote.pull_object(digest, self)  # a Ray worker on another node: inputs come from the remote
        return Artifact.open(path, digest)

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Holds the lock of ``key`` so concurrent runs build it once."""
        from filelock import FileLock

        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / "locks" / f"{key}.lock")):
            yield

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh temporary directory for a pass's output, removed on error."""
        base = self.root / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=f"{os.getpid()}-"))
        try:
            yield tmp
        finally:
            if tmp.exists():
                _rmtree(tmp)

    def commit(self, key: str, tmp: Path, record: dict[str, Any]) -> str:
        """Moves a finished output directory into the store and writes its cache entry.

        Returns:
            The output's content digest.
        """
        digest = self.add_object(tmp, tree_digest(tmp))
        entry = self.write_entry(key, digest, record)
        if self.remote is not None and self.remote.push_enabled:
            self._push(key, entry)
        return digest

    def add_object(self, tmp: Path, digest: str) -> str:
        """Moves a directory whose tree digest is ``digest`` into ``objects/`` (read-only)."""
        dest = self.object_path(digest)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            for p in tmp.rglob("*"):
                if p.is_file():
                    p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not dest.exists():
                    raise
        return digest

    def write_entry(self, key: str, digest: str, record: dict[str, Any]) -> dict[str, Any]:
        """Writes ``key``'s cache entry (after its object is in place)."""
        entry = {**record, "key": key, "digest": digest, "created": time.time()}
        atomic_write(self.root / "cache" / f"{key}.json", json.dumps(entry, indent=1))
        return entry

    @contextmanager
    def live_run(self) -> Iterator[None]:
        """Marks a run as live (``runs/<pid>``) while it lasts, so :meth:`gc` leaves what it builds."""
        marker = self.root / "runs" / str(os.getpid())
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(time.time()))
        except OSError:  # a read-only store can still serve a fully cached run
            marker = None
        try:
            yield
        finally:
            if marker is not None:
                marker.unlink(missing_ok=True)

    def _live_since(self) -> float | None:
        """Start time of the oldest live run (its process still exists), or None; dead markers go."""
        oldest = None
        for marker in (self.root / "runs").iterdir() if (self.root / "runs").is_dir() else []:
            if not _alive(marker.name):
                marker.unlink(missing_ok=True)
                continue
            try:
                started = float(marker.read_text() or 0)
            except (OSError, ValueError):
                started = 0.0
            oldest = started if oldest is None else min(oldest, started)
        return oldest

    def gc(self, keep_digests: set[str]) -> dict[str, int]:
        """Removes leftovers of killed runs and objects not in ``keep_digests``.

        What a live run owns stays: its staging directories (named by its pid) and the entries and
        objects written since the oldest live run started (it may not have published them yet).

        Returns:
            Counts of removed temporary dirs, cache entries and objects.
        """
        counts = {"tmp": 0, "entries": 0, "objects": 0}
        since = self._live_since()

        def owned(path: Path) -> bool:
            try:
                return since is not None and path.stat().st_mtime >= since - 1
            except OSError:
                return True  # vanished meanwhile: someone is working on it
        if (self.root / "tmp").is_dir():
            for p in (self.root / "tmp").iterdir():
                if _alive(p.name.split("-", 1)[0]):
                    continue
                _rmtree(p)
                counts["tmp"] += 1
        for entry in (self.root / "cache").glob("*.json") if (self.root / "cache").is_dir() else []:
            try:
                digest = json.loads(entry.read_text())["digest"]
            except (json.JSONDecodeError, KeyError, OSError):
                digest = None
            if digest not in keep_digests and not owned(entry):
                entry.unlink(missing_ok=True)
                counts["entries"] += 1
        for obj in (self.root / "objects").iterdir() if (self.root / "objects").is_dir() else []:
            if obj.name not in keep_digests and not owned(obj):
                _rmtree(obj)
                counts["objects"] += 1
        return counts


def _alive(pid: str) -> bool:
    """Whether a process with this pid exists (a staging dir or run marker's owner)."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmtree(path: Path) -> None:
    def retry(func, p, _exc):  # read-only parent dirs (published objects): make writable, retry
        os.chmod(os.path.dirname(p), stat.S_IRWXU)
        func(p)

    shutil.rmtree(path, onerror=retry)


def link_tree(src: Path, dst: Path) -> None:
    """Copies a directory tree, hard-linking files where the filesystem allows it."""
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
