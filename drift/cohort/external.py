"""External segmenters: a package that names a command instead of holding nnU-Net weights.

How a lab gates a pipeline no nnU-Net loader runs (SCT itself, a MONAI model, TotalSpineSeg,
its own script). The package holds ``cordwatch-segmenter.yaml``::

    format: cordwatch-segmenter/1
    name: sct-deepseg-spinalcord
    command: sct_deepseg spinalcord -i {image} -o {output} -custom-url {package}/model.zip
    files: [model.zip]           # what the command needs, inside the package
    timeout_s: 900               # per image
    output: binary               # or soft: probabilities in [0, 1]

and every file of the package is hashed into its manifest like any package's, and verified
before the command first runs. Placeholders: ``{image}`` (a private copy of the cohort image,
so the command cannot alter an input), ``{output}`` (the NIfTI it must write), ``{package}``
(the verified package folder), ``{python}`` (this interpreter). The command is run per image
without a shell (``subprocess``, its own process group, killed whole on timeout), in an empty
working folder. Its output must lie on the image's grid (same shape and affine) with finite
values in [0, 1]. A non-zero exit, a timeout, a missing or wrong output is that image's
failure, recorded like any other; the cohort goes on.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from registry.errors import InputError
from registry.package import SEGMENTER_FILE, SegmenterLayout, read_segmenter_spec

_GRID_ATOL = 1e-3  # mm: affines equal up to header rounding
_VALUE_TOL = 1e-4


@dataclass(frozen=True)
class SegmenterSettings:
    """What decides an external segmenter's output besides its (hashed) package: part of the
    inference settings, so the cache key and the provenance say which pipeline ran."""

    command: tuple[str, ...]
    timeout_s: float
    output: str
    python: str = ""  # interpreter version when the command runs {python}
    kind: str = "external-segmenter"


def is_segmenter(package_dir: str | Path) -> bool:
    """Whether ``package_dir`` holds an external segmenter."""
    return (Path(package_dir) / SEGMENTER_FILE).is_file()


def settings_for_package(package_dir: str | Path) -> SegmenterSettings | None:
    """The segmenter's settings, or None when the package is not an external segmenter."""
    if not is_segmenter(package_dir):
        return None
    spec = read_segmenter_spec(Path(package_dir))
    uses_python = any("{python}" in token for token in spec.command)
    return SegmenterSettings(
        command=spec.command,
        timeout_s=spec.timeout_s,
        output=spec.output,
        python=platform.python_version() if uses_python else "",
    )


def load_segmenter(
    package_dir: str | Path, expected_sha256: Mapping[str, str] | None = None
) -> ExternalSegmenter:
    """The segmenter of ``package_dir``; with ``expected_sha256`` (relative path -> sha256,
    the registry's manifest) every listed file is checked, and the spec and the files it
    names must be listed, before anything runs."""
    from registry.nnunet import verify_files

    root = Path(package_dir)
    if not is_segmenter(root):
        raise InputError(f"no {SEGMENTER_FILE}: not an external segmenter package", root)
    spec = read_segmenter_spec(root)
    if expected_sha256 is not None:
        verify_files(
            root, expected_sha256, [root / SEGMENTER_FILE, *(root / f for f in spec.files)]
        )
    return ExternalSegmenter(root, spec)


def command_line(spec: SegmenterLayout, image: Path, output: Path, package: Path) -> list[str]:
    """The argv of one run: every placeholder of every token substituted (no shell)."""
    values = {
        "image": str(image),
        "output": str(output),
        "package": str(package),
        "python": sys.executable,
    }
    return [token.format(**values) for token in spec.command]


