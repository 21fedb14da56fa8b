"""Shared fixtures: where the real data lives, and an isolated CORDWATCH_HOME per test."""

from __future__ import annotations

import os
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
