"""Exactly-once claims in the registry (no inference: fake packages, embedded sqlite).

The end-to-end version with real processes, a real mlflow server and the demo models is in
test_service_e2e.py; these pin the rules of :mod:`drift.service.checks` quickly.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from drift.service.checks import CheckSettings, CheckStore, Target, execute
from registry.api import Registry, connect
from registry.testing import make_package


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    base = tmp_path_factory.mktemp("claims")
    reg = connect(f"sqlite:///{base / 'home' / 'registry.db'}", base / "home")
    good = reg.register("cs", make_package(base / "a", seed=1))
    reg.promote(good.ref, "champion", force=True, reason="test")
    reg.register("cs", make_package(base / "b", seed=2), alias="candidate")
    return reg


@pytest.fixture()
def store(registry: Registry) -> CheckStore:
    """A store whose key is new to this test (a policy hash of its own)."""
    settings = CheckSettings(cohort_ref="phantom", registry_uri=registry.tracking_uri,
                             backoff_s=0.0, max_attempts=2).load()  # fmt: skip
    settings.policy_sha256 = uuid.uuid4().hex * 2
    return CheckStore(registry, settings)


def target(store: CheckStore) -> Target:
    found = store.target("cs")
    assert found is not None
    return found


def test_target_is_candidate_vs_champion_with_the_four_hashes(store: CheckStore) -> None:
    t = target(store)
    assert (t.candidate.ref, t.baseline.ref) == ("cs/2", "cs/1")
    assert t.key.candidate_sha256 == t.candidate.sha256
    assert t.key.baseline_sha256 == t.baseline.sha256
    assert len(t.key.cohort_sha256) == len(t.key.policy_sha256) == 64
    assert len(t.key.digest) == 32
    store.reg.promote("cs/2", "champion", force=True, reason="test")
    try:
        assert store.target("cs") is None  # candidate == champion: nothing to check
    finally:
        store.reg.promote("cs/1", "champion", force=True, reason="test: restore")


def test_concurrent_claims_have_one_winner(store: CheckStore) -> None:
    t = target(store)
    won = []
    barrier = threading.Barrier(6)

    def contender() -> None:
        other = CheckStore(connect(store.reg.tracking_uri, store.reg.settings.home), store.settings)
        barrier.wait()
        attempt = other.claim(t, "race")
        if attempt is not None:
            won.append(attempt)

    threads = [threading.Thread(target=contender) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(won) == 1 and won[0].number == 1
    assert store.claim(t, "again") is None  # attempt 1 is live
    assert [a.state for a in store.attempts(t.key.digest)] == ["running"]


def test_a_dead_owner_is_abandoned_and_the_next_attempt_starts(store: CheckStore) -> None:
    t = target(store)
    first = store.claim(t, "poll")
    assert first is not None
    # Pretend a process that has exited owned it (what a SIGKILL leaves behind).
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    host = store.owner.rpartition(":")[0]
    store.set_state(first, owner=f"{host}:{gone}")
    second = store.claim(t, "poll")
    assert second is not None and second.number == 2
    states = {a.number: a.state for a in store.attempts(t.key.digest)}
    assert states == {1: "abandoned", 2: "running"}


def test_a_stale_heartbeat_elsewhere_is_abandoned(store: CheckStore) -> None:
    t = target(store)
    first = store.claim(t, "poll")
    assert first is not None
    store.set_state(first, owner="another-host:1", heartbeat=str(time.time()))
    assert store.claim(t, "poll") is None  # alive elsewhere: wait for its lease
    store.set_state(first, heartbeat=str(time.time() - store.settings.lease_s - 1))
    assert store.claim(t, "poll") is not None


def test_failures_are_bounded_and_a_verdict_ends_the_check(store: CheckStore) -> None:
    t = target(store)
    for _ in range(store.settings.max_attempts):
        attempt = store.claim(t, "poll")
        assert attempt is not None
        store.set_state(attempt, state="failed", finished=str(time.time()), error="boom")
    assert store.claim(t, "poll") is None  # retries used up
    forced = store.claim(t, "manual", force=True)  # the token-guarded re-run
    assert forced is not None and forced.number == store.settings.max_attempts + 1
    store.set_state(forced, state="failed", finished=str(time.time()))
    _record_verdict_tags(store.reg, t)
    assert store.verdict_for(t) == "fail"
    assert store.claim(t, "manual", force=True) is None  # a key with a verdict never re-runs


def test_a_verdict_for_another_policy_or_baseline_does_not_count(store: CheckStore) -> None:
    t = target(store)
    _record_verdict_tags(store.reg, t, policy="0" * 64)
    assert store.verdict_for(t) is None
    _record_verdict_tags(store.reg, t)
    assert store.verdict_for(t) == "fail"
    store.reg.set_version_tags("cs/2", {"cordwatch.drift.baseline": "cs/2"})
    assert store.verdict_for(t) is None
    store.reg.set_version_tags("cs/2", {"cordwatch.drift.policy_sha256": "-"})  # clean up


def _record_verdict_tags(reg: Registry, t: Target, policy: str | None = None) -> None:
    """The version tags drift.gate.check.record_verdict writes."""
    reg.set_version_tags(
        t.candidate.ref,
        {
            "cordwatch.drift.verdict": "fail",
            "cordwatch.drift.run_id": "r",
            "cordwatch.drift.baseline": t.baseline.ref,
            "cordwatch.drift.policy_sha256": policy or t.key.policy_sha256,
            "cordwatch.drift.cohort_sha256": t.key.cohort_sha256,
        },
    )


def test_a_failed_check_writes_no_verdict(store: CheckStore, tmp_path: Path) -> None:
    t = target(store)
    attempt = store.claim(t, "poll")
    assert attempt is not None
    store.settings.cohort_ref = str(tmp_path / "missing.tsv")  # run_check fails on it
    before = store.reg.resolve("cs/2").tags
    lines: list[tuple[str, dict]] = []
    outcome = execute(store, t, attempt, stop=threading.Event(),
                      log=lambda event, **f: lines.append((event, f)))  # fmt: skip
    assert outcome.state == "failed" and outcome.error and "missing.tsv" in outcome.error
    assert store.reg.resolve("cs/2").tags == before  # no verdict written
    assert store.verdict_for(t) is None
    [failed] = store.attempts(t.key.digest)
    assert failed.state == "failed" and "missing.tsv" in failed.tag("error")
    assert [e for e, _ in lines] == ["started", "failed"]
    assert all(f["key"] == t.key.digest for _, f in lines)


def test_shutdown_interrupts_a_check_before_anything_is_recorded(
    store: CheckStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drift.cohort.manifest import PhantomRecipe, write_phantom_manifest

    monkeypatch.setenv("CORDWATCH_HOME", str(store.reg.settings.home))
    manifest = write_phantom_manifest(
        tmp_path, name="tiny", recipe=PhantomRecipe(n_subjects=2, seed=1, contrasts=("T2w",))
    )
    store.settings.cohort_ref = str(manifest)
    t = target(store)
    attempt = store.claim(t, "poll")
    assert attempt is not None
    before = store.reg.resolve("cs/2").tags
    stop = threading.Event()
    stop.set()  # SIGTERM arrived: the check stops at its first stage
    outcome = execute(store, t, attempt, stop=stop, log=lambda event, **f: None)
    assert outcome.state == "interrupted"
    assert store.reg.resolve("cs/2").tags == before
    assert [a.state for a in store.attempts(t.key.digest)] == ["interrupted"]
    resumed = store.claim(t, "poll")  # not a failure: the next poll resumes it at once
    assert resumed is not None and resumed.number == 2


def test_a_finished_drift_run_counts_before_the_version_is_tagged(store: CheckStore) -> None:
    """What a SIGKILL inside record_verdict leaves (run finished, tags not yet set): the key
    has its verdict, so the resumed service does not log a second drift run."""
    t = target(store)
    attempt = store.claim(t, "poll")
    assert attempt is not None
    reg = store.reg
    exp_id = reg.ensure_experiment("cordwatch-drift")
    run = reg.client.create_run(exp_id, tags={"cordwatch.candidate": t.candidate.ref,
                                              "cordwatch.baseline": t.baseline.ref,
                                              "cordwatch.drift.verdict": "warn"})  # fmt: skip
    for key, value in (("cohort_sha256", t.key.cohort_sha256),
                       ("policy_sha256", t.key.policy_sha256)):  # fmt: skip
        reg.client.log_param(run.info.run_id, key, value)
    assert store.verdict_for(t) is None  # still running: not a recorded verdict
    reg.client.set_terminated(run.info.run_id, "FINISHED")
    assert store.verdict_for(t) == "warn"
    # ... and the version gets the tags and description the crash left undone, from the run
    tags = reg.resolve(t.candidate.ref).tags
    assert tags["cordwatch.drift.verdict"] == "warn"
    assert tags["cordwatch.drift.run_id"] == run.info.run_id
    assert tags["cordwatch.drift.policy_sha256"] == t.key.policy_sha256
    assert "**WARN**" in reg.resolve(t.candidate.ref).description
    store.set_state(attempt, state="recording", heartbeat="0")  # its owner died recording
    assert store.claim(t, "poll") is None
