"""Synthetic model packages for tests and benchmarks.

The checkpoints are seeded random bytes: the registry hashes and moves them but never
unpickles anything, so they need not be real torch files.

>>> import tempfile
>>> root = make_package(Path(tempfile.mkdtemp()) / "pkg", folds=("0", "1"), size=10)
>>> sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
['dataset.json', 'fold_0/checkpoint_final.pth', 'fold_1/checkpoint_final.pth', 'plans.json']
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASET_JSON = {
    "channel_names": {"0": "T2w"},
    "labels": {"background": 0, "spinal_cord": 1},
    "numTraining": 42,
    "file_ending": ".nii.gz",
}
PLANS_JSON = {
    "dataset_name": "Dataset101_SpinalCord",
    "plans_name": "nnUNetPlans",
    "configurations": {"3d_fullres": {"patch_size": [64, 160, 64]}},
}


def make_package(
    root: str | Path,
    folds: Sequence[str] = ("0",),
    size: int = 1024,
    seed: int = 0,
    checkpoint: str = "checkpoint_final.pth",
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a fake nnU-Net v2 results folder: dataset.json, plans.json, fold_*/<checkpoint>.

    Each checkpoint holds ``size`` random bytes drawn from ``seed`` (and the fold), so two
    packages with different seeds differ in every checkpoint.
    """
    root = Path(root)
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(DATASET_JSON, indent=2))
    (root / "plans.json").write_text(json.dumps(PLANS_JSON, indent=2))
    for fold in folds:
        rng = random.Random(f"{seed}/{fold}")
        (root / f"fold_{fold}").mkdir()
        (root / f"fold_{fold}" / checkpoint).write_bytes(rng.randbytes(size))
    for rel, data in (extra_files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@contextlib.contextmanager
def registry_of_versions(work: Path, name: str = "cordseg", versions: int = 3) -> Iterator[Any]:
    """A test module's own embedded registry (``work/home`` as ``$CORDWATCH_HOME``,
    ``MLFLOW_TRACKING_URI`` unset) with NAME/1..VERSIONS registered from one tiny package;
    yields the :class:`registry.api.Registry`. The environment is restored on exit."""
    import pytest

    from registry.api import connect

    home = work / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORDWATCH_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        reg = connect(home=home)
        pkg = make_package(work / "pkg", size=64)
        for _ in range(versions):
            reg.register(name, pkg)
        yield reg


def zip_package(
    package: str | Path, archive: str | Path, nested: bool = True, only: Sequence[str] = ()
) -> Path:
    """Zip a package folder like an SCT release: nested in its folder name, or flat.

    ``only`` keeps just these top-level entries (e.g. ``["dataset.json", "plans.json",
    "fold_0"]`` for a one-fold zip).
    """
    package, archive = Path(package), Path(archive)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(package.rglob("*")):
            rel = path.relative_to(package)
            if only and rel.parts[0] not in only:
                continue
            name = (Path(package.name) / rel if nested else rel).as_posix()
            if path.is_dir():
                zf.writestr(name + "/", b"")
            else:
                zf.write(path, name)
    return archive


# -- throw-away servers for tests and benchmarks --------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with initdb and postgres (Debian), if any."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bindir = Path(initdb).parent
        if (bindir / "postgres").is_file() and bindir.parent.name.isdigit():
            found.append((int(bindir.parent.name), bindir))
    return max(found)[1] if found else None


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout: float = 30) -> None:
    """Stop a child started with ``start_new_session=True``: its process group is its PID."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@dataclass(frozen=True)
class PostgresServer:
    """A running throw-away PostgreSQL (superuser ``cordwatch``, trust auth, 127.0.0.1)."""

    port: int
    pid: int

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://cordwatch@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its URI."""
        import psycopg

        with psycopg.connect(self.uri(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)


@contextlib.contextmanager
def postgres_server(timeout: float = 60) -> Iterator[PostgresServer]:
    """initdb a temporary cluster, run ``postgres`` on 127.0.0.1, stop it by PID on exit.

    PostgreSQL refuses to run as root; as root the server runs as the ``postgres`` system
    user that Debian's package creates. Durability is off (fsync=off): test data only.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL not found under /usr/lib/postgresql/*/bin")
    user = "postgres" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="cordwatch-pg-"))
    proc: subprocess.Popen[bytes] | None = None
    log = open(base / "postgres.log", "wb")  # noqa: SIM115 (closed below, after the server)
    try:
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(base, pw.pw_uid, pw.pw_gid)
        data = base / "data"
        subprocess.run(
            [bindir / "initdb", "-D", data, "-U", "cordwatch", "--auth=trust", "-E", "UTF8",
             "--no-sync", "--no-instructions"],
            user=user, check=True, capture_output=True, cwd=base,
        )  # fmt: skip
        port = free_port()
        proc = subprocess.Popen(
            [bindir / "postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", base,
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            user=user, stdout=log, stderr=subprocess.STDOUT, cwd=base, start_new_session=True,
        )  # fmt: skip
        server = PostgresServer(port, proc.pid)
        _wait(lambda: _pg_ready(server), proc, timeout, base / "postgres.log")
        yield server
    finally:
        if proc is not None:
            _stop(proc, signal.SIGINT)  # "fast" shutdown
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def _pg_ready(server: PostgresServer) -> bool:
    import psycopg

    try:
        with psycopg.connect(server.uri(), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _wait(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"server did not start (exit {proc.poll()}):\n{tail}")
        time.sleep(0.2)


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str,
    artifacts_destination: str,
    workers: int = 2,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    extra_args: Sequence[str] = (),
) -> Iterator[str]:
    """Run ``mlflow server`` (proxied artifacts) on 127.0.0.1; yield its URL; stop it by PID."""
    port = free_port()
    logdir = Path(tempfile.mkdtemp(prefix="cordwatch-mlflow-"))
    log = open(logdir / "server.log", "wb")  # noqa: SIM115 (closed below, after the server)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts_destination,
         "--workers", str(workers), *extra_args],
        env={
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # the GenAI job runner starts 7 extra processes; a model registry needs none
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **(env or {}),
        },
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _http_ok(url + "/health"), proc, timeout, logdir / "server.log")
        yield url
    finally:
        _stop(proc, signal.SIGTERM)
        log.close()
        shutil.rmtree(logdir, ignore_errors=True)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# -- many processes registering at once -------------------------------------------------------


def race_worker(uri: str, name: str, workdir: str, index: str) -> None:
    """One of several processes: build a package, wait for the start line, register it.

    Prints one JSON line (index, version, sha256, run_id). MLflow is imported before the
    start line, so the processes race on the registry itself (on a fresh sqlite file: on
    creating its tables), not on their imports.
    """
    from registry.api import connect

    work = Path(workdir)
    pkg = make_package(work / f"pkg{index}", folds=("0",), size=64 * 1024, seed=1000 + int(index))
    reg = connect(uri, home=work / f"home{index}")
    # warm-up (see docstring): the MLflow modules a registration needs, heavy on 2 cores
    import mlflow.pyfunc
    import mlflow.store.model_registry.sqlalchemy_store
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    (work / f"ready{index}").touch()
    while not (work / "go").exists():
        time.sleep(0.01)
    info = reg.register(name, pkg, description=f"worker {index}")
    print(json.dumps({"index": int(index), "version": info.version, "sha256": info.sha256,
                      "run_id": info.run_id}))  # fmt: skip


def race(
    uri: str, name: str, workdir: Path, processes: int = 8, timeout: float = 600
) -> list[dict]:
    """Start ``processes`` workers that register versions of ``name`` at the same moment.

    Returns one dict per worker: returncode, stderr and the worker's JSON line (if any).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    code = "import sys; from registry.testing import race_worker; race_worker(*sys.argv[1:])"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri, name, str(workdir), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for i in range(processes)
    ]
    deadline = time.monotonic() + timeout
    while not all((workdir / f"ready{i}").exists() for i in range(processes)):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (workdir / "go").touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        lines = out.decode().strip().splitlines()
        results.append(
            {
                "returncode": proc.returncode,
                "stderr": err.decode(),
                "result": json.loads(lines[-1]) if proc.returncode == 0 and lines else None,
            }
        )
    return results


