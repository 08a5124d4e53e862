"""Cost of the quantize pass's work (:func:`calib.qdq.quantize_model`) on a built model and table, and what it chose.

    python bench/quantize_cost.py MODEL.onnx TABLE_DIR [--set key=value ...] [--repeat 3] [--out result.json]
    python bench/quantize_cost.py --compare A.json B.json

``MODEL.onnx`` is a float network body (a ``simplify`` artifact's file), ``TABLE_DIR`` the ``calibrate``
artifact made from it (``table.json`` and ``samples/``); both are in a store's ``objects/`` after
``convert run SPEC --until calibrate``. ``--set`` gives the quantize settings (:class:`calib.qdq.QuantizeSettings`
fields, values as YAML, e.g. ``--set target=openvino --set keep_float_sensitive=4``).

Each repetition runs ``quantize_model`` in this process and prints its wall time and the process CPU time
(every thread), the time of the sensitivity analysis, of ONNX Runtime's quantizer and of bias correction
inside it, the sensitive tensors chosen and the mean bias shift. The first repetition is cold (ONNX
Runtime's and NumPy's first use included, not the imports). ``--out`` writes the last repetition's
figures: every probed tensor's sensitivity, every corrected convolution's bias, the timings' medians.
``--save`` writes the Q/DQ model. ``--compare`` prints how two such files differ (same ranking?
largest bias difference?).

The script puts its own checkout first on ``sys.path``, so a copy in another checkout measures that code.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Timed:
    """Wraps a function of :mod:`calib.qdq`: accumulates its wall and CPU time, keeps its last result."""

    def __init__(self, module, name):
        self.module, self.name, self.real = module, name, getattr(module, name)
        self.wall = self.cpu = 0.0
        self.result = None
        setattr(module, name, self)

    def __call__(self, *a, **kw):
        t, c = time.perf_counter(), time.process_time()
        self.result = self.real(*a, **kw)
        self.wall += time.perf_counter() - t
        self.cpu += time.process_time() - c
        return self.result


def run(args) -> dict:
    import numpy as np
    import onnx
    import yaml
    from onnx import numpy_helper

    import calib.qdq as qdq
    from calib.table import calibration_batches, read_table

    settings = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    c = qdq.QuantizeSettings(**settings)
    table_dir = Path(args.table)
    table = read_table(table_dir / "table.json")
    samples = [table_dir / rel for rel in table["samples"]]
    rows = []
    for _ in range(args.repeat):
        model = onnx.load(args.model)
        phases = {n: Timed(qdq, n) for n in ("most_sensitive", "activation_sensitivity", "quantize_qdq",
                                             "correct_biases") if hasattr(qdq, n)}
        t, cpu = time.perf_counter(), time.process_time()
        q = qdq.quantize_model(model, table["ranges"], c, lambda: calibration_batches(samples, table["preprocess"]),
                               "bench")
        row = {"wall": time.perf_counter() - t, "cpu": time.process_time() - cpu,
               **{f"{n}_wall": p.wall for n, p in phases.items()}, **{f"{n}_cpu": p.cpu for n, p in phases.items()}}
        for p in phases.values():
            setattr(qdq, p.name, p.real)
        rows.append(row)
        print(" ".join(f"{k}={v:.2f}" for k, v in row.items()), flush=True)
    inits = {i.name: i for i in q.model.graph.initializer}
    biases = {n.name: numpy_helper.to_array(inits[n.input[2]]).astype(float).tolist() for n in q.model.graph.node
              if n.name in q.corrected}
    sens = phases.get("most_sensitive") or phases.get("activation_sensitivity")
    errors = sens.result if sens else None
    out = {"settings": c.model_dump(mode="json"), "sensitive": q.sensitive, "corrected": q.corrected,
           "errors": errors, "biases": biases, "float_nodes": q.plan.kept_float,
           "median": {k: statistics.median(r[k] for r in rows) for k in rows[0]}, "runs": rows}
    print("sensitive:", json.dumps(q.sensitive))
    if q.corrected:
        print(f"bias correction: {len(q.corrected)} convolutions, mean shift "
              f"{float(np.mean(list(q.corrected.values()))):.6g}")
    print("median:", " ".join(f"{k}={v:.2f}" for k, v in out["median"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    if args.save:
        onnx.save(q.model, args.save)
    return out


def compare(a_path: str, b_path: str) -> None:
    import numpy as np

    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    print("sensitive:", list(a["sensitive"]), "|", list(b["sensitive"]),
          "same" if list(a["sensitive"]) == list(b["sensitive"]) else "DIFFERENT")
    if a.get("errors") and b.get("errors"):
        ra = sorted(a["errors"], key=lambda t: -a["errors"][t])
        rb = sorted(b["errors"], key=lambda t: -b["errors"][t])
        same = next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), len(ra))
        rel = max(abs(a["errors"][t] - b["errors"][t]) / max(a["errors"][t], 1e-30) for t in a["errors"])
        print(f"ranking: first {same} of {len(ra)} equal; largest relative difference of a sensitivity {rel:.3g}")
    keys = sorted(set(a["biases"]) | set(b["biases"]))
    if keys:
        missing = [k for k in keys if k not in a["biases"] or k not in b["biases"]]
        common = [k for k in keys if k not in missing]
        diff = max(float(np.max(np.abs(np.subtract(a["biases"][k], b["biases"][k])))) for k in common)
        shift = max(float(np.max(np.abs(a["corrected"][k]))) for k in common)
        rel = max(abs(a["corrected"][k] - b["corrected"][k]) / max(abs(a["corrected"][k]), 1e-30) for k in common)
        print(f"biases: {len(common)} convolutions in both, {len(missing)} in one only; largest absolute bias "
              f"difference {diff:.3g} (largest mean correction {shift:.3g}); largest relative difference of a "
              f"mean correction {rel:.3g}")
    for k in a["median"]:
        if k in b["median"]:
            print(f"{k}: {a['median'][k]:.2f} -> {b['median'][k]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("table", nargs="?")
    ap.add_argument("--set", action="append", default=[], help="a quantize setting, key=value")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--save", help="write the last repetition's Q/DQ model here")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
    else:
        run(args)


if __name__ == "__main__":
    main()
