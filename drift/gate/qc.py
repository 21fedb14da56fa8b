"""QC images of a drift check (SCT's ``-qc`` habit): an axial slice of the image with the
baseline (blue) and candidate (red) contours, for every failing level's subjects with the
largest change and for every outlier subject, level and slice named.

:func:`qc_targets` picks what to show from a :class:`~drift.gate.policy.DriftResult` (pure);
:func:`qc_image` draws one slice from arrays (pure); :func:`qc_images` reads the NIfTI files
(image, both segmentations, level labels) of the chosen (subject, contrast) pairs and returns
``{name: (caption, png)}`` for :func:`drift.gate.report.render_report`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from drift.measure.levels import level_name

if TYPE_CHECKING:
    from drift.cohort.manifest import Cohort
    from drift.gate.policy import DriftResult

COLOURS = {"baseline": "#1e88e5", "candidate": "#e53935"}


@dataclass(frozen=True)
class QCTarget:
    """One image to show: which level of which subject's contrast, and why."""

    metric: str
    level: int
    subject: str
    contrast: str
    ratio: float
    reason: str  # "failing level" | "outlier"

    @property
    def name(self) -> str:
        raw = f"{level_name(self.level)}_{self.subject}_{self.contrast}"
        return re.sub(r"[^A-Za-z0-9_.-]", "-", raw)


def qc_targets(result: DriftResult, per_level: int = 2) -> list[QCTarget]:
    """For every failing (metric, level): the ``per_level`` subjects with the largest
    |log-ratio|; then every outlier subject. Each in the contrast where it changed most;
    one image per (level, subject, contrast)."""
    comp = result.comparison
    pairs = comp.pairs
    wanted: list[tuple[str, int, str, str]] = []
    for c in result.gate.conditions:
        if c.status != "fail" or c.test != "equivalence" or c.metric is None or c.level is None:
            continue
        lv = comp.levels[
            (comp.levels["metric"] == c.metric) & (comp.levels["level_name"] == c.level)
        ]
        if lv.empty:
            continue
        level = int(lv["level"].iloc[0])
        subj = comp.subjects[
            (comp.subjects["metric"] == c.metric) & (comp.subjects["level"] == level)
        ]
        sized = subj.assign(size=subj["log_ratio"].abs())
        top = sized[sized["size"] > 1e-9].nlargest(per_level, "size")  # changed at all
        wanted += [(c.metric, level, str(s), "failing level") for s in top["subject"]]
    for r in comp.outliers.to_dict("records"):
        wanted.append((str(r["metric"]), int(r["level"]), str(r["subject"]), "outlier"))
    out: list[QCTarget] = []
    seen: set[tuple[int, str]] = set()
    for metric, level, subject, reason in wanted:
        if (level, subject) in seen:
            continue
        seen.add((level, subject))
        p = pairs[
            (pairs["metric"] == metric) & (pairs["level"] == level) & (pairs["subject"] == subject)
        ]
        if p.empty:
            continue
        row = p.loc[p["log_ratio"].abs().idxmax()]
        out.append(
            QCTarget(
                metric,
                level,
                subject,
                str(row["contrast"]),
                float(np.exp(row["log_ratio"])),
                reason,
            )
        )
    return out


def worst_slice(
    base: np.ndarray, cand: np.ndarray, slice_levels: np.ndarray, level: int
) -> int | None:
    """The axial slice of ``level`` where the two segmentations' areas differ most."""
    z = np.flatnonzero(slice_levels == level)
    if z.size == 0:
        return None
    diff = np.abs(cand[:, :, z].sum(axis=(0, 1)) - base[:, :, z].sum(axis=(0, 1)))
    return int(z[int(np.argmax(diff))])


