"""Run a model over a cohort of images, with a content-addressed segmentation cache.

A segmentation is cached under the sha256 of (model package sha256, image sha256, inference
settings): whether test-time augmentation was on, which folds, what is written (label map or
probabilities), the revision of this inference code and the versions of nnU-Net and torch that
computed it. A re-run therefore recomputes only what changed, and a cached baseline costs
nothing. A fully cached cohort neither loads the model nor imports torch.

Every cache entry is written atomically (a provenance sidecar, then the NIfTI, which is the
entry's commit mark), so a crash or Ctrl-C mid-cohort loses no finished image and leaves no
half-written entry. A failing image (unreadable, hash mismatch, prediction error) is recorded
with its error and the cohort goes on; only a model that cannot be loaded stops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from drift import __version__
from registry import nnunet
from registry.errors import CordwatchError, InputError, IntegrityError
from registry.fsutil import atomic_path, sha256_file

# Bump when a change to this module or to registry/nnunet.py changes the segmentations.
INFERENCE_REVISION = 1

Output = Literal["binary", "soft"]
Status = Literal["ok", "failed"]


@dataclass(frozen=True)
class InferenceSettings:
    """What, besides the model and the image, decides a segmentation."""

    tta: bool = False
    folds: tuple[str, ...] | None = None  # None: every fold of the package
    output: Output = "binary"
    inference_revision: int = INFERENCE_REVISION
    cordwatch: str = __version__
    nnunetv2: str = ""
    torch: str = ""

    @classmethod
    def current(
        cls, tta: bool = False, folds: Sequence[int | str] | None = None, output: Output = "binary"
    ) -> InferenceSettings:
        """Settings with the installed nnunetv2 and torch versions (read without importing)."""
        if output not in ("binary", "soft"):
            raise ValueError(f"output must be 'binary' or 'soft', not {output!r}")
        return cls(
            tta=bool(tta),
            folds=None if folds is None else tuple(str(f) for f in folds),
            output=output,
            nnunetv2=_dist_version("nnunetv2"),
            torch=_dist_version("torch"),
        )


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def cache_key(package_sha256: str, image_sha256: str, settings: InferenceSettings) -> str:
    """sha256 of the model, the image and the settings: the name of a cache entry.

    >>> s = InferenceSettings(nnunetv2="2.6.0", torch="2.13.0")
    >>> cache_key("a" * 64, "b" * 64, s) == cache_key("a" * 64, "b" * 64, s)
    True
    >>> from dataclasses import replace
    >>> cache_key("a" * 64, "b" * 64, s) == cache_key("a" * 64, "b" * 64, replace(s, tta=True))
    False
    """
    payload = {
        "package_sha256": package_sha256.lower(),
        "image_sha256": image_sha256.lower(),
        "settings": asdict(settings),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class SegmentationResult:
    """What happened to one image of the cohort."""

    key: str  # the caller's key, e.g. (subject, contrast) joined
    image: Path
    status: Status
    seg_path: Path | None  # the cached segmentation (None when failed)
    error: str | None
    seconds: float  # spent on this image in this run (hashing, or reading + predicting)
    cached: bool  # True when the segmentation came from the cache
    cache_key: str | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["image"] = str(self.image)
        out["seg_path"] = None if self.seg_path is None else str(self.seg_path)
        return out


def entry_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    """The segmentation and its provenance sidecar for a cache key."""
    folder = Path(cache_dir) / key[:2]
    return folder / f"{key}.nii.gz", folder / f"{key}.json"


def cached_segmentation(cache_dir: Path, key: str) -> Path | None:
    """The entry's NIfTI if it is complete and intact (its sha256 matches the sidecar)."""
    seg, meta = entry_paths(cache_dir, key)
    if not (seg.is_file() and meta.is_file()):
        return None
    try:
        recorded = json.loads(meta.read_text())["segmentation_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return seg if sha256_file(seg) == recorded else None


class _LazyPredictor:
    """Loads the model on first use only, so a fully cached cohort never touches torch."""

    def __init__(self, load: Any, package_dir: Path) -> None:
        self._load = load
        self._package_dir = package_dir
        self._predictor: Any = None
        self.load_error: CordwatchError | None = None

    def get(self) -> Any:
        if self.load_error is not None:
            raise self.load_error
        if self._predictor is None:
            try:
                self._predictor = self._load()
            except CordwatchError as err:
                self.load_error = err
                raise
            except Exception as err:
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                self.load_error = InputError(f"cannot load the model: {msg}", self._package_dir)
                raise self.load_error from err
        return self._predictor

    @property
    def device(self) -> str | None:
        return None if self._predictor is None else str(self._predictor.device)


def _segment_one(
    predictor: _LazyPredictor,
    image: Path,
    seg_path: Path,
    meta_path: Path,
    provenance: dict[str, Any],
    output: Output,
) -> None:
    img, data, spacing = nnunet.read_image(image)
    t0 = time.perf_counter()
    soft, binary = nnunet.predict_array(predictor.get(), data, spacing)
    seconds = time.perf_counter() - t0
    is_soft = output == "soft"
    payload = nnunet.nifti_bytes(
        nnunet.segmentation_image(soft if is_soft else binary, img, soft=is_soft)
    )
    meta = {
        **provenance,
        "segmentation_sha256": hashlib.sha256(payload).hexdigest(),
        "image_shape": list(data.shape),
        "image_spacing": list(spacing),
        "device": predictor.device,
        "predict_seconds": round(seconds, 3),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_entry(seg_path, meta_path, payload, meta)


def _write_entry(seg_path: Path, meta_path: Path, payload: bytes, meta: dict[str, Any]) -> None:
    """Sidecar first, NIfTI last and each atomic: the NIfTI's presence marks a complete entry."""
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    with atomic_path(seg_path) as tmp:
        tmp.write_bytes(payload)


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    """A rich progress bar on stderr (stdout stays clean for --json), or a no-op."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]segmenting[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        bar.add_task("", total=total, status="")
        yield bar


def segment_cohort(
    package_dir: str | Path,
    package_sha256: str,
    images: Sequence[tuple[str, str | Path, str | None]],
    cache_dir: str | Path,
    device: str = "auto",
    tta: bool = False,
    progress: bool = True,
    *,
    folds: Sequence[int | str] | None = None,
    output: Output = "binary",
    package_manifest: Mapping[str, str] | None = None,
    num_threads: int | None = None,
) -> list[SegmentationResult]:
    """Segment every ``(key, image path, image sha256)`` with the model in ``package_dir``.

    Returns one :class:`SegmentationResult` per image, in input order. Cached images cost one
    sha256 of the image (which must match the given one; ``None`` means "hash it now"). The
    model is loaded once, and only if some image is not cached; ``package_manifest``
    (relative path -> sha256) is checked before its checkpoints are unpickled. ``output`` is
    ``binary`` (nnU-Net's label map, uint8) or ``soft`` (foreground probability, float32).
    ``num_threads`` bounds torch's CPU threads (default: cores not already busy). Raises
    CordwatchError only for a model that cannot be loaded; an image that fails is reported as
    ``failed`` with its error.
    """
    cache = Path(cache_dir)
    settings = InferenceSettings.current(tta=tta, folds=folds, output=output)
    provenance = {
        "package_sha256": package_sha256,
        "settings": asdict(settings),
    }

    predictor = predictor_loader(
        package_dir,
        device=device,
        tta=tta,
        folds=folds,
        package_manifest=package_manifest,
        num_threads=num_threads,
    )
    results: list[SegmentationResult] = []
    counts = {"cached": 0, "computed": 0, "failed": 0}
    with _progress(progress, len(images)) as bar:
        for key, image_path, image_sha in images:
            if bar is not None:
                bar.update(bar.task_ids[0], description=key)
            result = segment_image(
                predictor, key, Path(image_path), image_sha, cache, settings, provenance
            )
            counts[outcome(result)] += 1
            results.append(result)
            if bar is not None:
                status = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
                bar.update(bar.task_ids[0], advance=1, status=status)
    return results


def predictor_loader(
    package_dir: str | Path,
    *,
    device: str = "auto",
    tta: bool = False,
    folds: Sequence[int | str] | None = None,
    package_manifest: Mapping[str, str] | None = None,
    num_threads: int | None = None,
) -> _LazyPredictor:
    """The package's predictor, loaded (hashes verified against ``package_manifest`` first) on
    the first image that is not cached. The drift engine keeps one per worker and package."""

    def load() -> Any:
        return nnunet.load_predictor(
            package_dir,
            device=device,
            tta=tta,
            folds=folds,
            expected_sha256=package_manifest,
            num_threads=num_threads,
        )

    return _LazyPredictor(load, Path(package_dir))


def segment_image(
    predictor: _LazyPredictor,
    key: str,
    image: Path,
    image_sha: str | None,
    cache: Path,
    settings: InferenceSettings,
    provenance: Mapping[str, Any],
) -> SegmentationResult:
    """One image of a cohort: hash it, reuse its cache entry or predict and write one.

    A failing image is returned as ``failed``; only a model that cannot be loaded raises.
    """
    t0 = time.perf_counter()
    ckey: str | None = None
    try:
        actual = _image_sha256(image)
        if image_sha is not None and actual != image_sha.lower():
            raise IntegrityError(
                f"sha256 {actual[:12]}... does not match the cohort's {image_sha[:12]}...",
                image,
            )
        ckey = cache_key(str(provenance["package_sha256"]), actual, settings)
        seg_path, meta_path = entry_paths(cache, ckey)
        hit = cached_segmentation(cache, ckey)
        if hit is None:
            _segment_one(
                predictor,
                image,
                seg_path,
                meta_path,
                {**provenance, "image_sha256": actual, "image": str(image)},
                settings.output,
            )
        return SegmentationResult(
            key, image, "ok", seg_path, None, time.perf_counter() - t0, hit is not None, ckey
        )
    except Exception as err:  # one bad image must not stop the cohort
        if predictor.load_error is not None:  # ... but a broken model must
            raise
        return _failed(key, image, _one_line(err, image), t0, ckey)


def outcome(result: SegmentationResult) -> str:
    """``failed``, ``cached`` or ``computed``: what the progress bar counts."""
    return "failed" if result.status == "failed" else "cached" if result.cached else "computed"


def _failed(key: str, image: Path, error: str, t0: float, ckey: str | None) -> SegmentationResult:
    return SegmentationResult(
        key, image, "failed", None, error, time.perf_counter() - t0, False, ckey
    )


def _one_line(err: Exception, image: Path) -> str:
    if isinstance(err, CordwatchError):
        return str(err)
    first = str(err).splitlines()[0] if str(err) else ""
    return f"{image}: {type(err).__name__}" + (f": {first}" if first else "")


def _image_sha256(image: Path) -> str:
    try:
        return sha256_file(image)
    except FileNotFoundError as err:
        raise IntegrityError("image not found", image) from err
    except OSError as err:
        raise IntegrityError(f"image unreadable: {err.strerror}", image) from err


def summarize(results: Sequence[SegmentationResult]) -> dict[str, Any]:
    """Counts and the failures, for reports and ``--json``."""
    ok = [r for r in results if r.status == "ok"]
    return {
        "n_images": len(results),
        "n_ok": len(ok),
        "n_cached": sum(r.cached for r in ok),
        "n_failed": len(results) - len(ok),
        "failures": [{"key": r.key, "error": r.error} for r in results if r.status == "failed"],
        "seconds": round(sum(r.seconds for r in results), 3),
    }
