"""What MLflow shows of the gate (drift run metrics, params, report artifact, the version's
description) and ``cordwatch models audit`` catching edits made outside cordwatch."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from drift.cli.main import app
from drift.gate.audit import audit_model, verdict_description
from drift.gate.check import CheckResult, record_verdict
from drift.gate.policy import drift_result
from registry.api import Registry, connect
from tests.synthetic_tables import tables

MODELS = Path(__file__).resolve().parents[1] / "models" / "demo"
runner = CliRunner()


@pytest.fixture()
def registry(cordwatch_home: Path) -> Registry:
    reg = connect(None, cordwatch_home)
    v1 = reg.register("cs", MODELS / "demo-good", description="demo-good")
    reg.promote(v1.ref, "champion", force=True, reason="test: first champion")
    reg.register("cs", MODELS / "demo-good-seed2", alias="candidate", description="seed 2")
    return reg


def checked(reg: Registry, scale_c4: float = 1.0) -> str:
    """Record a drift verdict for cs/2 against cs/1 (synthetic tables; no inference)."""
    base, cand = tables(scale_c4)
    b, c = reg.resolve("cs/1"), reg.resolve("cs/2")
    prov = {
        "baseline": {"ref": b.ref, "sha256": b.sha256},
        "candidate": {"ref": c.ref, "sha256": c.sha256},
        "cohort": {"cohort": "synthetic", "cohort_manifest_sha256": "c" * 64},
    }
    result = drift_result(base, cand, provenance=prov)
    chk = CheckResult(result, b, c, base, cand, pd.DataFrame(), {})
    return record_verdict(chk, {})


def test_drift_run_shows_the_gate_in_mlflow(registry: Registry) -> None:
    run_id = checked(registry)
    run = MlflowClient(registry.tracking_uri).get_run(run_id)
    metrics = run.data.metrics
    for level in ("C2", "C3", "C4", "C5", "C6", "C7", "T1"):
        for metric in ("area", "diameter_AP", "diameter_RL"):
            for stat in ("scaling_factor", "ci_low", "ci_high", "tost_p"):
                assert f"{metric}_{level}_{stat}" in metrics
    assert metrics["area_C3_ci_low"] <= metrics["area_C3_scaling_factor"]
    assert metrics["area_C3_scaling_factor"] <= metrics["area_C3_ci_high"]
    assert metrics["verdict_code"] == 0.0 and metrics["n_fail"] == 0
    params = run.data.params
    assert params["candidate"] == "cs/2" and params["baseline"] == "cs/1"
    assert params["cohort"] == "synthetic" and params["policy"].startswith("area ±1 % fail")
    # The report is the run's HTML artifact, even without --report.
    names = {a.path for a in registry.client.list_artifacts(run_id, "report")}
    assert "report/report.html" in names and "report/summary.md" in names
    # The version's description names the verdict and links to the run.
    desc = registry.resolve("cs/2").description
    assert desc.startswith("seed 2\n\ncordwatch drift: **PASS** against cs/1")
    assert f"/runs/{run_id})" in desc
    # A second check replaces the paragraph instead of appending one.
    run2 = checked(registry, scale_c4=0.95)
    desc2 = registry.resolve("cs/2").description
    assert desc2.count("cordwatch drift:") == 1 and "**FAIL**" in desc2 and run2 in desc2


def test_verdict_description_keeps_the_user_text() -> None:
    old = "line one\n\ncordwatch drift: **PASS** old"
    text = verdict_description(old, "warn", "m/1", "r" * 32, "7")
    link = "#/experiments/7/runs/" + "r" * 32
    assert (
        text
        == f"line one\n\ncordwatch drift: **WARN** against m/1 ([drift run rrrrrrrrrrrr]({link}))"
    )


def test_audit_is_clean_after_a_gated_promotion(registry: Registry) -> None:
    checked(registry)
    registry.promote("cs/2", "champion")
    assert audit_model(registry, "cs") == []
    result = runner.invoke(app, ["models", "audit", "cs"])
    assert result.exit_code == 0, result.stderr
    assert "agree" in result.stdout


def test_audit_flags_a_forced_champion_that_is_not_promotable(registry: Registry) -> None:
    kinds = [f.kind for f in audit_model(registry, "cs")]
    assert kinds == ["champion-not-promotable"]
    result = runner.invoke(app, ["models", "audit", "cs", "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert "forced by" in doc["findings"][0]["message"]


def test_audit_catches_an_alias_moved_with_the_plain_mlflow_client(registry: Registry) -> None:
    checked(registry)
    registry.promote("cs/2", "champion")
    # Someone moves champion back in the MLflow UI / with the plain client: no cordwatch trace.
    MlflowClient(registry.tracking_uri).set_registered_model_alias("cs", "champion", "1")
    MlflowClient(registry.tracking_uri).delete_registered_model_alias("cs", "candidate")
    found = {(f.kind, f.ref) for f in audit_model(registry, "cs")}
    assert ("alias-moved", "cs@champion") in found
    assert ("alias-removed", "cs@candidate") in found
    assert ("champion-not-promotable", "cs/1") in found
    result = runner.invoke(app, ["models", "audit", "cs"])
    assert result.exit_code == 1
    assert "moved outside cordwatch" in result.stdout
    assert "problem(s)" in result.stderr


def test_audit_catches_a_verdict_tag_without_its_run(registry: Registry) -> None:
    checked(registry)
    registry.promote("cs/2", "champion")
    client = MlflowClient(registry.tracking_uri)
    client.set_model_version_tag("cs", "1", "cordwatch.drift.verdict", "pass")  # no run
    client.set_model_version_tag("cs", "2", "cordwatch.drift.verdict", "fail")  # run says pass
    found = {(f.kind, f.ref) for f in audit_model(registry, "cs")}
    assert ("verdict-without-run", "cs/1") in found
    assert ("verdict-mismatch", "cs/2") in found
    assert ("champion-not-promotable", "cs/2") in found


def test_morphometry_runs_log_every_metric_per_level() -> None:
    from drift.cohort.evaluate import level_summary

    base, _ = tables()
    summary = level_summary(base)
    for level in ("C2", "C4", "T1"):
        for metric in ("area", "diameter_AP", "diameter_RL"):
            assert f"{metric}_{level}" in summary
    c3 = base[base["level"] == 3]
    expected = c3.groupby("subject")["diameter_RL"].mean().mean()
    assert summary["diameter_RL_C3"] == pytest.approx(expected)
