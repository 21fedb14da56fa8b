"""``cordwatch drift check`` end to end on a small phantom cohort with the committed demo models.

One module-scoped registry: v1 = demo-good (forced champion), v2 = demo-biased (trained on
dilated labels), v3 = demo-good's weights registered again (a new version, same weights).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from drift.cli.main import app
from drift.cohort.manifest import PhantomRecipe, write_phantom_manifest
from registry.api import VERDICT_TAG, Registry, connect

MODELS = Path(__file__).resolve().parents[1] / "models" / "demo"
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, registry_home) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("check")
    home = base / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORDWATCH_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("CORDWATCH_COHORT_ROOT", raising=False)
        manifest = write_phantom_manifest(
            base / "cohorts",
            name="phantom-small",
            recipe=PhantomRecipe(n_subjects=5, seed=3, contrasts=("T2w",)),
        )
        reg = connect(None, registry_home(home))  # conftest: an empty registry, made once
        v1 = reg.register("cs", MODELS / "demo-good")
        reg.promote(v1.ref, "champion", force=True, reason="test: first champion")
        reg.register("cs", MODELS / "demo-biased", alias="candidate")
        reg.register("cs", MODELS / "demo-good")
        yield {"base": base, "home": home, "manifest": manifest, "reg": reg}


def check(world: dict, candidate: str, *extra: str) -> tuple[int, str, str]:
    args = [
        "drift",
        "check",
        candidate,
        "--baseline",
        "cs@champion",
        "--cohort",
        str(world["manifest"]),
        "--no-progress",
        *extra,
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORDWATCH_HOME", str(world["home"]))
        result = runner.invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def biased(world: dict) -> dict:
    out = world["base"] / "biased"
    code, stdout, stderr = check(
        world, "cs@candidate", "--report", str(out / "report"), "--result", str(out / "result.json")
    )
    return {
        "code": code,
        "stdout": stdout,
        "stderr": stderr,
        "out": out,
        "result": json.loads((out / "result.json").read_text()),
    }


@pytest.mark.slow
def test_biased_model_fails_for_its_csa_bias(world: dict, biased: dict) -> None:
    assert biased["code"] == 1, biased["stderr"]
    assert "drift gate failed" in biased["stderr"]
    area = biased["result"]["metrics"]["area"]["levels"]
    gated = {lv: v for lv, v in area.items() if v.get("gated")}
    assert len(gated) >= 5
    for level, stats in gated.items():
        # Dilated training labels: a systematic CSA inflation of a few percent, CI clear of 1 %.
        assert stats["scaling_factor"] > 1.015, level
        assert stats["ci95"][0] > 1.01, level
        assert stats["n_subjects"] == 5
    failing = [c for c in biased["result"]["conditions"] if c["status"] == "fail"]
    assert any(c["metric"] == "area" for c in failing)
    assert biased["result"]["verdict"] == "fail"
    info = world["reg"].resolve("cs/2")
    assert info.tags[VERDICT_TAG] == "fail"
    assert info.tags["cordwatch.drift.baseline"] == "cs/1"
    assert (biased["out"] / "report" / "report.html").stat().st_size > 10_000
    summary = (biased["out"] / "report" / "summary.md").read_text()
    assert "fail" in summary.lower() and "C3" in summary


@pytest.mark.slow
def test_dice_and_ground_truth_are_reported(biased: dict) -> None:
    result = biased["result"]
    dice = result["dice"]
    text = json.dumps(dice)
    assert "baseline" in text and "candidate" in text
    # demo-good segments the phantoms well; the biased one over-segments but still overlaps.
    values = [v for v in _numbers(dice) if 0 < v <= 1]
    assert values and min(values) > 0.75
    assert "ground_truth" in result["metrics"]["area"]


def _numbers(obj) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [float(obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


@pytest.mark.slow
def test_morphometrics_are_logged_per_version_and_reused(world: dict, biased: dict) -> None:
    reg: Registry = world["reg"]
    exp = reg.client.get_experiment_by_name("cordwatch-morphometrics")
    runs = reg.client.search_runs([exp.experiment_id])
    versions = sorted(r.data.tags["cordwatch.model.version"] for r in runs)
    assert versions == ["1", "2"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.metrics["n_images"] == 5
        assert 40 < run.data.metrics["area_C3"] < 110
    # A re-run computes nothing: no model is loaded at all.
    import registry.nnunet as nnunet

    def refuse(*_a, **_k):
        raise AssertionError("the model was loaded on a fully cached re-run")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nnunet, "load_predictor", refuse)
        code, _, stderr = check(world, "cs/2")
    assert code == 1, stderr


@pytest.mark.slow
def test_same_weights_pass_and_can_be_promoted(world: dict, biased: dict) -> None:
    out = world["base"] / "same"
    code, _stdout, stderr = check(world, "cs/3", "--result", str(out / "r.json"))
    assert code == 0, stderr
    result = json.loads((out / "r.json").read_text())
    assert result["verdict"] == "pass"
    for stats in result["metrics"]["area"]["levels"].values():
        if stats.get("gated"):
            assert stats["scaling_factor"] == pytest.approx(1.0, abs=1e-12)
    reg: Registry = world["reg"]
    assert reg.resolve("cs/3").tags[VERDICT_TAG] == "pass"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORDWATCH_HOME", str(world["home"]))
        refused = runner.invoke(app, ["models", "promote", "cs/2"])
        assert refused.exit_code == 1
        promoted = runner.invoke(app, ["models", "promote", "cs/3"])
        assert promoted.exit_code == 0, promoted.stderr
    assert reg.resolve("cs@champion").version == 3
    reg.promote("cs/1", "champion", force=True, reason="test: restore baseline")


def _tags(reg: Registry, ref: str) -> dict[str, str]:
    return dict(reg.resolve(ref).tags)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["policy", "version", "cohort-file", "device"])
def test_bad_input_exits_2_and_writes_no_verdict(world: dict, case: str, tmp_path: Path) -> None:
    reg: Registry = world["reg"]
    before = _tags(reg, "cs/3")
    extra: list[str] = []
    candidate = "cs/3"
    if case == "policy":
        bad = tmp_path / "policy.yaml"
        bad.write_text("margins:\n  area: {fail: -1}\n")
        extra = ["--policy", str(bad)]
    elif case == "version":
        candidate = "cs/99"
    elif case == "device":
        extra = ["--device", "tpu"]
    else:
        root = tmp_path / "root"
        import shutil

        shutil.copytree(world["home"] / "cohorts" / "phantom-small", root)
        victim = next(root.rglob("*_T2w.nii.gz"))
        victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
        extra = ["--root", str(root)]
    code, _, stderr = check(world, candidate, *extra, "--result", str(tmp_path / "r.json"))
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("cordwatch: error: ")
    assert not (tmp_path / "r.json").exists()
    if case != "version":
        assert _tags(reg, "cs/3") == before


@pytest.mark.slow
def test_interrupt_mid_cohort_leaves_no_verdict(world: dict, biased: dict) -> None:
    reg: Registry = world["reg"]
    v4 = reg.register("cs", MODELS / "demo-good", tags={"note": "interrupted"})
    import drift.cohort.evaluate as evaluate_module

    calls = {"n": 0}
    real = evaluate_module.measure

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    cache = world["home"] / "cache" / "segmentations"
    entries_before = {p for p in cache.rglob("*") if p.is_file()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate_module, "measure", flaky)
        # Force measuring (v4 has v1's weights, whose logged morphometrics would be reused).
        mp.setattr(evaluate_module, "find_morphometry_run", lambda *a, **k: None)
        code, _, _stderr = check(world, v4.ref)
    assert code == 130
    assert VERDICT_TAG not in _tags(reg, v4.ref)
    # Same weights as v1: every segmentation was already cached, none half-written.
    entries_after = {p for p in cache.rglob("*") if p.is_file()}
    assert not [p for p in entries_after if p.name.endswith(".tmp")]
    assert entries_before <= entries_after


def test_injected_scaling_through_the_instrument_is_recovered(tmp_path: Path) -> None:
    """Phantoms whose true CSA is x1.02 (all levels) measured by the real morphometry: the
    comparison recovers 1.02 within its CI and fails; x1.002 passes."""
    import nibabel as nib
    import pandas as pd

    from drift.cohort.evaluate import measure
    from drift.gate.policy import drift_result
    from drift.measure.phantoms import make_subject, phantom_affine

    def tables(scale: float) -> pd.DataFrame:
        frames = []
        for index in range(6):
            s = make_subject(index, seed=11, contrasts=("T2w",), area_scale=scale)
            affine = phantom_affine(s.soft_seg.shape, s.spacing)
            seg = tmp_path / f"{s.subject_id}_{scale}_seg.nii.gz"
            discs = tmp_path / f"{s.subject_id}_{scale}_discs.nii.gz"
            nib.save(nib.Nifti1Image(s.soft_seg, affine), seg)
            nib.save(nib.Nifti1Image(s.disc_labels, affine), discs)
            t = measure(seg, discs, "disc_labels")
            t.insert(0, "contrast", "T2w")
            t.insert(0, "subject", s.subject_id)
            frames.append(t)
        return pd.concat(frames, ignore_index=True)

    base = tables(1.0)
    for scale, verdict in ((1.02, "fail"), (1.002, "pass")):
        result = drift_result(base, tables(scale)).to_dict()
        assert result["verdict"] == verdict
        for level, stats in result["metrics"]["area"]["levels"].items():
            if not stats.get("gated"):
                continue
            lo, hi = stats["ci95"]
            assert lo - 1e-3 <= scale <= hi + 1e-3, (level, stats)
            assert stats["scaling_factor"] == pytest.approx(scale, abs=2e-3)
    assert np.isfinite(base["area"]).mean() > 0.95


def test_long_wide_round_trip_keeps_rows_and_nans() -> None:
    import pandas as pd

    from drift.cohort.evaluate import to_long, to_wide

    table = pd.DataFrame(
        {
            "subject": ["a", "a", "b"],
            "contrast": ["T2w"] * 3,
            "level": [2, 3, 2],
            "slice": [900, 880, 901],
            "area": [70.0, np.nan, 71.0],
            "diameter_AP": [7.0, 8.0, np.nan],
        }
    )
    back = to_wide(to_long(table))
    assert len(back) == 3  # no cartesian product of subjects x levels x slices
    pd.testing.assert_frame_equal(back[table.columns], table, check_dtype=False)
