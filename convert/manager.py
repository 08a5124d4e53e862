"""The pass manager: keys, cache look-up, running, contract checks, publishing, lockfile.

The cache key of a stage is the sha256 of canonical JSON of the pass name and version, its
resolved parameters (with every input file replaced by its content digest), the digests of its
input artifacts and the versions of the tools that shape its output. Look-up happens before
anything is imported, so a fully cached run never loads torch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, Callable

from convert import versions
from convert.base import ARTIFACT_JSON, PassResult, RunContext
from convert.errors import BackendMissing, ConvertError, PassError, from_os_error
from convert.lockfile import Lockfile, why_key_changed
from convert.spec import Spec, Stage, input_files
from convert.store import Store, atomic_write, canonical_json, sha256_json

LOCK_SUFFIX = ".lock"
KEY_SCHEMA = 1  # bump when the key material's layout changes


class GateFailed(ConvertError):
    """An accuracy gate failed; the run's artifacts are stored, the exit status is 1."""

    exit_code = 1


def tool_versions(tools: tuple[str, ...]) -> dict[str, str | None]:
    out = {}
    for t in tools:
        try:
            out[t] = dist_version(t)
        except PackageNotFoundError:
            out[t] = None
    return out


def machine_identity() -> dict[str, Any]:
    """What a machine-dependent output (a latency figure, a TensorRT engine) depends on: the CPU
    model and count, the architecture and OS, and the GPUs ``nvidia-smi`` lists (name, compute
    capability, driver), so a shared store never hands one machine's result to another."""
    import shutil
    import subprocess

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired):
            gpus = ["unknown"]
    return {"cpu": cpu, "cpus": os.cpu_count(), "arch": platform.machine(), "system": platform.system(),
            "gpus": gpus}


