"""convert: build deployable YOLO artifacts from a declarative spec.

Each command's help is its function's docstring. Errors print one line (with a Hint) and
exit with status 2; a failed accuracy gate exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from pathlib import Path

from convert.errors import ConvertError

DEFAULT_SPEC = "pipelines/yolov5_pose_int8.yaml"


def _dirs(args, spec=None) -> tuple[Path, Path]:
    store = args.store or os.environ.get("CONVERT_STORE") or (spec.store if spec and spec.store else ".convert/store")
    arts = (args.artifacts or os.environ.get("CONVERT_ARTIFACTS")
            or (spec.artifacts if spec and spec.artifacts else "artifacts"))
    return Path(store), Path(arts)


def _load(args):
    from convert.spec import load_spec

    return load_spec(args.spec, args.overrides)


def _manager(args, spec, log=None, executor=None):
    from convert import progress
    from convert.manager import Manager
    from convert.store import Store

    store, arts = _dirs(args, spec)
    trust = getattr(args, "trust_code", False) or os.environ.get("CONVERT_TRUST_CODE", "") == "1"
    return Manager(spec, Store(store, remote=_remote(args, spec)), arts, log=log or (lambda s: None),
                   progress=progress.wanted(getattr(args, "no_progress", False)), trust_code=trust,
                   executor=executor)


def _remote(args, spec=None):
    """The remote cache: --remote, $CONVERT_REMOTE, the spec's store.remote or the team config file."""
    from convert.remote import resolve

    return resolve(getattr(args, "remote", None), spec.remote if spec is not None else None,
                   no_push=getattr(args, "no_push", False))


def _specs(args) -> list:
    """The spec, or one per combination of its ``matrix:`` (:mod:`convert.matrix`)."""
    from convert.matrix import expand

    variants = expand(args.spec, args.overrides)
    return [v.spec for v in variants] if variants is not None else [_load(args)]


def _executor(args):
    if getattr(args, "executor", "local") != "ray":
        if getattr(args, "address", None):
            raise ConvertError("--address is for --executor ray.", hint="add --executor ray, or drop --address.")
        return None
    from convert.executors import RayExecutor

    return RayExecutor(address=args.address)


def cmd_run(args) -> int:
    """Run a spec: cached stages are reused, changed ones and those after them run.

    Publishes artifacts/<spec name>/<version>/ with every stage's files and a manifest, points
    `latest` at it and writes the lockfile beside the spec (<spec>.lock). A spec with a `matrix:`
    runs every combination (artifacts/<name>-<values>/, <spec>.<values>.lock; stages equal across
    combinations are built once) and writes a comparison to artifacts/<name>/matrix-<id>/.
    """
    from convert.matrix import expand
    from convert.matrix import run as run_matrix

    out = sys.stderr if args.json else sys.stdout
    log = lambda s: print(s, file=out, flush=True)  # noqa: E731
    force = set(args.force or [])
    if args.force_all:
        force.add("*")
    executor = _executor(args)
    variants = expand(args.spec, args.overrides)
    if variants is not None:
        make = lambda spec: _manager(args, spec, log=log, executor=executor)  # noqa: E731
        reports, summary = run_matrix(variants, make, log=log, force=force, until=args.until, frozen=args.frozen)
        if args.json:
            print(json.dumps({"combinations": [r.to_json() for r in reports],
                              "summary": str(summary) if summary else None}, indent=1))
        else:
            for r in reports:
                if r.published:
                    print(f"published {r.published}")
            if summary:
                print(f"compared in {summary}/comparison.md")
        return 0
    spec = _load(args)
    mgr = _manager(args, spec, log=log, executor=executor)
    report = mgr.run(force=force, until=args.until, frozen=args.frozen)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    elif report.published:
        print(f"published {report.published}")
    return 0


