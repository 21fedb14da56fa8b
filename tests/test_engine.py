"""The Dask execution engine (drift.cohort.engine) on a real LocalCluster.

Stub segmenter (:class:`drift.cohort.engine.ThresholdPredictor`) for routing, a killed worker
and the overhead; the real nnU-Net demo models for ``drift check --scheduler local:2``, whose
result JSON must equal the in-process one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client, LocalCluster
from typer.testing import CliRunner

from drift.cli.main import app
from drift.cohort.engine import Engine, EngineError, open_engine, parse_scheduler
from drift.cohort.inference import entry_paths
from registry.errors import InputError

MODELS = Path(__file__).resolve().parents[1] / "models" / "demo"
runner = CliRunner()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path, str | None]]:
    from drift.measure.phantoms import write_cohort

    root = tmp_path_factory.mktemp("engine-cohort")
    table = write_cohort(root, n_subjects=6, contrasts=("T2w",), seed=5)
    return [
        (f"{r.participant_id}/T2w", root / r.image, r.image_sha256)
        for r in table.itertuples(index=False)
    ]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    ) as c:
        yield c


def _segment(engine: Engine, images: list, cache: Path, **kw) -> list:
    return engine.segment_cohort(
        "/nonexistent-package", "a" * 64, images, cache, progress=False, loader="threshold", **kw
    )


def _fingerprint(results: list) -> list:
    return [
        (
            r.key,
            r.status,
            r.cache_key,
            r.error,
            None if r.seg_path is None else r.seg_path.read_bytes(),
        )
        for r in results
    ]


def test_parse_scheduler() -> None:
    assert parse_scheduler(None) is None
    assert parse_scheduler("local:2") == ("local", 2)
    assert parse_scheduler("local")[0] == "local"
    assert parse_scheduler("tcp://127.0.0.1:8786") == ("tcp", "tcp://127.0.0.1:8786")
    for bad in ("local:0", "local:x", "127.0.0.1:8786", "tcp://nohost"):
        with pytest.raises(InputError, match="--scheduler"):
            parse_scheduler(bad)


def test_task_keys_are_the_same_in_every_interpreter() -> None:
    """A task's key is a sha256 of what it computes (no id(), no hash randomisation): a fresh
    interpreter gets the same key; another cache or another image gets another one."""
    from drift.cohort.engine import ModelSpec, _task_key
    from drift.cohort.inference import InferenceSettings

    code = (
        "from drift.cohort.engine import ModelSpec, _task_key\n"
        "from drift.cohort.inference import InferenceSettings\n"
        "s = InferenceSettings.current()\n"
        "spec = repr(ModelSpec('/p', 'a' * 64, None))\n"
        "print(_task_key('segment', 'a' * 64, 'b' * 64, 'k', s, None, ('/c', spec)))"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    s = InferenceSettings.current()
    spec = repr(ModelSpec("/p", "a" * 64, None))
    key = _task_key("segment", "a" * 64, "b" * 64, "k", s, None, ("/c", spec))
    assert out.stdout.strip() == key and key.startswith("cordwatch-segment-"), out.stderr
    assert _task_key("segment", "a" * 64, "b" * 64, "k", s, None, ("/d", spec)) != key
    assert _task_key("segment", "a" * 64, "c" * 64, "k", s, None, ("/c", spec)) != key


@pytest.mark.slow
def test_cluster_results_equal_in_process_and_survive_a_killed_worker(
    cluster: LocalCluster, images: list, tmp_path: Path
) -> None:
    here = _segment(Engine(), images, tmp_path / "here")
    with Client(cluster, set_as_default=False) as client:
        same = _segment(Engine(client), list(reversed(images)), tmp_path / "there")
        assert _fingerprint(same[::-1]) == _fingerprint(here)

        # Kill one worker process (SIGKILL, no goodbye) after the second finished image.
        pids = client.run(os.getpid)
        killed: list[int] = []

        def kill(done: int, _total: int) -> None:
            if done == 2 and not killed:
                pid = next(iter(pids.values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        slow = Engine(client, on_done=kill)
        survived = _segment(slow, images, tmp_path / "killed", stub_delay_s=0.5)
        assert killed
        assert _fingerprint(survived) == _fingerprint(here)
        for r in survived:  # every entry complete and intact
            seg, meta = entry_paths(tmp_path / "killed", r.cache_key)
            assert seg.is_file() and meta.is_file()
        client.wait_for_workers(2, timeout=60)  # the nanny restarted it


@pytest.mark.slow
def test_gpu_tasks_go_to_the_gpu_worker_only(images: list, tmp_path: Path) -> None:
    """Two workers: one offering resources={"GPU": 1} (a CPU standing in), one plain
    (started with the `dask worker` command line). --device cuda segments only on the first;
    measuring tasks may run anywhere."""
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        resources={"GPU": 1},
        silence_logs=40,
    ) as gpu_cluster:
        address = gpu_cluster.scheduler_address
        plain = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                address,
                "--nthreads",
                "1",
                "--no-dashboard",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with Client(address, set_as_default=False) as client:
                client.wait_for_workers(2, timeout=120)
                gpu_addr = [
                    a
                    for a, w in client.scheduler_info(n_workers=-1)["workers"].items()
                    if w["resources"].get("GPU")
                ]
                assert len(gpu_addr) == 1
                results = _segment(Engine(client), images, tmp_path / "c", device="cuda")
                assert all(r.status == "ok" for r in results)
                where = {
                    json.loads(entry_paths(tmp_path / "c", r.cache_key)[1].read_text())["device"]
                    for r in results
                }
                assert where == {f"stub@{gpu_addr[0]}"}
                # CPU work (the stub on device cpu) may use both workers.
                cpu = _segment(Engine(client), images, tmp_path / "cpu", device="cpu")
                assert [r.status for r in cpu] == ["ok"] * len(images)
        finally:
            plain.send_signal(signal.SIGINT)
            plain.wait(timeout=60)


@pytest.mark.slow
def test_no_gpu_worker_is_a_clear_error_not_a_hang(
    cluster: LocalCluster, images: list, tmp_path: Path
) -> None:
    with Client(cluster, set_as_default=False) as client:
        t0 = time.monotonic()
        with pytest.raises(EngineError, match="no worker offers a GPU resource"):
            _segment(Engine(client, gpu_wait_s=1), images, tmp_path / "c", device="cuda")
        assert time.monotonic() - t0 < 30


def test_unreachable_scheduler_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with (
        pytest.raises(EngineError, match="no Dask scheduler answered within 2 s"),
        open_engine(f"tcp://127.0.0.1:{port}", timeout_s=2),
    ):
        pass
    assert time.monotonic() - t0 < 30
    result = runner.invoke(
        app,
        [
            "drift",
            "check",
            "cs@candidate",
            "--baseline",
            "cs@champion",
            "--cohort",
            "phantom",
            "--scheduler",
            f"tcp://127.0.0.1:{port}",
            "--result",
            str(tmp_path / "r.json"),
        ],
        env={"CORDWATCH_HOME": str(tmp_path / "home"), "CORDWATCH_SCHEDULER_TIMEOUT": "2"},
    )
    assert result.exit_code == 2, result.output
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"cordwatch: error: tcp://127.0.0.1:{port}: no Dask scheduler answered")
    )
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------- drift check: cluster == in-process -----


def _world(base: Path, registry_home) -> Path:
    from registry.api import connect

    home = base / "home"
    reg = connect(None, registry_home(home))  # conftest: a copy of an empty registry
    v1 = reg.register("cs", MODELS / "demo-good")
    reg.promote(v1.ref, "champion", force=True, reason="test: first champion")
    reg.register("cs", MODELS / "demo-biased", alias="candidate")
    return home


@pytest.mark.slow
def test_drift_check_on_local_2_equals_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_home, phantom_small_3: Path
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CORDWATCH_COHORT_ROOT", raising=False)
    # One torch thread in both runs (a worker has one): the same arithmetic, the same bytes.
    monkeypatch.setenv("CORDWATCH_TORCH_THREADS", "1")
    manifest = phantom_small_3  # conftest: 3 subjects, seed 3, T2w
    policy = tmp_path / "policy.yaml"  # three subjects keep the test short
    text = (Path(__file__).resolve().parents[1] / "reference_data" / "policy.yaml").read_text()
    policy.write_text(text.replace("\nmin_subjects: 5\n", "\nmin_subjects: 3\n"))
    docs = {}
    for mode in ("in-process", "local:2"):
        home = _world(tmp_path / mode, registry_home)  # separate registries: nothing reused
        out = tmp_path / mode / "result.json"
        extra = [] if mode == "in-process" else ["--scheduler", mode]
        monkeypatch.setenv("CORDWATCH_HOME", str(home))
        result = runner.invoke(
            app,
            [
                "drift",
                "check",
                "cs@candidate",
                "--baseline",
                "cs@champion",
                "--cohort",
                str(manifest),
                "--no-progress",
                "--device",
                "cpu",
                "--policy",
                str(policy),
                "--result",
                str(out),
                *extra,
            ],
        )
        assert result.exit_code in (0, 1), result.output
        if mode != "in-process":
            assert "started a LocalCluster of 2 workers" in result.stdout
            assert "dashboard: http://127.0.0.1:" in result.stdout
        doc = json.loads(out.read_text())
        doc["provenance"].pop("created_utc")
        for role in ("baseline", "candidate"):  # registration times of two separate registries
            doc["provenance"][role].pop("created")
        docs[mode] = doc
    assert docs["local:2"] == docs["in-process"]


# ------------------------------------------- an SCT release package through the engine -----

PADS = {"pad_superior": 10.0, "pad_inferior": 10.0, "pad_left": 8.0, "pad_right": 8.0}
PADS |= {"pad_anterior": 8.0, "pad_posterior": 10.0}


def _sct_package(dest: Path) -> Path:
    """The demo model in SCT's v4 release layout (crop_metadata.json, image_orientation)."""
    import shutil

    inner = dest / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    shutil.copytree(MODELS / "demo-good", inner)
    dataset = json.loads((inner / "dataset.json").read_text())
    (inner / "dataset.json").write_text(json.dumps({**dataset, "image_orientation": "LPI"}))
    (dest / "crop_metadata.json").write_text(json.dumps({"sc_crop_version": "0.12.1", **PADS}))
    return dest


