"""``cordwatch morphometry``: SCT-compatible shape metrics of one segmentation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer

from drift import __version__
from drift.cli.common import command
from registry.errors import InputError

if TYPE_CHECKING:
    import pandas as pd


def parse_vert(text: str | None) -> tuple[int, int] | None:
    """``"2:5"`` -> (2, 5); ``"3"`` -> (3, 3).

    >>> parse_vert("2:5"), parse_vert("3"), parse_vert(None)
    ((2, 5), (3, 3), None)
    """
    if text is None:
        return None
    parts = text.split(":")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        lo = hi = None
    if lo is None or hi is None or lo < 1 or hi < lo:
        raise InputError(f"--vert must look like 2:5 (first <= last, >= 1), got {text!r}")
    return lo, hi


def morphometry_table(
    seg_path: Path,
    *,
    vertfile: Path | None = None,
    discfile: Path | None = None,
    perslice: bool = False,
    perlevel: bool = False,
    vert: tuple[int, int] | None = None,
    normalize_pam50: bool = False,
    angle_correction: str = "exact",
) -> pd.DataFrame:
    """Measure a segmentation file and aggregate as asked; returns SCT-named columns."""
    import numpy as np

    from drift.measure.levels import aggregate, slice_levels_from_discs, slice_levels_from_labeled
    from drift.measure.levels import normalize_pam50 as to_pam50
    from drift.measure.morphometry import AngleCorrection, slice_metrics
    from drift.measure.nifti import load_labels, load_segmentation

    if vertfile is not None and discfile is not None:
        raise InputError("give --vertfile or --discfile, not both")
    seg = load_segmentation(seg_path)
    levels: np.ndarray | None = None
    label_path = vertfile or discfile
    if label_path is not None:
        labels = load_labels(label_path, seg)
        if vertfile is not None:
            levels = slice_levels_from_labeled(labels.data)
        else:
            try:
                levels = slice_levels_from_discs(labels.data)
            except ValueError as err:
                raise InputError(str(err), label_path) from err
            if not levels.any():
                raise InputError("fewer than two disc labels: no level can be assigned", label_path)
    if (perlevel or vert or normalize_pam50) and levels is None:
        raise InputError("--perlevel, --vert and --normalize-pam50 need --vertfile or --discfile")
    if vert is not None and levels is not None:
        present = set(np.unique(levels[levels > 0]).tolist())
        missing = sorted(set(range(vert[0], vert[1] + 1)) - present)
        if missing:
            raise InputError(
                f"level(s) {missing} asked by --vert are absent (present: {sorted(present)})",
                label_path,
            )
    metrics = slice_metrics(seg.data, seg.spacing, cast(AngleCorrection, angle_correction))
    if normalize_pam50:
        assert levels is not None
        metrics, levels = to_pam50(metrics, levels)
        perslice = perslice or not perlevel
    return aggregate(metrics, levels, perslice=perslice, perlevel=perlevel, vert=vert)


@command
def morphometry(
    seg: Path = typer.Argument(..., help="Cord segmentation (NIfTI, binary or soft in [0, 1])."),
    vertfile: Path | None = typer.Option(
        None, "--vertfile", help="Labelled segmentation: voxel value = vertebral level (3 = C3)."
    ),
    discfile: Path | None = typer.Option(
        None, "--discfile", help="Disc labels: single voxels, value N = disc above level N."
    ),
    perslice: bool = typer.Option(False, "--perslice", help="One row per slice."),
    perlevel: bool = typer.Option(False, "--perlevel", help="One row per vertebral level."),
    vert: str | None = typer.Option(None, "--vert", help="Level range to keep, e.g. 2:5."),
    normalize_pam50: bool = typer.Option(
        False, "--normalize-pam50", help="Interpolate onto the PAM50 template's slices per level."
    ),
    angle_correction: str = typer.Option(
        "exact",
        "--angle-correction",
        help="exact (t_z/|t|, default), sct (cos*cos, as SCT) or none.",
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Write the CSV here (SCT columns); default: print a table."
    ),
) -> None:
    """Cross-sectional area and shape per slice / level, with SCT's CSV columns."""
    if angle_correction not in ("exact", "sct", "none"):
        raise InputError(f"--angle-correction must be exact, sct or none, not {angle_correction!r}")
    table = morphometry_table(
        seg,
        vertfile=vertfile,
        discfile=discfile,
        perslice=perslice,
        perlevel=perlevel,
        vert=parse_vert(vert),
        normalize_pam50=normalize_pam50,
        angle_correction=angle_correction,
    )
    if output is not None:
        from drift.measure.sctcsv import write_sct_csv

        write_sct_csv(table, output, filename=str(seg), version=f"cordwatch-{__version__}")
        typer.echo(str(output))
        return
    _print_table(table)


def _print_table(table: pd.DataFrame) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    shown = [
        "Slice (I->S)",
        "VertLevel",
        "MEAN(area)",
        "STD(area)",
        "MEAN(diameter_AP)",
        "MEAN(diameter_RL)",
        "MEAN(angle_AP)",
        "MEAN(angle_RL)",
        "SUM(length)",
    ]
    out = Table(show_header=True)
    for col in shown:
        out.add_column(col, justify="right")
    for _, row in table.iterrows():
        cells = []
        for col in shown:
            value = row.get(col)
            if isinstance(value, float):
                cells.append("" if np.isnan(value) else f"{value:.2f}")
            else:
                cells.append("" if value is None or value != value else str(value))
        out.add_row(*cells)
    Console(width=160).print(out)
