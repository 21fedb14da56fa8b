"""Eight processes register versions of one model at once on a fresh embedded sqlite store.

A fresh sqlite file is the worst case: every process also races to create MLflow's tables,
which corrupts the file unless initialisation is serialised (registry.settings).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from registry.testing import check_race, race


@pytest.mark.slow
def test_eight_processes_on_a_fresh_sqlite_store(tmp_path: Path) -> None:
    db = tmp_path / "shared" / "registry.db"
    uri = f"sqlite:///{db}"
    assert not db.exists()
    results = race(uri, "race", tmp_path / "race", processes=8)
    check_race(results, uri, "race", tmp_path / "reader")
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        con.close()