def test_sct_pipeline_and_crop_sources_run_on_the_cluster_as_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SCT-format package (reorientation, crop box from the ground-truth mask, SCT's
    post-processing) through Engine.segment_cohort on a LocalCluster gives the in-process
    cache keys, pipeline settings and bytes. Threads, not processes, so that a stand-in
    network (a threshold, no torch) can be monkeypatched in for nnU-Net."""
    import numpy as np

    from drift.cohort.inference import segment_cohort
    from drift.measure.phantoms import write_cohort
    from registry import nnunet

    class Fake:
        device = "cpu"

    def network(_predictor: object, data: np.ndarray, _spacing: object) -> tuple:
        soft = np.clip((np.asarray(data) - 350.0) / 200.0, 0, 1).astype(np.float32)
        return soft, (soft >= 0.5).astype(np.uint8)

    from drift.cohort import inference

    monkeypatch.setattr(inference, "daemon_producer_threads", lambda: None)  # no nnunetv2 import
    monkeypatch.setattr(nnunet, "load_predictor", lambda *_a, **_k: Fake())
    monkeypatch.setattr(nnunet, "predict_array", network)
    root = tmp_path / "cohort"
    table = write_cohort(root, n_subjects=3, contrasts=("T2w",), seed=8)
    imgs = [(f"{r.participant_id}/T2w", root / r.image, r.image_sha256) for r in table.itertuples()]
    crops = {f"{r.participant_id}/T2w": root / r.gt_seg for r in table.itertuples()}
    pkg = _sct_package(tmp_path / "sct")
    kw = {"progress": False, "device": "cpu", "crop_sources": crops}
    here = segment_cohort(pkg, "b" * 64, imgs, tmp_path / "here", **kw)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as c,
        Client(c, set_as_default=False) as client,
    ):
        there = Engine(client).segment_cohort(pkg, "b" * 64, imgs, tmp_path / "there", **kw)
    assert [r.status for r in there] == ["ok"] * 3
    assert _fingerprint(there) == _fingerprint(here)
    meta = json.loads(entry_paths(tmp_path / "there", there[0].cache_key)[1].read_text())
    assert meta["settings"]["pipeline"]["kind"] == "sct-nnunet"
    assert meta["settings"]["pipeline"]["orientation"] == "LPI"
    assert meta["crop_source"] == "gt_seg" and "crop_box" in meta["pipeline_steps"]


def test_cli_import_stays_light() -> None:
    """--scheduler's help comes from drift.cohort.engine: importing the command line must not
    import dask, numpy or the inference module (a fresh interpreter)."""
    code = (
        "import sys, drift.cli.main\n"
        "print(sorted(m for m in ('dask', 'distributed', 'numpy', 'drift.cohort.inference')"
        " if m in sys.modules))"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


# ------------------------------------------------------------- morphometry --batch -----


def _batch_table(images: list, path: Path) -> Path:
    """seg / discfile / name rows for the phantoms' ground truth, then a bad row."""
    lines = ["seg\tdiscfile\tname"]
    for key, image, _sha in images[:3]:
        labels = image.parents[2] / "derivatives" / "labels" / image.parent.parent.name / "anat"
        stem = image.name.removesuffix(".nii.gz")
        seg = labels / f"{stem}_label-SC_seg.nii.gz"
        discs = labels / f"{stem}_label-discs_dlabel.nii.gz"
        lines.append(f"{seg}\t{discs}\t{key.replace('/', '_')}")
    lines.append(f"{path.parent / 'missing_seg.nii.gz'}\t\tbroken")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("scheduler", [None, pytest.param("local:2", marks=pytest.mark.slow)])
