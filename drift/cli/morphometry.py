"""``cordwatch morphometry``: SCT-compatible shape metrics of one segmentation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from drift import __version__
from drift.cli.common import command
from drift.cohort.engine import SCHEDULER_HELP
from registry.errors import InputError
from registry.fsutil import refuse_outputs_onto_inputs

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from drift.measure.levels import SctRows
    from drift.measure.nifti import Volume


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


def parse_slices(text: str | None) -> list[int] | None:
    """SCT's ``-z`` (``parse_num_list``): ``"10:40"``, ``"3,5:7"`` -> slice numbers.

    >>> parse_slices("3,5:7"), parse_slices(None)
    ([3, 5, 6, 7], None)
    """
    if text is None:
        return None
    out: list[int] = []
    for part in text.split(","):
        bounds = part.strip().split(":")
        if len(bounds) > 2 or not all(b.strip().isdigit() for b in bounds):
            raise InputError(f"--slices must look like 10:40 or 3,5:7, got {text!r}")
        lo, hi = int(bounds[0]), int(bounds[-1])
        if hi < lo:
            raise InputError(f"--slices: {part!r} ends before it starts")
        out += [z for z in range(lo, hi + 1) if z not in out]
    return out


def _flips(path: Path) -> tuple[bool, bool, bool]:
    """Which RPI axes run the other way in the file's own voxel order."""
    import nibabel as nib

    codes = nib.aff2axcodes(nib.load(str(path)).affine)  # type: ignore[attr-defined]
    rl, ap, si = (any(c == flipped for c in codes) for flipped in ("R", "P", "I"))
    return rl, ap, si


def morphometry_table(seg_path: Path, **options: Any) -> pd.DataFrame:
    """:func:`morphometry_rows` as a DataFrame (SCT-named columns)."""
    return morphometry_rows(seg_path, **options).to_frame()


def morphometry_rows(
    seg_path: Path,
    *,
    vertfile: Path | None = None,
    discfile: Path | None = None,
    perslice: bool = False,
    perlevel: bool = False,
    vert: tuple[int, int] | None = None,
    normalize_pam50: bool = False,
    angle_correction: str = "exact",
    interpolate_discs: bool = False,
    slices: list[int] | None = None,
    pmj: Path | None = None,
    pmj_distance: float | None = None,
    pmj_extent: float = 20.0,
    warn: Callable[[str], None] | None = None,
) -> SctRows:
    """Measure a segmentation file and aggregate as ``sct_process_segmentation`` does;
    returns SCT-named columns (rows built with numpy, no pandas). ``warn`` receives the
    one-line warnings (levels of ``vert`` that are absent); by default they go to stderr."""
    import numpy as np

    from drift.measure.levels import (
        aggregate_rows,
        normalize_pam50_arrays,
        slice_levels_from_discs,
        slice_levels_from_labeled,
    )
    from drift.measure.morphometry import AngleCorrection, slice_metric_arrays
    from drift.measure.nifti import load_labels, load_segmentation

    say = warn or (lambda msg: typer.echo(f"cordwatch: warning: {msg}", err=True))
    if vertfile is not None and discfile is not None:
        raise InputError("give --vertfile or --discfile, not both")
    if pmj_distance is not None and pmj is None:
        raise InputError("--pmj-distance needs --pmj")
    if pmj is not None and pmj_distance is None and not perslice:
        raise InputError("--pmj needs --pmj-distance or --perslice (as SCT's -pmj)")
    if pmj is not None and (vert is not None or normalize_pam50 or perlevel):
        raise InputError(
            "--pmj selects slices itself: not with --vert, --perlevel, --normalize-pam50"
        )
    if pmj_extent <= 0:
        raise InputError(f"--pmj-extent must be > 0 mm, got {pmj_extent}")
    seg = load_segmentation(seg_path)
    nz = seg.data.shape[2]
    if slices is not None:
        outside = [z for z in slices if not 0 <= z < nz]
        if outside:
            raise InputError(
                f"--slices {outside[0]} is outside the image (slices 0..{nz - 1})", seg_path
            )
    levels: np.ndarray | None = None
    label_path = vertfile or discfile
    if label_path is not None:
        labels = load_labels(label_path, seg)
        if vertfile is not None:
            levels = slice_levels_from_labeled(labels.data)
        else:
            try:
                levels = slice_levels_from_discs(
                    labels.data,
                    seg.data,
                    seg.affine,
                    flips=_flips(seg_path),
                    pz=seg.spacing[2],
                    interpolate_missing=interpolate_discs,
                )
            except ValueError as err:
                raise InputError(str(err), label_path) from err
            if not levels.any():
                raise InputError(
                    "no disc label (values 1-25): no level can be assigned", label_path
                )
    if (perlevel or vert or normalize_pam50) and levels is None:
        raise InputError("--perlevel, --vert and --normalize-pam50 need --vertfile or --discfile")
    if vert is not None and levels is not None:
        present = set(levels[levels > 0].tolist())
        wanted = set(range(vert[0], vert[1] + 1))
        if not wanted & present:
            raise InputError(
                f"none of the levels {vert[0]}:{vert[1]} asked by --vert is present "
                f"(present: {sorted(present)})",
                label_path,
            )
        missing = sorted(wanted - present)
        if missing:
            say(
                f"level(s) {missing} asked by --vert are absent from {label_path}; "
                f"going on with {sorted(wanted & present)}"
            )
    metrics = slice_metric_arrays(seg.data, seg.spacing, cast(AngleCorrection, angle_correction))
    index = np.arange(nz)
    distance = None
    if pmj is not None:
        distance, slices = _pmj_slices(seg, pmj, pmj_distance, pmj_extent, perslice, slices)
    if normalize_pam50:
        assert levels is not None
        metrics, index, levels = normalize_pam50_arrays(metrics, levels)
        perslice = perslice or not perlevel
    return aggregate_rows(
        metrics,
        index,
        levels,
        perslice=perslice,
        perlevel=perlevel,
        vert=vert,
        slices=None if slices is None else np.asarray(slices),
        distance_pmj=distance,
        pmj_distance=pmj_distance if not perslice else None,
    )