def key_material(stage: Stage, input_digests: dict[str, list[str]], file_digests: dict[str, list[str]],
                 tools: dict[str, str | None], referenced: str | None = None,
                 machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a stage's cache key is the hash of (see the module docstring).

    ``referenced`` is the digest of the files the pass reads through its config
    (:meth:`convert.base.Pass.key_files`); it is left out when there are none, so keys of
    passes without such files stay as they were.
    """
    config = stage.config.model_dump(mode="json")
    for fname, digests in file_digests.items():
        *parents, leaf = fname.split(".")  # nested configs: auto.data
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = digests if isinstance(node[leaf], list) else digests[0]
    material = {"schema": KEY_SCHEMA, "pass": stage.pass_name, "version": stage.pass_cls.version,
                "config": config, "inputs": input_digests, "tools": tools}
    if referenced is not None:
        material["referenced"] = referenced
    if machine is not None:
        material["machine"] = machine
    return material


@dataclass
class StageRecord:
    """What happened to one stage in a run."""

    name: str
    pass_name: str
    status: str  # "cached", "ran", "skipped", "pending" (plan only)
    key: str | None = None
    digest: str | None = None
    seconds: float = 0.0
    inputs: dict[str, list[str]] = field(default_factory=dict)
    input_digests: dict[str, list[str]] = field(default_factory=dict)
    params: str | None = None
    machine: dict[str, Any] | None = None
    files: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    tools: dict[str, str | None] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def lock_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"pass": self.pass_name, "inputs": self.inputs}
        if self.status == "skipped":
            entry["skipped"] = self.reason
            return entry
        entry.update(key=self.key, files=self.files, tools=self.tools, input_digests=self.input_digests,
                     output=self.digest, params=self.params)
        if self.machine is not None:
            entry["machine"] = self.machine
        return entry


@dataclass
class RunReport:
    spec: str
    stages: list[StageRecord]
    version: str | None = None
    published: Path | None = None
    gate_failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "version": self.version,
                "published": str(self.published) if self.published else None,
                "gate_failures": self.gate_failures,
                "stages": [{"name": s.name, "pass": s.pass_name, "status": s.status, "key": s.key,
                            "digest": s.digest, "seconds": round(s.seconds, 3), "summary": s.summary,
                            **({"reason": s.reason} if s.reason else {})} for s in self.stages]}


def lockfile_path(spec: Spec) -> Path:
    return spec.path.with_suffix(LOCK_SUFFIX)


class Manager:
    """Plans and runs a spec against a store.

    Args:
        spec: The validated spec.
        store: The artifact store.
        artifacts_dir: Where versions are published (``<dir>/<spec name>/<version>/``).
        log: Called with one human-readable line per event.
        progress: Whether passes show progress bars.
    """

    def __init__(self, spec: Spec, store: Store, artifacts_dir: Path,
                 log: Callable[[str], None] = lambda s: None, progress: bool = True, trust_code: bool = False):
        self.spec = spec
        self.store = store
        self.artifacts_dir = artifacts_dir
        self.log = log
        self.progress = progress
        self.trust_code = trust_code

    def code_stages(self) -> list[tuple[str, str]]:
        """(stage, what it runs) for every stage that imports or loads code named by the spec."""
        return [(s.name, why) for s in self.spec.stages if (why := s.pass_cls.runs_code(s.config))]

    def _check_trust(self) -> None:
        """Refuses to run a spec that names code to run, unless the user said they trust it."""
        stages = self.code_stages()
        if stages and not self.trust_code:
            name, why = stages[0]
            more = f" (and {len(stages) - 1} more stage(s))" if len(stages) > 1 else ""
            raise ConvertError(f"stage {name!r} runs code named by the spec: {why}{more}.",
                               hint="read the spec, and if you trust it run with --trust-code "
                               "(or CONVERT_TRUST_CODE=1).")

    # -- keys ---------------------------------------------------------------------------------
    def _file_digests(self, stage: Stage) -> tuple[dict[str, list[str]], dict[str, list[dict[str, str]]]]:
        digests: dict[str, list[str]] = {}
        records: dict[str, list[dict[str, str]]] = {}
        for fname, paths in input_files(stage.config).items():
            ds = []
            for p in paths:
                if not p.exists():
                    raise ConvertError(f"stage {stage.name!r}: stages.{stage.name}.with.{fname}: file {str(p)!r} "
                                       "not found.")
                ds.append(self.store.hasher.path(p))
            digests[fname] = ds
            records[fname] = [{"path": str(p), "sha256": d} for p, d in zip(paths, ds)]
        return digests, records

    def _referenced(self, stage: Stage) -> str | None:
        """Digest of the files the pass reads through its config (in order), None if there are none."""
        files = stage.pass_cls.key_files(stage.config)
        if not files:
            return None
        return sha256_json(self.store.hasher.files(files))

    def _key(self, stage: Stage, done: dict[str, StageRecord]) -> StageRecord:
        input_digests = {role: [done[n].digest for n in names] for role, names in stage.inputs.items()}
        file_digests, file_records = self._file_digests(stage)
        tools = tool_versions(stage.pass_cls.tools)
        machine = machine_identity() if stage.pass_cls.machine_dependent else None
        key = sha256_json(key_material(stage, input_digests, file_digests, tools, self._referenced(stage), machine))
        return StageRecord(stage.name, stage.pass_name, "pending", key=key, inputs=stage.inputs,
                           input_digests=input_digests, files=file_records, tools=tools,
                           params=sha256_json(stage.config.model_dump(mode="json"))[:16], machine=machine)

    # -- plan ---------------------------------------------------------------------------------
    def plan(self, force: set[str] = frozenset()) -> list[StageRecord]:
        """Says which stages are cached, which would run and which would be skipped, without running
        anything; skips follow the same rules as :meth:`run` (skipped inputs, missing optional backends)."""
        done: dict[str, StageRecord] = {}
        out = []
        try:
            locked = Lockfile.read(lockfile_path(self.spec)).stages
        except ConvertError:  # no lockfile yet (or a broken one, which `run --frozen` reports)
            locked = {}
        for stage in self.spec.stages:
            skip = self._skipped_input(stage, done)
            if skip is not None:
                rec = skip
            elif any(done[n].digest is None for names in self._bound(stage, done).values() for n in names):
                rec = StageRecord(stage.name, stage.pass_name, "pending", inputs=stage.inputs,
                                  reason="an input will be rebuilt")
            else:
                rec = self._key(dataclasses.replace(stage, inputs=self._bound(stage, done)), done)
                entry = None if stage.name in force else self.store.lookup(rec.key)
                if entry:
                    rec.status, rec.digest = "cached", entry["digest"]
                want = locked.get(stage.name)
                if want and want.get("key") and want["key"] != rec.key:
                    rec.reason = f"changed since the lockfile: {why_key_changed(want, rec.lock_entry())}"
            missing = self._missing_module(stage) if rec.status == "pending" else None
            if missing and stage.optional:
                rec.status, rec.reason = "skipped", f"{missing} is not installed (optional stage)"
            elif missing:
                rec.reason = f"will fail: needs {missing}, which is not installed"
            done[stage.name] = rec
            out.append(rec)
        return out

    @staticmethod
    def _bound(stage: Stage, done: dict[str, StageRecord]) -> dict[str, list[str]]:
        """The stage's inputs without skipped stages (a `many` role just loses them)."""
        return {role: [n for n in names if done[n].status != "skipped"] for role, names in stage.inputs.items()}

    def _skipped_input(self, stage: Stage, done: dict[str, StageRecord]) -> StageRecord | None:
        """A skipped record if a role is left empty by skipped inputs (a single-artifact role whose
        stage was skipped, or a `many` role all of whose stages were), else None."""
        bound = self._bound(stage, done)
        for role, names in stage.inputs.items():
            if not bound[role]:
                return StageRecord(stage.name, stage.pass_name, "skipped", inputs=stage.inputs,
                                   reason=f"its input stage {names[0]!r} was skipped")
        return None

    @staticmethod
    def _missing_module(stage: Stage) -> str | None:
        """The first module the pass requires that is not installed, or None."""
        return next((m for m in stage.pass_cls.requires if importlib.util.find_spec(m) is None), None)

    # -- run ----------------------------------------------------------------------------------
    def run(self, force: set[str] | None = None, until: str | None = None, frozen: bool = False) -> RunReport:
        """Runs the spec: cached stages are reused, the others run in order.

        Args:
            force: Stage names to re-run even if cached (``{"*"}`` for all).
            until: Stop after this stage (nothing is published).
            frozen: Fail unless every key and output equals the lockfile's (CI mode).

        Raises:
            ConvertError: A stage failed; the message names it and the stages before it.
            GateFailed: An accuracy gate failed (after publishing).
        """
        self._check_trust()
        with self.store.live_run():  # `convert gc` meanwhile leaves what this run builds
            return self._run(force, until, frozen)

    def _run(self, force: set[str] | None, until: str | None, frozen: bool) -> RunReport:
        force = force or set()
        for name in force - {"*"}:
            self.spec.stage(name)  # raises for an unknown name
        if until is not None:
            self.spec.stage(until)
        lock = self._read_lock() if frozen else None
        done: dict[str, StageRecord] = {}
        gate_failures: list[str] = []
        n = len(self.spec.stages)
        for i, stage in enumerate(self.spec.stages, 1):
            rec = self._run_stage(stage, done, forced="*" in force or stage.name in force)
            done[stage.name] = rec
            if rec.status == "skipped":
                self.log(f"[{i}/{n}] {stage.name} ({stage.pass_name}): skipped — {rec.reason}")
            else:
                figures = _short(rec.summary)
                self.log(f"[{i}/{n}] {stage.name} ({stage.pass_name}): {rec.status} in {rec.seconds:.2f}s"
                         f"{'  ' + figures if figures else ''}")
            if lock is not None:
                self._check_frozen(lock, rec)
            gate_failures += [f"{stage.name}: {g}" for g in rec.summary.get("gate_failures", [])]
            if stage.name == until:
                break
        report = RunReport(self.spec.name, list(done.values()), gate_failures=gate_failures)
        if until is None:
            try:
                self._publish(report, update_latest=not gate_failures)
            except OSError as e:
                raise from_os_error(e, f"publishing {self.spec.name} into {self.artifacts_dir}") from None
            if not frozen:
                lock_path = lockfile_path(self.spec)
                try:
                    atomic_write(lock_path, self._lock_text(report))
                except OSError as e:
                    raise ConvertError(f"published {report.published}, but the lockfile {lock_path} could not be "
                                       f"written: {e.strerror or e}.",
                                       hint="make the spec's folder writable, or run a copy of the spec from a "
                                       "writable folder (--frozen only reads the lockfile).") from None
        if gate_failures:
            where = f"{report.published}/manifest.json" if report.published else "the stage summaries (--json)"
            raise GateFailed("accuracy gate failed: " + "; ".join(gate_failures),
                             hint=f"the figures are in {where}; loosen the gate in the spec only if the drop "
                             "is acceptable.")
        return report

    def _run_stage(self, stage: Stage, done: dict[str, StageRecord], forced: bool) -> StageRecord:
        # A `many` role just loses its skipped members (a report without the TensorRT engine).
        skip = self._skipped_input(stage, done)
        if skip is not None:
            return skip
        stage = dataclasses.replace(stage, inputs=self._bound(stage, done))
        t0 = time.perf_counter()
        rec = self._key(stage, done)
        entry = None if forced else self.store.lookup(rec.key)
        if entry is None:
            missing = self._missing_module(stage)
            if missing:
                msg = (f"stage {stage.name!r} (pass {stage.pass_name}) needs the Python module "
                       f"{missing!r}, which is not installed")
                if stage.optional:
                    rec.status, rec.reason = "skipped", f"{missing} is not installed (optional stage)"
                    return rec
                raise BackendMissing(msg + ".", hint=f"install it (see README: extras), or mark the stage "
                                     f"`optional: true` in the spec to skip it where {missing} is missing.")
            with self.store.lock(rec.key):
                entry = None if forced else self.store.lookup(rec.key)  # another run may have built it
                if entry is None:
                    rec.status = "ran"
                    rec.digest, rec.summary = self._execute(stage, done, rec)
        if entry is not None:
            rec.status, rec.digest, rec.summary = "cached", entry["digest"], entry.get("summary", {})
        rec.seconds = time.perf_counter() - t0
        return rec

    def _execute(self, stage: Stage, done: dict[str, StageRecord], rec: StageRecord) -> tuple[str, dict]:
        inputs: dict[str, Any] = {}
        for role, names in stage.inputs.items():
            arts = [self.store.artifact(done[n].digest) for n in names]
            inputs[role] = arts if stage.pass_cls.inputs[role].many else arts[0]
        names = [s.name for s in self.spec.stages]
        before = names[: names.index(stage.name)]
        where = (f"stage {stage.name!r} (pass {stage.pass_name}) failed"
                 f"{' after ' + ', '.join(before) if before else ''}")
        with self.store.staging() as tmp:
            out = tmp / "out"
            out.mkdir()
            try:
                result = stage.pass_cls(stage.config).run(inputs, out, RunContext(stage.name, self.progress))
                self._check_contract(stage, result, out)
            except ConvertError as e:
                raise type(e)(f"{where}: {e.message}", hint=e.hint) from None
            except KeyboardInterrupt:
                raise
            except OSError as e:  # a full disk or a read-only folder is no bug: no traceback log (nowhere to put it)
                raise from_os_error(e, where) from None
            except Exception as e:
                log = self._save_traceback(stage)
                raise PassError(f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                                hint=f"this looks like a bug or an unsupported model; the traceback is in {log}.") \
                    from None
            summary = dict(result.summary)
            if result.gate_failures:
                summary["gate_failures"] = list(result.gate_failures)
            (out / ARTIFACT_JSON).write_text(json.dumps(
                {"kind": result.kind, "main": result.main, "meta": result.meta}, indent=1, sort_keys=True))
            digest = self.store.commit(rec.key, out, {"stage": stage.name, "pass": stage.pass_name,
                                                      "summary": summary})
        return digest, summary

    def _check_contract(self, stage: Stage, result: Any, out: Path) -> None:
        cls = stage.pass_cls
        if not isinstance(result, PassResult):
            raise PassError(f"pass {cls.name} returned {type(result).__name__}, not a PassResult.")
        if result.kind != cls.output_kind(stage.config):
            raise PassError(f"pass {cls.name} declares output {cls.output_kind(stage.config)!r} "
                            f"but returned {result.kind!r}.")
        if not (out / result.main).exists():
            raise PassError(f"pass {cls.name} says its main file is {result.main!r} but did not write it.")
        try:
            canonical_json([result.meta, result.summary])
        except (TypeError, ValueError) as e:
            raise PassError(f"pass {cls.name} returned metadata that is not plain JSON: {e}.") from None

    def _save_traceback(self, stage: Stage) -> Path:
        logdir = self.store.root / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        path = logdir / f"{time.strftime('%Y%m%d-%H%M%S')}-{stage.name}.log"
        path.write_text(traceback.format_exc())
        return path

    # -- lockfile and publishing --------------------------------------------------------------
    def _lock_text(self, report: RunReport) -> str:
        return Lockfile(lockfile_path(self.spec), self.spec.name,
                        {s.name: s.lock_entry() for s in report.stages}).text()

    def _read_lock(self) -> Lockfile:
        try:
            return Lockfile.read(lockfile_path(self.spec))
        except ConvertError as e:
            raise ConvertError(f"--frozen: {e.message}", hint=e.hint) from None

    def _check_frozen(self, lock: Lockfile, rec: StageRecord) -> None:
        path = lock.path
        want = lock.stages.get(rec.name)
        if want is None:
            raise ConvertError(f"--frozen: stage {rec.name!r} is not in {path}.",
                               hint="the spec changed; re-run without --frozen and commit the lockfile.")
        got = rec.lock_entry()
        # A machine-dependent output (timings, engines) differs by nature: its key, which holds the
        # machine's identity, is checked, its bytes are not.
        fields = ("key", "skipped") if self.spec.stage(rec.name).pass_cls.machine_dependent else \
            ("key", "output", "skipped")
        for field_ in fields:
            if want.get(field_) != got.get(field_):
                what = {"key": why_key_changed(want, got),
                        "output": "the rebuilt output differs (not reproducible)",
                        "skipped": "it was skipped in one run and not the other"}[field_]
                raise ConvertError(f"--frozen: stage {rec.name!r} does not match {path}: {what} "
                                   f"({field_} {str(want.get(field_))[:16]} != {str(got.get(field_))[:16]}).",
                                   hint="re-run without --frozen and commit the lockfile if the change is intended.")

    def _publish(self, report: RunReport, update_latest: bool) -> None:
        built = [s for s in report.stages if s.status != "skipped"]
        report.version = sha256_json([[s.name, s.digest] for s in built])[:12]
        manifest = {
            "spec": self.spec.name, "version": report.version, "spec_file": str(self.spec.path),
            "stage_order": [s.name for s in report.stages],
            "spec_written": self.spec.public.get("written"),
            "overrides": self.spec.public.get("overrides", []),
            "stage_configs": self.spec.public.get("stages", {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": {"hostname": socket.gethostname(), "platform": platform.platform(),
                     "python": sys.version.split()[0], "cpus": os.cpu_count()},
            "stages": {s.name: {**s.lock_entry(), "status": s.status, "seconds": round(s.seconds, 3),
                                "summary": s.summary} for s in report.stages},
        }
        report.published = versions.publish(
            self.artifacts_dir, manifest, {s.name: self.store.object_path(s.digest) for s in built},
            update_latest, finish=self._render_report)

    def _render_report(self, version_dir: Path) -> None:
        """Writes the version's report.html/.md (its failure costs the report, not the version)."""
        from convert import registry

        try:
            render = registry.renderer("version")
            if render is not None:
                render(version_dir, version_dir)
        except (ImportError, ConvertError, ValueError, KeyError, TypeError) as e:
            self.log(f"warning: the version's report was not rendered ({type(e).__name__}: {e}); "
                     "`convert report NAME/VERSION` renders it.")


def _short(summary: dict[str, Any]) -> str:
    parts = []
    for k, v in summary.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, (int, str)) and len(str(v)) < 40:
            parts.append(f"{k}={v}")
    return " ".join(parts[:6])
