"""File-system faults on real mounts: a full store or artifacts disk (tmpfs) and read-only store,
artifacts and spec folders (read-only bind mounts) end in one line with a hint and exit status 2,
leave nothing half-written, and a read-only store still answers `plan` and fully cached runs.

Mounting needs root (CAP_SYS_ADMIN); elsewhere the tests skip with that reason.
"""

from __future__ import annotations

import contextlib
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

import toy_passes  # noqa: F401  (registers the toy passes in-process)

SPEC = """
stages:
  w: {pass: toy_write, with: {src: big.txt}}
  u: {pass: toy_upper, with: {times: 1}}
"""


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` made read-only in place by a read-only bind mount over itself."""
    path.mkdir(parents=True, exist_ok=True)
    if not (_mount("--bind", str(path), str(path)) and _mount("-o", "remount,bind,ro", str(path))):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        pytest.skip("cannot make a read-only bind mount here (needs root / CAP_SYS_ADMIN)")
    try:
        probe = path / f".probe-{uuid.uuid4().hex}"
        with pytest.raises(OSError):
            probe.write_text("x")
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "big.txt").write_text("x" * 600_000)
    (tmp_path / "s.yaml").write_text(textwrap.dedent(SPEC))
    return tmp_path / "s.yaml"


def one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Hint: " in lines[0], err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_a_full_store_names_the_stage_and_keeps_no_entry(cli, spec, tmp_path):
    with tmpfs(tmp_path / "store", "256k") as store:
        code, _, err = cli("--store", store, "--artifacts", "arts", "run", spec, "--no-progress")
        one_line_error(code, err, "stage 'w'", "No space left on device", "free disk space")
        # no cache entry, no object, no staging folder, no (empty) traceback log
        assert [p for d in ("cache", "objects", "tmp", "logs") for p in (store / d).glob("*")] == []
    assert not (tmp_path / "arts").exists()


def test_a_full_artifacts_disk_publishes_nothing_half(cli, spec, tmp_path):
    with tmpfs(tmp_path / "arts", "256k") as arts:
        code, _, err = cli("--store", "store", "--artifacts", arts, "run", spec, "--no-progress")
        one_line_error(code, err, "publishing s into", "No space left on device")
        assert [p.name for p in (arts / "s").iterdir()] == []  # no version, no .tmp-* leftover
    # the stages stay in the store: with room, the next run only publishes
    code, out, _ = cli("--store", "store", "--artifacts", "arts2", "run", spec, "--no-progress")
    assert code == 0 and out.count("cached") == 2


def test_a_read_only_store_answers_plan_and_cached_runs(cli, spec, tmp_path):
    assert cli("--store", "store", "--artifacts", "arts", "run", spec, "--no-progress")[0] == 0
    with read_only(tmp_path / "store") as store:
        code, out, err = cli("--store", store, "--artifacts", "arts", "plan", spec)
        assert code == 0 and out.count("cached") == 2, err
        code, out, err = cli("--store", store, "--artifacts", "arts2", "run", spec, "--no-progress")
        assert code == 0 and out.count("cached") == 2 and "published" in out, err
        code, _, err = cli("--store", store, "--artifacts", "arts2", "run", spec, "stages.u.with.times=2",
                           "--no-progress")
        one_line_error(code, err, "Read-only file system", "read-only")


def test_read_only_artifacts_and_spec_folders(cli, spec, tmp_path):
    with read_only(tmp_path / "arts") as arts:
        code, _, err = cli("--store", "store", "--artifacts", arts, "run", spec, "--no-progress")
        one_line_error(code, err, "publishing s into", "Read-only file system")
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "s.yaml").write_text(spec.read_text())
    (folder / "big.txt").write_text("x" * 10)
    with read_only(folder):
        code, _, err = cli("--store", "store", "--artifacts", "arts3", "run", folder / "s.yaml", "--no-progress")
        one_line_error(code, err, "but the lockfile", "s.lock could not be written", "writable folder")
        assert (folder / "s.yaml").read_text() == spec.read_text()
    published = [p for p in (tmp_path / "arts3" / "s").iterdir() if not p.is_symlink()]
    assert len(published) == 1 and (published[0] / "manifest.json").is_file()
