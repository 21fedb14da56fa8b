"""Eight processes register versions of one model at once on a fresh embedded sqlite store.

A fresh sqlite file is the worst case: every process also races to create MLflow's tables,
which corrupts the file unless initialisation is serialised (registry.settings).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from registry.api import connect
from registry.manifest import MANIFEST_NAME
from registry.testing import race


def check_race(results: list[dict], uri: str, name: str, home: Path) -> None:
    """All workers succeeded, with distinct, complete versions 1..N."""
    for r in results:
        assert r["returncode"] == 0, r["stderr"][-3000:]
        assert "Traceback" not in r["stderr"] and "rror" not in r["stderr"], r["stderr"][-3000:]
    mine = {r["result"]["version"]: r["result"] for r in results}
    n = len(results)
    assert sorted(mine) == list(range(1, n + 1))  # distinct, no gaps
    assert len({r["sha256"] for r in mine.values()}) == n
    reg = connect(uri, home=home)
    versions = reg.list_versions(name)
    assert [v.version for v in versions] == list(range(1, n + 1))
    for v in versions:
        assert v.sha256 == mine[v.version]["sha256"]
        assert v.run_id == mine[v.version]["run_id"]
        assert v.description == f"worker {mine[v.version]['index']}"
        folder = reg.pull(v.ref)  # complete: every file present and verified
        assert (folder / MANIFEST_NAME).is_file()
        assert (folder / "fold_0" / "checkpoint_final.pth").stat().st_size == 64 * 1024


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
