"""Light axes, text and legends for the report's figures: matplotlib (Agg) draws the data,
Pillow draws the words.

Why: with matplotlib 3.11 a tick costs ~4 ms of CPU (a ``Tick`` is five artists) and a text
~2 ms (Python layout, then two FreeType passes), and a report figure has 30-90 of them: two
thirds of the report's time. Here an axes marked with :func:`light_axes` keeps its matplotlib
locator and formatter (so ``ax.get_xticklabels()`` and every limit still work), but its
``Axis`` artists are hidden; when the figure is encoded (:func:`light_png`), its tick marks and
grid lines are two line artists per axes, and every text of the figure (tick labels, axis
labels, ``ax.text``/``fig.text``, titles, the :func:`legend` labels) is drawn by Pillow onto
the Agg pixels, with the same font (matplotlib's DejaVu Sans), sizes, alignments and colours.
Encode such a figure with :func:`light_png` (``figures.figure_png``): ``savefig`` would draw
its data without these words. A figure without light axes or legend is encoded as
matplotlib draws it (the QC images).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import TICKDOWN, TICKLEFT, MarkerStyle
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedFormatter, FixedLocator

#: matplotlib's defaults for what is drawn here (points).
TICK_LENGTH, TICK_PAD, LABEL_PAD, LINESPACING = 3.5, 3.5, 4.0, 1.2
GRID_COLOUR, GRID_LW = "#b0b0b0", 0.8


@dataclass
class _Text:
    x: float
    y: float
    transform: Any
    text: str
    size: float
    ha: str = "center"
    va: str = "baseline"
    rotation: float = 0.0
    colour: Any = "black"
    dx: float = 0.0  # offsets in points, applied after the transform
    dy: float = 0.0
    role: str = "text"  # tick, axis (label), legend or text: for text_boxes


@dataclass
class _Axes:
    ax: Any
    xlabels: bool
    ylabels: bool
    xgrid: bool
    ygrid: bool
    xsize: float
    ysize: float


@dataclass
class _Layer:
    axes: list[_Axes] = field(default_factory=list)
    texts: list[_Text] = field(default_factory=list)


#: The figure attribute that holds its light layer (on the figure, not in a module-level
#: table: the layer refers to the figure's axes, so it must live and die with the figure).
_ATTR = "_cordwatch_light_layer"


def _layer(fig: Figure) -> _Layer:
    layer = getattr(fig, _ATTR, None)
    if layer is None:
        layer = _Layer()
        setattr(fig, _ATTR, layer)
    return layer


def light_axes(
    ax: Any,
    *,
    xlabels: bool = True,
    ylabels: bool = True,
    xgrid: bool = False,
    ygrid: bool = False,
    xsize: float = 10.0,
    ysize: float = 10.0,
) -> None:
    """Draw ``ax``'s axes light: tick marks (outwards, on the bottom and left spines) and
    labels (``xsize``/``ysize`` points; ``xlabels=False`` keeps the marks only, as on the
    upper panels of a shared axis), axis labels as set by ``set_xlabel``/``set_ylabel``,
    optional grid lines. The locators and formatters stay matplotlib's."""
    ax.xaxis.set_visible(False)
    ax.yaxis.set_visible(False)
    _layer(ax.get_figure()).axes.append(_Axes(ax, xlabels, ylabels, xgrid, ygrid, xsize, ysize))


