"""dask-jobqueue's ``SLURMCluster`` against a real one-node Slurm cluster started here.

Debian's ``slurm-wlm`` and ``munge`` (installed by .ci/run): ``munged``, ``slurmctld`` and
``slurmd`` run as root from a private configuration in a temporary folder (their own ports,
socket, state and spool), so nothing of the machine's own Slurm, if any, is touched. A Dask
worker is submitted with ``sbatch`` by ``SLURMCluster`` and offers ``--resources GPU=1`` (a CPU
standing in for a GPU node): the engine's ``--device cuda`` tasks run on it and give the
in-process results. Without Slurm or root the test skips, except under CI (CI=true), where it
fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drift.cohort.engine import Engine
from drift.cohort.inference import entry_paths

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")


def _need(ok: bool, what: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} under CI (.ci/run installs slurm-wlm and munge; CI runs as root)")
    pytest.skip(what)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/bin") if (p := Path(d) / name).is_file()), None
    )


def _wait(what: str, ready: object, procs: list[subprocess.Popen], logs: Path) -> None:
    deadline = time.monotonic() + 60
    while not ready():  # type: ignore[operator]
        for p in procs:
            if p.poll() is not None:
                text = "\n".join(f.read_text()[-2000:] for f in sorted(logs.glob("*.log")))
                raise AssertionError(f"{p.args[0]} exited ({p.returncode}) before {what}:\n{text}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within 60 s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A one-node Slurm cluster (partition ``gpu``); yields the environment to reach it."""
    missing = [b for b in BINARIES if _find(b) is None]
    _need(not missing, f"Slurm/munge not installed ({', '.join(missing)} missing)")
    _need(os.geteuid() == 0, "slurmd must run as root to start jobs")
    pytest.importorskip("dask_jobqueue")
    base = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (base / sub).mkdir()
    key = base / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = base / "munge.sock"
    host = socket.gethostname().split(".")[0]
    conf = base / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=cordwatch-test",
                f"SlurmctldHost={host}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                f"AuthInfo=socket={sock}",
                "CredType=cred/munge",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                f"StateSaveLocation={base / 'state'}",
                f"SlurmdSpoolDir={base / 'spool'}",
                f"SlurmctldPidFile={base / 'slurmctld.pid'}",
                f"SlurmdPidFile={base / 'slurmd.pid'}",
                f"SlurmctldLogFile={base / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={base / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "SchedulerType=sched/builtin",
                "JobCompType=jobcomp/none",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "MpiDefault=none",
                "ReturnToService=2",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs=1 RealMemory=1500 State=UNKNOWN",
                f"PartitionName=gpu Nodes={host} Default=YES MaxTime=30 State=UP",
                "",
            ]
        )
    )
    env = {"SLURM_CONF": str(conf)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    procs: list[subprocess.Popen] = []
    logs = base / "log"
    try:
        munged = [_find("munged"), "-F", "-f", f"--socket={sock}", f"--key-file={key}"]
        munged += [f"--log-file={logs / 'munged.log'}", f"--pid-file={base / 'munged.pid'}"]
        munged += [f"--seed-file={base / 'munged.seed'}"]
        procs.append(subprocess.Popen(munged, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait("munged's socket", sock.exists, procs, logs)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
        procs.append(subprocess.Popen([_find("slurmctld"), "-D", "-i"], **quiet))  # type: ignore[call-overload]
        procs.append(subprocess.Popen([_find("slurmd"), "-D"], **quiet))  # type: ignore[call-overload]

        def idle() -> bool:
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, check=False
            )
            return out.stdout.strip() == "idle"

        _wait("the node idle in sinfo", idle, procs, logs)
        yield env | {"log_dir": str(logs), "host": host}
    finally:
        for p in reversed(procs):  # slurmd, slurmctld, munged: the processes started here
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _jobs() -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, check=True
    )
    return out.stdout.split("\n")[:-1]


@pytest.mark.slow
def test_slurmcluster_gpu_worker_runs_the_cohort_as_in_process(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from drift.measure.phantoms import write_cohort

    root = tmp_path / "cohort"
    table = write_cohort(root, n_subjects=3, contrasts=("T2w",), seed=6)
    images = [
        (f"{r.participant_id}/T2w", root / r.image, r.image_sha256) for r in table.itertuples()
    ]

    def segment(engine: Engine, cache: Path) -> list:
        return engine.segment_cohort(
            "/nonexistent-package", "c" * 64, images, cache, "cuda", progress=False,
            loader="threshold",
        )  # fmt: skip

    here = segment(Engine(), tmp_path / "here")
    with SLURMCluster(  # the docs/scale-out.md example, shrunk to one CPU
        queue="gpu",
        cores=1,
        processes=1,
        memory="1GB",
        walltime="00:10:00",
        python=sys.executable,
        worker_extra_args=["--resources", "GPU=1"],
        scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"},
        log_directory=str(tmp_path / "jobs"),
        job_script_prologue=[f"cd {Path(__file__).resolve().parents[1]}"],
    ) as cluster:
        assert "#SBATCH -p gpu" in cluster.job_script()
        cluster.scale(jobs=1)
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=180)
            (job,) = _jobs()
            assert " dask-worker RUNNING" in job, job
            workers = client.scheduler_info(n_workers=-1)["workers"]
            (address,) = workers
            assert workers[address]["resources"] == {"GPU": 1}
            there = segment(Engine(client), tmp_path / "there")
    assert [r.status for r in there] == ["ok"] * 3
    assert [r.cache_key for r in there] == [r.cache_key for r in here]
    for a, b in zip(here, there, strict=True):
        assert a.seg_path.read_bytes() == b.seg_path.read_bytes()
        meta = json.loads(entry_paths(tmp_path / "there", b.cache_key)[1].read_text())
        assert meta["device"] == f"stub@{address}"  # segmented by the Slurm job's worker
    deadline = time.monotonic() + 60
    while _jobs() and time.monotonic() < deadline:  # the cluster's close cancels its job
        time.sleep(0.5)
    assert _jobs() == []
