"""Model packages: an nnU-Net v2 results folder, or SCT-style release zips of one.

Accepted sources (``stage_package``):

- a results folder: ``dataset.json``, ``plans.json`` and one or more ``fold_N`` / ``fold_all``
  folders, each with ``checkpoint_final.pth`` or ``checkpoint_best.pth`` (other files, such as
  training logs, are kept and hashed too);
- a zip holding that folder flat (files at the top) or nested one level (one top folder,
  e.g. ``nnUNetTrainer__nnUNetPlans__3d_fullres/``);
- several zips, one per fold, each with identical ``dataset.json`` and ``plans.json``; they
  are merged into one package.

Two further package formats are recognised and recorded on the version
(``cordwatch.package.format``):

- ``sct-nnunet-v2``: a Spinal Cord Toolbox release (contrast-agnostic v4 and later): the results
  folder, flat or in one folder beside ``crop_metadata.json`` at the package root (the six
  paddings in mm that SCT passes to ``sc_crop.detect``: all required, as SCT requires them), and
  optionally ``image_orientation`` in dataset.json (SCT's "from" convention, e.g. ``RPI``; SCT
  reorients to it, defaulting to ``LPI``). A package with either extra is an SCT package.
- ``external-segmenter``: a folder whose ``cordwatch-segmenter.yaml`` names a command template
  (``{image}``, ``{output}``, ``{package}``, ``{python}``), the files it needs, a timeout and the
  kind of output; run per image by :mod:`drift.cohort.external`.

Nothing is unpickled: checkpoints are only checked to exist and to be non-empty.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.archive import JUNK_DIRS, ZipLimits, extract_zip
from registry.errors import InputError
from registry.manifest import JUNK_NAMES, package_files

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
_FOLD = re.compile(r"^fold_(all|\d+)$")
#: nnU-Net names a results folder <trainer>__<plans>__<configuration>.
_RESULTS_NAME = re.compile(
    r"^(?P<trainer>[^_][\w-]*?)__(?P<plans>[\w-]+?)__(?P<configuration>[\w-]+)$"
)
_EXPECTED = "expected dataset.json, plans.json and fold_*/checkpoint_final.pth (or _best)"

#: The version tag naming the package format.
FORMAT_TAG = "cordwatch.package.format"
FORMAT_NNUNET = "nnunet-v2"
FORMAT_SCT = "sct-nnunet-v2"
FORMAT_EXTERNAL = "external-segmenter"
#: SCT's crop metadata file (``sc_crop.write_crop_metadata``) and its six padding keys (mm).
CROP_METADATA = "crop_metadata.json"
SCT_PAD_KEYS = (
    "pad_superior",
    "pad_inferior",
    "pad_left",
    "pad_right",
    "pad_anterior",
    "pad_posterior",
)
#: SCT reorients to this when dataset.json has no ``image_orientation`` (deepseg/inference.py).
SCT_DEFAULT_ORIENTATION = "LPI"
SEGMENTER_FILE = "cordwatch-segmenter.yaml"
SEGMENTER_FORMAT = "cordwatch-segmenter/1"
SEGMENTER_FIELDS = frozenset({"image", "output", "package", "python"})
_PAIRS = ({"R", "L"}, {"A", "P"}, {"S", "I"})


@dataclass(frozen=True)
class PackageLayout:
    """What :func:`validate_layout` found in a package folder."""

    folds: tuple[str, ...]
    checkpoints: tuple[str, ...]
    dataset_name: str | None = None
    trainer: str | None = None
    plans: str | None = None
    configuration: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    #: ``nnunet-v2`` or ``sct-nnunet-v2`` (see the module doc).
    format: str = FORMAT_NNUNET
    #: The results folder relative to the package root ("" when it is the root).
    results_dir: str = ""
    #: ``image_orientation`` of dataset.json (SCT "from" convention), when given.
    image_orientation: str | None = None
    #: The six paddings (mm) of crop_metadata.json under SCT's key names, when present.
    crop_padding: dict[str, float] | None = None

    def tags(self) -> dict[str, str]:
        """System tags describing the package (``cordwatch.nnunet.*``, ``cordwatch.sct.*``)."""
        tags = {
            FORMAT_TAG: self.format,
            "cordwatch.nnunet.folds": ",".join(self.folds),
            "cordwatch.nnunet.checkpoints": ",".join(self.checkpoints),
        }
        for key in ("dataset_name", "trainer", "plans", "configuration", "results_dir"):
            value = getattr(self, key)
            if value:
                tags[f"cordwatch.nnunet.{key}"] = value
        if self.labels:
            tags["cordwatch.nnunet.labels"] = json.dumps(self.labels, sort_keys=True)
        if self.format == FORMAT_SCT:
            tags["cordwatch.sct.image_orientation"] = (
                self.image_orientation or f"{SCT_DEFAULT_ORIENTATION} (SCT default)"
            )
            tags["cordwatch.sct.cropped"] = "true" if self.crop_padding else "false"
        for key, value in (self.crop_padding or {}).items():
            tags[f"cordwatch.sct.{key}"] = _number(value)
        return tags


@dataclass(frozen=True)
class SegmenterLayout:
    """An external segmenter package (``cordwatch-segmenter.yaml``)."""

    command: tuple[str, ...]
    files: tuple[str, ...]
    timeout_s: float
    output: str  # "soft" or "binary"
    name: str = ""
    format: str = FORMAT_EXTERNAL

    def tags(self) -> dict[str, str]:
        tags = {
            FORMAT_TAG: self.format,
            "cordwatch.segmenter.command": json.dumps(list(self.command)),
            "cordwatch.segmenter.files": ",".join(self.files),
            "cordwatch.segmenter.timeout_s": _number(self.timeout_s),
            "cordwatch.segmenter.output": self.output,
        }
        if self.name:
            tags["cordwatch.segmenter.name"] = self.name
        return tags


def _number(value: float) -> str:
    """``40.0`` -> ``40``, ``12.5`` -> ``12.5`` (tags are text)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def package_summary(tags: dict[str, str]) -> dict[str, Any]:
    """The package description recorded on a version, for ``models show``: format, folds,
    orientation and SCT's paddings under SCT's own key names.

    >>> package_summary({FORMAT_TAG: "sct-nnunet-v2", "cordwatch.sct.pad_left": "15"})
    {'format': 'sct-nnunet-v2', 'crop_metadata': {'pad_left': 15.0}}
    """
    out: dict[str, Any] = {"format": tags.get(FORMAT_TAG, FORMAT_NNUNET)}
    if "cordwatch.nnunet.folds" in tags:
        out["folds"] = tags["cordwatch.nnunet.folds"].split(",")
    if "cordwatch.nnunet.trainer" in tags:
        out["trainer"] = tags["cordwatch.nnunet.trainer"]
    if "cordwatch.sct.image_orientation" in tags:
        out["image_orientation"] = tags["cordwatch.sct.image_orientation"]
    pads = {
        k: float(tags[f"cordwatch.sct.{k}"]) for k in SCT_PAD_KEYS if f"cordwatch.sct.{k}" in tags
    }
    if pads:
        out["crop_metadata"] = pads
    if "cordwatch.segmenter.command" in tags:
        out["segmenter"] = {
            k.removeprefix("cordwatch.segmenter."): v
            for k, v in tags.items()
            if k.startswith("cordwatch.segmenter.")
        }
    return out


