"""Run an nnU-Net model the way Spinal Cord Toolbox's ``sct_deepseg`` runs it.

What SCT does (``spinalcordtoolbox/deepseg/inference.py::segment_nnunet`` and
``segment_non_ivadomed``, ``models.py::load_crop_metadata``; SCT commit 3b3c5b2), and what this
module does in its place, in pure numpy/nibabel:

1. Crop (models with ``crop_metadata.json``). SCT runs ``sc_crop.detect`` on the image with the
   model's six paddings, then ``sc_crop.crop``, in the image's stored orientation. The detector
   (a YOLO ONNX model) downloads its weights at run time, which is impossible here, and would
   let detector drift pass for model drift. The box is therefore computed from the cohort's
   ground-truth cord mask (``box_source="gt_seg"``), identical for both versions of a check, and
   padded exactly as ``sc_crop.crop.BBox3D.pad`` pads a detection: in LAS index space, each face
   by ``ceil(pad_mm / voxel_mm)`` voxels (the Right face by ``pad_right``, Posterior by
   ``pad_posterior``, Inferior by ``pad_inferior``...), clamped to the image. A box file per
   image (``box_source="box_file"``, JSON with SCT's ``-box-*`` names ``xmin ... zmax``,
   inclusive voxel indices of the stored image) overrides it.
   sc-crop 0.12.1's ``crop(img, bbox)`` does accept a given box, but the package is not used:
   it declares ultralytics and onnxruntime as hard dependencies, and its ``uncrop`` casts to
   uint8, which would destroy soft (probability) outputs.
2. Reorient to the model orientation (``image_orientation`` in dataset.json, SCT's "from"
   convention: ``RPI`` is nibabel's ``L, A, S``; default ``LPI``), run nnU-Net, reorient back.
3. Uncrop: the prediction is placed into a zero volume of the full image.
4. Post-process on the full image, as ``segment_non_ivadomed`` does: values below 0.001 are set
   to 0 and only the largest connected object is kept (``sct_deepseg spinalcord`` forces
   ``keep_largest=1``; here: a model whose only foreground label is the cord); holes are filled
   only when asked (SCT's ``-fill-holes`` defaults to 0).

Fold ensembles are averaged by nnU-Net itself (the predictor holds every fold's weights and
averages their logits), as SCT's cord model runs. ``soft`` output keeps the probabilities,
measured as soft masks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from registry.errors import InputError
from registry.package import (
    CROP_METADATA,
    SCT_DEFAULT_ORIENTATION,
    SCT_PAD_KEYS,
    read_crop_metadata,
    sct_orientation,
)

BOX_KEYS = ("xmin", "xmax", "ymin", "ymax", "zmin", "zmax")
#: Foreground label names that make a model a cord model (SCT keeps its largest component).
CORD_LABELS = frozenset({"sc", "spinal_cord", "spinalcord", "cord", "sc_seg"})
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "I": "S", "S": "I"}
Predict = Callable[[np.ndarray, tuple[float, float, float]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SctPipeline:
    """SCT's pre- and post-processing of one model: part of the inference settings, so the
    cache key and the provenance say which pipeline ran (a change of padding re-runs)."""

    orientation: str  # SCT code of the model orientation, e.g. "RPI"
    crop_padding: tuple[tuple[str, float], ...] | None = None  # SCT key -> mm; None: no crop
    box_source: str = "gt_seg"  # "gt_seg" (cohort ground truth) or "box_file"
    keep_largest: bool = True
    fill_holes: bool = False
    kind: str = "sct-nnunet"

    @property
    def cropped(self) -> bool:
        return self.crop_padding is not None

    def padding(self) -> dict[str, float]:
        return dict(self.crop_padding or ())


def sct_to_axcodes(code: str) -> tuple[str, str, str]:
    """SCT's "from" orientation code -> nibabel's axis codes ("to" convention).

    >>> sct_to_axcodes("RPI"), sct_to_axcodes("LPI")
    (('L', 'A', 'S'), ('R', 'A', 'S'))
    """
    a, b, c = (_OPPOSITE[ch] for ch in code.upper())
    return a, b, c


def _results_dir(package_dir: Path) -> Path:
    from registry.nnunet import results_folder

    return results_folder(package_dir)


def pipeline_for_package(
    package_dir: str | Path, *, box_source: str = "gt_seg", fill_holes: bool = False
) -> SctPipeline | None:
    """The SCT pipeline of a package, or None for a plain nnU-Net package (run as stored).

    A package is an SCT package when it has ``crop_metadata.json`` (at its root or in the
    results folder) or ``image_orientation`` in dataset.json.
    """
    if box_source not in ("gt_seg", "box_file"):
        raise InputError(f"crop box source must be gt_seg or box_file, not {box_source!r}")
    package_dir = Path(package_dir)
    results = _results_dir(package_dir)
    crop_file = next(
        (d / CROP_METADATA for d in (package_dir, results) if (d / CROP_METADATA).is_file()),
        None,
    )
    try:
        dataset = json.loads((results / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"unreadable dataset.json: {err}", results / "dataset.json") from err
    if crop_file is None and "image_orientation" not in dataset:
        return None
    orientation = (
        sct_orientation(dataset["image_orientation"], results / "dataset.json")
        if "image_orientation" in dataset
        else SCT_DEFAULT_ORIENTATION
    )
    padding = None
    if crop_file is not None:
        pads = read_crop_metadata(crop_file)
        padding = tuple((k, pads[k]) for k in SCT_PAD_KEYS)
    labels = {k for k in (dataset.get("labels") or {}) if k != "background"}
    return SctPipeline(
        orientation=orientation,
        crop_padding=padding,
        box_source=box_source if padding is not None else "none",
        keep_largest=len(labels) == 1 and labels <= CORD_LABELS,
        fill_holes=fill_holes,
    )


# ------------------------------------------------------------------------ orientation -----


def _ornt(affine: np.ndarray, axcodes: tuple[str, str, str]) -> np.ndarray:
    import nibabel as nib

    return nib.orientations.ornt_transform(
        nib.io_orientation(affine), nib.orientations.axcodes2ornt(axcodes)
    )


def reorient(data: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str]) -> np.ndarray:
    """``data`` (stored with ``affine``) as an array in ``axcodes`` (voxels moved, not
    resampled: flips and axis permutations only, as SCT's ``change_orientation``)."""
    import nibabel as nib

    return np.ascontiguousarray(nib.orientations.apply_orientation(data, _ornt(affine, axcodes)))


def restore(data: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str]) -> np.ndarray:
    """Inverse of :func:`reorient`: an ``axcodes`` array back to ``affine``'s orientation."""
    import nibabel as nib

    back = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(axcodes), nib.io_orientation(affine)
    )
    return np.ascontiguousarray(nib.orientations.apply_orientation(data, back))


