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

The predictor (network, weights) is loaded once per cohort and kept across images; while one
image is predicted, a thread hashes, looks up and reads the next (``prefetch``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from drift import __version__
from drift.cohort.external import SegmenterSettings
from drift.cohort.sct_pipeline import SctPipeline
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
    # How the model is run around the network: SCT's pipeline (orientation, crop box source,
    # paddings, post-processing) or an external command; None: nnU-Net on the image as stored.
    pipeline: SctPipeline | SegmenterSettings | None = None

    @classmethod
    def current(
        cls,
        tta: bool = False,
        folds: Sequence[int | str] | None = None,
        output: Output = "binary",
        pipeline: SctPipeline | SegmenterSettings | None = None,
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
            pipeline=pipeline,
        )


def package_pipeline(package_dir: str | Path) -> SctPipeline | SegmenterSettings | None:
    """The pipeline a package asks for (read from its files, nothing unpickled); None for a
    plain nnU-Net package or a folder that is not there (its loading will say so)."""
    from drift.cohort import external, sct_pipeline

    if not Path(package_dir).is_dir():
        return None

    return external.settings_for_package(package_dir) or sct_pipeline.pipeline_for_package(
        package_dir
    )


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def cache_key(
    package_sha256: str,
    image_sha256: str,
    settings: InferenceSettings,
    extra: Mapping[str, str] | None = None,
) -> str:
    """sha256 of the model, the image and the settings: the name of a cache entry.

    >>> s = InferenceSettings(nnunetv2="2.6.0", torch="2.13.0")
    >>> cache_key("a" * 64, "b" * 64, s) == cache_key("a" * 64, "b" * 64, s)
    True
    >>> from dataclasses import replace
    >>> cache_key("a" * 64, "b" * 64, s) == cache_key("a" * 64, "b" * 64, replace(s, tta=True))
    False
    """
    settings_dict = asdict(settings)
    if settings_dict.get("pipeline") is None:  # keys of plain nnU-Net runs stay as they were
        settings_dict.pop("pipeline", None)
    payload: dict[str, Any] = {
        "package_sha256": package_sha256.lower(),
        "image_sha256": image_sha256.lower(),
        "settings": settings_dict,
    }
    if extra:  # e.g. the sha256 of the ground-truth mask a crop box comes from
        payload["extra"] = dict(extra)
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
    crop_source: Path | None = None,
    loaded: tuple[Any, Any, tuple[float, float, float]] | None = None,
) -> None:
    img, data, spacing = loaded if loaded is not None else nnunet.read_image(image)
    t0 = time.perf_counter()
    model = predictor.get()
    steps: dict[str, Any] = {}
    if hasattr(model, "predict_image"):  # SCT's pipeline or an external segmenter
        soft, binary, steps = model.predict_image(image, img, data, spacing, crop_source)
    else:
        soft, binary = nnunet.predict_array(model, data, spacing)
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
        **({"pipeline_steps": steps} if steps else {}),
    }
    _write_entry(seg_path, meta_path, payload, meta)


def _write_entry(seg_path: Path, meta_path: Path, payload: bytes, meta: dict[str, Any]) -> None:
    """Sidecar first, NIfTI last and each atomic: the NIfTI's presence marks a complete entry."""
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    with atomic_path(seg_path) as tmp:
        tmp.write_bytes(payload)