def sct_orientation(value: Any, path: Path) -> str:
    """A valid SCT orientation code (``RPI``, ``LPI``, ``AIL``...) or InputError naming ``path``."""
    text = str(value).strip().upper() if isinstance(value, str) else ""
    ok = len(text) == 3 and all(sum(c in pair for c in text) == 1 for pair in _PAIRS)
    if not ok:
        raise InputError(
            f"image_orientation {value!r} is not an orientation code (three letters, one of "
            "R/L, A/P and S/I each, e.g. RPI)",
            path,
        )
    return text


def read_crop_metadata(path: Path) -> dict[str, float]:
    """The six paddings (mm) of an SCT ``crop_metadata.json``; every one is required (SCT
    refuses a file missing one, so that the crop never depends on sc-crop's own defaults)."""
    data = _read_json_object(path)
    missing = [k for k in SCT_PAD_KEYS if k not in data]
    if missing:
        raise InputError(
            f"missing padding key(s) {', '.join(missing)} (SCT requires all six: "
            f"{', '.join(SCT_PAD_KEYS)})",
            path,
        )
    pads: dict[str, float] = {}
    for key in SCT_PAD_KEYS:
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{key} must be a number of millimetres, not {value!r}", path)
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{key} must be finite and >= 0 mm, not {value!r}", path)
        pads[key] = float(value)
    return pads


