"""Report rendering: what was built and how well it does, as Markdown and a self-contained HTML page.

A report gathers the figures of a run — ``metrics`` artifacts written by the ``evaluate``,
``benchmark`` and ``compare`` passes — and, when generated from a published version, its
``manifest.json`` (per-pass timings, cache hits, artifact files). It shows:

* the accuracy x back-end x precision table (mAP, latency, size, agreement with the reference);
* accuracy gates, cross-back-end errors, latency details, artifact sizes, per-pass timings;
* the pipeline as a table and a small graph (stages, cached/ran/skipped, time, artifact sizes);
* plots (accuracy vs latency, latency distributions per configuration, per-pass time), made with
  matplotlib and embedded as base64 PNG, so the HTML page loads nothing from anywhere;
* the report stage's pictures: each model's detections drawn on a few photos, side by side, and
  what differs from the first (embedded as base64 JPEG);
* per-class AP, and notes on how the figures were measured.

The ``report`` pass renders one from its inputs (timings are not known yet while the run is
going); every published version gets one rendered from its manifest, with timings (again with
``convert report NAME[/VERSION]``), and ``convert report A B`` puts two versions side by side.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convert import versions
from convert.base import ARTIFACT_JSON
from convert.evaluation import METRICS

MODEL_KINDS = ("torch", "onnx", "openvino", "tensorrt")


# --- gathering ---------------------------------------------------------------------------------


@dataclass
class RunData:
    """Everything a report shows, from a published version or from metrics records.

    Attributes:
        title: Spec name and version (or what the report pass knows).
        records: ``metrics.json`` contents (``type``: evaluation, benchmark, comparison); each
            has ``_stage`` when the stage name is known.
        manifest: The version's manifest, or None.
        stage_of: Model artifact digest -> the stage that produced it.
        artifacts: Model stages: ``stage``, ``kind``, ``precision``, ``size_bytes``, ``files``.
        selections: Calibration method choices (``method: auto``): the table's ``selection``
            plus ``_stage``.
        pictures: Drawn detections (:func:`pictures_of`).
        sizes: Stage name -> bytes of its files (published versions).
    """

    title: str
    records: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    stage_of: dict[str, str] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    selections: list[dict[str, Any]] = field(default_factory=list)
    pictures: list[dict[str, Any]] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("type") == kind]


def load_version(path: Path) -> RunData:
    """Reads a published version folder (``artifacts/<spec>/<version>/``).

    Raises:
        ConvertError: The folder is not a published version.
    """
    v = versions.read(path)
    manifest = v.manifest
    data = RunData(v.title, manifest=manifest)
    for name in v.stage_order():
        stage = manifest["stages"][name]
        if stage.get("output"):
            data.stage_of[stage["output"]] = name
        sdir = v.stage_dir(name)
        if stage.get("status") == "skipped" or sdir is None or not (sdir / ARTIFACT_JSON).is_file():
            continue
        art = json.loads((sdir / ARTIFACT_JSON).read_text())
        data.sizes[name] = sum(p.stat().st_size for p in sdir.rglob("*") if p.is_file() and p.name != ARTIFACT_JSON)
        if art["kind"] == "metrics":
            record = json.loads((sdir / art["main"]).read_text())
            data.records.append({**record, "_stage": name})
        elif art["kind"] == "calib_table":
            selection = json.loads((sdir / art["main"]).read_text()).get("selection")
            if selection:
                data.selections.append({**selection, "_stage": name})
        elif art["kind"] in MODEL_KINDS:
            files = {p.relative_to(sdir).as_posix(): p.stat().st_size for p in sorted(sdir.rglob("*"))
                     if p.is_file() and p.name != ARTIFACT_JSON}
            data.artifacts.append({"stage": name, "kind": art["kind"],
                                   "precision": art["meta"].get("precision", "fp32"),
                                   "size_bytes": sum(files.values()), "files": files})
        elif art["kind"] == "report":
            data.pictures += pictures_of(sdir, name, data.stage_of)
    return data


def pictures_of(folder: Path, stage: str | None, stage_of: dict[str, str]) -> list[dict[str, Any]]:
    """The pictures a report stage drew (its ``pictures.json``), or none.

    Returns:
        One dict per photo: ``image``, ``jpeg`` (bytes), ``rel`` (path for Markdown, relative to
        the report), ``models`` (label, stage or None, detections, difference counts), ``stage``.
    """
    from passes.report.pictures import PICTURES_JSON

    index_file = folder / PICTURES_JSON
    if not index_file.is_file():
        return []
    index = json.loads(index_file.read_text())
    stages = {m["label"]: stage_of.get(m["digest"]) for m in index["models"]}
    out = []
    for pic in index["pictures"]:
        models = [{**m, "stage": stages.get(m["label"])} for m in pic["models"]]
        out.append({"image": pic["image"], "jpeg": (folder / pic["file"]).read_bytes(), "stage": stage,
                    "rel": f"{stage}/{pic['file']}" if stage else pic["file"], "models": models,
                    "settings": index.get("settings", {})})
    return out


def from_records(records: list[dict[str, Any]], title: str = "run") -> RunData:
    """A report's data from metrics records alone (what the ``report`` pass has)."""
    data = RunData(title, records=list(records))
    seen = set()
    for r in records:
        for info in _models_of(r):
            if info["digest"] not in seen:
                seen.add(info["digest"])
                data.artifacts.append({"stage": None, "kind": info["kind"], "precision": info["precision"],
                                       "size_bytes": info["size_bytes"], "files": {}, "label": info["label"]})
    return data