def _pmj_slices(
    seg: Volume,
    pmj_path: Path,
    distance: float | None,
    extent: float,
    perslice: bool,
    slices: list[int] | None,
) -> tuple[np.ndarray, list[int] | None]:
    """Per-slice distance from the PMJ (NaN off the centerline) and, with ``distance``, the
    slices of the ``extent`` centred there (SCT's ``get_slices_for_pmj_distance``)."""
    import numpy as np

    from drift.measure.morphometry import pmj_distances
    from drift.measure.nifti import load_labels

    pmj = load_labels(pmj_path, seg).data
    values = np.unique(pmj[pmj != 0])
    if len(values) != 1 or np.count_nonzero(pmj) != 1:
        what = "no label" if len(values) == 0 else f"{np.count_nonzero(pmj)} labelled voxels"
        raise InputError(f"a PMJ file holds one single-voxel label, this one has {what}", pmj_path)
    pmj_z = int(np.argwhere(pmj)[0, 2])
    cord_z = np.flatnonzero((seg.data > 1e-6).any(axis=(0, 1)))
    if cord_z.size == 0:
        raise InputError("the segmentation is empty", seg.path)
    if pmj_z < cord_z[-1]:
        raise InputError(
            f"the PMJ (slice {pmj_z}) lies within or below the cord's extent (slices "
            f"{cord_z[0]}..{cord_z[-1]}): distances would not start at the PMJ",
            pmj_path,
        )
    zref, from_top = pmj_distances(seg.data, pmj, seg.affine, seg.spacing[2])
    per_slice = np.full(seg.data.shape[2], np.nan)
    per_slice[zref] = from_top
    if perslice or distance is None:
        return per_slice, slices
    if not from_top[-1] <= distance <= from_top[0]:
        raise InputError(
            f"--pmj-distance {distance} mm is outside the centerline "
            f"({from_top[-1]:.1f}..{from_top[0]:.1f} mm from the PMJ)",
            pmj_path,
        )
    zmin = int(zref[np.argmin(np.abs(from_top - distance - extent / 2))])
    zmax = int(zref[np.argmin(np.abs(from_top - distance + extent / 2))])
    covered = (seg.data[:, :, zmin:zmax] > 0).any(axis=(0, 1))
    if not covered.all():
        raise InputError(
            f"the segmentation does not cover the slices {zmin}..{zmax - 1} at "
            f"{distance} +- {extent / 2} mm from the PMJ",
            seg.path,
        )
    picked = list(range(zmin, zmax))  # SCT leaves zmax out
    if slices is not None:
        picked = [z for z in picked if z in set(slices)]
    return per_slice, picked


