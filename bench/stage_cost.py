"""Wall time of one stage of a spec, rebuilt cold, in one or more checkouts side by side (interleaved).

    python bench/stage_cost.py pipelines/yolov5n_int8.yaml calibrate --rounds 3 \\
        --checkout /path/to/old/checkout --checkout . \\
        model.weights=$PWD/../shared/fixtures/weights/yolov5n.pt \\
        calibration.data=$PWD/../shared/fixtures/datasets/coco128

Each round runs, for every checkout in turn, ``python -m convert --store S --artifacts A run SPEC OVERRIDES
--until STAGE --force STAGE --no-progress`` from that checkout (its own code), in one store per
checkout: the stages before STAGE (in ``convert plan``'s order) are built in a first, untimed run
and then cached, STAGE runs every time. SPEC is relative to each checkout. Prints the stage's wall
time as the run reports it, the whole process's wall and CPU time (user + system, every thread; the
cached stages and imports included), the stage's summary line, and the medians. The order of the
checkouts alternates between rounds, so that background load hits them alike (the machine this was
written on is shared).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def convert(checkout: Path, work: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "convert", "--store", str(work / "store"), "--artifacts", str(work / "art"), *argv]


def prime(checkout: Path, work: Path, args) -> None:
    """Builds the stages before STAGE (in the plan's order), untimed."""
    spec = str(checkout / args.spec)
    plan = subprocess.run(convert(checkout, work, "plan", spec, *args.overrides), cwd=checkout, capture_output=True,
                          text=True, check=True).stdout
    names = [ln.split()[0] for ln in plan.splitlines() if ln.strip()]
    if args.stage not in names:
        sys.exit(f"error: the spec has no stage {args.stage!r} (stages: {', '.join(names)})")
    if names.index(args.stage):
        subprocess.run(convert(checkout, work, "run", spec, *args.overrides, "--until",
                               names[names.index(args.stage) - 1], "--no-progress"), cwd=checkout,
                       capture_output=True, check=True)


def run(checkout: Path, work: Path, args) -> dict:
    cmd = convert(checkout, work, "run", str(checkout / args.spec), *args.overrides, "--until", args.stage,
                  "--force", args.stage, "--no-progress")
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed in {checkout}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    line = next((ln for ln in proc.stdout.splitlines() if re.search(rf"\] {re.escape(args.stage)} \(", ln)), "")
    m = re.search(r"(ran|cached) in ([0-9.]+)s", line)
    return {"stage": float(m.group(2)) if m else float("nan"), "wall": wall, "line": line.strip(),
            "cpu": (after.children_user - before.children_user) + (after.children_system - before.children_system)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec")
    ap.add_argument("stage")
    ap.add_argument("--checkout", action="append", type=Path, help="a checkout of this project (repeatable; "
                    "default: this one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, help="folder for the stores (default: a temporary one)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    checkouts = [c.resolve() for c in (args.checkout or [Path(__file__).resolve().parents[1]])]
    root = args.work or Path(tempfile.mkdtemp(prefix="stage-cost-"))
    works = {c: root / f"{i}" for i, c in enumerate(checkouts)}
    for c in checkouts:
        prime(c, works[c], args)
    rows: dict[Path, list] = {c: [] for c in checkouts}
    for r in range(args.rounds):
        for c in (checkouts if r % 2 == 0 else checkouts[::-1]):
            row = run(c, works[c], args)
            rows[c].append(row)
            print(f"round {r + 1} {c}: stage {row['stage']:.1f} s, process wall {row['wall']:.1f} s, "
                  f"cpu {row['cpu']:.1f} s | {row['line']}", flush=True)
    print(f"medians over {args.rounds} rounds ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}):")
    for c in checkouts:
        med = {k: statistics.median(x[k] for x in rows[c]) for k in ("stage", "wall", "cpu")}
        print(f"  {c}: stage {med['stage']:.1f} s, process wall {med['wall']:.1f} s, cpu {med['cpu']:.1f} s")


if __name__ == "__main__":
    main()