def set_ticks(ax: Any, which: str, positions: Any, labels: Sequence[str]) -> None:
    """``ax.set_xticks(positions, labels)`` without creating matplotlib ``Tick`` objects."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(FixedLocator([float(v) for v in positions]))
    axis.set_major_formatter(FixedFormatter([str(s) for s in labels]))


def text(
    fig: Figure, x: float, y: float, s: str, *, transform: Any, size: float, **kw: Any
) -> None:
    """A text drawn at encoding time (``ha``, ``va``, ``rotation``, ``colour``, ``dx``/``dy``
    in points, as :class:`matplotlib.text.Text` reads them)."""
    _layer(fig).texts.append(_Text(x, y, transform, s, size, **kw))


def legend(
    fig: Figure,
    entries: Sequence[tuple[str, dict[str, Any]]],
    *,
    loc: str,
    ncols: int = 1,
    size: float = 8.0,
    title: str | None = None,
) -> None:
    """A figure legend outside the axes: ``loc`` ``lower center``/``upper center`` (rows of
    ``ncols`` entries, wrapped when wider than the figure) or ``center right`` (one column,
    under ``title``). Entries are ``(label, spec)``, spec ``{"kind": "line"|"patch"|"marker",
    **matplotlib properties}`` (a line may carry a ``marker``)."""
    width, height = fig.get_size_inches()
    em = size / 72
    font = _font(size * fig.dpi / 72)
    widths = [font.getlength(label) / fig.dpi for label, _ in entries]
    handle, pad, colsep, row = 2.0 * em, 0.8 * em, 2.0 * em, 1.5 * em
    items = [handle + pad + w for w in widths]
    if loc == "center right":
        box_w = max(items, default=0.0)
        top = height / 2 + (len(entries) + bool(title)) * row / 2
        x_left = width - 0.5 * em - box_w
        if title:
            text(
                fig,
                x_left + box_w / 2,
                top - row / 2,
                title,
                transform=fig.dpi_scale_trans,
                size=size,
                va="center",
                role="legend",
            )
            top -= row
        placed = [(x_left, top - (i + 0.5) * row) for i in range(len(entries))]
    else:
        per_row = max(1, min(ncols, len(items)))
        while True:  # wrap rows wider than the figure: a legend hides nothing
            rows = [items[i : i + per_row] for i in range(0, len(items), per_row)]
            col_w = [max(r[c] for r in rows if c < len(r)) for c in range(per_row)]
            total = sum(col_w) + colsep * (per_row - 1)
            if total <= width - 2 * em or per_row == 1:
                break
            per_row -= 1
        col_x = [(width - total) / 2 + sum(col_w[:c]) + colsep * c for c in range(per_row)]
        n_rows = len(rows)
        if loc == "lower center":
            first = 0.9 * em + (n_rows - 0.5) * row
        else:  # upper center
            first = height - 0.9 * em - 0.5 * row
        placed = [(col_x[j % per_row], first - (j // per_row) * row) for j in range(len(items))]
    for (label, spec), (x, y) in zip(entries, placed, strict=True):
        _handle(fig, dict(spec), x, y, handle, em)
        text(
            fig,
            x + handle + pad,
            y,
            label,
            transform=fig.dpi_scale_trans,
            size=size,
            ha="left",
            va="center",
            role="legend",
        )


def _handle(
    fig: Figure, spec: dict[str, Any], x: float, y: float, length: float, em: float
) -> None:
    kind = spec.pop("kind")
    tr = fig.dpi_scale_trans
    if kind == "patch":
        fig.add_artist(Rectangle((x, y - 0.35 * em), length, 0.7 * em, transform=tr, lw=0, **spec))
    elif kind == "marker":
        spec.setdefault("ms", 5)
        fig.add_artist(Line2D([x + length / 2], [y], ls="none", marker="o", transform=tr, **spec))
    else:
        marker = spec.pop("marker", None)
        ms = spec.pop("ms", None)
        fig.add_artist(Line2D([x, x + length], [y, y], transform=tr, **spec))
        if marker:
            colour = spec.get("color", "black")
            fig.add_artist(
                Line2D(
                    [x + length / 2],
                    [y],
                    ls="none",
                    marker=marker,
                    ms=ms,
                    color=colour,
                    transform=tr,
                )
            )


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


@cache
def _font_path() -> str:
    from matplotlib.font_manager import FontProperties, findfont

    return str(findfont(FontProperties()))


@cache
def _font(px: float) -> Any:
    from PIL import ImageFont

    return ImageFont.truetype(_font_path(), px, layout_engine=ImageFont.Layout.BASIC)


def _visible_ticks(axis: Any) -> tuple[np.ndarray, list[str]]:
    locs = np.asarray(axis.get_major_locator()(), dtype=float)
    labels = list(axis.get_major_formatter().format_ticks(locs))
    lo, hi = sorted(axis.get_view_interval())
    tol = 1e-10 * max(hi - lo, 1e-300)
    keep = (locs >= lo - tol) & (locs <= hi + tol)
    return locs[keep], [s for s, k in zip(labels, keep, strict=True) if k]


@lru_cache(maxsize=4096)
def _block(font: Any, s: str) -> tuple[float, float]:
    """Width and height (pixels) of a (multi-line) text (tick labels repeat: cached)."""
    ascent, descent = font.getmetrics()
    lines = s.split("\n")
    pitch = LINESPACING * font.size
    return max(font.getlength(ln) for ln in lines), (len(lines) - 1) * pitch + ascent + descent


def _axes_artists(spec: _Axes, fig: Figure) -> tuple[list[Any], list[_Text]]:
    """The tick marks, grid lines and texts of one light axes, for the current limits."""
    ax = spec.ax
    artists: list[Any] = []
    texts: list[_Text] = []
    pt = fig.dpi / 72
    xs, xl = _visible_ticks(ax.xaxis)
    ys, yl = _visible_ticks(ax.yaxis)
    for which, locs, tr, marker in (
        ("x", xs, ax.get_xaxis_transform(), MarkerStyle(TICKDOWN)),
        ("y", ys, ax.get_yaxis_transform(), MarkerStyle(TICKLEFT)),
    ):
        if not len(locs):
            continue
        zeros = np.zeros_like(locs)
        xy = (locs, zeros) if which == "x" else (zeros, locs)
        artists.append(
            Line2D(
                *xy,
                transform=tr,
                ls="none",
                marker=marker,
                ms=TICK_LENGTH,
                mew=0.8,
                color="black",
                clip_on=False,
                zorder=2.5,
            )
        )
        if spec.xgrid if which == "x" else spec.ygrid:
            segs = [[(v, 0), (v, 1)] if which == "x" else [(0, v), (1, v)] for v in locs]
            artists.append(
                LineCollection(
                    segs, transform=tr, colors=GRID_COLOUR, lw=GRID_LW, alpha=0.3, zorder=1.5
                )
            )
    off = TICK_LENGTH + TICK_PAD
    xfont, yfont = _font(spec.xsize * pt), _font(spec.ysize * pt)
    x_height = 0.0
    if spec.xlabels:
        for v, s in zip(xs, xl, strict=True):
            texts.append(
                _Text(v, 0, ax.get_xaxis_transform(), s, spec.xsize, va="top", dy=-off, role="tick")
            )
        x_height = max((_block(xfont, s)[1] for s in xl), default=0.0) / pt
    y_width = 0.0
    if spec.ylabels:
        for v, s in zip(ys, yl, strict=True):
            texts.append(
                _Text(
                    0,
                    v,
                    ax.get_yaxis_transform(),
                    s,
                    spec.ysize,
                    ha="right",
                    va="center_baseline",
                    dx=-off,
                    role="tick",
                )
            )
        y_width = max((_block(yfont, s)[0] for s in yl), default=0.0) / pt
        offset = ax.yaxis.get_major_formatter()
        shift = offset.get_offset() if hasattr(offset, "get_offset") else ""
        if shift:
            texts.append(
                _Text(
                    0, 1, ax.transAxes, shift, spec.ysize, ha="left", va="bottom", dy=2, role="tick"
                )
            )
    label = ax.xaxis.label
    if label.get_text() and spec.xlabels:
        texts.append(
            _Text(
                0.5,
                0,
                ax.transAxes,
                label.get_text(),
                label.get_fontsize(),
                va="top",
                dy=-(off + x_height + LABEL_PAD),
                role="axis",
            )
        )
    label = ax.yaxis.label
    if label.get_text():
        texts.append(
            _Text(
                0,
                0.5,
                ax.transAxes,
                label.get_text(),
                label.get_fontsize(),
                ha="right",
                va="center",
                rotation=90,
                dx=-(off + y_width + LABEL_PAD),
                role="axis",
            )
        )
    return artists, texts


def _mpl_texts(fig: Figure) -> list[Any]:
    """The figure's visible matplotlib texts (``ax.text``, ``fig.text``, axes titles)."""
    out = [t for t in fig.texts if t.get_visible() and t.get_text()]
    for ax in fig.axes:
        out += [t for t in (*ax.texts, ax.title) if t.get_visible() and t.get_text()]
    return out


