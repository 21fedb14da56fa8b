"""``cordwatch morphometry``: SCT-compatible shape metrics of one segmentation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from drift import __version__
from drift.cli.common import command
from drift.cohort.engine import SCHEDULER_HELP
from registry.errors import InputError
from registry.fsutil import refuse_outputs_onto_inputs

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
    seg: Path | None = typer.Argument(
        None, help="Cord segmentation (NIfTI, binary or soft in [0, 1]); none with --batch."
    ),
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
    batch: Path | None = typer.Option(
        None,
        "--batch",
        metavar="TABLE.tsv",
        help="Measure every row of TABLE (columns seg, optional vertfile or discfile, name) "
        "into -o OUTDIR/<name>.csv; bad rows are reported, the others written (exit 2 if any).",
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", metavar="local[:N]|tcp://HOST:PORT", help=SCHEDULER_HELP
    ),
) -> None:
    """Cross-sectional area and shape per slice / level, with SCT's CSV columns."""
    if angle_correction not in ("exact", "sct", "none"):
        raise InputError(f"--angle-correction must be exact, sct or none, not {angle_correction!r}")
    if batch is not None:
        options = {
            "perslice": perslice,
            "perlevel": perlevel,
            "vert": parse_vert(vert),
            "normalize_pam50": normalize_pam50,
            "angle_correction": angle_correction,
        }
        _run_batch(batch, output, scheduler, options, given=(seg, vertfile, discfile))
        return
    if seg is None:
        raise InputError("give a segmentation (SEG) or --batch TABLE.tsv")
    refuse_outputs_onto_inputs({"--output": output}, [seg, vertfile, discfile])
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


def _run_batch(
    table: Path,
    out_dir: Path | None,
    scheduler: str | None,
    options: dict[str, Any],
    given: tuple[Path | None, ...],
) -> None:
    """``--batch``: one CSV per row; failures on stderr, then exit 2 if there were any."""
    from drift.cohort.engine import open_engine, run_batch

    if any(p is not None for p in given):
        raise InputError("with --batch, seg, --vertfile and --discfile come from the table")
    if out_dir is None:
        raise InputError("--batch needs -o OUTDIR")

    def say(msg: str) -> None:
        typer.echo(msg, err=True)

    with open_engine(scheduler, say=say) as engine:
        report = run_batch(
            table, out_dir, morphometry_table, options, engine, version=f"cordwatch-{__version__}"
        )
    for name, error in report.failed.items():
        typer.echo(f"cordwatch: {table}: {name}: {error}", err=True)
    n = len(report.written) + len(report.failed)
    typer.echo(f"{len(report.written)} of {n} written to {out_dir}")
    if report.failed:
        raise InputError(f"{len(report.failed)} of {n} rows failed (see above)", table)


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
