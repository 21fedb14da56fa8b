"""What the dashboard shows, as plain data: every page renders one of these dictionaries
and its ``/api/...`` twin returns the same dictionary as JSON.

Reads only (the registry's versions, tags, alias history, drift runs, morphometry runs,
normative versions, check attempts). Drift results (``result.json`` of a drift run) never
change once written, so they are cached by run id.
"""

from __future__ import annotations

import base64
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drift.gate.check import DRIFT_EXPERIMENT
from drift.service.follow import follow_view
from registry.api import VERDICT_TAG

if TYPE_CHECKING:
    from drift.service.monitor import Monitor
    from registry.api import Registry

_RESULTS: dict[str, dict[str, Any]] = {}
_RESULTS_LOCK = threading.Lock()
_LEVEL_KEYS = ("scaling_factor", "ci95", "status", "gated", "n_subjects", "baseline_mean",
               "candidate_mean", "tost_p")  # fmt: skip


def drift_result(reg: Registry, run_id: str) -> dict[str, Any] | None:
    """``result.json`` of a drift run (cached; None when it cannot be read)."""
    with _RESULTS_LOCK:
        if run_id in _RESULTS:
            return _RESULTS[run_id]
    try:
        with tempfile.TemporaryDirectory(prefix="cordwatch-view-") as tmp:
            path = reg.client.download_artifacts(run_id, "result.json", tmp)
            doc = json.loads(Path(path).read_text())
    except Exception:
        return None
    with _RESULTS_LOCK:
        _RESULTS[run_id] = doc
    return doc


def report_html(reg: Registry, run_id: str) -> bytes | None:
    """The self-contained ``report/report.html`` of a drift run."""
    try:
        with tempfile.TemporaryDirectory(prefix="cordwatch-view-") as tmp:
            path = reg.client.download_artifacts(run_id, "report/report.html", tmp)
            return Path(path).read_bytes()
    except Exception:
        return None


def _verdict_of(tags: dict[str, str]) -> str | None:
    return tags.get(VERDICT_TAG) or None


def check_counts(monitor: Monitor) -> dict[str, int]:
    """Checks queued (waiting in memory), running and failed (latest attempt per check)."""
    latest: dict[str, str] = {}
    for a in monitor.store.attempts():
        latest[a.key] = a.state
    states = list(latest.values())
    return {
        "queued": len(monitor.queue_view()),
        "running": sum(s in ("running", "recording") for s in states),
        "failed": sum(s == "failed" for s in states),
        "done": sum(s == "done" for s in states),
    }


def overview(reg: Registry, monitor: Monitor) -> dict[str, Any]:
    """``/``: every model with its champion and candidate and their latest verdicts."""
    models = []
    for m in reg.list_models():
        row: dict[str, Any] = {"name": m.name, "description": m.description,
                               "versions": m.versions, "latest": m.latest}  # fmt: skip
        for alias in ("champion", "candidate"):
            version = m.aliases.get(alias)
            entry = None
            if version is not None:
                info = reg.resolve(f"{m.name}/{version}")
                entry = {"version": version, "verdict": _verdict_of(info.tags)}
            row[alias] = entry
        models.append(row)
    return {"models": models, "checks": check_counts(monitor),
            "registry": reg.settings.redacted_uri}  # fmt: skip


GATED_METRICS = ("area", "diameter_AP", "diameter_RL")


def _metric_levels(result: dict[str, Any] | None, metric: str) -> dict[str, dict[str, Any]]:
    if not result:
        return {}
    levels = result.get("metrics", {}).get(metric, {}).get("levels", {})
    return {
        lv: {k: v.get(k) for k in _LEVEL_KEYS} for lv, v in levels.items() if v.get("n_subjects")
    }


def _margins(result: dict[str, Any] | None) -> dict[str, float | None]:
    metric = ((result or {}).get("policy", {}).get("metrics", {}) or {}).get("area", {})
    return {"fail_pct": metric.get("fail_margin_pct"), "warn_pct": metric.get("warn_margin_pct")}


