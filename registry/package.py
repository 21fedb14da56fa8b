"""Model packages: an nnU-Net v2 results folder, or SCT-style release zips of one.

Accepted sources (``stage_package``):

- a results folder: ``dataset.json``, ``plans.json`` and one or more ``fold_N`` / ``fold_all``
  folders, each with ``checkpoint_final.pth`` or ``checkpoint_best.pth`` (other files, such as
  training logs, are kept and hashed too);
- a zip holding that folder flat (files at the top) or nested one level (one top folder,
  e.g. ``nnUNetTrainer__nnUNetPlans__3d_fullres/``);
- several zips, one per fold, each with identical ``dataset.json`` and ``plans.json``; they
  are merged into one package.

Nothing is unpickled: checkpoints are only checked to exist and to be non-empty.
"""

from __future__ import annotations

import json
import re
import shutil
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

    def tags(self) -> dict[str, str]:
        """System tags describing the package (``cordwatch.nnunet.*``)."""
        tags = {
            "cordwatch.nnunet.folds": ",".join(self.folds),
            "cordwatch.nnunet.checkpoints": ",".join(self.checkpoints),
        }
        for key in ("dataset_name", "trainer", "plans", "configuration"):
            value = getattr(self, key)
            if value:
                tags[f"cordwatch.nnunet.{key}"] = value
        if self.labels:
            tags["cordwatch.nnunet.labels"] = json.dumps(self.labels, sort_keys=True)
        return tags


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
    """Check that ``root`` is an nnU-Net v2 results folder; return what it holds.

    ``name_hint`` is the results folder's original name (``<trainer>__<plans>__<config>``),
    used only to fill in descriptive tags.
    """
    if not root.is_dir():
        raise InputError("no such folder", root)
    for required in ("dataset.json", "plans.json"):
        if not (root / required).is_file():
            nested = sorted(p.parent for p in root.glob(f"*/{required}"))
            hint = f"; did you mean {nested[0]}?" if len(nested) == 1 else ""
            raise InputError(
                f"not an nnU-Net v2 results folder: no {required} ({_EXPECTED}){hint}", root
            )
    dataset = _read_json_object(root / "dataset.json")
    plans = _read_json_object(root / "plans.json")
    if "labels" not in dataset:
        raise InputError("no 'labels' key: not an nnU-Net v2 dataset.json", root / "dataset.json")
    if "configurations" not in plans:
        raise InputError(
            "no 'configurations' key: not an nnU-Net v2 plans.json", root / "plans.json"
        )

    folds = sorted(
        (p for p in root.iterdir() if p.is_dir() and _FOLD.match(p.name)),
        key=lambda p: _fold_key(p.name),
    )
    if not folds:
        raise InputError(f"no fold_N or fold_all folder ({_EXPECTED})", root)
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

    match = _RESULTS_NAME.match(name_hint or root.name)
    labels = dataset.get("labels")
    return PackageLayout(
        folds=tuple(f.name.removeprefix("fold_") for f in folds),
        checkpoints=tuple(checkpoints),
        dataset_name=str(plans["dataset_name"]) if plans.get("dataset_name") else None,
        trainer=match["trainer"] if match else None,
        plans=match["plans"] if match else None,
        configuration=match["configuration"] if match else None,
        labels=labels if isinstance(labels, dict) else {},
    )


def _zip_root(extracted: Path, archive: Path) -> tuple[Path, str | None]:
    """The package folder inside an extracted zip: flat, or one nested folder."""
    if (extracted / "dataset.json").is_file():
        return extracted, archive.stem
    entries = [
        p for p in extracted.iterdir() if p.name not in JUNK_DIRS and p.name not in JUNK_NAMES
    ]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "dataset.json").is_file():
        return entries[0], entries[0].name
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
                if rel.split("/")[0].startswith("fold_"):
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
    layout: PackageLayout
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
        return StagedPackage(root, validate_layout(root), "folder", (root.name,))
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
        if len(paths) > 1:
            validate_layout(root, name)
        extracted.append((root, archive))
    if len(extracted) == 1:
        root = extracted[0][0]
    else:
        root = workdir / "merged"
        root.mkdir()
        _merge(extracted, root)
    return StagedPackage(root, validate_layout(root, hint), "zip", tuple(p.name for p in paths))