def check_race(results: list[dict], uri: str, name: str, home: Path) -> None:
    """Assert that every worker of :func:`race` succeeded with distinct, complete versions 1..N."""
    from registry.api import connect
    from registry.manifest import MANIFEST_NAME

    for r in results:
        if r["returncode"] != 0 or "Traceback" in r["stderr"] or "rror" in r["stderr"]:
            raise AssertionError(f"worker failed (exit {r['returncode']}):\n{r['stderr'][-3000:]}")
    mine = {r["result"]["version"]: r["result"] for r in results}
    n = len(results)
    if sorted(mine) != list(range(1, n + 1)):
        raise AssertionError(f"versions {sorted(mine)} are not 1..{n}")
    if len({r["sha256"] for r in mine.values()}) != n:
        raise AssertionError("two workers report the same package")
    reg = connect(uri, home=home)
    versions = reg.list_versions(name)
    if [v.version for v in versions] != list(range(1, n + 1)):
        raise AssertionError(f"registry lists {[v.version for v in versions]}")
    for v in versions:
        theirs = mine[v.version]
        if (v.sha256, v.run_id) != (theirs["sha256"], theirs["run_id"]):
            raise AssertionError(f"{v.ref} holds another worker's package")
        if v.description != f"worker {theirs['index']}":
            raise AssertionError(f"{v.ref}: description {v.description!r}")
        folder = reg.pull(v.ref)  # complete: every file present and verified
        if not (folder / MANIFEST_NAME).is_file():
            raise AssertionError(f"{v.ref}: no manifest after pull")
        if (folder / "fold_0" / "checkpoint_final.pth").stat().st_size != 64 * 1024:
            raise AssertionError(f"{v.ref}: checkpoint size")