def test_batch_morphometry_reports_a_bad_row_and_keeps_the_others(
    images: list, tmp_path: Path, scheduler: str | None
) -> None:
    table = _batch_table(images, tmp_path / "batch.tsv")
    out = tmp_path / "out"
    extra = [] if scheduler is None else ["--scheduler", scheduler]
    result = runner.invoke(
        app, ["morphometry", "--batch", str(table), "-o", str(out), "--perlevel", *extra]
    )
    assert result.exit_code == 2, result.output
    err = result.stderr.strip().splitlines()
    assert any("broken: line 5:" in line and "missing_seg.nii.gz" in line for line in err)
    assert err[-1] == f"cordwatch: error: {table}: 1 of 4 rows failed (see above)"
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{k.replace('/', '_')}.csv" for k, _i, _s in images[:3])
    # Each CSV is the single-file command's (but for its time stamp).
    key, image, _sha = images[0]
    one = tmp_path / "one.csv"
    labels = image.parents[2] / "derivatives" / "labels" / image.parent.parent.name / "anat"
    stem = image.name.removesuffix(".nii.gz")
    single = runner.invoke(
        app,
        [
            "morphometry",
            str(labels / f"{stem}_label-SC_seg.nii.gz"),
            "--discfile",
            str(labels / f"{stem}_label-discs_dlabel.nii.gz"),
            "--perlevel",
            "-o",
            str(one),
        ],
    )
    assert single.exit_code == 0, single.output

    def body(p: Path) -> list[list[str]]:
        import csv

        rows = list(csv.reader(p.read_text().splitlines()))
        return [r[1:] for r in rows]  # drop the Timestamp column

    got, want = body(out / f"{key.replace('/', '_')}.csv"), body(one)
    header = want[0]
    diff = [
        (i, header[j], g[j], w[j])
        for i, (g, w) in enumerate(zip(got, want, strict=True))
        for j in range(len(w))
        if g[j] != w[j]
    ]
    assert not diff, diff[:5]


