"""The spec: a YAML file of ordered stages, each running one pass.

A spec looks like::

    _base_: [base.yaml]              # optional, relative files deep-merged in order
    name: yolov5n_onnx                # optional; defaults to the file's stem
    model: {weights: null}            # free variables, referenced by interpolation
    stages:                           # ordered mapping: stage name -> stage
      load:   {pass: load, with: {source: yolov5, weights: "${model.weights}"}}
      export: {pass: export_onnx, with: {opset: 17}}
      report: {pass: evaluate, inputs: {model: export, reference: load}, optional: true}

``pass`` defaults to the stage name; ``inputs`` maps the pass's input roles to earlier stages
(the first role defaults to the previous stage). Interpolation is OmegaConf's, including
``${oc.env:VAR,default}``; ``${spec_dir:}`` is the directory of the spec file. Command-line
overrides are dot paths: ``model.weights=PATH`` or ``stages.export.with.opset=13``.

Everything is checked here, before any pass runs; an error names the file and key path.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convert.base import Input, InputFile, Pass, PassConfig
from convert.errors import ConvertError, SpecError

STAGE_KEYS = {
    "pass": "name of the pass to run (default: the stage name)",
    "with": "the pass's parameters (see `convert passes show NAME`)",
    "inputs": "input role -> earlier stage name (or list of names); the first role defaults to the previous stage",
    "optional": "skip the stage, with a notice, when its backend is not installed",
    "resources": "what the stage needs on a Ray cluster (--executor ray): {CPU: 2, GPU: 1, my_node_type: 1}",
    "description": "free text",
}
TOP_KEYS_RESERVED = {"name", "description", "stages", "store", "artifacts", "_base_", "matrix"}


@dataclass
class Stage:
    """One validated stage of a spec."""

    name: str
    pass_cls: type[Pass]
    config: PassConfig
    inputs: dict[str, list[str]]
    optional: bool = False
    resources: dict[str, float] = field(default_factory=dict)
    """Ray resources the stage needs (not part of its key: they say where it runs, not what it makes)."""

    @property
    def pass_name(self) -> str:
        return self.pass_cls.name


@dataclass
class Spec:
    """A loaded, resolved and validated spec."""

    name: str
    path: Path
    stages: list[Stage]
    resolved: dict[str, Any]
    store: Path | None = None
    artifacts: Path | None = None
    remote: str | None = None
    """``store.remote``: the shared remote cache URL (see :mod:`convert.remote`)."""
    variant: str | None = None
    """The combination of a ``matrix:`` this spec is (its lockfile is ``<spec>.<variant>.lock``)."""
    public: dict[str, Any] = field(default_factory=dict)
    """What a manifest may record: the spec file as written, the overrides, each stage's parameters
    resolved with environment values left as their ``${oc.env:...}`` interpolation."""

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise SpecError(f"{self.path}: no stage named {name!r} (stages: {', '.join(s.name for s in self.stages)}).")


MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_ALIASES = 100
MAX_NODES = 100_000
MAX_PATH = 4096
STAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
"""Stage and spec names: one folder name under artifacts/, never a path, a dot file or a file of a version."""


def _loader(path: Path):
    """A safe YAML loader that refuses what a spec never needs and a hostile one would use: duplicate
    keys (the last one silently winning), deep nesting, and alias expansion (a billion-laughs file)."""
    import yaml

    class Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                Loader.aliases += 1
                if Loader.aliases > MAX_ALIASES:
                    raise SpecError(f"{path}: more than {MAX_ALIASES} YAML aliases.",
                                    hint="write the values out; a spec needs no aliases (use ${...} interpolation).")
            self._depth = getattr(self, "_depth", 0) + 1
            try:
                if self._depth > MAX_DEPTH:
                    mark = self.peek_event().start_mark
                    raise SpecError(f"{path}:{mark.line + 1}: nested deeper than {MAX_DEPTH} levels.",
                                    hint="a spec is a few levels deep; check the indentation.")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def get_single_node(self):
            node = super().get_single_node()
            sizes: dict[int, int] = {}

            def size(n) -> int:  # nodes after alias expansion, each shared node counted once per use
                if id(n) not in sizes:
                    sizes[id(n)] = 1  # a cycle counts once instead of recursing forever
                    kids = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else \
                        n.value if isinstance(n, yaml.SequenceNode) else []
                    sizes[id(n)] = 1 + sum(size(c) for c in kids)
                return sizes[id(n)]

            if node is not None and size(node) > MAX_NODES:
                raise SpecError(f"{path}: expands to more than {MAX_NODES} values (YAML aliases).",
                                hint="write the values out; a spec needs no aliases (use ${...} interpolation).")
            return node

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise SpecError(f"{path}:{key_node.start_mark.line + 1}: key {key!r} is not a string.",
                                    hint="quote it (stage names and keys are strings).")
                if key in seen:
                    raise SpecError(f"{path}:{key_node.start_mark.line + 1}: duplicate key {key!r}.",
                                    hint="remove one of them (YAML would silently keep the last).")
                seen.add(key)
            return super().construct_mapping(node, deep)

    return Loader


def _read_yaml(path: Path):
    """Reads one YAML file into a DictConfig, with a one-line error on any problem."""
    import yaml
    from omegaconf import OmegaConf

    if len(str(path)) > MAX_PATH:
        raise SpecError(f"spec path of {len(str(path))} characters is too long.")
    try:
        if not path.is_file():
            raise SpecError(f"spec file {path} not found.", hint="check the path (relative to the current directory).")
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: {path.stat().st_size} bytes; a spec is at most {MAX_SPEC_BYTES} bytes.")
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"spec file {path} cannot be read: {e.strerror or e}.") from None
    try:
        data = yaml.load(text, Loader=_loader(path))  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(f"{where}: malformed YAML: {e.problem or e.context}.") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise SpecError(f"{path}: malformed YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the top level must be a mapping, found {type(data).__name__}.")
    try:
        return OmegaConf.create(data)
    except Exception as e:  # omegaconf rejects e.g. non-string keys
        raise SpecError(f"{path}: cannot be used as a spec: {e}.") from None


def _load_layers(path: Path, stack: tuple[Path, ...] = ()) -> list[tuple[str, Any]]:
    """Returns (source, config) layers: bases first (depth-first, in order), then the file."""
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise SpecError(f"cyclic _base_: {chain}.", hint="remove one of the _base_ entries.")
    cfg = _read_yaml(path)
    layers: list[tuple[str, Any]] = []
    bases = cfg.pop("_base_", None) if "_base_" in cfg else None
    if bases is not None:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(bases, (ListConfig, DictConfig)):
            bases = OmegaConf.to_container(bases, resolve=False)  # iterating would resolve ${...}
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) and b and "${" not in b
                                                                  for b in bases):
            raise SpecError(f"{path}: _base_: expected a list of file paths (no interpolation), found "
                            f"{str(bases)[:80]!r}.")
        for b in bases:
            base_path = path.parent / b
            if not base_path.is_file():
                raise SpecError(f"{path}: _base_: file {b!r} not found (looked at {base_path}).")
            layers.extend(_load_layers(base_path, (*stack, path)))
    layers.append((str(path), cfg))
    return layers


def _origin(layers: list[tuple[str, Any]], keypath: str) -> str:
    """Names the layer (file or command line) that last set ``keypath``, or its nearest parent."""
    from omegaconf import OmegaConf

    parts = keypath.split(".")
    for n in range(len(parts), 0, -1):
        sub = ".".join(parts[:n])
        for source, cfg in reversed(layers):
            try:
                if OmegaConf.select(cfg, sub, default=_MISSING, throw_on_missing=False) is not _MISSING:
                    return source
            except Exception:
                continue
    return layers[-1][0]


_MISSING = object()


def _display(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Loads, merges, resolves and validates a spec.

    Args:
        path: The spec file.
        overrides: ``key.path=value`` strings from the command line.

    Raises:
        SpecError: Anything wrong, with the file and key path named.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if path.suffix == ".lock":
        raise SpecError(f"{path}: a spec file cannot end in .lock: its lockfile would replace it.",
                        hint="rename it to .yaml.")
    layers = _load_layers(path)
    if overrides:
        bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
        if bad:
            raise SpecError(f"command line: override {bad[0]!r} is not of the form key.path=value.",
                            hint="e.g. model.weights=weights/yolov5n.pt or stages.export.with.opset=13")
        try:
            base = OmegaConf.merge(*[c for _, c in layers])
        except OmegaConfBaseException as e:
            raise SpecError(f"{layers[-1][0]}: cannot merge: {str(e).splitlines()[0]}") from None
        for o in overrides:
            _check_override_key(o.split("=", 1)[0].strip(), base)
        try:
            layers.append(("command line", OmegaConf.from_dotlist(list(overrides))))
        except (OmegaConfBaseException, ValueError, IndexError) as e:
            raise SpecError(f"command line: bad override: {e}".splitlines()[0]) from None
    layers = [(_display(s) if s != "command line" else s, c) for s, c in layers]
    try:
        merged = OmegaConf.merge(*[c for _, c in layers])
    except OmegaConfBaseException as e:
        raise SpecError(f"{layers[-1][0]}: cannot merge: {str(e).splitlines()[0]}") from None

    spec_dir = str(path.resolve().parent)
    try:
        if not OmegaConf.has_resolver("spec_dir"):
            register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
            register("spec_dir", lambda: _SPEC_DIR[-1])
        _SPEC_DIR.append(spec_dir)
        resolved = OmegaConf.to_container(merged, resolve=True)
        public = _resolve_without_env(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        msg = str(e).splitlines()[0]
        where = _origin(layers, key) if key else layers[-1][0]
        raise SpecError(f"{where}: {key + ': ' if key else ''}cannot resolve interpolation: {msg}",
                        hint="for environment variables use ${oc.env:NAME,default}.") from None
    finally:
        if _SPEC_DIR and _SPEC_DIR[-1] == spec_dir:
            _SPEC_DIR.pop()

    spec = _validate(resolved, layers, path)
    written = OmegaConf.to_container(layers[-1 - bool(overrides)][1], resolve=False)
    stages = public.get("stages") if isinstance(public.get("stages"), dict) else {}
    spec.public = {"written": written, "overrides": list(overrides),
                   "stages": {s.name: (stages.get(s.name) or {}).get("with") or {} for s in spec.stages}}
    return spec


_SPEC_DIR: list[str] = []


def _resolve_without_env(merged) -> dict[str, Any]:
    """The spec resolved with every ``${oc.env:...}`` left as written: what may be published. Values
    of the environment (tokens, home folders) never reach a manifest; bases' values reach it only
    through the stages that use them."""
    from omegaconf import OmegaConf
    from omegaconf.basecontainer import BaseContainer

    resolvers = BaseContainer._resolvers  # no public API to swap a resolver for one call
    import warnings

    original = resolvers.get("oc.env")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some omegaconf releases deprecate the name, none the call
        OmegaConf.register_new_resolver("oc.env", lambda *args, **kw: "${oc.env:" + str(args[0] if args else "")
                                        + "}", replace=True)
    try:
        return OmegaConf.to_container(merged, resolve=True)
    finally:
        if original is not None:
            resolvers["oc.env"] = original


def _check_override_key(key: str, base) -> None:
    """An override must name a key the spec has, except under ``stages`` (a stage's parameters and
    inputs, validated by the pass schema next), so a misspelt ``modle.weights=...`` is not ignored."""
    from omegaconf import OmegaConf

    if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
        raise SpecError(f"command line: override key {key!r} is not a dotted key path.",
                        hint="e.g. model.weights=PATH or stages.export_onnx.with.opset=13")
    if key.split(".")[0] in ("stages", "name", "store", "artifacts", "description"):
        return
    try:
        present = OmegaConf.select(base, key, default=_MISSING, throw_on_missing=False) is not _MISSING
    except Exception:
        present = False
    if not present:
        flat = [k for k in _flat_keys(OmegaConf.to_container(base, resolve=False)) if not k.startswith("stages.")]
        close = difflib.get_close_matches(key, flat, n=1)
        raise SpecError(f"command line: override {key!r} names no key of the spec.",
                        hint=(f"did you mean {close[0]!r}? " if close else "") + "keys: " + ", ".join(flat[:12]) + ".")


def _flat_keys(node, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix] if prefix else []
    out = [prefix] if prefix else []
    for k, v in node.items():
        out += _flat_keys(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def _validate(resolved: dict[str, Any], layers, path: Path) -> Spec:
    from convert.registry import get_pass

    def fail(keypath: str, message: str, hint: str | None = None):
        raise SpecError(f"{_origin(layers, keypath)}: {keypath}: {message}", hint=hint)

    name = resolved.get("name", path.stem)
    if not isinstance(name, str) or not STAGE_NAME.fullmatch(name):
        fail("name", f"expected a plain name (letters, digits, _ and -, at most 64), found {str(name)[:80]!r}.",
             hint="it names the folder under artifacts/.")
    stages_raw = resolved.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        fail("stages", f"expected a non-empty mapping of stage name -> stage, found {stages_raw!r}.",
             hint="see pipelines/ for examples.")

    stages: list[Stage] = []
    outputs: dict[str, str] = {}  # stage name -> artifact kind it produces
    for sname, raw in stages_raw.items():
        kp = f"stages.{sname}"
        if not isinstance(sname, str) or not STAGE_NAME.fullmatch(sname):
            fail("stages", f"stage name {str(sname)[:80]!r} is not a plain name (a letter or _, then letters, "
                 "digits, _ and -, at most 64 characters).", hint="it names the stage's folder in a published version.")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            fail(kp, f"expected a mapping with keys {sorted(STAGE_KEYS)}, found {raw!r}.")
        for k in raw:
            if k not in STAGE_KEYS:
                close = difflib.get_close_matches(str(k), STAGE_KEYS, n=1)
                fail(f"{kp}.{k}", f"unknown stage key (allowed: {', '.join(STAGE_KEYS)}).",
                     hint=f"did you mean {close[0]!r}?" if close else "pass parameters go under 'with:'.")
        pass_name = raw.get("pass", sname)
        if not isinstance(pass_name, str):
            fail(f"{kp}.pass", f"expected a pass name, found {pass_name!r}.")
        try:
            pass_cls = get_pass(pass_name)
        except SpecError as e:
            raise SpecError(f"{_origin(layers, kp + '.pass')}: {kp}.pass: {e.message}", hint=e.hint) from None
        config = _validate_config(pass_cls, raw.get("with") or {}, f"{kp}.with", fail)
        optional = raw.get("optional", False)
        if not isinstance(optional, bool):
            fail(f"{kp}.optional", f"expected true or false, found {optional!r}.")
        inputs = _bind_inputs(pass_cls, raw.get("inputs"), kp, stages, outputs, fail)
        _check_files(config, f"{kp}.with", fail)
        resources = raw.get("resources") or {}
        if not isinstance(resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for k, v in resources.items()):
            fail(f"{kp}.resources", f"expected a mapping of resource name -> amount >= 0, found {resources!r}.",
                 hint="e.g. resources: {GPU: 1} or {CPU: 2, trt_node: 1}.")
        stages.append(Stage(sname, pass_cls, config, inputs, optional, {k: float(v) for k, v in resources.items()}))
        outputs[sname] = pass_cls.output_kind(config)

    def _opt_path(key):
        v = resolved.get(key)
        if v is not None and not isinstance(v, str):
            fail(key, f"expected a directory path, found {v!r}.")
        return Path(v) if v else None

    store, remote = resolved.get("store"), None
    if isinstance(store, dict):  # store: {path: DIR, remote: URL}
        from convert.remote import check_url

        for k in store:
            if k not in ("path", "remote"):
                fail(f"store.{k}", "unknown key (allowed: path, remote).",
                     hint="store: DIR, or store: {path: DIR, remote: s3://BUCKET/PREFIX}.")
        if store.get("remote") is not None:
            try:
                remote = check_url(store["remote"], "store.remote")
            except ConvertError as e:
                fail("store.remote", e.message.split(": ", 1)[-1], hint=e.hint)
        resolved = {**resolved, "store": store.get("path")}
    return Spec(name=name, path=path, stages=stages, resolved=resolved, store=_opt_path("store"),
                artifacts=_opt_path("artifacts"), remote=remote)


def _validate_config(pass_cls: type[Pass], params: Any, kp: str, fail) -> PassConfig:
    from pydantic import ValidationError

    if not isinstance(params, dict):
        fail(kp, f"expected a mapping of parameters, found {params!r}.")
    for fname, finfo in pass_cls.Config.model_fields.items():
        value = params.get(fname)
        if not (isinstance(value, str) and _has_input_file(finfo.annotation, finfo.metadata)):
            continue
        if value == "":
            fail(f"{kp}.{fname}", "empty path (it would mean the current folder).",
                 hint="give a path, or null for the default.")
        if len(value) > MAX_PATH or any(len(part) > 255 for part in Path(value).parts):
            fail(f"{kp}.{fname}", f"path of {len(value)} characters is too long.")
    try:
        return pass_cls.Config.model_validate(params)
    except OSError as e:  # a validator that looks at the files (calibration sources) met an unreadable path
        fail(kp, f"a path cannot be read: {e.strerror or e} ({str(e.filename or '')[:80]!r}).")
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        if err["type"] == "replaced":  # a parameter of an older version of the pass (PassConfig.replaced)
            key = f"{kp}.{loc + '.' if loc else ''}{err['ctx']['key']}"
            fail(key, f"no longer a parameter of pass {pass_cls.name!r}: it was replaced by {err['ctx']['by']}.",
                 hint=f"update the spec; `convert passes show {pass_cls.name}` lists the parameters.")
        if err["type"] == "extra_forbidden":
            fields = list(pass_cls.Config.model_fields)
            close = difflib.get_close_matches(str(err["loc"][-1]), fields, n=1)
            fail(f"{kp}.{loc}", f"unknown parameter of pass {pass_cls.name!r}{more}.",
                 hint=(f"did you mean {close[0]!r}? " if close else "")
                 + f"`convert passes show {pass_cls.name}` lists: {', '.join(fields)}.")
        found = err.get("input")
        found_s = "nothing" if err["type"] == "missing" else repr(found)
        fail(f"{kp}.{loc}" if loc else kp, f"{err['msg']}; found {found_s}{more}.",
             hint=f"`convert passes show {pass_cls.name}` describes every parameter.")


def _bind_inputs(pass_cls, raw, kp, stages, outputs, fail) -> dict[str, list[str]]:
    roles: dict[str, Input] = pass_cls.inputs
    bound: dict[str, list[str]] = {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        fail(f"{kp}.inputs", f"expected a mapping of input role -> stage name, found {raw!r}.")
    for role, src in raw.items():
        if role not in roles:
            fail(f"{kp}.inputs.{role}", f"pass {pass_cls.name!r} has no input {role!r} "
                 f"(inputs: {', '.join(roles) or 'none'}).")
        names = src if isinstance(src, list) else [src]
        if not names or not all(isinstance(n, str) for n in names):
            fail(f"{kp}.inputs.{role}", f"expected a stage name or a list of stage names, found {str(src)[:80]!r}.")
        if not roles[role].many and len(names) != 1:
            fail(f"{kp}.inputs.{role}", f"takes one stage name, found {src!r}.")
        for n in names:
            if n not in outputs:
                fail(f"{kp}.inputs.{role}", f"{n!r} is not an earlier stage "
                     f"(earlier: {', '.join(outputs) or 'none'}).", hint="a stage can only use stages above it.")
            if outputs[n] not in roles[role].kinds:
                fail(f"{kp}.inputs.{role}", f"stage {n!r} produces a {outputs[n]!r} artifact, "
                     f"but {pass_cls.name}'s {role!r} takes {' or '.join(repr(k) for k in roles[role].kinds)}.")
        bound[role] = list(names)
    if roles:
        first = next(iter(roles))
        if first not in bound and stages:
            prev = stages[-1].name
            if outputs[prev] in roles[first].kinds:
                bound[first] = [prev]
            elif roles[first].required:
                fail(f"{kp}.inputs", f"the previous stage {prev!r} produces {outputs[prev]!r}, but "
                     f"{pass_cls.name}'s {first!r} input takes {' or '.join(repr(k) for k in roles[first].kinds)}.",
                     hint=f"name the stage to use: inputs: {{{first}: STAGE}}.")
    for role, spec in roles.items():
        if spec.required and role not in bound:
            fail(f"{kp}.inputs.{role}", f"pass {pass_cls.name!r} needs input {role!r} and no earlier stage gives it.")
    return bound


def input_files(config: PassConfig) -> dict[str, list[Path]]:
    """Returns the config's file fields (see :class:`~convert.base.InputFile`) that are set.

    Fields of nested configs (a sub-model such as ``auto`` of calibrate) are found too, under
    their dotted path (``auto.data``).
    """
    found: dict[str, list[Path]] = {}
    for fname, finfo in type(config).model_fields.items():
        value = getattr(config, fname)
        if value is None:
            continue
        if isinstance(value, PassConfig):
            found.update({f"{fname}.{k}": v for k, v in input_files(value).items()})
        elif _has_input_file(finfo.annotation, finfo.metadata):
            found[fname] = [Path(v) for v in value] if isinstance(value, (list, tuple)) else [Path(value)]
    return found


def _has_input_file(annotation, metadata=()) -> bool:
    if any(isinstance(m, InputFile) for m in metadata):
        return True
    if typing.get_origin(annotation) is typing.Annotated:
        if any(isinstance(m, InputFile) for m in annotation.__metadata__):
            return True
    return any(_has_input_file(a) for a in typing.get_args(annotation))


_SYSTEM_DIRS = ("/proc", "/sys", "/dev", "/run")


def _check_files(config: PassConfig, kp: str, fail) -> None:
    for fname, paths in input_files(config).items():
        for p in paths:
            text = str(p)
            if len(text) > MAX_PATH or any(len(part) > 255 for part in p.parts):
                fail(f"{kp}.{fname}", f"path of {len(text)} characters is too long.")
            try:
                exists = p.exists()
                resolved = p.resolve() if exists else p
            except (OSError, RuntimeError) as e:
                fail(f"{kp}.{fname}", f"path {text[:80]!r} cannot be read: {e}.")
            if exists and (str(resolved) == "/" or any(str(resolved) == d or str(resolved).startswith(d + "/")
                                                        for d in _SYSTEM_DIRS)):
                fail(f"{kp}.{fname}", f"{text!r} is a system folder, not data.", hint="point it at your files.")
            if exists and not (resolved.is_file() or resolved.is_dir()):
                fail(f"{kp}.{fname}", f"{text!r} is not a regular file or folder (a device, FIFO or socket).")
            if not exists:
                fail(f"{kp}.{fname}", f"file {str(p)!r} not found.",
                     hint="paths are relative to the current directory; override on the command line with "
                     f"{kp}.{fname}=PATH or the spec variable it is interpolated from.")
