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
#: Largest volume read (voxels): a whole-spine 0.5 mm scan is ~2e8; 2**30 voxels of float32
#: are 4 GiB. A header claiming more is refused before any data is read.
MAX_VOXELS = 1 << 30


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _gzip_size_mod_32(path: Path) -> int | None:
    """ISIZE of a gzip file: its uncompressed size modulo 2**32 (last member), or None."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return None
        fh.seek(0, 2)
        if fh.tell() < 18:
            return None
        fh.seek(-4, 2)
        return int.from_bytes(fh.read(4), "little")


def check_data_size(img: nib.Nifti1Image | nib.Nifti2Image, path: Path) -> None:
    """Refuse a header whose data cannot be in the file, before reading any of it.

    The shape times the item size (plus the data offset) must be at most :data:`MAX_VOXELS`
    voxels and must fit in the file: its size for ``.nii``, the gzip trailer's uncompressed
    size for ``.nii.gz`` (exact below 4 GiB). Complex-valued data are refused too.
    """
    header = img.header
    shape = tuple(int(n) for n in header.get_data_shape())
    dtype = header.get_data_dtype()
    if dtype.kind == "c":
        raise InputError(f"complex-valued data ({dtype}) is not a segmentation or image", path)
    voxels = int(np.prod(shape, dtype=np.float64)) if shape else 0
    if voxels > MAX_VOXELS:
        raise InputError(
            f"header claims {'x'.join(map(str, shape))} = {voxels} voxels (limit {MAX_VOXELS})",
            path,
        )
    # A loaded image's header says offset 0 (nibabel recomputes it on save); the proxy knows.
    offset = getattr(img.dataobj, "offset", None)
    offset = header.get_data_offset() if offset is None else offset
    needed = int(offset) + voxels * dtype.itemsize
    isize = _gzip_size_mod_32(path)
    if isize is None:
        have = path.stat().st_size
        kind = "file"
    elif needed < 1 << 32:
        have, kind = isize, "uncompressed"
    else:
        return
    if have < needed:
        raise InputError(
            f"truncated: the header needs {needed} bytes of {'x'.join(map(str, shape))} "
            f"{dtype} data, the {kind} size is {have}",
            path,
        )


#: Decompressed bytes per step of :func:`_read_gzip_raw`: small enough to stay in the cache.
_GZIP_STEP = 1 << 20


def _read_gzip_raw(img: nib.Nifti1Image | nib.Nifti2Image, path: Path) -> np.ndarray | None:
    """The unscaled data of a ``.nii.gz`` decompressed straight into their final array.

    nibabel's gzip read makes the whole stream a bytes object and then copies it, two passes
    over memory that fall out of the cache on long volumes (4x the slices read 5-6x slower);
    here zlib writes 1 MiB at a time into one preallocated buffer. The array is what
    ``np.asanyarray(img.dataobj)`` returns: the header's dtype and byte order, the file's
    (Fortran) order, every member of a multi-member gzip. The CRC-32 of the member holding the
    data's end is checked too (nibabel reads the bytes it needs and stops short of it). None
    for anything else (plain ``.nii``, which nibabel maps; scaled data, which nibabel
    scales): nibabel reads those.
    """
    proxy = img.dataobj
    if not isinstance(proxy, nib.arrayproxy.ArrayProxy) or _gzip_size_mod_32(path) is None:
        return None
    if proxy.slope != 1 or proxy.inter != 0:
        return None
    dtype, shape, order = np.dtype(proxy.dtype), tuple(proxy.shape), proxy.order
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes, np.uint8)
    view = buf.data  # a writable memoryview of the buffer
    skip, pos = int(proxy.offset), 0  # header bytes still to drop, data bytes written
    inflate = zlib.decompressobj(wbits=31)
    with open(path, "rb", buffering=0) as fh:
        while pos < nbytes:
            chunk = inflate.unconsumed_tail
            if not chunk and inflate.eof:  # end of a member: the next one, if any
                chunk, inflate = inflate.unused_data, zlib.decompressobj(wbits=31)
            chunk = chunk or fh.read(1 << 16)
            out = memoryview(inflate.decompress(chunk, _GZIP_STEP) if chunk else inflate.flush())
            if not out and not chunk:
                raise EOFError(
                    f"truncated: the gzip stream ends after {pos} of {nbytes} data bytes"
                )
            if skip:
                dropped = min(skip, len(out))
                out, skip = out[dropped:], skip - dropped
            take = min(len(out), nbytes - pos)
            view[pos : pos + take] = out[:take]
            pos += take
        while not inflate.eof:  # on to the member's trailer: its CRC-32 and size are checked
            chunk = inflate.unconsumed_tail or fh.read(1 << 16)
            if not chunk:
                raise EOFError("truncated: the gzip stream ends before its trailer")
            inflate.decompress(chunk, _GZIP_STEP)
    return np.ndarray(shape, dtype=dtype, buffer=buf, order=order)


@dataclass(frozen=True)
class Volume:
    """An RPI-oriented 3D volume with its voxel sizes (mm) and RPI affine."""

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    path: Path


def load_volume(path: str | Path) -> Volume:
    """Load a 3D NIfTI (a trailing 4th axis of length 1 is dropped) and reorient it to RPI.

    Raises InputError naming the file for: missing file, not NIfTI, corrupted gzip, a header
    whose data cannot be in the file (checked before reading), complex data, 4D data, NaN or
    infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"not a NIfTI image ({type(img).__name__})", path)
        check_data_size(img, path)
        data = _read_gzip_raw(img, path)
        if data is None:
            data = np.asanyarray(img.dataobj)
    except nib.filebasedimages.ImageFileError as err:
        raise InputError("not a NIfTI image", path) from err
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        raise InputError(f"unreadable or corrupted file ({_one_line(err)})", path) from err
    except MemoryError as err:
        raise InputError("too large to read into memory", path) from err
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
    # The data keep the file's memory order (Fortran for NIfTI), as a view when the
    # reorientation only flips or swaps axes: a C-order copy of a long volume costs more than
    # its whole morphometry (the transposing copy grows faster than the voxel count).
    return Volume(data, (sx, sy, sz), affine, path)


def load_segmentation(path: str | Path) -> Volume:
    """A cord segmentation: binary or soft, values in [0, 1], not empty."""
    vol = load_volume(path)
    data = vol.data
    # Two reductions, no temporary (load_volume refused NaN): empty means no voxel above 0.
    hi = float(data.max()) if data.size else 0.0
    if hi <= 0:
        raise InputError("segmentation is empty (no voxel above 0)", path)
    lo = float(data.min())
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
    if data.dtype.kind != "u" and data.min() < 0:
        raise InputError("label values must not be negative", path)
    if not data.max() > 0:  # no voxel above 0 (the values are not negative)
        raise InputError("label image is empty", path)
    if data.dtype.kind == "f":
        data = data.astype(np.int32)
    return Volume(data, vol.spacing, vol.affine, vol.path)
