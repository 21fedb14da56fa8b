"""Exactly-once drift checks, with their durable state in the registry itself.

A check is identified by its key: (candidate package sha256, baseline package sha256, cohort
manifest sha256, policy sha256), for one candidate version. Its verdict is the one ``drift
check`` already records (:func:`drift.gate.check.record_verdict`: a drift run and the
``cordwatch.drift.*`` tags of the candidate version), so a check done by hand or by CI
counts too.

Each attempt at a check is claimed by *creating* an MLflow experiment named
``cordwatch-checks/<key digest>/<attempt>``. Experiment names are unique in every MLflow
tracking store (a unique constraint in sqlite and PostgreSQL, RESOURCE_ALREADY_EXISTS through
a server), so of two replicas, a webhook and a poll, or a redelivered event, exactly one wins
attempt n; the others see it and stand back. The attempt's experiment tags hold its state
(running, recording, done, failed, interrupted, abandoned), owner, heartbeat, error and
duration: that is the queue the dashboard shows. No broker: the registry is the state.

A running attempt whose owner stops heart-beating (or, on the same host, whose process is
gone) is abandoned, and the next claim starts attempt n+1; the segmentation cache and the
morphometry runs make the resumed check cheap. Failed attempts are retried with exponential
back-off up to ``max_attempts``; a failed attempt never writes a verdict.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.api import PROMOTABLE_TAG, VERDICT_TAG
from registry.errors import CordwatchError, RegistryError

if TYPE_CHECKING:
    from mlflow.entities import Experiment

    from registry.api import Registry, VersionInfo

CHECKS_PREFIX = "cordwatch-checks/"
TAG = "cordwatch.check."
KIND_TAG = "cordwatch.kind"
KIND = "check-attempt"
CANDIDATE_ALIAS = "candidate"
BASELINE_ALIAS = "champion"
#: States an attempt goes through; "running"/"recording" are live while heart-beating.
LIVE_STATES = ("running", "recording")


class Interrupted(Exception):
    """The service is shutting down: stop this check before anything is recorded."""


@dataclass(frozen=True)
class CheckKey:
    """What makes two checks the same check: the four hashes, for one candidate version
    (the same package registered again is a new version with no verdict yet: it is checked
    once too, cheaply, from the cached morphometrics of its package)."""

    candidate_ref: str
    candidate_sha256: str
    baseline_sha256: str
    cohort_sha256: str
    policy_sha256: str

    @property
    def digest(self) -> str:
        """sha256 of the version and the four hashes (hex, 32 characters): the check's name."""
        text = "|".join(
            (self.candidate_ref, self.candidate_sha256, self.baseline_sha256,
             self.cohort_sha256, self.policy_sha256)
        )  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def to_dict(self) -> dict[str, str]:
        return {
            "digest": self.digest,
            "candidate_ref": self.candidate_ref,
            "candidate_sha256": self.candidate_sha256,
            "baseline_sha256": self.baseline_sha256,
            "cohort_sha256": self.cohort_sha256,
            "policy_sha256": self.policy_sha256,
        }


@dataclass(frozen=True)
class Target:
    """A check the registry asks for: candidate vs baseline under the service's settings."""

    name: str
    candidate: VersionInfo
    baseline: VersionInfo
    key: CheckKey