def _models_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    if record["type"] == "evaluation":
        return [record["model"]]
    if record["type"] == "benchmark":
        return [r["model"] for r in record["results"]]
    return [record["reference"], *[m["model"] for m in record["models"]]]


# --- the accuracy x back-end x precision table -------------------------------------------------


def _name(data: RunData, info: dict[str, Any]) -> str:
    """A model's display name: the stage that built it, else kind/precision."""
    return data.stage_of.get(info["digest"]) or f"{info['kind']}/{info['precision']}"


def model_rows(data: RunData) -> list[dict[str, Any]]:
    """One row per (model, back-end) measured by any pass, in order of appearance.

    Returns:
        Rows with ``name``, ``kind``, ``precision``, ``backend``, ``size_bytes``, ``metrics``
        (evaluation figures), ``latency`` (thread setting -> benchmark figures) and ``agreement``
        (the comparison's worst error, cosine and detection agreement).
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(info: dict[str, Any]) -> dict[str, Any]:
        key = (info["digest"], info["backend"])
        if key not in rows:
            rows[key] = {"name": _name(data, info), "kind": info["kind"], "precision": info["precision"],
                         "backend": info["backend"], "size_bytes": info["size_bytes"], "metrics": {},
                         "latency": {}, "agreement": None, "evaluation": None}
        return rows[key]

    for r in data.records:
        if r["type"] == "evaluation":
            row(r["model"]).update(metrics=r["metrics"], evaluation=r.get("label"))
        elif r["type"] == "benchmark":
            for b in r["results"]:
                row(b["model"])["latency"][str(b["threads"])] = b
        elif r["type"] == "comparison":
            for m in r["models"]:
                outs = m["outputs"].values()
                row(m["model"])["agreement"] = {
                    "reference": _name(data, r["reference"]),
                    "max_abs": max((o["max_abs"] for o in outs), default=None),
                    "min_cosine": min((o["min_cosine"] for o in outs), default=None),
                    "detections": (m.get("detections") or {}).get("agreement"), "passed": m["passed"]}
    out = list(rows.values())
    if data.manifest:  # pipeline order, then back-end
        order = stage_order(data.manifest)
        out.sort(key=lambda r: (order.index(r["name"]) if r["name"] in order else len(order),
                                _BACKEND_ORDER.index(r["backend"]) if r["backend"] in _BACKEND_ORDER else 9))
    return out


_BACKEND_ORDER = ("onnxruntime", "openvino", "tensorrt", "torch")


def _thread_settings(rows: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        seen += [t for t in r["latency"] if t not in seen]
    return seen


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "pass" if v else "FAIL"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2e}"
    return str(v)


def _fixed(v: float | None, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _mb(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f}"


# --- document model: blocks rendered to Markdown and HTML ---------------------------------------


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Plot:
    key: str
    title: str
    png: bytes


@dataclass
class Picture:
    title: str
    jpeg: bytes
    rel: str


def _blocks(data: RunData, plots: bool = True) -> list[tuple[str, Any]]:
    """The report as a list of (kind, content): h2, p, table, plot, details."""
    rows = model_rows(data)
    threads = _thread_settings(rows)
    evals = data.of_type("evaluation")
    pose = any("kpt_mAP50-95" in r["metrics"] for r in rows)
    blocks: list[tuple[str, Any]] = []
    m = data.manifest
    if m:
        host = m.get("host", {})
        blocks.append(("p", f"Spec `{m['spec']}`, version `{m['version']}`, created {m.get('created', '?')} on "
                            f"{host.get('hostname', '?')} ({host.get('platform', '?')}, "
                            f"Python {host.get('python', '?')}, "
                            f"{host.get('cpus', '?')} CPUs)."))
    bench = data.of_type("benchmark")
    if bench:
        h = bench[0]["host"]
        blocks.append(("p", f"Latency measured on {h['model']} ({h['usable_cpus']} usable of {h['logical_cpus']} "
                            f"logical CPUs), all configurations interleaved in one run."))

    headers = ["model", "kind", "precision", "back-end", "size MB", "mAP50-95", "mAP50"]
    if pose:
        headers += ["kpt mAP50-95", "kpt mAP50"]
    headers += [f"p50 ms (threads {t})" for t in threads] + ["max abs err", "min cosine", "det. agreement"]
    table = []
    for r in rows:
        a = r["agreement"] or {}
        line = [r["name"], r["kind"], r["precision"], r["backend"], _mb(r["size_bytes"]),
                _f(r["metrics"].get("mAP50-95")), _f(r["metrics"].get("mAP50"))]
        if pose:
            line += [_f(r["metrics"].get("kpt_mAP50-95")), _f(r["metrics"].get("kpt_mAP50"))]
        line += [_f(r["latency"][t]["p50_ms"], 2) if t in r["latency"] else "—" for t in threads]
        line += [_f(a.get("max_abs"), 6), _f(a.get("min_cosine"), 6), _f(a.get("detections"), 3)]
        table.append(line)
    blocks += [("h2", "Accuracy × back-end × precision"), ("table", Table(headers, table))]
    if plots:
        blocks += [("plot", p) for p in _plots(data, rows)]
    blocks += _picture_blocks(data)

    gates = [(e, g) for e in evals for g in e.get("gates", [])]
    if gates:
        blocks += [("h2", "Accuracy gates"), ("table", Table(
            ["evaluation", "gate", "metric", "reference", "reference value", "value", "drop", "limit", "result"],
            [[e["label"], g["gate"], g["metric"], g.get("reference", "—"), _fixed(g.get("reference_value")),
              _fixed(g["value"]), _fixed(g.get("drop")), _fixed(g["threshold"]), _f(g["passed"])] for e, g in gates]))]

    for sel in data.selections:
        metric, ref = sel["metric"], sel["fp32"]["metrics"]
        names = [k for k in METRICS if k in ref]
        lines = [["fp32 (reference)", *(_f(ref[k]) for k in names), "—", "—"]]
        screen = sel.get("screen")
        lines += [[m, *(_f(r["metrics"][k]) for k in names), _fixed(r["drop"]),
                   "yes" if m == sel["chosen"] else f"no (first {screen['images']} images only)"
                   if r.get("screened_out") else "no"]
                  for m, r in sel["candidates"].items()]
        hold = sel["holdout"]
        blocks += [("h2", f"Calibration method chosen by {sel['_stage']} (method auto)"),
                   ("p", f"Each method's ranges quantized the model ({_settings(sel['quantize'])}) and the result "
                         f"was scored on {hold['images']} held-out labelled images ({hold['instances']} objects, "
                         f"{hold['source']}) that calibration did not use, on {sel['backend']}; the first method "
                         f"listed whose {metric} is within {sel.get('margin', 0):.3f} of the best is chosen "
                         f"(best: {sel.get('best', sel['chosen'])})."
                         + (f" A first round on {screen['images']} of the images kept the methods within "
                            f"{screen['margin']:.3f} of the best there: {', '.join(screen['kept'])}."
                            if screen else "")),
                   ("table", Table(["method", *names, f"drop in {metric}", "chosen"], lines))]

    for comp in data.of_type("comparison"):
        lines = []
        for mdl in comp["models"]:
            for out, s in mdl["outputs"].items():
                lines.append([_name(data, mdl["model"]), mdl["model"]["backend"], mdl["model"]["precision"], out,
                              _f(s["max_abs"], 6), _f(s["mean_abs"], 6), _f(s["max_rel"], 6), _f(s["mean_rel"], 6),
                              _f(s["min_cosine"], 8), _f(s["elementwise_passed"]), _f(mdl["passed"])])
            d = mdl.get("detections")
            if d:
                lines.append([_name(data, mdl["model"]), mdl["model"]["backend"], mdl["model"]["precision"],
                              "detections", f"agreement {d['agreement']:.3f}",
                              f"matched {d['matched']}/{d['reference_count']} ref, {d['model_count']} model",
                              f"count diff mean {d['count_diff_mean']:.2f}, max {d['count_diff_max']}",
                              f"mean IoU {_f(d['mean_iou'])}", f"max score diff {_f(d['max_score_diff'])}", "—",
                              _f(mdl["passed"])])
        ref = comp["reference"]
        blocks += [("h2", f"Cross-back-end comparison against {_name(data, ref)} ({ref['backend']})"),
                   ("p", f"{len(comp['images'])} real images ({', '.join(comp['images'][:6])}"
                         f"{', …' if len(comp['images']) > 6 else ''}). Errors per output over all images; the "
                         "relative error divides by the reference value, so near-zero scores inflate it; "
                         "the element-wise check fails an element only when both atol and rtol are exceeded."),
                   ("table", Table(["model", "back-end", "precision", "output", "max abs", "mean abs", "max rel",
                                    "mean rel", "min cosine", "element-wise", "result"], lines))]

    for b in bench:
        blocks += [("h2", "Latency"),
                   ("p", f"Batch {b['settings']['batch']}, {b['settings']['warmup']} warm-up and "
                         f"{b['settings']['iterations']} timed inferences per configuration in "
                         f"{b['settings']['rounds']} interleaved rounds; load average before/after: "
                         f"{_load(b['load_average'])}."),
                   ("table", Table(["configuration", "threads", "p50 ms", "p90 ms", "p99 ms", "mean ms",
                                    "throughput img/s", "speed-up vs first", "runner settings"],
                                   [[f"{_name(data, r['model'])} @ {r['model']['backend']}", str(r["threads"]),
                                     _f(r["p50_ms"], 2), _f(r["p90_ms"], 2), _f(r["p99_ms"], 2),
                                     _f(r["mean_ms"], 2), _f(r["throughput_ips"], 1), _f(r["speedup_vs_first"], 2),
                                     _settings(r["runner"])] for r in b["results"]]))]

    if data.artifacts:
        blocks += [("h2", "Artifacts"), ("table", Table(
            ["stage", "kind", "precision", "size MB", "files"],
            [[a["stage"] or a.get("label", "—"), a["kind"], a["precision"], _mb(a["size_bytes"]),
              ", ".join(a["files"]) or "—"] for a in data.artifacts]))]

    blocks.append(("h2", "Pipeline"))
    if m:
        stages = {n: m["stages"][n] for n in stage_order(m)}
        cached = sum(s.get("status") in ("cached", "remote") for s in stages.values())  # remote: pulled
        total = sum(float(s.get("seconds", 0)) for s in stages.values())
        hits = f"{cached} cache hit{'' if cached == 1 else 's'}"
        blocks += [("p", f"{len(stages)} stages, {hits}, {total:.1f} s in all."),
                   ("table", Table(["stage", "pass", "inputs", "status", "seconds", "size MB", "summary"],
                                   [[n, s["pass"], ", ".join(_inputs(s)) or "—", s.get("status", "?"),
                                     f"{float(s.get('seconds', 0)):.2f}",
                                     _mb(data.sizes[n]) if n in data.sizes else "—",
                                     s.get("skipped") or _short(s.get("summary", {}))] for n, s in stages.items()]))]
        if plots and _have_matplotlib():
            blocks.append(("plot", _pipeline_graph(m, data.sizes)))
    else:
        blocks.append(("p", "Per-pass timings and cache hits are known only once the run is published: the "
                            "version's own report.html (beside its manifest.json) has them."))

    per_class = _per_class_table(evals, "per_class")
    if per_class:
        blocks += [("h2", "Per-class box AP (mAP50-95)"), ("details", per_class)]
    kpt_class = _per_class_table(evals, "kpt_per_class")
    if kpt_class:
        blocks += [("h2", "Per-class keypoint AP (OKS mAP50-95)"), ("details", kpt_class)]
    if evals:
        blocks += [("h2", "How accuracy was measured"), ("p", _eval_notes(evals))]
    return blocks


def _inputs(stage: dict[str, Any]) -> list[str]:
    return [n for names in stage.get("inputs", {}).values() for n in names]


def _picture_blocks(data: RunData) -> list[tuple[str, Any]]:
    """The drawn detections, per report stage: what each column is, then one picture per photo."""
    blocks: list[tuple[str, Any]] = []
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for p in data.pictures:
        groups.setdefault(p["stage"], []).append(p)
    for stage, pictures in groups.items():
        s = pictures[0].get("settings", {})
        legend = [[m["label"], m.get("stage") or "—", *[str(p["models"][j]["detections"]) for p in pictures]]
                  for j, m in enumerate(pictures[0]["models"])]
        blocks += [
            ("h2", "Detections drawn" + (f" by {stage}" if stage and len(groups) > 1 else "")),
            ("p", "Each model ran on each photo with its own recorded preprocessing; boxes and keypoints are mapped "
                  "back to the original photo, so a letterbox or coordinate mistake shows here. End-to-end models "
                  f"use the thresholds in their graph; raw-head models are post-processed on the host (score > "
                  f"{s.get('conf', '?')}, IoU {s.get('iou', '?')}). The first row shows each model, the second each "
                  f"later model against the first: red only in the first, blue only in that model, grey matched "
                  f"(same class, IoU >= {s.get('match_iou', '?')}). Keypoints below visibility "
                  f"{s.get('kpt_conf', '?')} are not drawn."),
            ("table", Table(["column", "stage", *[f"detections {p['image']}" for p in pictures]], legend))]
        blocks += [("picture", Picture(f"Detections on {p['image']}", p["jpeg"], p["rel"])) for p in pictures]
    return blocks


def stage_order(manifest: dict[str, Any]) -> list[str]:
    """The stages of a manifest in run order."""
    return versions.Version(Path("."), manifest).stage_order()


def _load(load: dict[str, Any]) -> str:
    parts = [", ".join(f"{v:.2f}" for v in load[k]) if load.get(k) else "n/a" for k in ("before", "after")]
    return " / ".join(parts)


def _settings(s: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("providers",))


def _short(summary: dict[str, Any]) -> str:
    parts = [f"{k}={_f(v, 4) if isinstance(v, float) else v}" for k, v in summary.items()
             if isinstance(v, (int, float, str)) and k != "gate_failures"]
    return ", ".join(parts[:4])


def _per_class_table(evals: list[dict[str, Any]], key: str) -> Table | None:
    per = [(e["label"], {c["class"]: c for c in e[key]}) for e in evals if e.get(key)]
    if not per:
        return None
    names: list[str] = []
    for _, classes in per:
        names += [n for n in classes if n not in names]
    rows = []
    for n in names:
        inst = next(classes[n]["instances"] for _, classes in per if n in classes)
        rows.append([n, str(inst)] + [_f(classes[n]["mAP50-95"]) if n in classes else "—" for _, classes in per])
    return Table(["class", "instances", *[label for label, _ in per]], rows)


def _eval_notes(evals: list[dict[str, Any]]) -> str:
    e = evals[0]
    s = e["settings"]
    pp = s.get("preprocess") or {}
    size = "x".join(str(v) for v in pp.get("size", [640, 640]))
    e2e = [x["label"] for x in evals if x["settings"].get("end2end")]
    notes = [
        f"{e['dataset']['images']} images, {e['dataset']['instances']} labelled objects ({e['dataset']['source']}).",
        f"Images are {pp.get('resize', 'letterbox')}ed to a fixed {size} network input (pad value "
        f"{pp.get('pad_value', 114)}), one image per inference. YOLOv5's val.py instead uses rectangular batches: "
        "each batch is letterboxed only to a multiple of the stride around its images' aspect ratio (plus half a "
        "stride of padding), so its inputs are smaller and less padded, and its figures differ slightly.",
        f"Host-side post-processing: score > {s['conf']}, per-class NMS at IoU {s['iou']}, at most {s['max_det']} "
        "detections per image (a box may be kept for several classes, as in YOLOv5's validation).",
        "mAP is computed by pycocotools (101-point interpolated precision, IoU 0.50:0.95; at most 100 detections "
        "per image for boxes and 20 for keypoints, area range 'all'). YOLOv5's val.py computes mAP with its own "
        "code (its own matching and interpolation, all max_det detections), so small differences are expected.",
    ]
    if any("kpt_mAP50-95" in x["metrics"] for x in evals):
        notes.append("Keypoint mAP is pycocotools' OKS mAP; for YOLO labels, which have no segmentation area, the "
                     "OKS scale is 0.53 x box area (Ultralytics' convention); sigmas: "
                     f"{'COCO' if not s.get('kpt_sigmas') else 'given in the spec'}.")
    if e2e:
        notes.append(f"End-to-end models ({', '.join(e2e)}) use the thresholds built into their graph; the score "
                     "threshold above is applied on top.")
    return " ".join(notes)


# --- plots -------------------------------------------------------------------------------------


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; reports are rendered headless
    import matplotlib.pyplot as plt

    return plt


def _have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None  # else tables only (the `eval` extra brings plots)


def _plots(data: RunData, rows: list[dict[str, Any]]) -> list[Plot]:
    if not _have_matplotlib():
        return []
    plots = []
    acc = _accuracy_latency(rows, [data.title])
    if acc:
        plots.append(acc)
    dist = _latency_distributions(data)
    if dist:
        plots.append(dist)
    if data.manifest:
        plots.append(_pass_times({data.title: data.manifest}))
    return plots


def _latency_distributions(data: RunData) -> Plot | None:
    """One box plot of per-inference latency per benchmarked configuration (model @ back-end, threads)."""
    results = [r for b in data.of_type("benchmark") for r in b["results"] if r.get("times_ms")]
    if not results:
        return None
    plt = _pyplot()
    labels = [f"{_name(data, r['model'])} @ {r['model']['backend']}"
              + (f" t{r['threads']}" if r["threads"] != "default" else "") for r in results]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(results) + 1.3))
    import matplotlib

    # `vert` is deprecated from matplotlib 3.10, which brought `orientation`.
    horizontal = {"orientation": "horizontal"} if tuple(int(v) for v in matplotlib.__version__.split(".")[:2]) \
        >= (3, 10) else {"vert": False}
    ax.boxplot([r["times_ms"] for r in results], whis=(1, 99), showfliers=True,
               flierprops={"markersize": 3, "alpha": 0.5}, **horizontal)
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency per inference (ms); box: quartiles, whiskers: 1st-99th percentile")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Latency distribution per configuration")
    return Plot("latency_distribution", "Latency distribution per configuration", _png(fig))


def _pipeline_graph(manifest: dict[str, Any], sizes: dict[str, int]) -> Plot:
    """The stages as a small left-to-right graph: a column per depth, edges from inputs, coloured by status."""
    plt = _pyplot()
    names = stage_order(manifest)
    stages = manifest["stages"]
    depth: dict[str, int] = {}
    for n in names:
        depth[n] = 1 + max((depth[i] for i in _inputs(stages[n]) if i in depth), default=-1)
    columns: dict[int, list[str]] = {}
    for n in names:
        columns.setdefault(depth[n], []).append(n)
    tallest = max(len(c) for c in columns.values())
    pos = {n: (d, -(k - (len(col) - 1) / 2)) for d, col in columns.items() for k, n in enumerate(col)}
    fig, ax = plt.subplots(figsize=(max(5.0, 2.1 * len(columns)), max(1.8, 0.85 * tallest + 0.6)))
    colour = {"ran": "#4c72b0", "cached": "#55a868", "skipped": "#c0c0c0"}
    for n in names:
        for i in _inputs(stages[n]):
            if i in pos:
                (x0, y0), (x1, y1) = pos[i], pos[n]
                ax.annotate("", (x1 - 0.42, y1), (x0 + 0.42, y0),
                            arrowprops={"arrowstyle": "->", "color": "#888", "lw": 0.8})
    for n in names:
        s = stages[n]
        x, y = pos[n]
        status = s.get("status", "?")
        size = f", {sizes[n] / 1e6:.1f} MB" if sizes.get(n) else ""
        ax.text(x, y, f"{n}\n{status} {float(s.get('seconds', 0)):.1f}s{size}", ha="center", va="center",
                fontsize=7, color="white" if status != "skipped" else "#333",
                bbox={"boxstyle": "round,pad=0.35", "fc": colour.get(status, "#8172b2"), "ec": "none"})
    ax.set_xlim(-0.6, len(columns) - 0.4)
    ax.set_ylim(-(tallest - 1) / 2 - 0.6, (tallest - 1) / 2 + 0.6)
    ax.axis("off")
    for st, c in colour.items():
        ax.scatter([], [], color=c, marker="s", label=st)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, 1.12), ncol=3, frameon=False)
    return Plot("pipeline", "Pipeline", _png(fig))


_MARKERS = {"fp32": "o", "fp16": "s", "int8": "^"}


def _accuracy_latency(rows: list[dict[str, Any]], titles: list[str], sets: list[list[dict]] | None = None
                      ) -> Plot | None:
    """mAP50-95 against p50 latency, one point per (model, back-end, threads)."""
    sets = sets or [rows]
    points = [(i, r, t, lat) for i, rs in enumerate(sets) for r in rs if "mAP50-95" in r["metrics"]
              for t, lat in r["latency"].items()]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    backends = sorted({r["backend"] for _, r, _, _ in points})
    for i, r, t, lat in points:
        color = colors[backends.index(r["backend"]) % len(colors)]
        ax.scatter(lat["p50_ms"], r["metrics"]["mAP50-95"], marker=_MARKERS.get(r["precision"], "D"), s=48,
                   color=color, alpha=0.85 if i == 0 else 0.45, edgecolors="black" if i == 0 else "none")
        tag = f"{r['name']}@{r['backend']}" + (f" t{t}" if t != "default" else "")
        if len(sets) > 1:
            tag = f"{titles[i].split('/')[-1]}: {tag}"
        ax.annotate(tag, (lat["p50_ms"], r["metrics"]["mAP50-95"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    for b in backends:
        ax.scatter([], [], color=colors[backends.index(b) % len(colors)], label=b)
    for p, mk in _MARKERS.items():
        if any(r["precision"] == p for _, r, _, _ in points):
            ax.scatter([], [], color="grey", marker=mk, label=p)
    ax.set_xlabel("latency p50 (ms)")
    ax.set_ylabel("mAP50-95")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Accuracy vs latency")
    return Plot("accuracy_latency", "Accuracy vs latency", _png(fig))


def _pass_times(manifests: dict[str, dict[str, Any]]) -> Plot:
    """Seconds per stage (cached stages near 0), one bar group per version."""
    plt = _pyplot()
    names: list[str] = []
    for m in manifests.values():
        names += [n for n in stage_order(m) if n not in names]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) * len(manifests) + 1.2))
    height = 0.8 / len(manifests)
    status_color = {"ran": "#4c72b0", "cached": "#55a868", "remote": "#8c8c3c", "skipped": "#c0c0c0"}
    for i, (title, m) in enumerate(manifests.items()):
        for j, n in enumerate(names):
            s = m["stages"].get(n)
            if s is None:
                continue
            y = j + i * height
            ax.barh(y, float(s.get("seconds", 0)), height=height * 0.9,
                    color=status_color.get(s.get("status"), "#8172b2"), alpha=1.0 if i == 0 else 0.6)
            if len(manifests) > 1:
                ax.annotate(title.split("/")[-1], (float(s.get("seconds", 0)), y), fontsize=6, xytext=(3, -2),
                            textcoords="offset points")
    ax.set_yticks([j + height * (len(manifests) - 1) / 2 for j in range(len(names))], names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    from matplotlib.patches import Patch

    # an empty barh draws no patch, so its legend entry took the default colour: name the colours directly
    ax.legend(handles=[Patch(color=c, label=st) for st, c in status_color.items()], fontsize=7, loc="lower right")
    ax.set_title("Per-pass time")
    ax.grid(axis="x", alpha=0.3)
    return Plot("pass_times", "Per-pass time", _png(fig))


# --- rendering ---------------------------------------------------------------------------------


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def plot_file(stem: str, plot: Plot) -> str:
    """File name of a plot written beside the Markdown report ``<stem>.md``."""
    return f"{stem}-{plot.key.replace('_', '-')}.png"


def render_markdown(title: str, blocks: list[tuple[str, Any]], stem: str = "report") -> str:
    """Markdown; plots are referenced as PNG files written beside it (:func:`plot_file`)."""
    out = [f"# Report: {title}", ""]
    for kind, content in blocks:
        if kind == "h2":
            out += [f"## {content}", ""]
        elif kind == "p":
            out += [content, ""]
        elif kind in ("table", "details"):
            t: Table = content
            out.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
            out.append("|" + "|".join("---" for _ in t.headers) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in t.rows]
            out.append("")
        elif kind == "plot":
            out += [f"![{content.title}]({plot_file(stem, content)})", ""]
        elif kind == "picture":
            out += [f"![{content.title}]({content.rel})", ""]
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em;border-bottom:2px solid #ddd;padding-bottom:.3em}h2{font-size:1.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
td.fail{color:#b00;font-weight:bold}td.pass{color:#080}img{max-width:100%;border:1px solid #eee}
figure{display:inline-block;margin:.5em 1em .5em 0}figure.picture{display:block}figcaption{font-size:.8em;color:#555}
p{line-height:1.45;max-width:70em}code{background:#f3f3f3;padding:0 3px}
"""


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = []
    for r in t.rows:
        cells = []
        for c in r:
            cls = ' class="fail"' if c == "FAIL" else ' class="pass"' if c == "pass" else ""
            cells.append(f"<td{cls}>{html.escape(str(c))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_text(s: str) -> str:
    # Backticks mark code in the shared text; everything else is escaped.
    parts = html.escape(s).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(title: str, blocks: list[tuple[str, Any]]) -> str:
    """A self-contained HTML page: inline CSS, plots as base64 PNG, no scripts, no external links."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Report: {html.escape(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Report: {html.escape(title)}</h1>"]
    for kind, content in blocks:
        if kind == "h2":
            out.append(f"<h2>{html.escape(content)}</h2>")
        elif kind == "p":
            out.append(f"<p>{_html_text(content)}</p>")
        elif kind == "table":
            out.append(_html_table(content))
        elif kind == "details":
            out.append(f"<details><summary>{len(content.rows)} rows</summary>{_html_table(content)}</details>")
        elif kind == "plot":
            b64 = base64.b64encode(content.png).decode()
            out.append(f'<figure><img alt="{html.escape(content.title)}" src="data:image/png;base64,{b64}">'
                       f"<figcaption>{html.escape(content.title)}</figcaption></figure>")
        elif kind == "picture":
            b64 = base64.b64encode(content.jpeg).decode()
            out.append(f'<figure class="picture"><img alt="{html.escape(content.title)}" '
                       f'src="data:image/jpeg;base64,{b64}"><figcaption>{html.escape(content.title)}</figcaption>'
                       "</figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(data: RunData, out_dir: Path) -> tuple[Path, Path]:
    """Writes ``report.md`` (with its plot PNGs) and ``report.html`` into ``out_dir``.

    Returns:
        (Markdown path, HTML path).
    """
    blocks = _blocks(data)
    return _write(data.title, blocks, Path(out_dir), "report")


def _write(title: str, blocks: list[tuple[str, Any]], out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind, content in blocks:
        if kind == "plot":
            (out_dir / plot_file(stem, content)).write_bytes(content.png)
    md, page = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
    md.write_text(render_markdown(title, blocks, stem))
    page.write_text(render_html(title, blocks))
    return md, page


# --- two versions side by side -----------------------------------------------------------------


def comparison_blocks(a: RunData, b: RunData) -> list[tuple[str, Any]]:
    """Blocks putting two versions side by side: figures of A, B and B - A per model and back-end."""
    rows_a, rows_b = model_rows(a), model_rows(b)
    key = lambda r: (r["name"], r["backend"], r["precision"])  # noqa: E731
    by_a, by_b = {key(r): r for r in rows_a}, {key(r): r for r in rows_b}
    keys = list(by_a) + [k for k in by_b if k not in by_a]
    threads = [t for t in _thread_settings(rows_a) if t in _thread_settings(rows_b)]
    metrics = [m for m in METRICS if any(m in r["metrics"] for r in rows_a + rows_b)]
    la, lb = a.title.split("/")[-1], b.title.split("/")[-1]
    headers = ["model", "back-end", "precision"]
    for m in metrics:
        headers += [f"{m} {la}", f"{m} {lb}", "Δ"]
    for t in threads:
        headers += [f"p50 ms t{t} {la}", f"p50 ms t{t} {lb}", "ratio"]
    headers += [f"size MB {la}", f"size MB {lb}"]
    table = []
    for k in keys:
        ra, rb = by_a.get(k), by_b.get(k)
        line = list(k)
        for m in metrics:
            va = ra["metrics"].get(m) if ra else None
            vb = rb["metrics"].get(m) if rb else None
            line += [_f(va), _f(vb), f"{vb - va:+.4f}" if va is not None and vb is not None else "—"]
        for t in threads:
            va = ra["latency"][t]["p50_ms"] if ra and t in ra["latency"] else None
            vb = rb["latency"][t]["p50_ms"] if rb and t in rb["latency"] else None
            line += [_f(va, 2), _f(vb, 2), f"{vb / va:.2f}x" if va and vb else "—"]
        line += [_mb(ra["size_bytes"]) if ra else "—", _mb(rb["size_bytes"]) if rb else "—"]
        table.append(line)
    blocks: list[tuple[str, Any]] = [
        ("p", f"A = `{a.title}`, B = `{b.title}`. Latencies come from separate runs, so their ratio is only as "
              "good as the machine was quiet; within one version the figures were measured side by side."),
        ("h2", "Figures side by side"), ("table", Table(headers, table))]
    plot = _accuracy_latency([], [a.title, b.title], [rows_a, rows_b])
    if plot:
        blocks.append(("plot", plot))
    if a.manifest and b.manifest:
        names = stage_order(a.manifest) + [n for n in stage_order(b.manifest) if n not in a.manifest["stages"]]
        stage_rows = []
        for n in names:
            sa, sb = a.manifest["stages"].get(n), b.manifest["stages"].get(n)
            stage_rows.append([n, *(f"{s.get('status')} {float(s.get('seconds', 0)):.2f}s" if s else "—"
                                   for s in (sa, sb)),
                               "same" if sa and sb and sa.get("output") == sb.get("output") else "differs"])
        blocks += [("h2", "Pipeline"), ("table", Table(["stage", la, lb, "output"], stage_rows)),
                   ("plot", _pass_times({a.title: a.manifest, b.title: b.manifest}))]
    return blocks


def write_comparison(a: RunData, b: RunData, out_dir: Path) -> tuple[Path, Path]:
    """Writes ``compare-<A>-<B>.md`` / ``.html`` into ``out_dir``."""
    title = f"{a.title} vs {b.title}"
    stem = f"compare-{a.title.replace('/', '-')}-vs-{b.title.split('/')[-1]}"
    return _write(title, comparison_blocks(a, b), Path(out_dir), stem)


# --- a matrix's combinations side by side ------------------------------------------------------


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _figures(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def matrix_blocks(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """A matrix summary (``convert.matrix.write_summary``): one row per combination with its figures,
    then the stages (which were shared, which differ)."""
    combos, variables = summary["combinations"], summary["variables"]
    figure_cols = list(dict.fromkeys((stage, k) for c in combos for stage, s in c["stages"].items()
                                     for k in _figures(s.get("summary") or {})))
    rows = []
    for c in combos:
        line = [_value(c["values"][k]) for k in variables] + [f"{c['spec']}/{c['version']}"]
        for stage, k in figure_cols:
            v = ((c["stages"].get(stage) or {}).get("summary") or {}).get(k)
            line.append("—" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        rows.append(line)
    stage_rows = []
    for n in dict.fromkeys(n for c in combos for n in c["stages"]):
        cells = [(c["stages"].get(n) or {}) for c in combos]
        stage_rows.append([n, "shared" if n in summary["shared_stages"] else "per combination",
                           *(f"{s.get('status', '—')} {(s.get('output') or '')[:8]}" for s in cells)])
    blocks: list[tuple[str, Any]] = [
        ("p", f"{len(combos)} combinations of {', '.join(variables)}; {len(summary['shared_stages'])} stage(s) "
              f"are shared by all of them (same key, built once: {', '.join(summary['shared_stages']) or 'none'})."),
        ("h2", "Combinations"),
        ("table", Table([*variables, "version", *(f"{s} {k}" for s, k in figure_cols)], rows)),
        ("h2", "Stages"),
        ("table", Table(["stage", "", *(c["spec"] for c in combos)], stage_rows)),
    ]
    return blocks


def write_matrix(summary: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Writes ``comparison.md`` / ``.html`` of a matrix summary into ``out``."""
    return _write(f"matrix {summary['matrix']}", matrix_blocks(summary), Path(out), "comparison")