def reoriented_spacing(
    spacing: tuple[float, float, float], affine: np.ndarray, axcodes: tuple[str, str, str]
) -> tuple[float, float, float]:
    """The voxel sizes after :func:`reorient` (permuted with the axes)."""
    ornt = _ornt(affine, axcodes)
    out = [0.0, 0.0, 0.0]
    for src, (dst, _flip) in enumerate(ornt):
        out[int(dst)] = float(spacing[src])
    return out[0], out[1], out[2]


# --------------------------------------------------------------------------- crop box -----


@dataclass(frozen=True)
class Box:
    """Inclusive voxel indices in the stored image's index space (sc-crop's ``bbox`` keys)."""

    xmin: int
    xmax: int
    ymin: int
    ymax: int
    zmin: int
    zmax: int

    def slices(self) -> tuple[slice, slice, slice]:
        return (
            slice(self.xmin, self.xmax + 1),
            slice(self.ymin, self.ymax + 1),
            slice(self.zmin, self.zmax + 1),
        )

    def as_dict(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in BOX_KEYS}


def box_from_mask(
    mask: np.ndarray,
    affine: np.ndarray,
    spacing: tuple[float, float, float],
    padding: Mapping[str, float],
) -> Box:
    """The ground-truth cord's bounding box padded by the model's paddings (mm), as sc-crop
    pads a detection (``BBox3D.pad`` in LAS index space, clamped), in the mask's stored
    index space.

    >>> m = np.zeros((10, 10, 10)); m[4:6, 4:6, 3:7] = 1
    >>> pads = dict.fromkeys(SCT_PAD_KEYS, 1.0) | {"pad_superior": 2.5}
    >>> box_from_mask(m, np.diag([-1.0, 1, 1, 1]), (1.0, 1.0, 1.0), pads).as_dict()
    {'xmin': 3, 'xmax': 6, 'ymin': 3, 'ymax': 6, 'zmin': 2, 'zmax': 9}
    """
    import nibabel as nib

    las = ("L", "A", "S")
    fg = reorient(np.asarray(mask) > 0, affine, las)
    if not fg.any():
        raise InputError("the ground-truth cord mask is empty: no crop box")
    zooms = reoriented_spacing(spacing, affine, las)
    lo_hi = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(fg.any(axis=other))
        lo_hi.append((int(idx[0]), int(idx[-1]) + 1))  # [lo, hi) like BBox3D

    def vox(key: str, zoom: float) -> int:
        return math.ceil(float(padding[key]) / zoom)

    (rl1, rl2), (ap1, ap2), (z1, z2) = lo_hi
    shape = fg.shape
    padded = [
        (max(0, rl1 - vox("pad_right", zooms[0])), min(shape[0], rl2 + vox("pad_left", zooms[0]))),
        (
            max(0, ap1 - vox("pad_posterior", zooms[1])),
            min(shape[1], ap2 + vox("pad_anterior", zooms[1])),
        ),
        (
            max(0, z1 - vox("pad_inferior", zooms[2])),
            min(shape[2], z2 + vox("pad_superior", zooms[2])),
        ),
    ]
    # Back to the stored index space (BBox3D.reorient): a flipped axis maps [lo, hi) to
    # [n - hi, n - lo).
    back = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(las), nib.io_orientation(affine)
    )
    out: list[tuple[int, int]] = [(0, 0)] * 3
    for src, (dst, flip) in enumerate(back):
        n = shape[src]
        lo, hi = padded[src]
        out[int(dst)] = (lo, hi) if flip == 1 else (n - hi, n - lo)
    (x1, x2), (y1, y2), (w1, w2) = out
    return Box(x1, x2 - 1, y1, y2 - 1, w1, w2 - 1)