def test_batch_table_errors_name_the_file_and_line(tmp_path: Path) -> None:
    from drift.measure.batch import read_table

    cases = {
        "noseg": "name\nx\n",
        "both": "seg\tvertfile\tdiscfile\na.nii.gz\tv.nii.gz\td.nii.gz\n",
        "dup": "seg\tname\na.nii.gz\tx\nb.nii.gz\tx\n",
        "unknown": "seg\tcolour\na.nii.gz\tred\n",
    }
    for name, text in cases.items():
        path = tmp_path / f"{name}.tsv"
        path.write_text(text)
        with pytest.raises(InputError) as info:
            read_table(path)
        assert str(info.value).startswith(str(path)), name
    path = tmp_path / "ok.tsv"
    path.write_text("seg\tvertfile\nsub/a_seg.nii.gz\tsub/a_levels.nii.gz\n")
    (row,) = read_table(path)
    assert row.name == "a_seg" and row.seg == tmp_path / "sub" / "a_seg.nii.gz"
    assert row.vertfile == tmp_path / "sub" / "a_levels.nii.gz" and row.line == 2


# ------------------------------------------------------------------------- Ctrl-C -----


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_ctrl_c_stops_the_cluster_it_started_and_leaves_only_complete_outputs(
    images: list, tmp_path: Path
) -> None:
    """A real ``cordwatch morphometry --batch --scheduler local:2`` subprocess gets SIGINT
    while its workers are measuring: exit 130 within seconds, the scheduler and every worker
    and nanny process gone, and only complete CSVs (no temporary files) in OUTDIR."""
    import re

    base = _batch_table(images, tmp_path / "one.tsv").read_text().splitlines()[1:4]
    rows = [line.rsplit("\t", 1)[0] + f"\tr{i:04d}" for i in range(400) for line in base[:1]]
    table = tmp_path / "many.tsv"
    table.write_text("seg\tdiscfile\tname\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "MLFLOW_DISABLE_TELEMETRY": "true"}
    argv = [sys.executable, "-m", "drift.cli.main", "morphometry", "--batch", str(table)]
    argv += ["-o", str(out), "--perlevel", "--scheduler", "local:2"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()  # "started a LocalCluster of 2 workers at ..."
        found = re.search(r"started a LocalCluster of 2 workers at (tcp://\S+);", line)
        assert found, line + proc.stderr.read().decode()
        address = found.group(1)
        with Client(address, set_as_default=False, timeout=30) as client:
            pids = [*client.run(os.getpid).values(), *client.run(os.getpid, nanny=True).values()]
        assert len(pids) == 4
        deadline = time.monotonic() + 300
        while len(list(out.glob("*.csv"))) < 4:  # workers are measuring
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no CSV written in 5 minutes"
            time.sleep(0.1)
        assert proc.poll() is None, "the batch finished before the signal"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        elapsed = time.monotonic() - sent
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert elapsed < 15, f"{elapsed:.1f} s after SIGINT"
    assert "Traceback" not in stderr, stderr
    t0 = time.monotonic()
    while any(_alive(p) for p in pids) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "cluster processes survived Ctrl-C"
    with pytest.raises(OSError), Client(address, set_as_default=False, timeout=2):
        pass  # the scheduler is gone too
    written = sorted(out.iterdir())
    assert all(p.suffix == ".csv" and not p.name.startswith(".") for p in written), written
    assert 4 <= len(written) < 400
    header = written[0].read_text().splitlines()[0]
    for p in written:  # each complete: the same header and rows as the first
        lines = p.read_text().splitlines()
        assert lines[0] == header and len(lines) == len(written[0].read_text().splitlines()), p


@pytest.mark.parametrize(
    "argv",
    [
        ["drift", "check", "--help"],
        ["normative", "update", "--help"],
        ["morphometry", "--help"],
        ["serve", "--help"],
    ],
)
def test_scheduler_option_on_every_command_that_runs_a_cohort(argv: list[str]) -> None:
    result = runner.invoke(app, argv, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--scheduler" in result.stdout and "local[:N]|tcp://HOST:PORT" in result.stdout


def test_bad_scheduler_on_serve_and_normative_is_one_line_exit_2(tmp_path: Path) -> None:
    env = {"CORDWATCH_HOME": str(tmp_path / "home")}
    serve = runner.invoke(app, ["serve", "--scheduler", "local:0"], env=env)
    assert serve.exit_code == 2, serve.output
    assert serve.stderr.strip().splitlines()[-1].startswith("cordwatch: error:")
    assert "--scheduler local:N needs N >= 1" in serve.stderr
    argv = ["normative", "update", "db", "--model", "cs/1", "--scaling", str(tmp_path / "r.json")]
    update = runner.invoke(app, [*argv, "--scheduler", "local:2"], env=env)
    assert update.exit_code == 2, update.output
    assert "--scheduler is for --recompute" in update.stderr.strip().splitlines()[-1]