def _as_text(t: Any) -> _Text:
    x, y = t.get_unitless_position()
    return _Text(
        x,
        y,
        t.get_transform(),
        t.get_text(),
        t.get_fontsize(),
        ha=t.get_horizontalalignment(),
        va=t.get_verticalalignment(),
        rotation=t.get_rotation(),
        colour=t.get_color(),
    )


def _texts(fig: Figure) -> tuple[list[tuple[Any, Any]], list[_Text], list[Any]]:
    """What encoding adds to a figure: ``(axes, artist)`` pairs (tick marks, grid lines),
    every text to draw, and the matplotlib texts that Pillow draws instead."""
    layer = getattr(fig, _ATTR, None)
    if layer is None:
        return [], [], []
    added: list[tuple[Any, Any]] = []
    texts: list[_Text] = []
    for spec in layer.axes:
        spec.ax.get_xlim(), spec.ax.get_ylim()  # autoscale now, before adding artists
        artists, more = _axes_artists(spec, fig)
        added += [(spec.ax, a) for a in artists]
        texts += more
    hidden = _mpl_texts(fig)
    texts += [_as_text(t) for t in hidden]
    texts += layer.texts
    return added, [t for t in texts if t.text.strip()], hidden


def text_boxes(fig: Figure) -> list[tuple[str, str, tuple[float, float, float, float]]]:
    """``(role, text, (left, top, right, bottom))`` in pixels of the PNG (y down) for every
    text that :func:`light_png` draws; role is ``tick``, ``axis`` (an axis label),
    ``legend`` or ``text``. For tests: nothing cut off, nothing on top of another."""
    _, texts, _ = _texts(fig)
    height = fig.bbox.height
    out = []
    for t in texts:
        placed = _place(t, fig.dpi, height)
        if placed is not None:
            left, top, w, h = placed[1:5]
            out.append((t.role, t.text, (left, top, left + w, top + h)))
    return out


