"""drift/cohort/inference.py: the next image is hashed, looked up and read while the current
one is predicted (issue 14 item 6), with the same results as without the prefetch.

The model is a threshold (monkeypatched in place of nnU-Net) that takes a fixed time, and the
image reader records when and in which thread it ran.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from drift.cohort import inference
from drift.cohort.inference import segment_cohort
from registry import nnunet
from registry.fsutil import sha256_file

PACKAGE_SHA = "cd" * 32
PREDICT_SECONDS = 0.15
PKG = Path("no-such-package")  # the loader is monkeypatched: no package is read


class Fake:
    device = "cpu"


@pytest.fixture()
def timeline(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, float, float, str]]:
    """(event, image name, start, end, thread) for every read and prediction."""
    events: list[tuple[str, str, float, float, str]] = []
    real_read = nnunet.read_image

    def read_image(path):
        t0 = time.perf_counter()
        out = real_read(path)
        name = threading.current_thread().name
        events.append(("read", Path(path).name, t0, time.perf_counter(), name))
        return out

    def predict_array(predictor, data, spacing):
        t0 = time.perf_counter()
        time.sleep(PREDICT_SECONDS)
        binary = (np.asarray(data) > 0.5).astype(np.uint8)
        name = threading.current_thread().name
        events.append(("predict", f"{data.sum():.3f}", t0, time.perf_counter(), name))
        return binary.astype(np.float32), binary

    monkeypatch.setattr(nnunet, "load_predictor", lambda package_dir, **kw: Fake())
    monkeypatch.setattr(inference, "daemon_producer_threads", lambda: None)  # no torch import
    monkeypatch.setattr(nnunet, "read_image", read_image)
    monkeypatch.setattr(nnunet, "predict_array", predict_array)
    return events


def _cohort(folder: Path, n: int) -> list[tuple[str, Path, str]]:
    folder.mkdir()
    images = []
    for i in range(n):
        data = np.random.default_rng(i).uniform(0, 1, size=(8, 7, 6)).astype(np.float32)
        path = folder / f"sub-{i:02d}_T2w.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        images.append((f"sub-{i:02d}/T2w", path, sha256_file(path)))
    return images


def test_next_image_is_read_while_the_current_one_is_predicted(tmp_path: Path, timeline) -> None:
    images = _cohort(tmp_path / "cohort", 4)
    results = segment_cohort(PKG, PACKAGE_SHA, images, tmp_path / "a", progress=False)
    assert [r.status for r in results] == ["ok"] * 4
    reads = [e for e in timeline if e[0] == "read"]
    predicts = [e for e in timeline if e[0] == "predict"]
    assert [e[1] for e in reads] == [p.name for _, p, _ in images]
    assert len(predicts) == 4
    main = threading.main_thread().name
    assert all(e[4] != main for e in reads)  # the reading is off the main thread
    assert all(e[4] == main for e in predicts)
    for i in range(3):  # image i + 1 was read before image i's prediction ended
        assert reads[i + 1][2] < predicts[i][3]

    # Same segmentations without the prefetch (every read on the main thread, in turn).
    timeline.clear()
    plain = segment_cohort(PKG, PACKAGE_SHA, images, tmp_path / "b", progress=False, prefetch=False)
    assert all(e[4] == main for e in timeline if e[0] == "read")
    assert [r.cache_key for r in plain] == [r.cache_key for r in results]
    for a, b in zip(results, plain, strict=True):
        assert a.seg_path is not None and b.seg_path is not None
        assert sha256_file(a.seg_path) == sha256_file(b.seg_path)


def test_prefetch_keeps_failures_per_image_and_duplicates_computed_once(
    tmp_path: Path, timeline
) -> None:
    images = _cohort(tmp_path / "cohort", 3)
    bad = tmp_path / "cohort" / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    cohort = [
        images[0],
        ("sub-bad/T2w", bad, None),
        images[1],
        ("sub-00/again", images[0][1], images[0][2]),  # the same file, later in the cohort
        ("sub-02/T2w", images[2][1], "0" * 64),  # a hash that does not match
    ]
    results = segment_cohort(PKG, PACKAGE_SHA, cohort, tmp_path / "c", progress=False)
    assert [r.status for r in results] == ["ok", "failed", "ok", "ok", "failed"]
    assert "broken.nii.gz" in (results[1].error or "")
    assert "does not match the cohort's" in (results[4].error or "")
    # Prefetched before image 0 was written, looked up again: taken from the cache.
    assert results[3].cached and results[3].cache_key == results[0].cache_key
    assert len([e for e in timeline if e[0] == "predict"]) == 2