def read_box_file(path: Path, shape: tuple[int, ...]) -> Box:
    """A crop box from a JSON file with SCT's ``-box-*`` names (inclusive voxel indices)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError("crop box file not found", path) from err
    except (OSError, ValueError) as err:
        raise InputError(f"unreadable crop box file: {err}", path) from err
    if not isinstance(data, dict) or any(k not in data for k in BOX_KEYS):
        raise InputError(f"a crop box file needs the keys {', '.join(BOX_KEYS)}", path)
    values = [data[k] for k in BOX_KEYS]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise InputError("crop box indices must be integers", path)
    box = Box(*values)
    for axis, (lo, hi) in enumerate(
        ((box.xmin, box.xmax), (box.ymin, box.ymax), (box.zmin, box.zmax))
    ):
        if not 0 <= lo <= hi < shape[axis]:
            raise InputError(
                f"crop box {BOX_KEYS[2 * axis]}..{BOX_KEYS[2 * axis + 1]} = {lo}..{hi} is "
                f"inverted or outside the image (size {shape[axis]})",
                path,
            )
    return box


def read_crop_box_map(path: Path, keys: Collection[str]) -> dict[str, Path]:
    """``drift check --crop-boxes FILE``: a JSON object mapping a cohort image
    (``"SUBJECT/CONTRAST"``) to its box file (SCT's ``-box-*`` names; a path relative to FILE's
    folder), which replaces the ground-truth box for that image. Every entry is checked here:
    a key of the cohort, a readable box file with the six integer indices (the extent against
    the image is checked when the image is run)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError("crop box list not found", path) from err
    except (OSError, ValueError) as err:
        raise InputError(f"unreadable crop box list: {err}", path) from err
    if not isinstance(data, dict) or not data:
        raise InputError('a crop box list is a JSON object {"SUBJECT/CONTRAST": "box.json"}', path)
    out: dict[str, Path] = {}
    for key, value in data.items():
        if key not in keys:
            raise InputError(f"crop box list names {key!r}, which is not in the cohort", path)
        if not isinstance(value, str) or not value.endswith(".json"):
            raise InputError(f"crop box of {key!r} must be the path of a .json box file", path)
        box = (path.parent / value).resolve()
        try:
            read_box_file(box, (2**31, 2**31, 2**31))
        except InputError as err:
            raise InputError(f"crop box of {key!r}: {err}", path) from err
        out[key] = box
    return out


def crop_box(
    source: Path, pipeline: SctPipeline, img: Any, spacing: tuple[float, float, float]
) -> Box:
    """The box for one image: from its ground-truth mask (same grid) or a box file
    (``.json``), which overrides the mask."""
    if source.name.endswith(".json"):
        return read_box_file(source, img.shape[:3])
    import nibabel as nib

    try:
        mask_img = nib.load(str(source))
        if not isinstance(mask_img, nib.Nifti1Image | nib.Nifti2Image):
            raise InputError("ground-truth mask is not a NIfTI image", source)
        mask = np.asanyarray(mask_img.dataobj)
    except FileNotFoundError as err:
        raise InputError("ground-truth mask for the crop box not found", source) from err
    except InputError:
        raise
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"unreadable ground-truth mask: {first}", source) from err
    if mask.ndim == 4 and mask.shape[3] == 1:
        mask = mask[..., 0]
    if mask.shape != tuple(img.shape[:3]) or not np.allclose(
        mask_img.affine, img.affine, atol=1e-3
    ):
        raise InputError("ground-truth mask is not on the image's grid (shape or affine)", source)
    try:
        return box_from_mask(mask, np.asarray(img.affine), spacing, pipeline.padding())
    except InputError as err:
        raise InputError(err.message, source) from err