@dataclass(frozen=True)
class Attempt:
    """One attempt at a check, as stored in its experiment's tags."""

    experiment_id: str
    key: str
    number: int
    tags: dict[str, str]

    def tag(self, name: str, default: str = "") -> str:
        return self.tags.get(TAG + name, default)

    @property
    def state(self) -> str:
        return self.tag("state")

    def heartbeat_age(self, now: float) -> float:
        try:
            return now - float(self.tag("heartbeat", "0"))
        except ValueError:
            return float("inf")

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        current = time.time() if now is None else now
        out: dict[str, Any] = {
            "key": self.key,
            "attempt": self.number,
            "state": self.state,
            "candidate": self.tag("candidate"),
            "baseline": self.tag("baseline"),
            "model": self.tag("model"),
            "trigger": self.tag("trigger"),
            "owner": self.tag("owner"),
            "started": _float_or_none(self.tag("started")),
            "finished": _float_or_none(self.tag("finished")),
            "verdict": self.tag("verdict") or None,
            "run_id": self.tag("run_id") or None,
            "error": self.tag("error") or None,
            "stage": self.tag("stage") or None,
        }
        started, finished = out["started"], out["finished"]
        if started is not None:
            out["duration_s"] = round((finished or current) - started, 1)
        return out


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def owner_id() -> str:
    """``host:pid``: who runs an attempt (the pid lets a restarted service on the same host
    see at once that its predecessor's attempt is dead)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = f"{type(err).__name__}: {text[0] if text else ''}".strip()
    return line[:500]


@dataclass
class CheckSettings:
    """How the service checks: where the cohort is, which policy, how many tries."""

    cohort_ref: str
    root: Path | None = None
    policy_path: Path | None = None
    device: str = "auto"
    registry_uri: str | None = None
    #: ``--scheduler`` (drift.cohort.engine): None runs checks in the service's process.
    scheduler: str | None = None
    max_attempts: int = 3
    lease_s: float = 60.0
    heartbeat_s: float = 5.0
    backoff_s: float = 30.0
    cohort_sha256: str = ""
    policy_sha256: str = ""

    def load(self) -> CheckSettings:
        """Hash the cohort manifest and the policy once (bad input fails at start-up)."""
        from drift.cohort.manifest import load_cohort
        from drift.gate.policy import load_policy, policy_sha256

        self.cohort_sha256 = load_cohort(self.cohort_ref).manifest_sha256
        self.policy_sha256 = policy_sha256(load_policy(self.policy_path))
        return self


@dataclass
class CheckStore:
    """Checks and attempts in the registry (see the module docstring)."""

    reg: Registry
    settings: CheckSettings
    owner: str = field(default_factory=owner_id)

    # -- what the registry asks for ---------------------------------------------------------
    def target(self, name: str) -> Target | None:
        """The check ``name`` needs now (its candidate vs its champion), or None."""
        model = self.reg.client.get_registered_model(name)
        aliases = {a: int(v) for a, v in (model.aliases or {}).items()}
        if CANDIDATE_ALIAS not in aliases or BASELINE_ALIAS not in aliases:
            return None
        if aliases[CANDIDATE_ALIAS] == aliases[BASELINE_ALIAS]:
            return None
        cand = self.reg.resolve(f"{name}/{aliases[CANDIDATE_ALIAS]}")
        base = self.reg.resolve(f"{name}/{aliases[BASELINE_ALIAS]}")
        key = CheckKey(cand.ref, cand.sha256, base.sha256, self.settings.cohort_sha256,
                       self.settings.policy_sha256)  # fmt: skip
        return Target(name, cand, base, key)

    def verdict_for(self, target: Target) -> str | None:
        """The verdict already recorded on the candidate for this key, if any: in the version's
        tags, else in a finished drift run (record_verdict finishes the run before it tags
        the version, so a process killed in between left a run, not yet the tags; the run
        counts, so the check is not run twice, and ``cordwatch models audit`` flags the tags).
        """
        tags = self.reg.resolve(target.candidate.ref).tags
        verdict = self._tagged_verdict(target, tags)
        return verdict if verdict is not None else self.recorded_run_verdict(target)

    def recorded_run_verdict(self, target: Target) -> str | None:
        """The verdict of a finished drift run of this key (candidate, baseline, cohort and
        policy as the run's tags and params say), if there is one. The candidate's tags and
        description are re-applied from that run (what a crash after the run finished, before
        the tagging, left undone), unless a later verdict already tags the version."""
        from drift.gate.check import DRIFT_EXPERIMENT, tag_candidate

        exp = self.reg.client.get_experiment_by_name(DRIFT_EXPERIMENT)
        if exp is None:
            return None
        query = (
            f"tags.`cordwatch.candidate` = '{target.candidate.ref}'"
            f" and tags.`cordwatch.baseline` = '{target.baseline.ref}'"
            f" and params.cohort_sha256 = '{target.key.cohort_sha256}'"
            f" and params.policy_sha256 = '{target.key.policy_sha256}'"
            " and attributes.status = 'FINISHED'"
        )
        runs = self.reg.client.search_runs([exp.experiment_id], query, max_results=1)
        if not runs or not runs[0].data.tags.get(VERDICT_TAG):
            return None
        verdict = runs[0].data.tags[VERDICT_TAG]
        flag = runs[0].data.tags.get(PROMOTABLE_TAG)  # absent: a run from before the tag
        if self._tagged_run_older(target.candidate.ref, runs[0].info.start_time):
            with self.reg.write_lock():
                tag_candidate(
                    self.reg,
                    target.candidate.ref,
                    verdict=verdict,
                    promotable=None if flag is None else flag == "true",
                    run_id=runs[0].info.run_id,
                    baseline_ref=target.baseline.ref,
                    policy_sha256=target.key.policy_sha256,
                    cohort_sha256=target.key.cohort_sha256,
                )
        return verdict

    def _tagged_run_older(self, ref: str, start_time: int) -> bool:
        """Whether the version's verdict tags are missing or come from a run started before
        ``start_time`` (so a later run's verdict is never overwritten by an older one)."""
        tagged = self.reg.resolve(ref).tags.get("cordwatch.drift.run_id")
        if not tagged:
            return True
        try:
            return int(self.reg.client.get_run(tagged).info.start_time or 0) < int(start_time)
        except Exception:  # the tagged run is gone: `models audit` flags it; re-tag
            return True

    def _tagged_verdict(self, target: Target, tags: dict[str, str]) -> str | None:
        verdict = tags.get(VERDICT_TAG)
        if not verdict:
            return None
        if tags.get("cordwatch.drift.policy_sha256") != target.key.policy_sha256:
            return None
        if tags.get("cordwatch.drift.cohort_sha256") != target.key.cohort_sha256:
            return None
        base_ref = tags.get("cordwatch.drift.baseline", "")
        if base_ref == target.baseline.ref:
            return verdict
        try:
            base = self.reg.resolve(base_ref)
        except CordwatchError:
            return None
        return verdict if base.sha256 == target.key.baseline_sha256 else None

    # -- attempts ---------------------------------------------------------------------------
    def attempts(self, digest: str | None = None) -> list[Attempt]:
        """Attempts of one check (or of every check), oldest first."""
        query = f"tags.`{KIND_TAG}` = '{KIND}'"
        if digest is not None:
            query += f" and tags.`{TAG}key` = '{digest}'"
        found: list[Experiment] = []
        token = None
        while True:
            page = self.reg.client.search_experiments(
                filter_string=query, max_results=1000, page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                break
        out = [
            Attempt(e.experiment_id, e.tags.get(TAG + "key", ""),
                    int(e.tags.get(TAG + "attempt", "0")), dict(e.tags))
            for e in found
        ]  # fmt: skip
        return sorted(out, key=lambda a: (a.key, a.number))

    def is_dead(self, attempt: Attempt, now: float | None = None) -> bool:
        """A live-state attempt whose owner is gone (no heartbeat, or its process exited)."""
        if attempt.state not in LIVE_STATES:
            return False
        current = time.time() if now is None else now
        if attempt.heartbeat_age(current) > self.settings.lease_s:
            return True
        host, _, pid = attempt.tag("owner").rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            return int(pid) != os.getpid() and not _pid_alive(int(pid))
        return False

    def set_state(self, attempt: Attempt, **tags: str) -> None:
        """Update an attempt's tags (state, heartbeat, error, ...)."""
        with self.reg.write_lock():
            for name, value in tags.items():
                self.reg.client.set_experiment_tag(attempt.experiment_id, TAG + name, value)

    def claim(
        self, target: Target, trigger: str, *, force: bool = False, now: float | None = None
    ) -> Attempt | None:
        """Start the next attempt of ``target``'s check, or None when there is nothing to do
        (a verdict exists, another attempt is live, retries are used up or backing off, or
        another process won the race for this attempt)."""
        current = time.time() if now is None else now
        if self.verdict_for(target) is not None:
            return None
        attempts = self.attempts(target.key.digest)
        if any(a.state == "done" for a in attempts):
            return None
        for a in attempts:
            if a.state in LIVE_STATES:
                if not self.is_dead(a, current):
                    return None
                self.set_state(a, state="abandoned", finished=str(current),
                               error="owner stopped (no heartbeat or process gone)")  # fmt: skip
        failed = [a for a in attempts if a.state == "failed"]
        if failed and not force:
            if len(failed) >= self.settings.max_attempts:
                return None
            last = _float_or_none(failed[-1].tag("finished")) or 0.0
            if current - last < self.settings.backoff_s * 2 ** (len(failed) - 1):
                return None
        number = max((a.number for a in attempts), default=0) + 1
        return self._create(target, number, trigger, current)

    def _create(self, target: Target, number: int, trigger: str, now: float) -> Attempt | None:
        from mlflow.exceptions import MlflowException

        name = f"{CHECKS_PREFIX}{target.key.digest}/{number}"
        tags = {
            KIND_TAG: KIND,
            TAG + "key": target.key.digest,
            TAG + "attempt": str(number),
            TAG + "model": target.name,
            TAG + "candidate": target.candidate.ref,
            TAG + "baseline": target.baseline.ref,
            TAG + "candidate_sha256": target.key.candidate_sha256,
            TAG + "baseline_sha256": target.key.baseline_sha256,
            TAG + "cohort_sha256": target.key.cohort_sha256,
            TAG + "policy_sha256": target.key.policy_sha256,
            TAG + "trigger": trigger,
            TAG + "owner": self.owner,
            TAG + "state": "running",
            TAG + "started": str(now),
            TAG + "heartbeat": str(now),
        }
        root = self.reg.settings.artifact_root
        location = None if root is None else root.rstrip("/") + "/" + name.replace("/", "-")
        try:
            with self.reg.write_lock():
                exp_id = self.reg.client.create_experiment(
                    name, artifact_location=location, tags=tags
                )
        except MlflowException as err:
            if err.error_code == "RESOURCE_ALREADY_EXISTS" or "already exists" in str(err):
                return None  # another process claimed this attempt first
            raise RegistryError(_one_line(err), name) from err
        return Attempt(str(exp_id), target.key.digest, number, tags)

    def superseded(self, attempt: Attempt) -> bool:
        """True when a later attempt of the same check exists (this one was given up on)."""
        return any(a.number > attempt.number for a in self.attempts(attempt.key))


@dataclass
class Outcome:
    """What one attempt ended as."""

    state: str  # done, failed, interrupted, superseded
    verdict: str | None = None
    run_id: str | None = None
    error: str | None = None


def execute(
    store: CheckStore,
    target: Target,
    attempt: Attempt,
    *,
    stop: threading.Event,
    log: Callable[..., None],
) -> Outcome:
    """Run the check of ``attempt`` with the existing orchestration (run_check, then
    record_verdict), heart-beating all along. Stops before recording when ``stop`` is set."""
    from drift.cohort.engine import open_engine
    from drift.gate.check import record_verdict, run_check
    from drift.gate.report import render_report, write_rendered

    settings = store.settings
    beat_stop = threading.Event()

    def beat() -> None:
        while not beat_stop.wait(settings.heartbeat_s):
            with contextlib.suppress(Exception):
                store.set_state(attempt, heartbeat=str(time.time()))

    def on_stage(message: str) -> None:
        if stop.is_set():
            raise Interrupted("service shutting down")
        with contextlib.suppress(Exception):
            store.set_state(attempt, stage=message[:250], heartbeat=str(time.time()))

    fields = {"key": attempt.key, "attempt": attempt.number, "candidate": target.candidate.ref,
              "baseline": target.baseline.ref}  # fmt: skip
    last_tick = [0.0]

    def on_done(done: int, total: int) -> None:  # per-image progress from the cluster
        now = time.monotonic()
        if done == total or now - last_tick[0] >= 1.0:
            last_tick[0] = now
            on_stage(f"{done}/{total} images done on the cluster")

    heart = threading.Thread(target=beat, name=f"heartbeat-{attempt.key[:8]}", daemon=True)
    heart.start()
    log("started", **fields)
    try:
        try:
            # A LocalCluster (--scheduler local[:N]) lives for one check; tcp:// is connected.
            with open_engine(
                settings.scheduler,
                say=lambda msg: log("engine", message=msg, **fields),
                device=settings.device,
                on_done=on_done,
            ) as engine:
                chk = run_check(
                    target.candidate.ref,
                    target.baseline.ref,
                    settings.cohort_ref,
                    root=settings.root,
                    policy_path=settings.policy_path,
                    device=settings.device,
                    registry_uri=settings.registry_uri,
                    progress=False,
                    on_stage=on_stage,
                    engine=engine if engine.distributed else None,
                )
            # The registry may have moved while we computed: record only what was checked.
            if chk.candidate.sha256 != target.key.candidate_sha256 or (
                chk.baseline.sha256 != target.key.baseline_sha256
            ):
                raise RegistryError("the versions changed during the check", target.candidate.ref)
            if stop.is_set():
                raise Interrupted("service shutting down")
        except Interrupted:
            store.set_state(attempt, state="interrupted", finished=str(time.time()))
            log("interrupted", **fields)
            return Outcome("interrupted")
        except Exception as err:  # any failure: no verdict; retried within bounds
            message = _one_line(err)
            store.set_state(attempt, state="failed", finished=str(time.time()), error=message)
            log("failed", error=message, **fields)
            return Outcome("failed", error=message)
        if store.superseded(attempt):  # we were presumed dead: the later attempt records
            store.set_state(attempt, state="superseded", finished=str(time.time()))
            log("superseded", **fields)
            return Outcome("superseded")
        store.set_state(attempt, state="recording", heartbeat=str(time.time()))
        with tempfile.TemporaryDirectory(prefix="cordwatch-serve-") as tmp:
            rendered = render_report(
                chk.result,
                baseline_table=chk.baseline_table,
                candidate_table=chk.candidate_table,
                history=chk.history,
            )
            outputs = write_rendered(rendered, Path(tmp) / "report")
            run_id = record_verdict(chk, outputs, settings.registry_uri)
        verdict = chk.result.verdict
        store.set_state(attempt, state="done", finished=str(time.time()), verdict=verdict,
                        run_id=run_id)  # fmt: skip
        log("finished", verdict=verdict, run_id=run_id, **fields)
        return Outcome("done", verdict=verdict, run_id=run_id)
    finally:
        beat_stop.set()
        heart.join(timeout=5)
