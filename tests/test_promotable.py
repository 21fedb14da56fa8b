"""Warn is a policy decision, consistent everywhere (issue 13, item 4).

The policy's ``promotable`` list (default ``[pass]``) decides whether a verdict may become
champion. The drift check records that decision on the version (tag
``cordwatch.drift.promotable``), and every place that decides reads it by one rule
(:mod:`registry.promotion`): the report's next step, ``cordwatch models promote``,
``cordwatch models audit``, ``cordwatch release gated`` (release.yml). The exit code of the
check is 1 on fail only, under every policy. A warn verdict comes from synthetic tables (area
at C4 x 0.995: inside the ±1 % fail margin, outside the ±0.5 % warn one), no inference.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from drift.cli.drift import raise_on_fail
from drift.cli.main import app
from drift.gate.audit import audit_model
from drift.gate.check import CheckResult, record_verdict, tag_candidate
from drift.gate.policy import DriftResult, drift_result, load_policy
from drift.gate.report import next_step
from registry.api import PROMOTABLE_TAG, VERDICT_TAG, Registry, connect
from registry.errors import GateFailed
from registry.promotion import is_promotable, promotion_tags, refusal
from tests.synthetic_tables import tables

MODELS = Path(__file__).resolve().parents[1] / "models" / "demo"
WARN_SCALE = 0.995
runner = CliRunner()


@pytest.fixture()
def registry(cordwatch_home: Path, registry_home: Callable[[Path], Path]) -> Registry:
    reg = connect(None, registry_home(cordwatch_home))
    v1 = reg.register("cs", MODELS / "demo-good")
    reg.promote(v1.ref, "champion", force=True, reason="test: first champion")
    reg.register("cs", MODELS / "demo-good-seed2", alias="candidate", tags={"git_tree": "t2"})
    return reg


def check_warn(reg: Registry, promotable: tuple[str, ...]) -> tuple[DriftResult, str]:
    """Record a warn verdict for cs/2 against cs/1 under a policy promoting ``promotable``."""
    policy = dataclasses.replace(load_policy(), promotable=promotable)
    base, cand = tables(WARN_SCALE)
    b, c = reg.resolve("cs/1"), reg.resolve("cs/2")
    prov = {
        "baseline": {"ref": b.ref, "sha256": b.sha256},
        "candidate": {"ref": c.ref, "sha256": c.sha256},
        "cohort": {"cohort": "synthetic", "cohort_manifest_sha256": "c" * 64},
    }
    result = drift_result(base, cand, policy, provenance=prov)
    assert result.verdict == "warn"
    run_id = record_verdict(CheckResult(result, b, c, base, cand, pd.DataFrame(), {}), {})
    return result, run_id


def gated(tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    """``cordwatch release gated`` on what ``models list/show --json`` print, as release.yml."""
    files = {}
    for name, args in (("versions", ["list", "cs"]), ("champion", ["show", "cs@champion"])):
        out = runner.invoke(app, ["models", *args, "--json"])
        assert out.exit_code == 0, out.stderr
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(out.stdout)
    argv = ["release", "gated", str(files["versions"]), str(files["champion"])]
    result = runner.invoke(app, [*argv, "--tree", "t2", "--path", "models/demo", *extra])
    return result.exit_code, result.stdout, result.stderr


def test_a_lenient_policy_promotes_a_warn_everywhere(registry: Registry, tmp_path: Path) -> None:
    result, run_id = check_warn(registry, ("pass", "warn"))
    raise_on_fail(result)  # `drift check` exits 0 on a warn
    tags = registry.resolve("cs/2").tags
    assert (tags[VERDICT_TAG], tags[PROMOTABLE_TAG]) == ("warn", "true")
    run = MlflowClient(registry.tracking_uri).get_run(run_id)
    assert run.data.tags[PROMOTABLE_TAG] == "true"
    # The report says promotable, and so do release.yml's step, promote and audit.
    assert next_step(result, "cs/2")["promotable"] is True
    code, stdout, _ = gated(tmp_path, "--require-promotable")
    assert code == 0 and "verdict=warn\npromotable=true\n" in stdout
    moved = runner.invoke(app, ["models", "promote", "cs/2"])
    assert moved.exit_code == 0, moved.stderr
    assert moved.stdout == "cs@champion: 1 -> 2\n"
    assert registry.history("cs")[-1].verdict == "warn"
    assert audit_model(registry, "cs") == []
    assert runner.invoke(app, ["models", "audit", "cs"]).exit_code == 0


def test_the_default_policy_refuses_the_same_warn_everywhere(
    registry: Registry, tmp_path: Path
) -> None:
    result, _ = check_warn(registry, ("pass",))
    raise_on_fail(result)  # exit 0 all the same: warn is no gate failure
    assert registry.resolve("cs/2").tags[PROMOTABLE_TAG] == "false"
    nxt = next_step(result, "cs/2")
    assert nxt["promotable"] is False and nxt["text"].startswith("not promotable because")
    code, stdout, _ = gated(tmp_path)
    assert code == 0 and "verdict=warn\npromotable=false\n" in stdout
    code, stdout, stderr = gated(tmp_path, "--require-promotable")
    why = (
        "cannot move champion: verdict is 'warn' (the policy of its drift check does not "
        f"promote warn: {PROMOTABLE_TAG}=false; override with --force --reason)"
    )
    assert (code, stdout, stderr) == (1, "", f"cordwatch: error: cs/2: {why}\n")
    refused = runner.invoke(app, ["models", "promote", "cs/2"])
    assert refused.exit_code == 1
    assert refused.stderr == f"cordwatch: error: cs/2: {why}\n"
    assert registry.resolve("cs@champion").version == 1
    # Forced by a person: audit flags the champion (not promotable by the same rule).
    registry.promote("cs/2", force=True, reason="site X needs it today")
    found = audit_model(registry, "cs")
    assert [(f.kind, f.ref) for f in found] == [("champion-not-promotable", "cs/2")]
    assert f"verdict 'warn', {PROMOTABLE_TAG}=false (forced by" in found[0].message
    assert runner.invoke(app, ["models", "audit", "cs"]).exit_code == 1


def test_audit_catches_the_promotable_tag_edited_outside_cordwatch(registry: Registry) -> None:
    check_warn(registry, ("pass",))
    # Set in the MLflow UI: promote would now move champion, but the drift run says false.
    MlflowClient(registry.tracking_uri).set_model_version_tag("cs", "2", PROMOTABLE_TAG, "true")
    registry.promote("cs/2")
    found = {(f.kind, f.ref) for f in audit_model(registry, "cs")}
    assert found == {("verdict-mismatch", "cs/2")}


def test_a_verdict_without_the_policy_s_word_promotes_only_a_pass(registry: Registry) -> None:
    _, run_id = check_warn(registry, ("pass", "warn"))
    # A drift run from before the tag (the service re-applies its verdict): the old rule.
    args = {"run_id": run_id, "baseline_ref": "cs/1", "policy_sha256": "p", "cohort_sha256": "c"}
    tag_candidate(registry, "cs/2", verdict="warn", promotable=None, **args)
    assert registry.resolve("cs/2").tags[PROMOTABLE_TAG] == "false"
    # A bare verdict through the API never keeps an earlier check's flag.
    registry.set_version_tags("cs/2", {VERDICT_TAG: "pass"})
    assert registry.resolve("cs/2").tags[PROMOTABLE_TAG] == "true"
    registry.set_version_tags("cs/2", {VERDICT_TAG: "fail", PROMOTABLE_TAG: "true"})
    with pytest.raises(GateFailed, match=r"verdict is 'fail' \(never promotable; "):
        registry.promote("cs/2")


@pytest.mark.parametrize(
    ("tags", "promotable"),
    [
        ({VERDICT_TAG: "pass", PROMOTABLE_TAG: "true"}, True),
        ({VERDICT_TAG: "warn", PROMOTABLE_TAG: "true"}, True),
        ({VERDICT_TAG: "warn", PROMOTABLE_TAG: "false"}, False),
        ({VERDICT_TAG: "fail", PROMOTABLE_TAG: "true"}, False),  # a stale flag never promotes
        ({VERDICT_TAG: "pass"}, True),  # gated before the tag existed: pass only
        ({VERDICT_TAG: "warn"}, False),
        ({}, False),
    ],
)
def test_the_rule(tags: dict[str, str], promotable: bool) -> None:
    assert is_promotable(tags) is promotable
    assert (refusal("champion", tags) is None) is promotable
    assert refusal("candidate", tags) is None  # only champion is gated
    written = promotion_tags(tags)
    if VERDICT_TAG in tags:
        assert is_promotable(written) is promotable  # filling the flag changes nothing


def test_the_refusals_say_which_verdict_and_why() -> None:
    assert refusal("champion", {}) == (
        f"cannot move champion: no drift verdict yet ({VERDICT_TAG}=pass needed; "
        "override with --force --reason)"
    )
    old = refusal("champion", {VERDICT_TAG: "warn"})
    assert old == (
        f"cannot move champion: verdict is 'warn' (checked before {PROMOTABLE_TAG} existed: "
        "only a pass is promotable; override with --force --reason)"
    )


def test_release_gated_json_is_typed(registry: Registry, tmp_path: Path) -> None:
    check_warn(registry, ("pass", "warn"))
    code, stdout, _ = gated(tmp_path, "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert (doc["version"], doc["verdict"], doc["promotable"]) == (2, "warn", True)


def test_the_service_re_applies_the_run_s_promotable_flag(registry: Registry) -> None:
    """A check whose run finished but whose tagging was cut short (a crash in between): the
    service re-applies the verdict from the run, the policy's word included."""
    from drift.service.checks import CheckKey, CheckSettings, CheckStore, Target

    _, run_id = check_warn(registry, ("pass", "warn"))
    client = MlflowClient(registry.tracking_uri)
    params = client.get_run(run_id).data.params
    for key in (VERDICT_TAG, PROMOTABLE_TAG, "cordwatch.drift.run_id"):
        client.delete_model_version_tag("cs", "2", key)
    b, c = registry.resolve("cs/1"), registry.resolve("cs/2")
    key = CheckKey(c.ref, c.sha256, b.sha256, params["cohort_sha256"], params["policy_sha256"])
    store = CheckStore(registry, CheckSettings(cohort_ref="phantom"))
    assert store.recorded_run_verdict(Target("cs", c, b, key)) == "warn"
    tags = registry.resolve("cs/2").tags
    assert (tags[VERDICT_TAG], tags[PROMOTABLE_TAG]) == ("warn", "true")
    registry.promote("cs/2")