# ----------------------------------------------------------------------- post-process -----


def keep_largest_component(data: np.ndarray) -> np.ndarray:
    """SCT's ``keep_largest_object`` after its ``data < 0.001 -> 0``: zero every connected
    object (scipy's default 6-connectivity) but the largest; soft values are kept.

    >>> a = np.zeros((5, 1, 1)); a[0] = a[2:5] = 1
    >>> keep_largest_component(a).ravel().tolist()
    [0.0, 0.0, 1.0, 1.0, 1.0]
    """
    from scipy.ndimage import label

    out = np.array(data, copy=True)
    out[out < 0.001] = 0
    labeled, n = label(out)
    if n > 1:
        largest = int(np.bincount(labeled.ravel())[1:].argmax()) + 1
        out[labeled != largest] = 0
    return out


def fill_holes(binary: np.ndarray) -> np.ndarray:
    """SCT's ``fill_holes`` (``binary_fill_holes`` with a full 3x3x3 structuring element)."""
    from scipy.ndimage import binary_fill_holes

    filled = binary_fill_holes(np.asarray(binary) > 0, structure=np.ones((3, 3, 3)))
    return np.asarray(filled, dtype=np.uint8)


# -------------------------------------------------------------------------- inference -----


def predict_image(
    predict: Predict,
    img: Any,
    data: np.ndarray,
    spacing: tuple[float, float, float],
    pipeline: SctPipeline,
    crop_source: Path | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Segment one image with SCT's semantics. ``predict(data, spacing)`` runs the network on
    an (x, y, z) array and returns (soft, binary) of its shape.

    Returns the full-size soft and binary outputs in the stored orientation, and what was
    done (the crop box), for the provenance sidecar.
    """
    affine = np.asarray(img.affine)
    info: dict[str, Any] = {"orientation": pipeline.orientation}
    window = data
    if pipeline.cropped:
        if crop_source is None:
            raise InputError(
                "this model crops around the cord (crop_metadata.json) but the image has "
                "neither a ground-truth cord mask nor a crop box file"
            )
        box = crop_box(crop_source, pipeline, img, spacing)
        window = data[box.slices()]
        info["crop_box"] = box.as_dict()
    axcodes = sct_to_axcodes(pipeline.orientation)
    # Cropping only translates the affine: the crop has the image's orientation.
    model_data = reorient(window, affine, axcodes)
    soft_m, binary_m = predict(model_data, reoriented_spacing(spacing, affine, axcodes))
    soft_w = restore(np.asarray(soft_m, dtype=np.float32), affine, axcodes)
    binary_w = restore(np.asarray(binary_m, dtype=np.uint8), affine, axcodes)
    if pipeline.cropped:
        soft = np.zeros(data.shape, dtype=np.float32)
        binary = np.zeros(data.shape, dtype=np.uint8)
        soft[box.slices()] = soft_w
        binary[box.slices()] = binary_w
    else:
        soft, binary = soft_w, binary_w
    if pipeline.keep_largest:
        soft = keep_largest_component(soft).astype(np.float32)
        binary = keep_largest_component(binary).astype(np.uint8)
    if pipeline.fill_holes:
        binary = fill_holes(binary)
    return soft, binary, info


class SctPredictor:
    """An nnU-Net predictor wrapped in SCT's pipeline (what the cohort runner calls)."""

    def __init__(self, predictor: Any, pipeline: SctPipeline) -> None:
        self.predictor = predictor
        self.pipeline = pipeline

    @property
    def device(self) -> Any:
        return self.predictor.device

    def predict_image(
        self,
        image: Path,
        img: Any,
        data: np.ndarray,
        spacing: tuple[float, float, float],
        crop_source: Path | None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        from registry import nnunet

        def run(array: np.ndarray, sp: tuple[float, float, float]) -> tuple[Any, Any]:
            return nnunet.predict_array(self.predictor, array, sp)

        return predict_image(run, img, data, spacing, self.pipeline, crop_source)