def _tail(text: bytes) -> str:
    lines = [ln.strip() for ln in text.decode("utf-8", "replace").splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= 200 else last[:197] + "..."


def _image_name(image: Path) -> str:
    name = image.name
    return name if name.endswith((".nii", ".nii.gz")) else name + ".nii.gz"


class ExternalSegmenter:
    """Runs the package's command on one image at a time (what the cohort runner calls)."""

    device = "subprocess"

    def __init__(self, package_dir: Path, spec: SegmenterLayout) -> None:
        self.package_dir = Path(package_dir).resolve()
        self.spec = spec

    def run(self, image: Path, workdir: Path) -> Path:
        """Run the command on a copy of ``image`` in ``workdir``; return the output path."""
        inputs = workdir / "input"
        inputs.mkdir()
        copy = inputs / _image_name(image)
        shutil.copyfile(image, copy)
        output = workdir / "output" / "seg.nii.gz"
        output.parent.mkdir()
        run_dir = workdir / "run"
        run_dir.mkdir()
        argv = command_line(self.spec, copy, output, self.package_dir)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=run_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: a timeout kills it whole
            )
        except OSError as err:
            raise InputError(f"segmenter command {argv[0]!r} cannot start: {err.strerror}") from err
        try:
            _out, err_bytes = proc.communicate(timeout=self.spec.timeout_s)
        except subprocess.TimeoutExpired as err:
            with_group_killed(proc)
            raise InputError(f"segmenter timed out after {self.spec.timeout_s:g} s", image) from err
        if proc.returncode != 0:
            why = _tail(err_bytes)
            raise InputError(
                f"segmenter exited with status {proc.returncode}" + (f": {why}" if why else ""),
                image,
            )
        if not output.is_file():
            raise InputError(f"segmenter wrote no output (expected {output.name})", image)
        return output

    def predict_image(
        self,
        image: Path,
        img: Any,
        data: np.ndarray,
        spacing: tuple[float, float, float],
        crop_source: Path | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(soft, binary, info) for one image, on the image's grid; InputError naming the
        image when the command fails or its output is not a segmentation of this image."""
        with tempfile.TemporaryDirectory(prefix="cordwatch-external-") as tmp:
            output = self.run(Path(image), Path(tmp))
            soft = checked_output(output, img, Path(image))
        binary = (soft >= 0.5).astype(np.uint8)
        if self.spec.output == "binary":
            soft = binary.astype(np.float32)
        return soft, binary, {"segmenter": self.spec.name or self.spec.command[0]}


def with_group_killed(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process group of ``proc`` (the command and whatever it started) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def checked_output(output: Path, img: Any, image: Path) -> np.ndarray:
    """The output's values as float32 if it is on ``img``'s grid with values in [0, 1]."""
    import nibabel as nib

    try:
        out = nib.load(str(output))
        if not isinstance(out, nib.Nifti1Image | nib.Nifti2Image):
            raise InputError("segmenter output is not a NIfTI image", image)
        values = np.asarray(out.dataobj, dtype=np.float32)
    except InputError:
        raise
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"segmenter output unreadable: {first}", image) from err
    if values.ndim == 4 and values.shape[3] == 1:
        values = values[..., 0]
    shape = tuple(img.shape[:3])
    if values.shape != shape:
        raise InputError(
            f"segmenter output on the wrong grid: shape {values.shape}, image {shape}", image
        )
    if not np.allclose(out.affine, img.affine, atol=_GRID_ATOL):
        raise InputError("segmenter output on the wrong grid: its affine differs", image)
    if not np.all(np.isfinite(values)):
        raise InputError("segmenter output holds NaN or infinite values", image)
    lo, hi = float(values.min()), float(values.max())
    if lo < -_VALUE_TOL or hi > 1 + _VALUE_TOL:
        raise InputError(
            f"segmenter output values {lo:g}..{hi:g} outside [0, 1] (a label map with "
            "several labels is not a cord segmentation)",
            image,
        )
    return np.clip(values, 0.0, 1.0)


__all__ = [
    "ExternalSegmenter",
    "SegmenterSettings",
    "checked_output",
    "command_line",
    "is_segmenter",
    "load_segmenter",
    "settings_for_package",
]
