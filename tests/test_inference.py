"""drift/cohort/inference.py: a cohort run with a segmentation cache.

Most tests swap the model for a threshold (fast, with an exact answer) by monkeypatching
``registry.nnunet.load_predictor`` / ``predict_array``, and count model loads. One slow test
runs the real demo-good model end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from drift.cohort import inference
from drift.cohort.inference import InferenceSettings, cache_key, segment_cohort, summarize
from registry import nnunet
from registry.errors import InputError
from registry.fsutil import sha256_file

REPO = Path(__file__).resolve().parents[1]
PACKAGE_SHA = "ab" * 32
THRESHOLD = 0.5


class FakePredictor:
    device = "cpu"


class Calls:
    def __init__(self) -> None:
        self.loads = 0
        self.predictions = 0
        self.load_kwargs: list[dict] = []


@pytest.fixture()
def fake_model(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """The model is ``image > 0.5``; counts loads and predictions."""
    calls = Calls()

    def load_predictor(package_dir, **kwargs):
        calls.loads += 1
        calls.load_kwargs.append(kwargs)
        return FakePredictor()

    def predict_array(predictor, data, spacing):
        assert isinstance(predictor, FakePredictor)
        calls.predictions += 1
        soft = np.clip(data, 0, 1).astype(np.float32)
        return soft, (data > THRESHOLD).astype(np.uint8)

    monkeypatch.setattr(nnunet, "load_predictor", load_predictor)
    monkeypatch.setattr(nnunet, "predict_array", predict_array)
    return calls


def _image(path: Path, seed: int) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.uniform(0, 1, size=(6, 5, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1.0, 2.0, 1.0])), path)
    return path, data


@pytest.fixture()
def cohort(tmp_path: Path) -> list[tuple[str, Path, str]]:
    images = []
    for i in range(3):
        path, _ = _image(tmp_path / f"sub-{i:02d}_T2w.nii.gz", seed=i)
        images.append((f"sub-{i:02d}/T2w", path, sha256_file(path)))
    return images


def _run(cohort, cache: Path, **kwargs):
    kwargs.setdefault("progress", False)
    return segment_cohort(tmp_package(), PACKAGE_SHA, cohort, cache, **kwargs)


def tmp_package() -> Path:
    return Path("unused-by-the-fake-model")


def test_first_run_computes_rerun_hits_cache_without_loading(
    cohort, tmp_path: Path, fake_model: Calls
) -> None:
    cache = tmp_path / "cache"
    first = _run(cohort, cache)
    assert [r.status for r in first] == ["ok"] * 3
    assert [r.cached for r in first] == [False] * 3
    assert (fake_model.loads, fake_model.predictions) == (1, 3)  # loaded once per cohort
    for (key, path, _), result in zip(cohort, first, strict=True):
        assert result.key == key and result.image == path
        seg = nib.load(result.seg_path)
        image = nib.load(path)
        np.testing.assert_array_equal(
            np.asarray(seg.dataobj), (np.asarray(image.dataobj) > THRESHOLD).astype(np.uint8)
        )
        np.testing.assert_array_equal(seg.affine, image.affine)

    second = _run(cohort, cache)
    assert [r.cached for r in second] == [True] * 3
    assert [r.seg_path for r in second] == [r.seg_path for r in first]
    assert (fake_model.loads, fake_model.predictions) == (1, 3)  # no load, no prediction
    assert summarize(second) == {
        "n_images": 3,
        "n_ok": 3,
        "n_cached": 3,
        "n_failed": 0,
        "failures": [],
        "seconds": pytest.approx(summarize(second)["seconds"]),
    }


def test_settings_change_the_cache_key(cohort, tmp_path: Path, fake_model: Calls) -> None:
    cache = tmp_path / "cache"
    plain = _run(cohort[:1], cache)
    tta = _run(cohort[:1], cache, tta=True)
    soft = _run(cohort[:1], cache, output="soft")
    folds = _run(cohort[:1], cache, folds=[0, 1])
    keys = {r[0].cache_key for r in (plain, tta, soft, folds)}
    assert len(keys) == 4
    assert fake_model.loads == 4 and fake_model.predictions == 4
    assert fake_model.load_kwargs[1]["tta"] is True
    assert fake_model.load_kwargs[3]["folds"] == [0, 1]
    seg = nib.load(soft[0].seg_path)
    assert seg.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(seg.dataobj), nib.load(cohort[0][1]).get_fdata())


def test_cache_key_depends_on_model_image_and_versions() -> None:
    s = InferenceSettings(nnunetv2="2.6.0", torch="2.13.0")
    base = cache_key(PACKAGE_SHA, "cd" * 32, s)
    assert base == cache_key(PACKAGE_SHA.upper(), "CD" * 32, s)  # hex case is not identity
    variants = [
        cache_key("ef" * 32, "cd" * 32, s),
        cache_key(PACKAGE_SHA, "ef" * 32, s),
        cache_key(PACKAGE_SHA, "cd" * 32, replace(s, nnunetv2="2.6.2")),
        cache_key(PACKAGE_SHA, "cd" * 32, replace(s, torch="2.14.0")),
        cache_key(PACKAGE_SHA, "cd" * 32, replace(s, inference_revision=2)),
        cache_key(PACKAGE_SHA, "cd" * 32, replace(s, output="soft")),
    ]
    assert len({base, *variants}) == 7
    with pytest.raises(ValueError, match="output"):
        InferenceSettings.current(output="probabilities")  # type: ignore[arg-type]


def test_failing_images_are_recorded_and_the_cohort_goes_on(
    cohort, tmp_path: Path, fake_model: Calls
) -> None:
    corrupt = tmp_path / "sub-09_T2w.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 truncated gzip")
    changed_path, _ = _image(tmp_path / "sub-08_T2w.nii.gz", seed=8)
    images = [
        cohort[0],
        ("sub-09/T2w", corrupt, sha256_file(corrupt)),
        ("sub-08/T2w", changed_path, "0" * 64),  # the file is not what the cohort recorded
        ("sub-07/T2w", tmp_path / "missing.nii.gz", None),
        cohort[1],
    ]
    results = _run(images, tmp_path / "cache")
    assert [r.status for r in results] == ["ok", "failed", "failed", "failed", "ok"]
    assert "sub-09_T2w.nii.gz: unreadable image" in results[1].error
    assert "sub-08_T2w.nii.gz: sha256" in results[2].error
    assert "does not match the cohort's 000000000000" in results[2].error
    assert "missing.nii.gz: image not found" in results[3].error
    assert all(r.seg_path is None for r in results[1:4])
    summary = summarize(results)
    assert (summary["n_ok"], summary["n_failed"]) == (2, 3)
    assert [f["key"] for f in summary["failures"]] == ["sub-09/T2w", "sub-08/T2w", "sub-07/T2w"]


def test_prediction_error_is_recorded(cohort, tmp_path: Path, monkeypatch, fake_model) -> None:
    original = nnunet.predict_array

    def flaky(predictor, data, spacing):
        if data.shape and fake_model.predictions == 1:
            fake_model.predictions += 1
            raise RuntimeError("out of memory\nlong traceback text")
        return original(predictor, data, spacing)

    monkeypatch.setattr(nnunet, "predict_array", flaky)
    results = _run(cohort, tmp_path / "cache")
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert results[1].error == f"{cohort[1][1]}: RuntimeError: out of memory"


def test_a_model_that_cannot_load_stops_the_cohort(
    cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(package_dir, **kwargs):
        raise InputError("not an nnU-Net v2 results folder", package_dir)

    monkeypatch.setattr(nnunet, "load_predictor", broken)
    with pytest.raises(InputError, match="not an nnU-Net v2 results folder"):
        _run(cohort, tmp_path / "cache")

    def crash(package_dir, **kwargs):
        raise RuntimeError("size mismatch for decoder.seg_layers.0.weight")

    monkeypatch.setattr(nnunet, "load_predictor", crash)
    with pytest.raises(InputError, match="cannot load the model: size mismatch"):
        _run(cohort, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.nii.gz"))


def test_interrupt_keeps_finished_work_and_leaves_no_partial_entry(
    cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_model: Calls
) -> None:
    cache = tmp_path / "cache"
    original = nnunet.predict_array

    def interrupted(predictor, data, spacing):
        if fake_model.predictions == 2:
            raise KeyboardInterrupt  # Ctrl-C while the third image is being predicted
        return original(predictor, data, spacing)

    monkeypatch.setattr(nnunet, "predict_array", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(cohort, cache)
    files = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert len(files) == 4  # two complete entries (NIfTI + sidecar), no temporary file
    assert all(f.endswith((".nii.gz", ".json")) and not f.startswith(".") for f in files)

    monkeypatch.setattr(nnunet, "predict_array", original)
    rerun = _run(cohort, cache)
    assert [r.cached for r in rerun] == [True, True, False]
    assert fake_model.loads == 2 and fake_model.predictions == 3


def test_interrupt_while_writing_an_entry(
    cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_model: Calls
) -> None:
    """Killed between the sidecar and the NIfTI, or inside the NIfTI write: not an entry."""
    cache = tmp_path / "cache"
    original = Path.write_bytes

    def write_half_then_die(self, data):
        original(self, data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(cohort[:1], cache)
    monkeypatch.setattr(Path, "write_bytes", original)
    leftovers = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert len(leftovers) == 1 and leftovers[0].endswith(".json")  # the sidecar alone
    again = _run(cohort[:1], cache)
    assert again[0].cached is False and again[0].status == "ok"
    nib.load(again[0].seg_path)


def test_damaged_cache_entry_is_recomputed(cohort, tmp_path: Path, fake_model: Calls) -> None:
    cache = tmp_path / "cache"
    first = _run(cohort[:1], cache)
    first[0].seg_path.write_bytes(b"damaged")
    again = _run(cohort[:1], cache)
    assert again[0].cached is False and again[0].status == "ok"
    assert fake_model.predictions == 2
    nib.load(again[0].seg_path)  # readable again


def test_sidecar_records_provenance(cohort, tmp_path: Path, fake_model: Calls) -> None:
    result = _run(cohort[:1], tmp_path / "cache")[0]
    meta = json.loads(result.seg_path.with_name(f"{result.cache_key}.json").read_text())
    assert meta["package_sha256"] == PACKAGE_SHA
    assert meta["image_sha256"] == cohort[0][2]
    assert meta["segmentation_sha256"] == sha256_file(result.seg_path)
    assert meta["settings"]["tta"] is False and meta["settings"]["output"] == "binary"
    assert meta["settings"]["inference_revision"] == inference.INFERENCE_REVISION
    assert meta["image_shape"] == [6, 5, 4] and meta["image_spacing"] == [1.0, 1.0, 2.0]
    assert meta["device"] == "cpu"


def test_progress_bar_goes_to_stderr(cohort, tmp_path: Path, fake_model: Calls, capfd) -> None:
    _run(cohort, tmp_path / "cache", progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert "segmenting" in err and "3/3" in err


def test_fully_cached_rerun_does_not_import_torch(cohort, tmp_path: Path, fake_model) -> None:
    cache = tmp_path / "cache"
    _run(cohort, cache)
    script = (
        "import sys, json\n"
        "from drift.cohort.inference import segment_cohort\n"
        f"images = json.loads({json.dumps(json.dumps([[k, str(p), s] for k, p, s in cohort]))})\n"
        f"res = segment_cohort('no-such-package', {PACKAGE_SHA!r}, images, {str(cache)!r},"
        " progress=False)\n"
        "print(json.dumps([r.cached for r in res]), 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert proc.stdout.split() == ["[true,", "true,", "true]", "False"]


@pytest.mark.slow
def test_demo_good_end_to_end_with_cache(tmp_path: Path) -> None:
    """The real model on two phantom images: segmentations close to the ground truth, then a
    cached re-run that does not load the model."""
    pytest.importorskip("torch")
    from drift.measure.phantoms import make_subject

    subject = make_subject(5, seed=0, contrasts=("T1w", "T2star"))
    images = []
    for contrast in ("T1w", "T2star"):
        path = tmp_path / f"{subject.subject_id}_{contrast}.nii.gz"
        nib.save(nib.Nifti1Image(subject.images[contrast].astype(np.int16), subject.affine), path)
        images.append((f"{subject.subject_id}/{contrast}", path, sha256_file(path)))
    package = REPO / "models" / "demo" / "demo-good"
    results = segment_cohort(package, "demo-good-sha", images, tmp_path / "cache", "cpu")
    assert [r.status for r in results] == ["ok", "ok"]
    gt = subject.binary_seg > 0
    for r in results:
        seg = np.asarray(nib.load(r.seg_path).dataobj) > 0
        assert 2 * np.sum(seg & gt) / (seg.sum() + gt.sum()) > 0.9
    again = segment_cohort(package, "demo-good-sha", images, tmp_path / "cache", progress=False)
    assert [r.cached for r in again] == [True, True]