@contextlib.contextmanager
def _progress(enabled: bool, total: int, label: str = "segmenting") -> Iterator[Any]:
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
        TextColumn(f"[bold]{label}[/bold] {{task.description}}"),
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
    crop_sources: Mapping[str, str | Path] | None = None,
    prefetch: bool = True,
) -> list[SegmentationResult]:
    """Segment every ``(key, image path, image sha256)`` with the model in ``package_dir``.

    Returns one :class:`SegmentationResult` per image, in input order. Cached images cost one
    sha256 of the image (which must match the given one; ``None`` means "hash it now"). The
    model is loaded once, and only if some image is not cached; ``package_manifest``
    (relative path -> sha256) is checked before its checkpoints are unpickled. ``output`` is
    ``binary`` (nnU-Net's label map, uint8) or ``soft`` (foreground probability, float32).
    ``num_threads`` bounds torch's CPU threads (default: cores not already busy). Raises
    CordwatchError only for a model that cannot be loaded; an image that fails is reported as
    ``failed`` with its error. The package's pipeline (:func:`package_pipeline`: SCT's
    reorientation, crop and post-processing, or an external command) is part of the settings.
    ``crop_sources`` maps a key to what the crop box of a cropped SCT model comes from: the
    image's ground-truth cord mask (NIfTI) or a box file (``.json``, an override).
    ``prefetch``: hash, look up and read the next image in a thread while the current one is
    predicted (benchmarks/bench_inference.py measures it); the results are the same.
    """
    cache = Path(cache_dir)
    pipeline = package_pipeline(package_dir)
    if isinstance(pipeline, SegmenterSettings) and pipeline.output == "soft":
        output = "soft"  # a soft segmenter's probabilities are measured as soft masks
    settings = InferenceSettings.current(tta=tta, folds=folds, output=output, pipeline=pipeline)
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

    def source(key: str) -> Path | None:
        found = (crop_sources or {}).get(key)
        return None if found is None else Path(found)

    def lookup(i: int) -> Future[_Lookup] | None:
        if not prefetch or i >= len(images):
            return None
        key, image_path, image_sha = images[i]
        return reader.submit(
            _lookup, Path(image_path), image_sha, cache, settings, provenance, source(key)
        )

    # Prefetch: one thread hashes, looks up and reads image i + 1 while image i is predicted
    # (hashlib, zlib and numpy release the GIL, as torch does).
    with (
        _progress(progress, len(images)) as bar,
        ThreadPoolExecutor(1, thread_name_prefix="cordwatch-prefetch") as reader,
    ):
        upcoming = lookup(0)
        for i, (key, image_path, image_sha) in enumerate(images):
            if bar is not None:
                bar.update(bar.task_ids[0], description=key)
            current, upcoming = upcoming, lookup(i + 1)
            try:
                result = segment_image(
                    predictor,
                    key,
                    Path(image_path),
                    image_sha,
                    cache,
                    settings,
                    provenance,
                    crop_source=source(key),
                    prefetched=current,
                )
            except BaseException:
                if upcoming is not None:
                    upcoming.cancel()
                raise
            counts[outcome(result)] += 1
            results.append(result)
            if bar is not None:
                status = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
                bar.update(bar.task_ids[0], advance=1, status=status)
    return results


