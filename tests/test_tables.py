"""Folder reads (drift.gate.tables) and ``drift compare`` on the real normative database.

The golden files under tests/data/ were written by ``drift compare`` *before* the vectorised
reader and statistics replaced the per-file pandas ones (issue 14); the new code must give
the same JSON to the last digit.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "data" / "compare_normative_golden.json"


def shrunk_copy(src: Path, dst: Path, *, factor: float = 0.98, seed: int = 14) -> Path:
    """Copy every CSV of ``src`` to ``dst`` with area x ``factor`` and the diameters x
    sqrt(factor), times a seeded per-subject (0.5 %) and per-slice (1 %) log-normal noise: a
    candidate model that measures every cord ~2 % smaller. Other cells stay byte-identical."""
    rng = np.random.default_rng(seed)
    dst.mkdir(parents=True, exist_ok=True)
    scale = {
        "MEAN(area)": factor,
        "MEAN(diameter_AP)": factor**0.5,
        "MEAN(diameter_RL)": factor**0.5,
    }
    for path in sorted(src.glob("*.csv")):
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        header, body = rows[0], rows[1:]
        cols = [header.index(c) for c in scale]
        subject = float(np.exp(rng.normal(0.0, 0.005)))
        noise = np.exp(rng.normal(0.0, 0.01, size=(len(body), len(cols))))
        for i, row in enumerate(body):
            for j, col in enumerate(cols):
                if row[col] != "":
                    value = float(row[col]) * scale[header[col]] * subject * noise[i, j]
                    row[col] = repr(float(value))
        with (dst / path.name).open("w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows([header, *body])
    return dst


def result_without_provenance(path: Path) -> dict:
    """The ``drift compare --json`` document minus what depends on paths, time and git."""
    doc = json.loads(path.read_text())
    doc.pop("provenance", None)
    return doc


def comparison_digests(baseline, candidate, result) -> dict[str, str]:
    """sha256 of the full-precision CSV of the tidy tables read and of every table of the
    comparison (what the JSON leaves out: pairs, subjects, slice profile, ...)."""
    import hashlib

    tables = {"baseline_table": baseline, "candidate_table": candidate}
    c = result.comparison
    for name in ("levels", "per_contrast", "pairs", "subjects", "slice_profile"):
        tables[name] = getattr(c, name)
    tables["contrast_spread"] = c.contrast_spread
    tables["outliers"] = c.outliers
    return {
        name: hashlib.sha256(t.to_csv(index=False).encode()).hexdigest()
        for name, t in tables.items()
    }


_STABLE_PROVENANCE = ("baseline_files", "candidate_files", "baseline_files_sha256")
_STABLE_PROVENANCE += ("candidate_files_sha256", "policy_sha256", "policy_source")


def compare_document(baseline_dir: Path, candidate_dir: Path) -> dict:
    """What ``drift compare`` computes on two folders, minus what depends on paths, time,
    git and library versions: the JSON document and the digests of every table."""
    from drift.gate.policy import drift_result
    from drift.gate.report import result_json
    from drift.gate.tables import files_sha256, read_csv_dir

    baseline, b_files = read_csv_dir(baseline_dir, "baseline")
    candidate, c_files = read_csv_dir(candidate_dir, "candidate")
    prov = {
        "baseline_files": len(b_files),
        "candidate_files": len(c_files),
        "baseline_files_sha256": files_sha256(b_files),
        "candidate_files_sha256": files_sha256(c_files),
    }
    result = drift_result(baseline, candidate, None, provenance=prov)
    doc = json.loads(result_json(result))
    doc["provenance"] = {k: doc["provenance"][k] for k in _STABLE_PROVENANCE}
    return {"json": doc, "tables": comparison_digests(baseline, candidate, result)}


@pytest.mark.slow
def test_compare_on_normative_database_unchanged(shared_data: Path, tmp_path: Path) -> None:
    """``drift compare`` of the normative database against itself and against a 2 % shrunk
    copy gives the JSON and the tables the per-file pandas reader and looped statistics gave
    (recorded in tests/data before issue 14 changed them), to the last digit."""
    golden = json.loads(GOLDEN.read_text())
    src = shared_data / "normative_r20250321" / "spinal_cord"
    shrunk = shrunk_copy(src, tmp_path / "shrunk")
    for name, candidate in (("self", src), ("shrunk", shrunk)):
        got = compare_document(src, candidate)
        assert got["tables"] == golden[name]["tables"], name
        assert got["json"] == golden[name]["json"], name
