"""The normative database follows the champion: when a version becomes champion through the
gate (its verdict is ``pass``), each configured normative database made with the previous
champion gets its next version for the new one, a rescale from the promotion's drift result
(``cordwatch normative update NAME --model NEW --scaling result.json``) or a recompute on
the cohort, recorded by :func:`drift.normative.update.update` as today.

Exactly once per (database, champion version): claimed, like a check attempt, by creating
the experiment ``cordwatch-service-normative/<database>/<model>/<version>``. One attempt: a
refused or failed update is shown with its error and not retried (a rescale refused for a
non-uniform scaling needs a person: ``--recompute``, or ``--assume-baseline``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import CordwatchError
from registry.promotion import is_promotable

if TYPE_CHECKING:
    from drift.service.checks import CheckSettings
    from registry.api import Registry

PREFIX = "cordwatch-service-normative/"
TAG = "cordwatch.follow."
KIND = "normative-follow"


@dataclass(frozen=True)
class FollowSettings:
    """Which normative databases follow their model's champion, and how."""

    databases: tuple[str, ...] = ()
    mode: str = "rescale"  # or "recompute"


def _claim(reg: Registry, name: str, tags: dict[str, str]) -> str | None:
    from mlflow.exceptions import MlflowException

    root = reg.settings.artifact_root
    location = None if root is None else root.rstrip("/") + "/" + name.replace("/", "-")
    try:
        with reg.write_lock():
            return str(reg.client.create_experiment(name, artifact_location=location, tags=tags))
    except MlflowException as err:
        if err.error_code == "RESOURCE_ALREADY_EXISTS" or "already exists" in str(err):
            return None
        raise


def follow_champion(
    reg: Registry,
    model: str,
    follow: FollowSettings,
    checks: CheckSettings,
    log: Callable[..., None],
) -> list[str]:
    """Update every configured database whose latest version was made with an earlier
    version of ``model`` than its champion; returns the new versions' references."""
    from drift.normative.store import list_databases
    from drift.normative.update import update

    if not follow.databases:
        return []
    aliases = reg.client.get_registered_model(model).aliases or {}
    if "champion" not in aliases:
        return []
    champion = reg.resolve(f"{model}/{aliases['champion']}")
    run_id = champion.tags.get("cordwatch.drift.run_id")
    if not is_promotable(champion.tags) or not run_id:
        return []  # not through the gate (e.g. a forced first champion): nothing to follow
    made: list[str] = []
    versions = list_databases(registry=reg)
    for db in follow.databases:
        mine = [v for v in versions if v.name == db]
        if not mine:
            continue
        latest = mine[-1]
        if not latest.model or latest.model.split("/")[0] != model:
            continue
        if latest.model == champion.ref:
            continue
        fields = {"database": db, "model": champion.ref, "from": latest.ref, "mode": follow.mode}
        tags = {"cordwatch.kind": KIND, TAG + "state": "running", TAG + "started": str(time.time()),
                **{TAG + k: str(v) for k, v in fields.items()}}  # fmt: skip
        exp_id = _claim(reg, f"{PREFIX}{db}/{champion.ref}", tags)
        if exp_id is None:
            continue  # another replica (or an earlier poll) has it
        log("normative-started", **fields)
        try:
            result = _update(reg, update, db, champion.ref, run_id, follow, checks)
        except CordwatchError as err:
            message = str(err).splitlines()[0][:500]
            reg.client.set_experiment_tag(exp_id, TAG + "state", "failed")
            reg.client.set_experiment_tag(exp_id, TAG + "error", message)
            log("normative-failed", error=message, **fields)
            continue
        reg.client.set_experiment_tag(exp_id, TAG + "state", "done")
        reg.client.set_experiment_tag(exp_id, TAG + "version", result)
        log("normative-updated", version=result, **fields)
        made.append(result)
    return made


def _update(
    reg: Registry,
    update: Callable[..., Any],
    db: str,
    model_ref: str,
    run_id: str,
    follow: FollowSettings,
    checks: CheckSettings,
) -> str:
    if follow.mode == "recompute":
        done = update(db, model_ref, recompute=True, cohort=checks.cohort_ref, root=checks.root,
                      device=checks.device, registry=reg)  # fmt: skip
    else:
        with tempfile.TemporaryDirectory(prefix="cordwatch-follow-") as tmp:
            path = reg.client.download_artifacts(run_id, "result.json", tmp)
            done = update(db, model_ref, Path(path), policy_path=None, registry=reg)
    return str(done.version.ref)


def follow_view(reg: Registry, databases: Sequence[str]) -> list[dict[str, Any]]:
    """Every follow attempt (for /checks)."""
    found = reg.client.search_experiments(
        filter_string=f"tags.`cordwatch.kind` = '{KIND}'", max_results=1000
    )
    rows = [{k.removeprefix(TAG): v for k, v in e.tags.items() if k.startswith(TAG)} for e in found]
    return [r for r in rows if not databases or r.get("database") in databases]