def cmd_validate(args) -> int:
    """Check a spec (bases, interpolation, overrides, every pass's parameters, files) without running it."""
    for spec in _specs(args):
        print(f"{spec.path}{f' [{spec.name}]' if spec.variant else ''}: ok ({len(spec.stages)} stages: "
              f"{', '.join(s.name for s in spec.stages)})")
        for name, why in _manager(args, spec).code_stages():
            print(f"  {name}: needs --trust-code ({why})")
    return 0


def cmd_plan(args) -> int:
    """Dry run: say which stages are cached, which come from the remote cache and which would run."""
    specs = _specs(args)
    plans = [(spec, _manager(args, spec).plan(force=set(args.force or []))) for spec in specs]
    if args.json:
        rows = {spec.name: [{"stage": r.name, "pass": r.pass_name, "status": r.status, "key": r.key,
                             "reason": r.reason} for r in plan] for spec, plan in plans}
        print(json.dumps(rows if len(specs) > 1 or specs[0].variant else rows[specs[0].name], indent=1))
        return 0
    first_by_key: dict[str, str] = {}
    for spec, plan in plans:
        if spec.variant:
            print(f"== {spec.name}")
        for r in plan:
            state = {"cached": "cached", "skipped": "skipped", "remote": "remote"}.get(r.status, "will run")
            shown = r.status == "skipped" or any(w in (r.reason or "") for w in ("will fail", "changed since"))
            why = f"  ({r.reason})" if r.reason and shown else ""
            if r.status == "pending" and r.key in first_by_key:
                why += f"  (same key as in {first_by_key[r.key]}: built once)"
            elif r.key:
                first_by_key.setdefault(r.key, spec.name)
            print(f"{r.name:<16} {r.pass_name:<16} {state:<9} {(r.key or '')[:12]:<12}{why}")
        for name, why in _manager(args, spec).code_stages():
            print(f"{name}: needs --trust-code ({why})")
    return 0


def cmd_passes(args) -> int:
    """List the passes, or show one pass's parameters with `convert passes show NAME`."""
    from convert.registry import all_passes, get_pass

    if args.action == "show":
        if not args.name:
            raise ConvertError("`convert passes show` needs a pass name.", hint="`convert passes` lists them.")
        print(describe_pass(get_pass(args.name)))
        return 0
    for name, cls in sorted(all_passes().items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:<18} {doc}")
    return 0


def describe_pass(cls) -> str:
    """The help text of a pass: its docstring, inputs, output and parameter schema."""
    lines = [f"{cls.name} (version {cls.version}): {(cls.__doc__ or '').strip()}", ""]
    if cls.inputs:
        lines.append("inputs:")
        for role, inp in cls.inputs.items():
            lines.append(f"  {role}: {' | '.join(inp.kinds)}{'[]' if inp.many else ''}"
                         f"{'' if inp.required else ' (optional)'}  {inp.doc}")
    lines.append(f"output: {cls.output}")
    if cls.requires:
        lines.append(f"requires: {', '.join(cls.requires)}")
    lines.append("parameters (with:):")
    lines += _describe_fields(cls.Config, "  ")
    return "\n".join(lines)


def _describe_fields(config_cls, indent: str, prefix: str = "") -> list[str]:
    """One entry per field (nested configs expanded under their dotted names)."""
    from convert.base import PassConfig

    lines = []
    for fname, f in config_cls.model_fields.items():
        nested = [a for a in (f.annotation, *typing.get_args(f.annotation))
                  if isinstance(a, type) and issubclass(a, PassConfig)]
        if nested:
            default = "optional" if not f.is_required() and f.get_default() is None else "defaults below"
        else:
            default = "required" if f.is_required() else f"default {f.get_default(call_default_factory=True)!r}"
        lines.append(f"{indent}{prefix}{fname}: {_type_name(f.annotation, f.metadata)} ({default})")
        if f.description:
            lines.append(f"{indent}    {f.description}")
        for sub in nested:
            lines += _describe_fields(sub, indent, f"{prefix}{fname}.")
    return lines