def model_page(reg: Registry, name: str) -> dict[str, Any]:
    """``/models/NAME``: every version in version order with its verdict, scaling factors vs
    its baseline (CI, margin band), CSA history, alias history and lineage."""
    from drift.cohort.evaluate import csa_history

    model = reg.client.get_registered_model(name)
    versions = []
    margins: dict[str, float | None] = {"fail_pct": None, "warn_pct": None}
    for info in reg.list_versions(name):
        run_id = info.tags.get("cordwatch.drift.run_id")
        result = drift_result(reg, run_id) if run_id else None
        if result:
            margins = _margins(result)
        versions.append(
            {
                "version": info.version,
                "sha256": info.sha256,
                "aliases": list(info.aliases),
                "description": info.description,
                "created": info.created.isoformat(),
                "registered_by": info.tags.get("cordwatch.registered_by", ""),
                "parent": info.tags.get("parent"),
                "verdict": _verdict_of(info.tags),
                "baseline": info.tags.get("cordwatch.drift.baseline"),
                "drift_run_id": run_id,
                "area": _metric_levels(result, "area"),
                "diameters": {m: _metric_levels(result, m) for m in GATED_METRICS[1:]},
            }
        )
    history = csa_history(reg, name)
    return {
        "name": name,
        "description": model.description or "",
        "versions": versions,
        "margins": margins,
        "csa_history": history.to_dict("records"),
        "alias_history": [e.to_dict() for e in reg.history(name)],
    }


def csa_figure_png(history_rows: list[dict[str, Any]]) -> str | None:
    """The CSA history figure (the report's own) as a base64 PNG, or None without data."""
    if not history_rows:
        return None
    import pandas as pd

    from drift.gate.report import figure_history, figure_png

    png = figure_png(figure_history(pd.DataFrame(history_rows), "area"))
    return base64.b64encode(png).decode("ascii")


def drift_runs(reg: Registry, ref: str) -> list[dict[str, Any]]:
    """Every drift run with ``ref`` as candidate, newest first."""
    exp = reg.client.get_experiment_by_name(DRIFT_EXPERIMENT)
    if exp is None:
        return []
    runs = reg.client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`cordwatch.candidate` = '{ref}'",
        max_results=200,
        order_by=["attributes.start_time DESC"],
    )
    return [
        {
            "run_id": r.info.run_id,
            "status": r.info.status,
            "verdict": r.data.tags.get(VERDICT_TAG),
            "baseline": r.data.tags.get("cordwatch.baseline"),
            "started": r.info.start_time / 1000 if r.info.start_time else None,
        }
        for r in runs
    ]


def version_page(reg: Registry, name: str, version: int) -> dict[str, Any]:
    """``/models/NAME/VERSION``: the version, its files, its drift reports with Dice, and the
    normative database versions made with it."""
    from drift.normative.store import list_databases

    info = reg.resolve(f"{name}/{version}", manifest=True)
    runs = drift_runs(reg, info.ref)
    for run in runs:
        result = drift_result(reg, run["run_id"]) if run["status"] == "FINISHED" else None
        run["dice"] = (result or {}).get("dice")
        run["metrics"] = {m: _metric_levels(result, m) for m in GATED_METRICS}
        run["conditions"] = [
            c for c in (result or {}).get("conditions", []) if c.get("status") in ("fail", "warn")
        ]
    normative = [
        v.to_dict()
        for v in list_databases(registry=reg)
        if v.model in (info.ref, f"{name}@{version}")
    ]
    doc = info.to_dict()
    doc["verdict"] = _verdict_of(info.tags)
    doc["drift_runs"] = runs
    doc["normative"] = normative
    return doc


def checks_page(monitor: Monitor) -> dict[str, Any]:
    """``/checks``: queued models, the running check, every attempt (newest first)."""
    now = time.time()
    attempts = [a.to_dict(now) for a in monitor.store.attempts()]
    attempts.sort(key=lambda a: a.get("started") or 0, reverse=True)
    return {
        "queued": monitor.queue_view(),
        "current": monitor.current,
        "attempts": attempts,
        "last_poll": monitor.last_poll,
        "poll_seconds": monitor.poll_s,
        "max_attempts": monitor.settings.max_attempts,
        "normative": follow_view(monitor.reg, monitor.follow.databases)
        if monitor.follow.databases
        else [],
    }


def normative_page(reg: Registry, name: str) -> dict[str, Any]:
    """``/normative/NAME``: versions of a normative database (kind, model, subjects) and the
    per-level CSA summary of the latest."""
    from drift.normative.store import list_databases
    from drift.normative.summary import summary

    versions = [v.to_dict() for v in list_databases(registry=reg) if v.name == name]
    latest: list[dict[str, Any]] = []
    if versions:
        try:
            table = summary(f"{name}@{versions[-1]['version']}", metrics=("area",), registry=reg)
            latest = table.to_dict("records")
        except Exception:
            latest = []
    return {"name": name, "versions": versions, "latest_summary": latest}
