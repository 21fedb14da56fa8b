"""Issue 15, defect 3: SIGINT / SIGTERM during inference end ``drift check`` within seconds.

A real ``cordwatch drift check`` subprocess on a small phantom cohort with the committed demo
models; the signal arrives while nnU-Net is predicting (right after a cache entry appeared).
Before the fix the process printed "interrupted" and then hung in ``threading._shutdown`` on
nnU-Net's non-daemon producer thread; SIGTERM killed it without cleanup.
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

from drift.cohort.inference import cached_segmentation
from drift.cohort.manifest import PhantomRecipe, write_phantom_manifest
from registry.api import VERDICT_TAG, connect

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models" / "demo"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("signals")
    home = base / "home"
    manifest = write_phantom_manifest(
        base / "cohorts",
        name="phantom-signals",
        recipe=PhantomRecipe(n_subjects=6, seed=5, contrasts=("T2w",)),
    )
    reg = connect(None, home)
    v1 = reg.register("sig", MODELS / "demo-good")
    reg.promote(v1.ref, "champion", force=True, reason="test: first champion")
    reg.register("sig", MODELS / "demo-biased", alias="candidate")
    yield {"base": base, "home": home, "manifest": manifest, "reg": reg}


def _entries(cache: Path) -> set[Path]:
    return set(cache.rglob("*.json")) if cache.is_dir() else set()


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_3_signal_during_inference_stops_within_10_s(
    world: dict, sig: signal.Signals, code: int, tmp_path: Path
) -> None:
    cache = world["home"] / "cache" / "segmentations"
    before = _entries(cache)
    out = tmp_path / "result.json"
    env = {
        **os.environ,
        "CORDWATCH_HOME": str(world["home"]),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONPATH": str(REPO),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("CORDWATCH_COHORT_ROOT", None)
    argv = [sys.executable, "-m", "drift.cli.main", "drift", "check", "sig@candidate"]
    argv += ["--baseline", "sig@champion", "--cohort", str(world["manifest"]), "--no-progress"]
    argv += ["--device", "cpu", "--result", str(out), "--report", str(tmp_path / "report")]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not (_entries(cache) - before):  # a new segmentation: inference is running
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no segmentation written in 10 minutes"
            time.sleep(0.2)
        time.sleep(0.5)  # well inside the next image's prediction
        assert proc.poll() is None, "the check finished before the signal"
        sent = time.monotonic()
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        finally:
            elapsed = time.monotonic() - sent
        _, stderr = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 10, f"{elapsed:.1f} s after the signal"
    assert proc.returncode == code, stderr.decode()
    assert b"Traceback" not in stderr and b"Exception ignored" not in stderr, stderr.decode()
    # finished cache entries kept and intact, nothing half-written, no verdict, no result
    after = _entries(cache)
    assert before < after
    for meta in after:
        assert cached_segmentation(cache, meta.stem) is not None, meta
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
    assert not out.exists() and not (tmp_path / "report").exists()
    tags = world["reg"].resolve("sig@candidate").tags
    assert VERDICT_TAG not in tags, json.dumps(tags)