def _type_name(ann, metadata=()) -> str:
    """A readable type: ``path``, ``one of 'a', 'b'``, ``list[str] | null``, ``mapping``."""
    import types

    from convert.base import InputFile, PassConfig

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is type(None):
        return "null"
    if any(isinstance(m, InputFile) for m in metadata):
        return "path"
    if origin is typing.Annotated:
        return "path" if any(isinstance(m, InputFile) for m in args[1:]) else _type_name(args[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args if a is not Ellipsis)}]"
    if origin is dict or ann is dict:
        return "mapping"
    if isinstance(ann, type) and issubclass(ann, PassConfig):
        return "mapping"
    return getattr(ann, "__name__", str(ann).replace("typing.", ""))


def cmd_versions(args) -> int:
    """List published versions (of one spec name, or of all)."""
    from convert import versions

    _, arts = _dirs(args)
    for name in [args.name] if args.name else versions.spec_names(arts):
        latest = versions.latest(arts, name)
        for v in versions.list_versions(arts, name):
            mark = "  (latest)" if v.path.name == latest else ""
            print(f"{v.title}  {v.manifest.get('created', '?')}  {len(v.stages)} stages{mark}")
    return 0


def _version_path(args, target: str | None = None) -> Path:
    from convert import versions

    _, arts = _dirs(args)
    return versions.resolve(arts, target or args.target)


def cmd_show(args) -> int:
    """Show a published version's manifest (NAME, NAME/VERSION or a path)."""
    from convert import versions

    v = versions.read(_version_path(args))
    print(f"{v.title}  created {v.manifest.get('created', '?')} on {v.manifest.get('host', {}).get('hostname', '?')}")
    for name in v.stage_order():
        s = v.stages[name]
        print(f"  {name:<16} {s['pass']:<16} {s.get('status', '?'):<8} {(s.get('output') or '')[:12]}  "
              f"{s.get('seconds', 0)}s")
        for f in v.manifest.get("files", {}).get(name, {}):
            print(f"      {name}/{f}")
    return 0


def cmd_verify(args) -> int:
    """Re-hash a published version's files against its manifest."""
    from convert import versions

    path = _version_path(args)
    problems = versions.verify(path)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        raise ConvertError(f"{path}: {len(problems)} file(s) do not match the manifest.",
                           hint="rebuild with `convert run SPEC --force-all`.")
    print(f"{path}: ok")
    return 0


def cmd_gc(args) -> int:
    """Clean the store: remove leftovers of killed runs and every object no published version uses."""
    from convert import versions
    from convert.store import Store

    store_dir, arts = _dirs(args)
    counts = Store(store_dir).gc(set() if args.all else versions.used_objects(arts))
    counts["tmp"] += versions.remove_leftovers(arts)
    print(f"removed {counts['tmp']} temporary dirs, {counts['entries']} cache entries, {counts['objects']} objects")
    return 0


def cmd_push(args) -> int:
    """Push a published version (NAME, NAME/VERSION or a path) to the remote cache: every stage's
    output and cache entry, then its manifest, so `convert pull` (or any run of the same spec) gets it."""
    from convert.remote import push_version
    from convert.store import Store

    remote = _need_remote(args)
    path = _version_path(args)
    store_dir, _ = _dirs(args)
    n = push_version(path, remote, Store(store_dir))
    print(f"pushed {path} to {remote.url} ({n} stage(s) written, the others were there)")
    return 0


def cmd_pull(args) -> int:
    """Pull a version pushed with `convert push` (NAME/VERSION) into the store and publish it here."""
    from convert.remote import pull_version
    from convert.store import Store

    remote = _need_remote(args)
    name, _, version = args.target.partition("/")
    if not name or not version:
        raise ConvertError(f"`convert pull` needs NAME/VERSION, got {args.target!r}.",
                           hint="the version is printed by `convert push` and `convert versions` where it was built.")
    store_dir, arts = _dirs(args)
    path = pull_version(remote, name, version, arts, Store(store_dir, remote=remote))
    print(f"pulled {path}")
    return 0


