"""Running a spec's stages on a Ray cluster (``convert run SPEC --executor ray [--address ADDR]``).

The driver (this process) walks the DAG: a stage whose inputs are done is looked up (cached
locally or in the remote cache: no task at all), else sent to the cluster as a Ray task with the
resources its spec asks for (``resources: {GPU: 1}``, custom node labels), so independent stages
build at once and a TensorRT engine builds on the node type it targets. A task runs the stage as
the local executor would (key, lock, build, commit), reading its inputs from, and pushing its
output to, the store: the same folder on a local instance, the shared remote cache on a cluster.

Ray is imported only here, and only when ``--executor ray`` is asked for.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Iterator

from convert.errors import BackendMissing, ConvertError

if TYPE_CHECKING:
    from convert.manager import Manager, StageRecord
    from convert.spec import Stage

_TASK = None


def _run_stage_task(mgr: Manager, stage: Stage, done: dict[str, StageRecord], forced: bool,
                    cwd: str) -> StageRecord:
    """What a Ray worker runs: one stage, exactly as the local executor runs it, in the driver's working
    folder where the node has it (a spec's relative paths mean the same there).

    With a remote cache, a node whose environment sets ``$CONVERT_NODE_STORE`` keeps its own store
    there (its inputs pulled from the remote, its outputs pushed to it) instead of the driver's path.
    """
    node_store = os.environ.get("CONVERT_NODE_STORE")
    if node_store and mgr.store.remote is not None:
        from convert.store import Store

        mgr.store = Store(node_store, remote=mgr.store.remote)
    before = os.getcwd()
    if os.path.isdir(cwd):
        os.chdir(cwd)
    try:
        return mgr._run_stage(stage, done, forced)
    finally:
        os.chdir(before)


def _task():
    global _TASK
    if _TASK is None:
        import ray

        _TASK = ray.remote(_run_stage_task)
    return _TASK


def ray_options(resources: dict[str, float]) -> dict[str, Any]:
    """A stage's ``resources:`` as Ray task options (CPU, GPU and memory have their own names)."""
    opts: dict[str, Any] = {"num_cpus": resources.get("CPU", 1), "max_retries": 0}
    if "GPU" in resources:
        opts["num_gpus"] = resources["GPU"]
    if "memory" in resources:
        opts["memory"] = resources["memory"]
    custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory")}
    if custom:
        opts["resources"] = custom
    return opts


class RayExecutor:
    """Runs independent stages as Ray tasks.

    Args:
        address: A cluster to connect to (``ray://HOST:10001``, ``HOST:6379`` or ``auto``); None starts
            a local instance (or uses the one this process already started).
        num_cpus: CPUs of a local instance (default: all).
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address = address
        self.num_cpus = num_cpus

    def start(self) -> None:
        """Connects to the cluster (or starts a local instance) unless this process already did."""
        try:
            import ray
        except ImportError:
            raise BackendMissing("--executor ray needs the Python package 'ray', which is not installed.",
                                 hint='pip install "convert[ray]", or run without --executor ray.') from None
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True}
        if self.address:
            kwargs["address"] = self.address
        else:  # a local instance: its workers import the code this process imports (a checkout, plugins)
            kwargs["num_cpus"] = self.num_cpus or os.cpu_count()
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(_code_paths())}}
        try:
            ray.init(**kwargs)
        except Exception as e:  # ConnectionError, TimeoutError, RuntimeError... depending on what failed
            where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray instance"
            why = str(e).splitlines()[0] if str(e) else ""
            raise ConvertError(f"cannot connect to {where}: {type(e).__name__}: {why}",
                               hint="check --address (ray://HOST:10001 or HOST:6379) and that the cluster is up "
                               "(`ray status`), or run without --executor ray.") from None

    def records(self, mgr: Manager, stages: list[Stage], force: set[str]) -> Iterator[StageRecord]:
        """Yields each stage's record as it finishes (see :class:`convert.manager.LocalExecutor`)."""
        self.start()
        import ray

        self._check_resources(stages, ray.cluster_resources())
        if self.address and mgr.store.remote is None:
            mgr.log("warning: --executor ray on a cluster without a remote cache: workers on other nodes can "
                    "neither read inputs nor return outputs unless the store is on a shared filesystem.")
        mgr_ref = ray.put(mgr)
        done: dict[str, StageRecord] = {}
        pending = list(stages)
        running: dict[Any, str] = {}
        try:
            while pending or running:
                progressed = True
                while progressed:  # look up / send off every stage whose inputs are done
                    progressed = False
                    for stage in list(pending):
                        deps = {n for names in stage.inputs.values() for n in names}
                        if not deps <= done.keys():
                            continue
                        pending.remove(stage)
                        progressed = True
                        forced = "*" in force or stage.name in force
                        rec = mgr._look_up(stage, done, forced)
                        if rec.status != "pending":
                            done[stage.name] = rec
                            yield rec
                            continue
                        ref = _task().options(**ray_options(stage.resources)).remote(
                            mgr_ref, stage, {n: done[n] for n in deps}, forced, os.getcwd())
                        running[ref] = stage.name
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    name = running.pop(ref)
                    rec = self._result(ref, name)
                    if rec.digest:  # built on another node: the driver publishes it, so it needs it here
                        mgr.store.artifact(rec.digest)
                    done[name] = rec
                    yield rec
        finally:
            for ref in running:  # a failure stops the stages still running
                ray.cancel(ref, force=True)

    @staticmethod
    def _result(ref, name: str) -> StageRecord:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, ConvertError):
                raise cause from None
            raise ConvertError(f"stage {name!r} failed on the Ray cluster: "
                               f"{type(cause or e).__name__}: {str(cause or e).splitlines()[0]}",
                               hint="the worker's log has the traceback (`ray logs`).") from None
        except ray.exceptions.RayError as e:  # a worker or node died
            raise ConvertError(f"stage {name!r}: the Ray task was lost: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}",
                               hint="re-run: what finished is cached; check the cluster (`ray status`).") from None

    @staticmethod
    def _check_resources(stages: list[Stage], available: dict[str, float]) -> None:
        """Refuses a stage whose resources no node has (Ray would wait for it forever)."""
        for stage in stages:
            for name, amount in stage.resources.items():
                have = available.get(name, 0.0)
                if amount > have:
                    raise ConvertError(f"stage {stage.name!r} needs resources {{{name}: {amount:g}}} but the Ray "
                                       f"cluster has {have:g}.",
                                       hint=f"start a node that has it (`ray start --resources='{{\"{name}\": 1}}'`"
                                       " for a custom label) or change stages."
                                       f"{stage.name}.resources.")


def _code_paths() -> list[str]:
    """This process's import paths that are not the interpreter's own (checkouts, test helpers)."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out = []
    for p in [os.getcwd(), *sys.path]:
        real = os.path.realpath(p or os.getcwd())
        if os.path.isdir(real) and not any(real.startswith(x + os.sep) or real == x for x in prefixes) \
                and real not in out:
            out.append(real)
    return out
