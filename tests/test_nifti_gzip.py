"""drift.measure.nifti's own gzip reader: the same arrays as nibabel, and corruption refused.

``load_volume`` decompresses ``.nii.gz`` data straight into their final array (issue 14: 4x the
slices must cost 4x; nibabel's bytes-then-copy read cost 5-6x). These tests hold the reader
to nibabel's ``np.asanyarray(img.dataobj)`` for every layout a NIfTI file can have.
"""

from __future__ import annotations

import gzip
import itertools
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from drift.measure import nifti
from registry.errors import InputError


def _save(img: nib.Nifti1Image | nib.Nifti2Image, path: Path) -> Path:
    nib.save(img, path)
    return path


def _nibabel(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _raw(path: Path) -> np.ndarray | None:
    return nifti._read_gzip_raw(nib.load(path), path)


def _random(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 100).astype(dtype)


@pytest.mark.parametrize("dtype", ["uint8", "int16", ">i2", "int32", "float32", ">f4", "float64"])
def test_reader_returns_nibabels_array(dtype: str, tmp_path: Path) -> None:
    data = _random((9, 10, 11), dtype)
    path = _save(nib.Nifti1Image(data, np.diag([0.5, 0.6, 2.0, 1.0])), tmp_path / "a.nii.gz")
    ours, theirs = _raw(path), _nibabel(path)
    assert ours is not None
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert ours.flags.f_contiguous and ours.flags.writeable
    np.testing.assert_array_equal(ours, theirs)


def test_nifti2_4d_and_header_extensions(tmp_path: Path) -> None:
    data = _random((6, 7, 8, 1), "float32", seed=1)
    las = np.diag([-1.0, 1.0, 1.0, 1.0])  # already RPI in nibabel's axcodes: no reorientation
    img2 = nib.Nifti2Image(data, las)
    ext = nib.Nifti1Image(data, las)
    ext.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 1000))
    for name, img in (("two.nii.gz", img2), ("ext.nii.gz", ext)):
        path = _save(img, tmp_path / name)
        assert nib.load(path).dataobj.offset >= 352
        np.testing.assert_array_equal(_raw(path), _nibabel(path))
        np.testing.assert_array_equal(nifti.load_volume(path).data, data[..., 0])


def test_data_larger_than_one_step_and_incompressible(tmp_path: Path) -> None:
    """Several 1 MiB output steps and many 64 KiB input reads, random (incompressible) bytes."""
    data = _random((64, 64, 200), "float32", seed=2)  # 3.3 MB
    path = _save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "big.nii.gz")
    assert data.nbytes > 3 * nifti._GZIP_STEP
    np.testing.assert_array_equal(_raw(path), data)


@pytest.mark.parametrize("cuts", [(100,), (352,), (5000, 9000), (400, 401, 2000)])
def test_multi_member_gzip(cuts: tuple[int, ...], tmp_path: Path) -> None:
    """A stream split into members anywhere (inside the header too) reads as one."""
    data = _random((12, 13, 14), "int16", seed=3)
    plain = _save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii")
    raw = plain.read_bytes()
    bounds = [0, *cuts, len(raw)]
    members = b"".join(gzip.compress(raw[a:b]) for a, b in itertools.pairwise(bounds))
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(members)
    np.testing.assert_array_equal(_nibabel(path), data)
    np.testing.assert_array_equal(_raw(path), data)


def test_scaled_and_uncompressed_files_stay_with_nibabel(tmp_path: Path) -> None:
    data = _random((5, 6, 7), "int16", seed=4)
    scaled = nib.Nifti1Image(data, np.eye(4))
    scaled.header.set_slope_inter(0.5, 3.0)
    path = _save(scaled, tmp_path / "scaled.nii.gz")
    assert _raw(path) is None
    np.testing.assert_array_equal(nifti.load_volume(path).data, _nibabel(path)[::-1])
    plain = _save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "plain.nii")
    assert _raw(plain) is None
    np.testing.assert_array_equal(nifti.load_volume(plain).data, data[::-1])


def test_load_volume_does_not_read_gzip_through_nibabel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The morphometry path reads .nii.gz with the reader (the old code went through nibabel)."""
    data = _random((8, 9, 10), "uint8", seed=5)
    path = _save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii.gz")

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("nibabel read the gzip data")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", refuse)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "_get_scaled", refuse)
    np.testing.assert_array_equal(nifti.load_volume(path).data, data[::-1])


def test_crc_mismatch_is_refused(tmp_path: Path) -> None:
    """A flipped bit in the gzip CRC: nibabel returns the data unchecked, cordwatch refuses."""
    data = _random((8, 9, 10), "uint8", seed=6)
    good = _save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii.gz")
    blob = bytearray(good.read_bytes())
    blob[-5] ^= 0x01  # last byte of the CRC-32; ISIZE (the last 4 bytes) intact
    bad = tmp_path / "crc.nii.gz"
    bad.write_bytes(bytes(blob))
    np.testing.assert_array_equal(_nibabel(bad), data)
    with pytest.raises(InputError, match="corrupted") as err:
        nifti.load_volume(bad)
    assert "crc.nii.gz" in str(err.value) and "\n" not in str(err.value)


def test_stream_ending_early_is_an_input_error(tmp_path: Path) -> None:
    """Deflate data cut short before 4 bytes claiming the full size (passing the size check)."""
    data = _random((10, 10, 10), "float32", seed=7)
    plain = _save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii")
    raw = plain.read_bytes()
    deflate = zlib.compressobj(6, zlib.DEFLATED, 31)
    partial = deflate.compress(raw[: len(raw) // 2]) + deflate.flush(zlib.Z_SYNC_FLUSH)
    path = tmp_path / "short.nii.gz"
    path.write_bytes(partial + len(raw).to_bytes(4, "little"))
    with pytest.raises(InputError, match=r"short\.nii\.gz") as err:
        nifti.load_volume(path)
    assert "\n" not in str(err.value)
    assert "truncated" in str(err.value) or "corrupted" in str(err.value)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_size_check_counts_the_header(suffix: str, tmp_path: Path) -> None:
    """Data short by fewer bytes than the header: the size check (offset included) refuses it.

    nibabel reports offset 0 on a loaded image's header; the check counted no header bytes.
    """
    data = np.zeros((4, 4, 4), np.uint8)
    plain = _save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii")
    short = plain.read_bytes()[:-10]
    path = tmp_path / f"short{suffix}"
    path.write_bytes(gzip.compress(short) if suffix == ".nii.gz" else short)
    with pytest.raises(InputError, match="truncated: the header needs 416 bytes") as err:
        nifti.load_volume(path)
    assert "\n" not in str(err.value)