def _need_remote(args):
    remote = _remote(args)
    if remote is None:
        raise ConvertError("no remote cache is set.", hint="give --remote URL, set $CONVERT_REMOTE, or `remote:` in "
                           ".convert/config.yaml.")
    return remote


def cmd_report(args) -> int:
    """Write a version's report (Markdown + self-contained HTML), or compare two versions.

    `convert report NAME[/VERSION]` renders the report from the published manifest and metrics
    (with per-pass timings and cache hits) into the version directory, or into --output.
    `convert report A B` writes a side-by-side comparison of two versions into --output
    (default: the current directory) and prints its Markdown.
    """
    from convert import registry

    if len(args.targets) > 2:
        raise ConvertError(f"`convert report` takes one version, or two to compare; got {len(args.targets)}.")
    paths = [_version_path(args, t) for t in args.targets]
    render = registry.renderer("version" if len(paths) == 1 else "comparison")
    if render is None:
        raise ConvertError("no report renderer is installed.",
                           hint="install the project (pip install -e .), which registers the built-in one.")
    if len(paths) == 1:
        md, page = render(paths[0], Path(args.output) if args.output else paths[0])
    else:
        md, page = render(paths[0], paths[1], Path(args.output or "."))
        print(md.read_text())
    print(f"wrote {md} and {page}")
    return 0