def daemon_producer_threads() -> None:
    """Make nnU-Net's sliding-window producer thread a daemon thread.

    nnunetv2 2.6.0 feeds patches through a plain ``threading.Thread`` that blocks in
    ``queue.put`` once the main thread stops consuming (Ctrl-C, SIGTERM, an error), and a
    non-daemon thread keeps the interpreter from exiting: ``drift check`` hung forever after
    "interrupted". As a daemon it dies with the process, which then exits 130/143 at once.
    """
    import threading

    from nnunetv2.inference import predict_from_raw_data

    if getattr(predict_from_raw_data.Thread, "_cordwatch_daemon", False):
        return

    class _DaemonThread(threading.Thread):
        _cordwatch_daemon = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["daemon"] = True
            super().__init__(*args, **kwargs)

    predict_from_raw_data.Thread = _DaemonThread  # type: ignore[misc,assignment]


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
    the first image that is not cached. The drift engine keeps one per worker and package.
    An SCT package's predictor runs SCT's pipeline; an external segmenter runs its command."""

    def load() -> Any:
        from drift.cohort import external, sct_pipeline

        if external.is_segmenter(package_dir):
            return external.load_segmenter(package_dir, package_manifest)
        daemon_producer_threads()
        predictor = nnunet.load_predictor(
            package_dir,
            device=device,
            tta=tta,
            folds=folds,
            expected_sha256=package_manifest,
            num_threads=num_threads,
        )
        pipeline = package_pipeline(package_dir)
        if isinstance(pipeline, sct_pipeline.SctPipeline):
            return sct_pipeline.SctPredictor(predictor, pipeline)
        return predictor

    return _LazyPredictor(load, Path(package_dir))


@dataclass
class _Lookup:
    """An image hashed, its cache key and entry looked up and, on a miss, the image read:
    everything before the network, which :func:`segment_cohort` does for the next image while
    the current one is predicted."""

    sha256: str = ""
    extra: dict[str, str] | None = None
    key: str | None = None
    hit: Path | None = None
    loaded: tuple[Any, Any, tuple[float, float, float]] | None = None
    error: Exception | None = None


def _lookup(
    image: Path,
    image_sha: str | None,
    cache: Path,
    settings: InferenceSettings,
    provenance: Mapping[str, Any],
    crop_source: Path | None,
) -> _Lookup:
    """Never raises: an error is kept for the image's result (it may run in a thread)."""
    out = _Lookup()
    try:
        out.sha256 = _image_sha256(image)
        if image_sha is not None and out.sha256 != image_sha.lower():
            raise IntegrityError(
                f"sha256 {out.sha256[:12]}... does not match the cohort's {image_sha[:12]}...",
                image,
            )
        out.extra = _crop_extra(settings, crop_source)
        out.key = cache_key(str(provenance["package_sha256"]), out.sha256, settings, out.extra)
        out.hit = cached_segmentation(cache, out.key)
        if out.hit is None:
            out.loaded = nnunet.read_image(image)
    except Exception as err:
        out.error = err
    return out


def segment_image(
    predictor: _LazyPredictor,
    key: str,
    image: Path,
    image_sha: str | None,
    cache: Path,
    settings: InferenceSettings,
    provenance: Mapping[str, Any],
    crop_source: Path | None = None,
    *,
    prefetched: Future[_Lookup] | None = None,
) -> SegmentationResult:
    """One image of a cohort: hash it, reuse its cache entry or predict and write one.

    A failing image is returned as ``failed``; only a model that cannot be loaded raises.
    ``crop_source`` (cropped SCT models) is part of the cache key by its sha256.
    ``prefetched``: the same image's :func:`_lookup`, already under way in another thread.
    """
    t0 = time.perf_counter()
    found = (
        prefetched.result()
        if prefetched is not None
        else _lookup(image, image_sha, cache, settings, provenance, crop_source)
    )
    ckey = found.key
    try:
        if found.error is not None:
            raise found.error
        assert ckey is not None and found.extra is not None
        seg_path, meta_path = entry_paths(cache, ckey)
        # Looked up again: the same image earlier in the cohort may have written it since.
        hit = found.hit or cached_segmentation(cache, ckey)
        if hit is None:
            _segment_one(
                predictor,
                image,
                seg_path,
                meta_path,
                {**provenance, "image_sha256": found.sha256, "image": str(image), **found.extra},
                settings.output,
                crop_source,
                found.loaded,
            )
        return SegmentationResult(
            key, image, "ok", seg_path, None, time.perf_counter() - t0, hit is not None, ckey
        )
    except Exception as err:  # one bad image must not stop the cohort
        if predictor.load_error is not None:  # ... but a broken model must
            raise
        return _failed(key, image, _one_line(err, image), t0, ckey)


def _crop_extra(settings: InferenceSettings, crop_source: Path | None) -> dict[str, str]:
    """What a cropped SCT model's box comes from, by content: part of the cache key."""
    pipeline = settings.pipeline
    if not isinstance(pipeline, SctPipeline) or not pipeline.cropped or crop_source is None:
        return {}
    kind = "box_file" if crop_source.name.endswith(".json") else "gt_seg"
    try:
        sha = sha256_file(crop_source)
    except OSError as err:
        raise InputError(f"crop box source unreadable: {err.strerror}", crop_source) from err
    return {"crop_source": kind, "crop_source_sha256": sha}


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