def read_segmenter_spec(root: Path) -> SegmenterLayout:
    """Parse and check ``cordwatch-segmenter.yaml`` in ``root`` (an external segmenter)."""
    import yaml

    path = root / SEGMENTER_FILE
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"not valid YAML: {first}", path) from err
    if not isinstance(spec, dict):
        raise InputError("expected a mapping (format, command, files, ...)", path)
    unknown = sorted(set(spec) - {"format", "name", "command", "files", "timeout_s", "output"})
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(map(str, unknown))}", path)
    if spec.get("format") != SEGMENTER_FORMAT:
        raise InputError(f"format must be {SEGMENTER_FORMAT!r}, not {spec.get('format')!r}", path)
    raw = spec.get("command")
    if isinstance(raw, str):
        try:
            command = tuple(shlex.split(raw))
        except ValueError as err:
            raise InputError(f"command: {err}", path) from err
    elif isinstance(raw, list) and all(isinstance(t, str) for t in raw):
        command = tuple(raw)
    else:
        raise InputError("command must be a string or a list of strings", path)
    if not command:
        raise InputError("command is empty", path)
    used: set[str] = set()
    for token in command:
        try:
            parts = list(string.Formatter().parse(token))
        except ValueError as err:
            raise InputError(f"command token {token!r}: {err}", path) from err
        for _text, name, spec_, conv in parts:
            if name is None:
                continue
            if name not in SEGMENTER_FIELDS or spec_ or conv:
                raise InputError(
                    f"command placeholder {{{name}}} unknown (use "
                    f"{', '.join('{' + f + '}' for f in sorted(SEGMENTER_FIELDS))})",
                    path,
                )
            used.add(name)
    for needed in ("image", "output"):
        if needed not in used:
            raise InputError(f"command has no {{{needed}}} placeholder", path)
    files = spec.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise InputError("files must be a list of paths relative to the package", path)
    for rel in files:
        target = (root / rel).resolve()
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not target.is_file():
            raise InputError(f"files: {rel!r} is not a file inside the package", path)
    timeout = spec.get("timeout_s", 600)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InputError(f"timeout_s must be a positive number of seconds, not {timeout!r}", path)
    output = spec.get("output", "binary")
    if output not in ("soft", "binary"):
        raise InputError(f"output must be soft or binary, not {output!r}", path)
    name = spec.get("name", "")
    return SegmenterLayout(
        command=command,
        files=tuple(files),
        timeout_s=float(timeout),
        output=str(output),
        name=str(name) if name else "",
    )


def _sct_results_dir(root: Path) -> Path | None:
    """SCT's layout: crop_metadata.json at the root beside one folder holding the results."""
    if not (root / CROP_METADATA).is_file() or (root / "dataset.json").is_file():
        return None
    nested = [p for p in root.iterdir() if p.is_dir() and (p / "dataset.json").is_file()]
    return nested[0] if len(nested) == 1 else None


def validate_package(root: Path, name_hint: str | None = None) -> PackageLayout | SegmenterLayout:
    """Check a package folder of any recognised format (see the module doc)."""
    if root.is_dir() and (root / SEGMENTER_FILE).is_file():
        package_files(root)  # refuses symbolic links and special files
        return read_segmenter_spec(root)
    return validate_layout(root, name_hint)


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"not valid JSON: {err}", path) from err
    if not isinstance(obj, dict):
        raise InputError("expected a JSON object", path)
    return obj


def _fold_key(name: str) -> tuple[int, int]:
    suffix = name.removeprefix("fold_")
    return (1, 0) if suffix == "all" else (0, int(suffix))


def validate_layout(root: Path, name_hint: str | None = None) -> PackageLayout:
    """Check that ``root`` is an nnU-Net v2 results folder (or SCT's release layout of one);
    return what it holds.

    ``name_hint`` is the results folder's original name (``<trainer>__<plans>__<config>``),
    used only to fill in descriptive tags.
    """
    if not root.is_dir():
        raise InputError("no such folder", root)
    results = _sct_results_dir(root) or root
    for required in ("dataset.json", "plans.json"):
        if not (results / required).is_file():
            nested = sorted(p.parent for p in results.glob(f"*/{required}"))
            hint = f"; did you mean {nested[0]}?" if len(nested) == 1 else ""
            raise InputError(
                f"not an nnU-Net v2 results folder: no {required} ({_EXPECTED}){hint}", results
            )
    dataset = _read_json_object(results / "dataset.json")
    plans = _read_json_object(results / "plans.json")
    if "labels" not in dataset:
        raise InputError(
            "no 'labels' key: not an nnU-Net v2 dataset.json", results / "dataset.json"
        )
    if "configurations" not in plans:
        raise InputError(
            "no 'configurations' key: not an nnU-Net v2 plans.json", results / "plans.json"
        )

    folds = sorted(
        (p for p in results.iterdir() if p.is_dir() and _FOLD.match(p.name)),
        key=lambda p: _fold_key(p.name),
    )
    if not folds:
        raise InputError(f"no fold_N or fold_all folder ({_EXPECTED})", results)
    checkpoints = []
    for fold in folds:
        found = [fold / c for c in CHECKPOINTS if (fold / c).is_file()]
        if not found:
            raise InputError("no checkpoint_final.pth or checkpoint_best.pth in this fold", fold)
        for ckpt in found:
            if ckpt.stat().st_size == 0:
                raise InputError("empty checkpoint", ckpt)
            checkpoints.append(ckpt.relative_to(root).as_posix())
    package_files(root)  # refuses symbolic links and special files anywhere in the package

    crop_file = next(
        (d / CROP_METADATA for d in (root, results) if (d / CROP_METADATA).is_file()), None
    )
    crop_padding = None if crop_file is None else read_crop_metadata(crop_file)
    orientation = None
    if "image_orientation" in dataset:
        orientation = sct_orientation(dataset["image_orientation"], results / "dataset.json")
    is_sct = crop_padding is not None or orientation is not None
    folder_name = name_hint if results == root else results.name
    match = _RESULTS_NAME.match(folder_name or results.name)
    labels = dataset.get("labels")
    return PackageLayout(
        folds=tuple(f.name.removeprefix("fold_") for f in folds),
        checkpoints=tuple(checkpoints),
        dataset_name=str(plans["dataset_name"]) if plans.get("dataset_name") else None,
        trainer=match["trainer"] if match else None,
        plans=match["plans"] if match else None,
        configuration=match["configuration"] if match else None,
        labels=labels if isinstance(labels, dict) else {},
        format=FORMAT_SCT if is_sct else FORMAT_NNUNET,
        results_dir="" if results == root else results.relative_to(root).as_posix(),
        image_orientation=orientation,
        crop_padding=crop_padding,
    )


