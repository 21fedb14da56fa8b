"""Reading NIfTI volumes at the edge: validation with one-line errors, reorientation to RPI.

Everything past this module works on RPI arrays (nibabel axcodes L, A, S) and voxel sizes in
mm; nothing else in cordwatch touches nibabel for reading segmentations.
"""

from __future__ import annotations

import gzip
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registry.errors import InputError

# nibabel.nifti1 imports pydicom whenever it is installed (0.15-0.3 s, half of nibabel's import)
# only to parse DICOM header extensions, which cordwatch never reads: block that one import
# while nibabel loads (such extensions then stay raw bytes); a later `import pydicom` works.
_BLOCK_PYDICOM = "pydicom" not in sys.modules and "nibabel" not in sys.modules
if _BLOCK_PYDICOM:
    sys.modules["pydicom"] = None  # type: ignore[assignment]
try:
    import nibabel as nib
    from nibabel import orientations
finally:
    if _BLOCK_PYDICOM and "pydicom" in sys.modules and sys.modules["pydicom"] is None:
        del sys.modules["pydicom"]

RPI = ("L", "A", "S")


@dataclass(frozen=True)
class Volume:
    """An RPI-oriented 3D volume with its voxel sizes (mm) and RPI affine."""

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    path: Path


def load_volume(path: str | Path) -> Volume:
    """Load a 3D NIfTI (a trailing 4th axis of length 1 is dropped) and reorient it to RPI.

    Raises InputError naming the file for: missing file, not NIfTI, corrupted gzip, 4D data,
    NaN or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"not a NIfTI image ({type(img).__name__})", path)
        data = np.asanyarray(img.dataobj)
    except nib.filebasedimages.ImageFileError as err:
        raise InputError("not a NIfTI image", path) from err
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        raise InputError(f"unreadable or corrupted file ({err})", path) from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"expected a 3D image, got shape {data.shape}", path)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InputError("contains NaN or infinite values", path)
    current = orientations.io_orientation(img.affine)
    wanted = orientations.axcodes2ornt(RPI)
    transform = orientations.ornt_transform(current, wanted)
    data = orientations.apply_orientation(data, transform)
    affine = img.affine @ orientations.inv_ornt_aff(transform, img.shape[:3])
    sx, sy, sz = (float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return Volume(np.ascontiguousarray(data), (sx, sy, sz), affine, path)


def load_segmentation(path: str | Path) -> Volume:
    """A cord segmentation: binary or soft, values in [0, 1], not empty."""
    vol = load_volume(path)
    data = vol.data
    if data.size == 0 or not np.any(data > 0):
        raise InputError("segmentation is empty (no voxel above 0)", path)
    lo, hi = float(data.min()), float(data.max())
    if lo < 0 or hi > 1:
        raise InputError(
            f"segmentation values must lie in [0, 1], found [{lo:g}, {hi:g}] "
            "(a labelled segmentation goes to --vertfile)",
            path,
        )
    # Integer masks stay integer (4x less memory); the morphometry crops before converting.
    if data.dtype.kind == "f":
        data = data.astype(np.float32, copy=False)
    return Volume(data, vol.spacing, vol.affine, vol.path)


def load_labels(path: str | Path, like: Volume) -> Volume:
    """A label volume (vertebral levels or discs) on the same grid as ``like``."""
    vol = load_volume(path)
    if vol.data.shape != like.data.shape:
        raise InputError(
            f"shape {vol.data.shape} differs from the segmentation's {like.data.shape} "
            f"({like.path.name})",
            path,
        )
    if not np.allclose(vol.affine, like.affine, atol=1e-3):
        raise InputError(f"affine differs from the segmentation's ({like.path.name})", path)
    data = vol.data
    if data.dtype.kind == "f":
        if np.any(np.abs(data - np.rint(data)) > 1e-3):
            raise InputError("label values must be integers", path)
        data = np.rint(data)
    if data.min() < 0:
        raise InputError("label values must not be negative", path)
    if not np.any(data > 0):
        raise InputError("label image is empty", path)
    if data.dtype.kind == "f":
        data = data.astype(np.int32)
    return Volume(data, vol.spacing, vol.affine, vol.path)