def qc_image(
    image: np.ndarray,
    base: np.ndarray,
    cand: np.ndarray,
    z: int,
    *,
    title: str,
    labels: Mapping[str, str],
    spacing: tuple[float, float] = (1.0, 1.0),
) -> bytes:
    """PNG of axial slice ``z`` (RPI arrays: x right-to-left, y posterior-to-anterior),
    cropped around the cord, with the 0.5 contour of each segmentation."""
    from matplotlib.lines import Line2D

    from drift.gate.figures import _figure, figure_png

    b, c = base[:, :, z].astype(float), cand[:, :, z].astype(float)
    mask = (b > 0) | (c > 0)
    xs, ys = (
        np.nonzero(mask) if mask.any() else (np.arange(image.shape[0]), np.arange(image.shape[1]))
    )
    pad = 12
    x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, image.shape[0])
    y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, image.shape[1])
    fig = _figure(3.4, 3.9, left=0.1, right=0.1, top=0.55, bottom=0.55)
    ax = fig.subplots()
    crop = image[x0:x1, y0:y1, z].astype(float).T
    ax.imshow(
        crop, cmap="gray", origin="lower", aspect=spacing[1] / spacing[0], interpolation="nearest"
    )
    for key, seg in (("baseline", b), ("candidate", c)):
        part = seg[x0:x1, y0:y1].T
        if part.max() > 0.5 > part.min():
            ax.contour(part, levels=[0.5], colors=COLOURS[key], linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    handles = [
        Line2D([], [], color=COLOURS[k], lw=1.5, label=f"{k} {labels.get(k, '')}".strip())
        for k in COLOURS
    ]
    fig.legend(handles=handles, loc="lower center", ncols=2, fontsize=7, frameon=False)
    return figure_png(fig)


def qc_images(
    result: DriftResult,
    cohort: Cohort,
    root: Path,
    seg_paths: Mapping[str, Mapping[str, Path]],
    *,
    labels: Mapping[str, str] | None = None,
    per_level: int = 2,
) -> dict[str, tuple[str, bytes]]:
    """``{name: (caption, png)}`` for :func:`qc_targets`; ``seg_paths`` is ``{"baseline":
    {"subject/contrast": path}, "candidate": {...}}``. A pair whose files are missing or
    unreadable is skipped (QC images illustrate; they never change the verdict)."""
    from drift.measure.levels import slice_levels_from_discs, slice_levels_from_labeled
    from drift.measure.nifti import load_labels, load_segmentation, load_volume
    from registry.errors import CordwatchError

    items = {(it.subject, it.contrast): it for it in cohort.items}
    out: dict[str, tuple[str, bytes]] = {}
    for t in qc_targets(result, per_level):
        item = items.get((t.subject, t.contrast))
        key = f"{t.subject}/{t.contrast}"
        b_path, c_path = (
            seg_paths.get("baseline", {}).get(key),
            seg_paths.get("candidate", {}).get(key),
        )
        if item is None or item.levels is None or b_path is None or c_path is None:
            continue
        try:
            base = load_segmentation(b_path)
            cand = load_segmentation(c_path)
            image = load_volume(item.image.locate(root))
            lab = load_labels(item.levels.locate(root), base)
        except (CordwatchError, OSError):
            continue
        if image.data.shape != base.data.shape or cand.data.shape != base.data.shape:
            continue
        if item.level_source == "disc_labels":
            levels = slice_levels_from_discs(lab.data)
        else:
            levels = slice_levels_from_labeled(lab.data)
        z = worst_slice(base.data, cand.data, np.asarray(levels), t.level)
        if z is None:
            continue
        lname = level_name(t.level)
        title = (
            f"{t.subject} {t.contrast}, level {lname}, slice {z}\n"
            f"{t.reason}: {t.metric} ratio {t.ratio:.4f}"
        )
        png = qc_image(
            image.data,
            base.data,
            cand.data,
            z,
            title=title,
            labels=labels or {},
            spacing=(float(image.spacing[0]), float(image.spacing[1])),
        )
        caption = (
            f"{t.subject} {t.contrast}, {lname}, slice {z} ({t.reason}, {t.metric} x{t.ratio:.4f})"
        )
        out[t.name] = (caption, png)
    return out