def _zip_root(extracted: Path, archive: Path) -> tuple[Path, str | None]:
    """The package folder inside an extracted zip: flat, one nested folder, or SCT's layout
    (crop_metadata.json at the top beside the results folder: the top is the package)."""
    if (extracted / "dataset.json").is_file() or (extracted / SEGMENTER_FILE).is_file():
        return extracted, archive.stem
    if _sct_results_dir(extracted) is not None:
        return extracted, None
    entries = [
        p for p in extracted.iterdir() if p.name not in JUNK_DIRS and p.name not in JUNK_NAMES
    ]
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        if (inner / "dataset.json").is_file() or (inner / SEGMENTER_FILE).is_file():
            return inner, inner.name
    raise InputError(
        f"no nnU-Net v2 results folder at the top of the zip or one folder below ({_EXPECTED})",
        archive,
    )


def _merge(parts: list[tuple[Path, Path]], target: Path) -> None:
    """Merge extracted per-fold zips into ``target``; shared files must be identical."""
    origin: dict[str, Path] = {}
    for root, archive in parts:
        for rel in package_files(root):
            dst = target / rel
            if rel in origin:
                if any(part.startswith("fold_") for part in rel.split("/")[:-1]):
                    raise InputError(f"{rel} is also in {origin[rel].name}", archive)
                if dst.read_bytes() != (root / rel).read_bytes():
                    raise InputError(f"{rel} differs from the one in {origin[rel].name}", archive)
                continue
            origin[rel] = archive
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(root / rel, dst)


@dataclass(frozen=True)
class StagedPackage:
    """A validated package folder ready to be stored."""

    root: Path
    layout: PackageLayout | SegmenterLayout
    kind: str  # "folder" or "zip"
    source_names: tuple[str, ...]


def stage_package(
    sources: Sequence[str | Path], workdir: Path, limits: ZipLimits | None = None
) -> StagedPackage:
    """Validate the sources and return the package folder (zips are extracted into ``workdir``).

    A folder source is validated in place (not copied). Every zip is checked entry by entry
    before anything is extracted (see :mod:`registry.archive`).
    """
    paths = [Path(s).expanduser() for s in sources]
    if not paths:
        raise InputError("no package given")
    for p in paths:
        if not p.exists():
            raise InputError("no such file or folder", p)
    if len(paths) == 1 and paths[0].is_dir():
        root = paths[0].resolve()
        return StagedPackage(root, validate_package(root), "folder", (root.name,))
    if any(p.is_dir() for p in paths):
        raise InputError("give one results folder, or one or more zip archives", paths[0])
    limits = limits or ZipLimits.from_env()
    extracted: list[tuple[Path, Path]] = []
    hint: str | None = None
    for i, archive in enumerate(paths):
        dest = workdir / f"zip{i}"
        dest.mkdir(parents=True)
        extract_zip(archive, dest, limits)
        root, name = _zip_root(dest, archive)
        hint = hint or name
        if len(paths) > 1 and isinstance(validate_package(root, name), SegmenterLayout):
            raise InputError("an external segmenter is one package, not one zip per fold", archive)
        extracted.append((root, archive))
    if len(extracted) == 1:
        root = extracted[0][0]
    else:
        root = workdir / "merged"
        root.mkdir()
        _merge(extracted, root)
    return StagedPackage(root, validate_package(root, hint), "zip", tuple(p.name for p in paths))