def light_png(fig: Figure, compress_level: int = 1) -> bytes:
    """PNG bytes of a figure: matplotlib (Agg) draws everything but its texts and light axes,
    Pillow draws those (a figure without light axes or legend: as matplotlib draws it)."""
    from PIL import Image, ImageDraw

    added, texts, hidden = _texts(fig)
    for ax, artist in added:
        ax.add_artist(artist)
    for t in hidden:
        t.set_visible(False)
    canvas = FigureCanvasAgg(fig)
    try:
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        height, width = rgba.shape[:2]
        img = Image.frombuffer("RGBA", (width, height), rgba, "raw", "RGBA", 0, 1)
        img = img.convert("RGB") if rgba[..., 3].min() == 255 else img.copy()
        draw = ImageDraw.Draw(img)
        for t in texts:
            placed = _place(t, fig.dpi, img.height)
            if placed is not None:
                _paint(img, draw, t, *placed)
        return png_bytes(np.asarray(img), compress_level)
    finally:
        for t in hidden:
            t.set_visible(True)
        for _, artist in added:
            artist.remove()


def png_bytes(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """A PNG of an ``(height, width, 3 or 4)`` uint8 array: every row unfiltered, zlib at
    ``compress_level``. For these flat-coloured charts that is half the time of Pillow's
    adaptive row filters (which pay for photographs) and files ~15 % smaller."""
    height, width, channels = pixels.shape
    rows = np.empty((height, 1 + width * channels), dtype=np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = pixels.reshape(height, -1)
    colour_type = {3: 2, 4: 6}[channels]  # truecolour, truecolour with alpha

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)),
            chunk(b"IEND", b""),
        )
    )


def _place(t: _Text, dpi: float, height: float) -> tuple[Any, float, float, float, float] | None:
    """``(font, left, top, width, height)`` of a text's box in image pixels (y down), as
    matplotlib aligns it (``ha``/``va`` on the rotated box)."""
    font = _font(t.size * dpi / 72)
    x, y = t.transform.transform((t.x, t.y))
    x += t.dx * dpi / 72
    y = height - (y + t.dy * dpi / 72)
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    w, h = _block(font, t.text)
    bw, bh = (h, w) if _rotated(t) else (w, h)
    left = x - {"left": 0.0, "center": bw / 2, "right": bw}[t.ha]
    descent = font.getmetrics()[1]
    shift = {"top": 0.0, "center": bh / 2, "center_baseline": bh / 2, "bottom": bh}
    top = y - shift.get(t.va, bh - descent)  # else baseline
    return font, left, top, bw, bh


def _rotated(t: _Text) -> bool:
    return abs(t.rotation % 180 - 90) < 1


def _paint(img: Any, draw: Any, t: _Text, font: Any, left: float, top: float, *_: float) -> None:
    from PIL import Image, ImageDraw

    colour = tuple(round(255 * c) for c in to_rgba(t.colour)[:3])
    lines = t.text.split("\n")
    pitch = LINESPACING * font.size
    w, h = _block(font, t.text)
    if not _rotated(t):
        for i, line in enumerate(lines):
            lw = font.getlength(line)
            lx = left + {"left": 0.0, "center": (w - lw) / 2, "right": w - lw}[t.ha]
            draw.text((lx, top + i * pitch), line, font=font, fill=colour, anchor="la")
        return
    mask = Image.new("L", (math.ceil(w), math.ceil(h)), 0)
    md = ImageDraw.Draw(mask)
    for i, line in enumerate(lines):
        md.text(((w - font.getlength(line)) / 2, i * pitch), line, font=font, fill=255, anchor="la")
    img.paste(colour, (round(left), round(top)), mask.transpose(Image.Transpose.ROTATE_90))