@command
def morphometry(
    seg: Path | None = typer.Argument(
        None,
        metavar="[SEG]",
        help="Cord segmentation (NIfTI, binary or soft in [0, 1]); none with --batch.",
    ),
    vertfile: Path | None = typer.Option(
        None,
        "--vertfile",
        metavar="NIFTI",
        help="Labelled segmentation: voxel value = vertebral level (3 = C3).",
    ),
    discfile: Path | None = typer.Option(
        None,
        "--discfile",
        metavar="NIFTI",
        help="Disc labels: single voxels, value N = disc above level N.",
    ),
    perslice: bool = typer.Option(False, "--perslice", help="One row per slice."),
    perlevel: bool = typer.Option(False, "--perlevel", help="One row per vertebral level."),
    vert: str | None = typer.Option(
        None, "--vert", metavar="LO:HI", help="Level range to keep, e.g. 2:5."
    ),
    normalize_pam50: bool = typer.Option(
        False, "--normalize-pam50", help="Interpolate onto the PAM50 template's slices per level."
    ),
    angle_correction: str = typer.Option(
        "exact",
        "--angle-correction",
        metavar="exact|sct|none",
        help="exact (t_z/|t|, default), sct (cos*cos, as SCT) or none.",
    ),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        metavar="FILE",
        help="Write the CSV here (SCT columns); default: print a table.",
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
    interpolate_discs: bool = typer.Option(
        False,
        "--interpolate-discs",
        help="With --discfile: place missing discs by interpolation and give slices outside "
        "the outermost discs no level (cordwatch's rule before SCT 7.4 parity).",
    ),
    slices: str | None = typer.Option(
        None, "--slices", metavar="10:40", help="Slices to keep (SCT's -z), e.g. 10:40 or 3,5:7."
    ),
    pmj: Path | None = typer.Option(
        None,
        "--pmj",
        metavar="NIFTI",
        help="Pontomedullary-junction label (one voxel): fills DistancePMJ.",
    ),
    pmj_distance: float | None = typer.Option(
        None, "--pmj-distance", metavar="MM", help="With --pmj: centre of the extent (mm)."
    ),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print the rows as JSON on stdout (SCT's column names) instead of a table.",
    ),
    pmj_extent: float = typer.Option(
        20.0, "--pmj-extent", metavar="MM", help="With --pmj-distance: extent in mm (SCT: 20)."
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
            "interpolate_discs": interpolate_discs,
            "slices": parse_slices(slices),
        }
        _run_batch(batch, output, scheduler, options, given=(seg, vertfile, discfile))
        return
    if seg is None:
        raise InputError("give a segmentation (SEG) or --batch TABLE.tsv")
    refuse_outputs_onto_inputs({"--output": output}, [seg, vertfile, discfile, pmj])
    table = morphometry_rows(
        seg,
        vertfile=vertfile,
        discfile=discfile,
        perslice=perslice,
        perlevel=perlevel,
        vert=parse_vert(vert),
        normalize_pam50=normalize_pam50,
        angle_correction=angle_correction,
        interpolate_discs=interpolate_discs,
        slices=parse_slices(slices),
        pmj=pmj,
        pmj_distance=pmj_distance,
        pmj_extent=pmj_extent,
    )
    if output is not None:
        from drift.measure.sctcsv import write_sct_csv

        write_sct_csv(table, output, filename=str(seg), version=f"cordwatch-{__version__}")
        typer.echo(str(output))
        return
    if json_out:
        from drift.cli.common import print_json

        print_json(_json_rows(table))
        return
    _print_table(table)


def _json_rows(table: SctRows) -> list[dict[str, Any]]:
    """The table's rows for ``--json``: NaN as null (JSON has no NaN), numpy scalars as numbers."""
    rows = []
    for record in table.to_frame().to_dict("records"):
        row = {}
        for key, value in record.items():
            if hasattr(value, "item"):
                value = value.item()
            row[str(key)] = None if isinstance(value, float) and value != value else value
        rows.append(row)
    return rows


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
            table, out_dir, morphometry_rows, options, engine, version=f"cordwatch-{__version__}"
        )
    for name, error in report.failed.items():
        typer.echo(f"cordwatch: {table}: {name}: {error}", err=True)
    n = len(report.written) + len(report.failed)
    typer.echo(f"{len(report.written)} of {n} written to {out_dir}")
    if report.failed:
        raise InputError(f"{len(report.failed)} of {n} rows failed (see above)", table)


def _print_table(table: SctRows) -> None:
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
    for row in table.records:
        cells = []
        for col in shown:
            value = row.get(col)
            if isinstance(value, float):
                cells.append("" if np.isnan(value) else f"{value:.2f}")
            else:
                cells.append("" if value is None or value != value else str(value))
        out.add_row(*cells)
    Console(width=160).print(out)