def cmd_predict(args) -> int:
    """Run a published model on images: annotated images and detections in original-image pixels.

    MODEL is NAME/VERSION/STAGE, NAME/STAGE (the latest version), NAME[/VERSION] (its single
    end-to-end model), a version's stage folder or an artifact folder; end-to-end models use the
    NMS in their graph, raw-head models are post-processed on the host. Writes DIR/<image>.jpg and
    DIR/predictions.json (DIR/predictions.coco.json too with --coco); --json prints the JSON instead
    of the summary (COCO results with --coco).
    """
    from convert import predict, progress

    _, arts = _dirs(args)
    artifact, where = predict.resolve_model(arts, args.model)
    paths = predict.image_paths(args.images)
    out = Path(args.out)
    result = predict.run(artifact, paths, out, args.backend, args.conf, args.iou, args.max_det,
                         progress=progress.wanted(args.no_progress))
    raw = result.pop("_raw")
    record = {"model": {"name": where, **result["model"]}, **{k: v for k, v in result.items() if k != "model"}}
    (out / "predictions.json").write_text(json.dumps(record, indent=1) + "\n")
    coco = predict.coco_json(raw) if args.coco else None
    if coco is not None:
        (out / "predictions.coco.json").write_text(json.dumps(coco, indent=1) + "\n")
    if args.json:
        print(json.dumps(coco if coco is not None else record, indent=1))
        return 0
    for im in record["images"]:
        print(f"{im['file']}: {len(im['detections'])} detections -> {im['annotated']}")
    print(f"wrote {out / 'predictions.json'}" + (f" and {out / 'predictions.coco.json'}" if coco is not None else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="store directory (default: $CONVERT_STORE, the spec's `store`, .convert/store)")
    p.add_argument("--artifacts", help="where versions are published (default: $CONVERT_ARTIFACTS, "
                   "the spec's `artifacts`, ./artifacts)")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn):
        sp = sub.add_parser(name, help=fn.__doc__.splitlines()[0], description=fn.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    def spec_args(sp, optional=False):
        sp.add_argument("spec", nargs="?" if optional else None, default=DEFAULT_SPEC,
                        help=f"the spec file{f' (default: {DEFAULT_SPEC})' if optional else ''}")
        sp.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. model.weights=PATH")

    def remote_args(sp, push=True):
        sp.add_argument("--remote", metavar="URL", help="shared remote cache: s3://BUCKET/PREFIX, gs://, az://, "
                        "file:///PATH, https://... (read-only); `none` for none (default: $CONVERT_REMOTE, the "
                        "spec's store.remote, `remote:` in .convert/config.yaml)")
        if push:
            sp.add_argument("--no-push", action="store_true", help="pull from the remote, but push nothing to it")

    sp = add("run", cmd_run)
    spec_args(sp, optional=True)
    sp.add_argument("--force", action="append", metavar="STAGE", help="re-run this stage even if cached (repeatable)")
    sp.add_argument("--force-all", action="store_true", help="re-run every stage")
    sp.add_argument("--until", metavar="STAGE", help="stop after this stage (publishes nothing)")
    sp.add_argument("--frozen", action="store_true", help="CI mode: fail unless keys and outputs equal the lockfile")
    sp.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.add_argument("--trust-code", action="store_true", help="allow stages that import or load code the spec "
                    "names (source: python factories, TensorRT plugin libraries); also CONVERT_TRUST_CODE=1")
    remote_args(sp)
    sp.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="where stages run: here one after the other (default), or as Ray tasks (independent "
                    "stages at once, on the nodes their `resources:` ask for)")
    sp.add_argument("--address", metavar="ADDR", help="the Ray cluster for --executor ray (ray://HOST:10001, "
                    "HOST:6379 or auto; default: a local instance)")
    sp = add("validate", cmd_validate)
    spec_args(sp, optional=True)
    sp = add("plan", cmd_plan)
    spec_args(sp, optional=True)
    sp.add_argument("--force", action="append", metavar="STAGE")
    sp.add_argument("--json", action="store_true")
    remote_args(sp, push=False)
    for name, fn in (("push", cmd_push), ("pull", cmd_pull)):
        sp = add(name, fn)
        sp.add_argument("target", help="NAME/VERSION (push also takes NAME, for its latest, or a version directory)")
        remote_args(sp, push=False)
    sp = add("passes", cmd_passes)
    sp.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    sp.add_argument("name", nargs="?")
    sp = add("versions", cmd_versions)
    sp.add_argument("name", nargs="?", help="spec name")
    for name, fn in (("show", cmd_show), ("verify", cmd_verify)):
        sp = add(name, fn)
        sp.add_argument("target", help="NAME (its latest), NAME/VERSION, or a version directory")
    sp = add("report", cmd_report)
    sp.add_argument("targets", nargs="+", metavar="TARGET",
                    help="NAME (its latest), NAME/VERSION or a version directory; two to compare")
    sp.add_argument("--output", "-o", metavar="DIR", help="where to write (default: the version directory; "
                    "for a comparison, the current directory)")
    sp = add("predict", cmd_predict)
    sp.add_argument("model", metavar="MODEL", help="NAME/VERSION/STAGE, NAME/STAGE, NAME[/VERSION], a stage folder "
                    "or an artifact folder")
    sp.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders (searched recursively)")
    sp.add_argument("--backend", choices=["onnxruntime", "openvino", "tensorrt", "torch"],
                    help="run on this back-end (default: by kind; an onnx model may use openvino)")
    sp.add_argument("--out", "-o", default="predictions", metavar="DIR", help="where to write (default: predictions)")
    sp.add_argument("--conf", type=float, help="score threshold (default: end-to-end models' own, else 0.25)")
    sp.add_argument("--iou", type=float, help="IoU of host-side NMS for raw-head models (default 0.45)")
    sp.add_argument("--max-det", type=int, help="detections per image of host-side NMS (default 300)")
    sp.add_argument("--json", action="store_true", help="print the detections as JSON on stdout")
    sp.add_argument("--coco", action="store_true", help="also write COCO-style results (predictions.coco.json)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp = add("gc", cmd_gc)
    sp.add_argument("--all", action="store_true", help="also remove objects that published versions use")
    return p


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # full disk, read-only or unwritable store / artifacts / spec folder
        from convert.errors import from_os_error

        print(f"error: {from_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
