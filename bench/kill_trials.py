"""kill -9 at random moments: the store is never corrupted and no process outlives the run.

Each trial starts ``convert run SPEC`` on one store, kills it (SIGKILL) after a random delay,
records every process the run had spawned, and then checks that

* none of them is still alive a moment later (no orphan);
* ``convert run SPEC`` on the same store then completes, and ``convert verify`` passes on what
  it published (nothing half-written was taken for a cache entry);
* ``convert gc`` removes the killed run's leftovers (staging folders, ``.tmp-*`` versions).

    python bench/kill_trials.py [--trials 20] [--spec SPEC] [--max-delay 20] [overrides...]

By default the spec is a random-weight yolov5n (64 px) through export, simplify, calibration,
INT8 quantization, OpenVINO and a benchmark, so the kills land in every kind of stage.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SPEC = """
name: kill
stages:
  load: {with: {arch: yolov5n, input_size: [64, 64], nc: 2}}
  truncate_head: {}
  export_onnx: {}
  simplify: {}
  calibrate: {with: {num: 4}}
  quantize: {inputs: {model: simplify, table: calibrate}}
  postprocess: {}
  openvino: {inputs: {model: postprocess}, optional: true}
  benchmark: {inputs: {models: [postprocess, openvino]}, with: {iterations: 5, rounds: 1, warmup: 1}}
"""


def descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def alive(pids: set[int]) -> list[int]:
    import psutil

    out = []
    for p in pids:
        try:
            if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def convert(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convert", *args], cwd=cwd, capture_output=True, text=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--spec", type=Path, help="spec file (default: the built-in one above)")
    ap.add_argument("--max-delay", type=float, default=20.0, help="kill within this many seconds of the start")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="kill-trials-"))
    spec = work / "spec.yaml"
    if a.spec:
        shutil.copy(a.spec, spec)
    else:
        spec.write_text(textwrap.dedent(SPEC))
    args = ["--store", "store", "--artifacts", "artifacts"]
    problems: list[str] = []
    spawned_total = 0
    for i in range(a.trials):
        delay = rng.uniform(0.2, a.max_delay)
        force = ["--force-all"] if rng.random() < 0.5 else []
        proc = subprocess.Popen([sys.executable, "-m", "convert", *args, "run", str(spec), *a.overrides,
                                 "--no-progress", *force], cwd=work, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        seen: set[int] = set()
        t0 = time.monotonic()
        while time.monotonic() - t0 < delay and proc.poll() is None:
            seen |= descendants(proc.pid)
            time.sleep(0.05)
        finished = proc.poll() is not None
        if not finished:
            seen |= descendants(proc.pid)
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        spawned_total += len(seen)
        time.sleep(0.5)
        orphans = alive(seen)
        if orphans:
            problems.append(f"trial {i}: {len(orphans)} process(es) outlived the killed run: {orphans}")
        gc = convert(*args, "gc", cwd=work)
        rerun = convert(*args, "run", str(spec), *a.overrides, "--no-progress", cwd=work, timeout=900)
        verify = convert(*args, "verify", "kill" if not a.spec else spec.stem, cwd=work)
        state = "finished before the kill" if finished else f"killed at {delay:.1f}s"
        ok = rerun.returncode == 0 and verify.returncode == 0 and gc.returncode == 0
        if not ok:
            problems.append(f"trial {i} ({state}): gc {gc.returncode}, rerun {rerun.returncode} "
                            f"({rerun.stderr.strip()[-300:]}), verify {verify.returncode} "
                            f"({verify.stderr.strip()[-200:]})")
        word = lambda p: "ok" if p.returncode == 0 else "FAILED"  # noqa: E731
        print(f"trial {i:2d}: {state:<26} children seen {len(seen):2d}, orphans {len(orphans)}, "
              f"rerun {word(rerun)}, verify {word(verify)}", flush=True)
    leftovers = sorted(p.name for p in (work / "artifacts").glob("*/.tmp-*"))
    if leftovers:
        problems.append(f"gc left half-published versions: {leftovers}")
    print(f"\n{a.trials} trials, {spawned_total} child processes seen, {len(problems)} problem(s)")
    for p in problems:
        print("  " + p)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
