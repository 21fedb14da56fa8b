"""``cordwatch morphometry --batch TABLE.tsv``: one table of segmentations, one CSV each.

TABLE is tab-separated with a header: ``seg`` (required), ``vertfile`` or ``discfile``
(optional, per row: at most one of them), ``name`` (optional: the output's stem; default the
seg's file name without ``.nii``/``.nii.gz``). Relative paths are relative to TABLE's folder.
Each row is measured on its own (:func:`measure_row`): a bad row is reported and the others go
on; each output is written atomically, so a failure or Ctrl-C leaves only complete CSVs.

Pure: no Dask, no CLI. The caller maps :func:`measure_row` over the rows, in this process or
as one task per row on a cluster (:meth:`drift.cohort.engine.Engine.map`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import InputError

COLUMNS = ("seg", "vertfile", "discfile", "name")


@dataclass(frozen=True)
class BatchRow:
    """One line of the batch table (``line``: its line number in the file, header = 1)."""

    line: int
    seg: Path
    name: str
    vertfile: Path | None = None
    discfile: Path | None = None


@dataclass
class BatchReport:
    """What a batch produced: the CSVs written and the rows that failed."""

    written: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # name -> one-line error

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_rows": len(self.written) + len(self.failed),
            "n_written": len(self.written),
            "n_failed": len(self.failed),
            "written": {k: str(v) for k, v in self.written.items()},
            "failed": self.failed,
        }


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def read_table(path: str | Path) -> list[BatchRow]:
    """The rows of a batch table. InputError (naming the file and line) for a table that
    cannot be run at all: unreadable, no ``seg`` column, an unknown column, an empty seg,
    a row with both vertfile and discfile, two rows with the same output name."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise InputError("batch table not found", path) from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"batch table unreadable: {err}", path) from err
    reader = csv.DictReader(text.splitlines(), delimiter="\t")
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "seg" not in header:
        raise InputError("batch table needs a tab-separated header with a 'seg' column", path)
    unknown = sorted(set(header) - set(COLUMNS))
    if unknown:
        raise InputError(f"unknown column(s) {unknown} (known: {', '.join(COLUMNS)})", path)
    base = path.parent
    rows: list[BatchRow] = []
    seen: dict[str, int] = {}
    for line, raw in enumerate(reader, start=2):
        cells = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(cells.values()):
            continue
        if not cells.get("seg"):
            raise InputError(f"line {line}: empty 'seg'", path)
        if cells.get("vertfile") and cells.get("discfile"):
            raise InputError(f"line {line}: give vertfile or discfile, not both", path)
        seg = base / cells["seg"]
        name = cells.get("name") or _stem(seg)
        if "/" in name or name in (".", ".."):
            raise InputError(f"line {line}: name {name!r} must be a plain file stem", path)
        if name in seen:
            raise InputError(
                f"line {line}: output name {name!r} already used on line {seen[name]}", path
            )
        seen[name] = line
        rows.append(
            BatchRow(
                line,
                seg,
                name,
                base / cells["vertfile"] if cells.get("vertfile") else None,
                base / cells["discfile"] if cells.get("discfile") else None,
            )
        )
    if not rows:
        raise InputError("batch table has no rows", path)
    return rows


def output_path(out_dir: Path, row: BatchRow) -> Path:
    return Path(out_dir) / f"{row.name}.csv"


def measure_row(
    row: BatchRow,
    out_dir: str | Path,
    table_fn: Callable[..., Any],
    options: Mapping[str, Any],
    version: str,
) -> Path:
    """Measure one row with ``table_fn(seg, vertfile=, discfile=, **options)`` (a DataFrame
    with SCT's columns) and write ``OUTDIR/<name>.csv`` atomically; returns its path.
    Raises InputError naming the file for a bad row."""
    from drift.measure.sctcsv import write_sct_csv

    table = table_fn(row.seg, vertfile=row.vertfile, discfile=row.discfile, **options)
    return write_sct_csv(
        table, output_path(Path(out_dir), row), filename=str(row.seg), version=version
    )


def collect(rows: Sequence[BatchRow], outcomes: Mapping[str, Any]) -> BatchReport:
    """A :class:`BatchReport` from ``{name: path or CordwatchError}`` (rows in table order)."""
    report = BatchReport()
    for row in rows:
        got = outcomes[row.name]
        if isinstance(got, Path):
            report.written[row.name] = got
        else:
            report.failed[row.name] = f"line {row.line}: {got}"
    return report
