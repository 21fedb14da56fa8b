"""Shared fixtures: where the real data lives, an isolated CORDWATCH_HOME per test, and what
several slow test files would otherwise each build again (an empty migrated registry
database, the small phantom cohorts)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def shared_data_dir() -> Path:
    """../shared/data beside the checkout (read-only real data), or $CORDWATCH_SHARED_DATA."""
    env = os.environ.get("CORDWATCH_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data. Skips when absent, except under CI, where it must be there."""
    path = shared_data_dir()
    if not path.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path}: real test data missing under CI")
        pytest.skip(f"{path}: real test data not present")
    return path


@pytest.fixture()
def cordwatch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty CORDWATCH_HOME (embedded sqlite registry) for one test."""
    home = tmp_path / "cordwatch-home"
    monkeypatch.setenv("CORDWATCH_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty sqlite registry database with MLflow's whole schema, created once per session.

    Creating MLflow's tables and running its migrations costs 10-25 s on the 2-core CI
    machine, for every test that connects to a fresh registry. The template holds the schema
    and no experiment: the default experiment (whose artifact location is a path of its
    home) is created by the registry that opens a copy, as for any existing database without
    cordwatch's marker (``registry.settings.ensure_sqlite_store``, which MLflow verifies)."""
    from registry.api import connect

    home = tmp_path_factory.mktemp("registry-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        connect(None, home).client.search_experiments()
    db = home / "registry.db"
    con = sqlite3.connect(db)
    try:
        con.execute("DELETE FROM experiment_tags")
        con.execute("DELETE FROM experiments")
        con.commit()
    finally:
        con.close()
    return db


@pytest.fixture(scope="session")
def registry_home(registry_template: Path) -> Callable[[Path], Path]:
    """``registry_home(home)``: ``home`` holding a copy of :func:`registry_template` (an
    empty registry, nothing registered), for a test that connects to a fresh registry there.
    Registration, inference and the drift check still run in full."""

    def seed(home: Path) -> Path:
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(registry_template, home / "registry.db")
        return home

    return seed


@pytest.fixture(scope="session")
def phantom_small_3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 3-subject T2w phantom cohort manifest (seed 3) that the slow drift-check tests of
    several files use; read-only (each home generates its own cohort root from it)."""
    from drift.cohort.manifest import PhantomRecipe, write_phantom_manifest

    return write_phantom_manifest(
        tmp_path_factory.mktemp("phantom-small-3"),
        name="phantom-small-3",
        recipe=PhantomRecipe(n_subjects=3, seed=3, contrasts=("T2w",)),
    )
