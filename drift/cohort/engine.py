"""Where the work on a cohort runs: in this process, or on Dask distributed.

``--scheduler`` chooses (:func:`open_engine`):

- absent: in this process, one image after another (small jobs, CI);
- ``local`` or ``local:N``: a ``LocalCluster`` of N worker processes (default: the cores), one
  thread each, started and stopped by the command;
- ``tcp://HOST:PORT``: an existing scheduler (``dask scheduler`` + ``dask worker ADDRESS
  --resources GPU=1`` on each GPU machine; Slurm through dask-jobqueue: docs/scale-out.md).

One task per (model, image) segments (on a worker offering the ``GPU`` resource when the
device is cuda, any worker otherwise), one task per image measures (anywhere). Each worker
keeps a package's predictor loaded across images (:data:`_PREDICTORS`, keyed by package
sha256 and settings), and the package's files are verified against the registry's sha256
manifest once per worker, before the first unpickle (:func:`registry.nnunet.load_predictor`).
Task keys are deterministic (package sha256, image sha256, settings, cache); retries are bounded;
a retry after a lost worker is cheap because every finished image is in the segmentation
cache. Results are gathered by input position, so they do not depend on the number of
workers or on the order in which tasks finish.

The cohort's images, the package folder and the segmentation cache must be on a file system
that every worker sees (a laptop, a workstation, or an HPC cluster's shared storage).
dask/distributed are imported only when a scheduler is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from registry.errors import CordwatchError, InputError

if TYPE_CHECKING:
    import numpy as np
    from distributed import Client, Future

    from drift.cohort.inference import (
        InferenceSettings,
        Output,
        SegmentationResult,
        _LazyPredictor,
    )
    from drift.measure.batch import BatchReport

# Nothing heavy at import time: the command line imports SCHEDULER_HELP from here, so numpy,
# nibabel (drift.cohort.inference) and dask are imported where they are used.

K = TypeVar("K", bound=Hashable)

SCHEDULER_HELP = (
    "Where to run: absent = in this process; local or local:N = a Dask LocalCluster of N "
    "worker processes started for this command; tcp://HOST:PORT = an existing Dask scheduler "
    "(docs/scale-out.md)."
)
#: Seconds to wait for a scheduler to answer, and for a GPU worker to appear.
CONNECT_TIMEOUT_S = float(os.environ.get("CORDWATCH_SCHEDULER_TIMEOUT", "10"))
#: Retries of a task that raised (a worker that died is retried by the scheduler up to its
#: ``distributed.scheduler.allowed-failures``, 3 by default).
RETRIES = 2
#: Predictors kept per worker (a drift check needs two packages).
MAX_PREDICTORS = 4


class EngineError(CordwatchError):
    """The cluster cannot run the work: no scheduler, no GPU worker, a lost task."""


# ------------------------------------------------------------------- the worker's side ----


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to segment with one package (picklable, hashable)."""

    package_dir: str
    package_sha256: str
    manifest: tuple[tuple[str, str], ...] | None
    device: str = "auto"
    tta: bool = False
    folds: tuple[str, ...] | None = None
    num_threads: int | None = None
    #: ``nnunet``; ``threshold`` is :class:`ThresholdPredictor`, the engine's stand-in for
    #: tests and benchmarks (no torch).
    loader: str = "nnunet"
    stub_delay_s: float = 0.0


_PREDICTORS: dict[ModelSpec, _LazyPredictor] = {}
_SOFTWARE = ("inference_revision", "cordwatch", "nnunetv2", "torch")


def _worker_threads() -> int | None:
    """torch threads on a worker: $CORDWATCH_TORCH_THREADS, else the worker's thread count."""
    if os.environ.get("CORDWATCH_TORCH_THREADS"):
        return None  # registry.nnunet.default_threads() reads it
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def worker_predictor(spec: ModelSpec) -> _LazyPredictor:
    """This process's predictor for ``spec``: created once, loaded (and the package verified
    against its manifest) on the first image that is not cached."""
    from drift.cohort.inference import _LazyPredictor, predictor_loader

    found = _PREDICTORS.get(spec)
    if found is not None:
        return found
    if spec.loader == "threshold":
        stub = ThresholdPredictor(spec.stub_delay_s)
        found = _LazyPredictor(lambda: stub, Path(spec.package_dir))
    elif spec.loader == "nnunet":
        found = predictor_loader(
            spec.package_dir,
            device=spec.device,
            tta=spec.tta,
            folds=spec.folds,
            package_manifest=None if spec.manifest is None else dict(spec.manifest),
            num_threads=spec.num_threads or _worker_threads(),
        )
    else:
        raise InputError(f"unknown segmenter {spec.loader!r}")
    while len(_PREDICTORS) >= MAX_PREDICTORS:
        _PREDICTORS.pop(next(iter(_PREDICTORS)))
    _PREDICTORS[spec] = found
    return found


def _worker_software() -> dict[str, Any]:
    """This process's software versions (read once: ~8 ms of package metadata per call)."""
    if not _HERE:
        from drift.cohort.inference import InferenceSettings

        _HERE.update(asdict(InferenceSettings.current()))
    return _HERE


_HERE: dict[str, Any] = {}


def segment_task(
    spec: ModelSpec,
    key: str,
    image: str,
    image_sha: str | None,
    cache_dir: str,
    settings: InferenceSettings,
    crop_source: str | None = None,
) -> SegmentationResult:
    """One image on a worker (:func:`drift.cohort.inference.segment_image`).

    The worker's own nnU-Net/torch versions must be the client's: they are part of the cache
    key, and a mixed cluster would give results that depend on which worker ran a task.
    """
    from drift.cohort.inference import segment_image

    here = _worker_software()
    ours = asdict(settings)
    diff = [f"{k} {here[k]} (client {ours[k]})" for k in _SOFTWARE if here[k] != ours[k]]
    if diff:
        raise EngineError(f"a worker runs different software: {', '.join(diff)}")
    provenance = {"package_sha256": spec.package_sha256, "settings": asdict(settings)}
    return segment_image(
        worker_predictor(spec),
        key,
        Path(image),
        image_sha,
        Path(cache_dir),
        settings,
        provenance,
        crop_source=None if crop_source is None else Path(crop_source),
    )


def call_task(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``fn(*args)``, a CordwatchError returned rather than raised (bad input is an answer,
    not a reason to retry)."""
    try:
        return fn(*args)
    except CordwatchError as err:
        return err


class ThresholdPredictor:
    """A deterministic stand-in for an nnU-Net predictor (``predict_single_npy_array``):
    foreground where the image is above its mean. For tests and benchmarks of the engine.

    ``device`` names the worker that ran it (recorded in each cache entry's sidecar), so a
    test can see where the segmentations were made.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        try:
            from distributed import get_worker

            self.device = f"stub@{get_worker().address}"
        except (ImportError, ValueError):
            self.device = "stub@in-process"

    def predict_single_npy_array(
        self, data: np.ndarray, _props: Any, _prev: Any, _out: Any, _probs: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        if self.delay_s:
            time.sleep(self.delay_s)
        image = data[0]
        fg = (image > image.mean()).astype(np.float32)
        return fg.astype(np.uint8), np.stack([1.0 - fg, fg])


# ------------------------------------------------------------------- the client's side ----


def parse_scheduler(text: str | None) -> tuple[str, int | str] | None:
    """``None`` -> None; ``local`` / ``local:N`` -> ("local", N); ``tcp://H:P`` -> ("tcp", it).

    >>> parse_scheduler("local:3"), parse_scheduler("tcp://10.0.0.1:8786")
    (('local', 3), ('tcp', 'tcp://10.0.0.1:8786'))
    """
    if text is None or text == "":
        return None
    if text == "local":
        from registry.nnunet import available_cpus

        return ("local", available_cpus())
    if text.startswith("local:"):
        n = text.removeprefix("local:")
        if not n.isdigit() or int(n) < 1:
            raise InputError(f"--scheduler local:N needs N >= 1, not {text!r}")
        return ("local", int(n))
    if text.startswith(("tcp://", "tls://")) and ":" in text.split("://", 1)[1]:
        return ("tcp", text)
    raise InputError(f"--scheduler must be local, local:N or tcp://HOST:PORT, not {text!r}")


def _stable(obj: Any) -> Any:
    """A JSON-able stand-in for a task argument that is the same in every run (a function by
    its qualified name, not by its address)."""
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    if isinstance(obj, Mapping):
        return {str(k): _stable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [_stable(v) for v in obj]
    return str(obj)


def _task_key(kind: str, *parts: Any) -> str:
    """``cordwatch-<kind>-<sha256 of the parts>``: the same task gets the same key in every run."""
    blob = json.dumps(_stable(parts), sort_keys=True, separators=(",", ":")).encode()
    return f"cordwatch-{kind}-{hashlib.sha256(blob).hexdigest()[:32]}"


class Engine:
    """Runs tasks in this process (``client`` None) or on a Dask cluster.

    ``on_done(done, total)`` is called after each finished task (the service's check page).
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        address: str | None = None,
        retries: int = RETRIES,
        gpu_wait_s: float = CONNECT_TIMEOUT_S,
        on_done: Callable[[int, int], None] | None = None,
    ) -> None:
        self.client = client
        self.address = address or (None if client is None else str(client.scheduler.address))
        self.retries = retries
        self.gpu_wait_s = gpu_wait_s
        self.on_done = on_done

    @property
    def distributed(self) -> bool:
        return self.client is not None

    # -- segmentation ----------------------------------------------------------------------

    def segment_cohort(
        self,
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
        loader: str = "nnunet",
        stub_delay_s: float = 0.0,
    ) -> list[SegmentationResult]:
        """:func:`drift.cohort.inference.segment_cohort` as one task per image; same results,
        in input order. ``loader="threshold"`` segments with :class:`ThresholdPredictor`."""
        from drift.cohort.inference import InferenceSettings, SegmenterSettings, package_pipeline

        pipeline = None if loader != "nnunet" else package_pipeline(package_dir)
        if isinstance(pipeline, SegmenterSettings) and pipeline.output == "soft":
            output = "soft"  # as in-process: a soft segmenter's probabilities are measured soft
        settings = InferenceSettings.current(tta=tta, folds=folds, output=output, pipeline=pipeline)
        spec = ModelSpec(
            str(Path(package_dir).resolve()),
            package_sha256,
            None if package_manifest is None else tuple(sorted(package_manifest.items())),
            device,
            bool(tta),
            settings.folds,
            num_threads,
            loader,
            stub_delay_s,
        )
        cache = str(Path(cache_dir).resolve())
        crops = {k: str(Path(v).resolve()) for k, v in (crop_sources or {}).items()}
        # How and into which cache (two runs into two caches are two tasks, not one).
        where = (cache, repr(spec))
        calls = [
            (
                _task_key(
                    "segment",
                    package_sha256,
                    sha or Path(p).resolve(),
                    key,
                    settings,
                    crops.get(key),
                    where,
                ),
                (spec, key, str(Path(p).resolve()), sha, cache, settings, crops.get(key)),
            )
            for key, p, sha in images
        ]
        gpu = self._wants_gpu(device)
        counts = {"cached": 0, "computed": 0, "failed": 0}
        results: list[SegmentationResult] = []

        from drift.cohort.inference import outcome

        def tick(res: SegmentationResult, bar: Any) -> None:
            counts[outcome(res)] += 1
            if bar is not None:
                status = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
                bar.update(bar.task_ids[0], advance=1, description=res.key, status=status)

        for res in self._run(segment_task, calls, progress, tick, gpu=gpu):
            results.append(res)
        return results

    def _wants_gpu(self, device: str) -> bool:
        """cuda asks for the GPU resource; auto does when some worker offers one (a cohort is
        never split between GPU and CPU workers: their floating point differs)."""
        if self.client is None or device == "cpu":
            return False
        if device.startswith("cuda"):
            return True
        return bool(self._gpu_workers())

    def _gpu_workers(self) -> list[str]:
        assert self.client is not None
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return [a for a, w in workers.items() if w.get("resources", {}).get("GPU", 0) >= 1]

    # -- anything else ---------------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., Any],
        calls: Mapping[K, tuple[Any, ...]],
        *,
        progress: bool = False,
        label: str = "measuring",
    ) -> dict[K, Any]:
        """``{key: fn(*args)}`` for each ``key: args``, one task each (here or on the cluster);
        a CordwatchError raised by ``fn`` is returned as the value, anything else raises."""
        keys = list(calls)
        named = [(_task_key(label, fn, k, calls[k]), (fn, calls[k])) for k in keys]

        def tick(_res: Any, bar: Any) -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], advance=1)

        done = self._run(call_task, named, progress, tick, gpu=False, label=label)
        return dict(zip(keys, done, strict=True))

    # -- the loop --------------------------------------------------------------------------

    def _run(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[str, tuple[Any, ...]]],
        progress: bool,
        tick: Callable[[Any, Any], None],
        *,
        gpu: bool,
        label: str = "segmenting",
    ) -> list[Any]:
        """Each ``fn(*args)``, results in input order; one progress step per finished task."""
        from drift.cohort.inference import _progress

        total = len(calls)
        with _progress(progress, total, label) as bar:
            if self.client is None:
                out = []
                for i, (_key, args) in enumerate(calls):
                    res = fn(*args)
                    tick(res, bar)
                    out.append(res)
                    if self.on_done is not None:
                        self.on_done(i + 1, total)
                return out
            return self._run_on_cluster(fn, calls, bar, tick, gpu=gpu)

    def _run_on_cluster(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[str, tuple[Any, ...]]],
        bar: Any,
        tick: Callable[[Any, Any], None],
        *,
        gpu: bool,
    ) -> list[Any]:
        from distributed import as_completed

        assert self.client is not None
        if gpu:
            self._require_gpu_worker()
        resources = {"GPU": 1} if gpu else None
        slots: dict[str, list[int]] = {}
        for i, (key, _args) in enumerate(calls):
            slots.setdefault(key, []).append(i)
        futures: list[Future] = [
            self.client.submit(
                fn, *calls[where[0]][1], key=key, resources=resources, retries=self.retries
            )
            for key, where in slots.items()
        ]
        results: list[Any] = [None] * len(calls)
        stalled_since: float | None = None
        finished = 0
        # One as_completed over all futures (linear in their number), results taken in batches:
        # the per-task cost stays flat for cohorts of thousands of images.
        with self.client.as_current():  # as_completed uses the current client
            # Results are fetched by the client's event loop as tasks finish: no blocking
            # gather() here for Ctrl-C to interrupt (distributed then logs a traceback).
            ready = as_completed(futures, with_results=True, raise_errors=False)
        try:
            while not ready.is_empty():
                done = ready.next_batch(block=False)
                if not done:
                    if gpu:
                        stalled_since = self._watch_gpu(stalled_since)
                    time.sleep(0.01)
                    continue
                done.sort(key=lambda pair: slots[pair[0].key][0])
                for fut, _value in done:
                    if fut.status != "finished":
                        self._result(fut)  # raises the task's error as an EngineError
                for fut, value in done:
                    for i in slots[fut.key]:
                        results[i] = value
                        finished += 1
                        tick(value, bar)
                        if self.on_done is not None:
                            self.on_done(finished, len(calls))
                    fut.release()
        finally:
            pending = [f for f in futures if f.status == "pending"]
            if pending:
                self.client.cancel(pending)
            ready.clear()
        return results

    def _result(self, fut: Future) -> Any:
        try:
            return fut.result()
        except CordwatchError:
            raise
        except Exception as err:
            name = type(err).__name__
            first = str(err).splitlines()[0] if str(err) else ""
            raise EngineError(
                f"task {fut.key} failed on the cluster ({name}{': ' + first if first else ''})",
                self.address,
            ) from err

    def _require_gpu_worker(self) -> None:
        assert self.client is not None
        deadline = time.monotonic() + self.gpu_wait_s
        while not self._gpu_workers():
            if time.monotonic() > deadline:
                raise EngineError(
                    f"--device cuda: no worker offers a GPU resource after {self.gpu_wait_s:g} s "
                    "(start GPU workers with `dask worker ADDRESS --resources GPU=1`)",
                    self.address,
                )
            time.sleep(0.2)

    def _watch_gpu(self, since: float | None) -> float | None:
        """Fail, rather than hang, when the last GPU worker left and none came back."""
        if self._gpu_workers():
            return None
        now = time.monotonic()
        if since is None:
            return now
        if now - since > self.gpu_wait_s:
            raise EngineError(
                f"no worker with a GPU resource for {self.gpu_wait_s:g} s; GPU tasks cannot run",
                self.address,
            )
        return since


def run_batch(
    table: str | Path,
    out_dir: str | Path,
    table_fn: Callable[..., Any],
    options: Mapping[str, Any],
    engine: Engine,
    *,
    version: str,
    progress: bool = True,
) -> BatchReport:
    """``cordwatch morphometry --batch``: one task per row of ``table`` (in this process or on
    the engine's cluster); bad rows are reported in the :class:`BatchReport`, the others are
    written to ``out_dir`` (:mod:`drift.measure.batch`)."""
    from drift.measure.batch import collect, measure_row, read_table

    rows = read_table(table)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("with --batch, -o is a folder for the CSVs, not a file", out)
    out.mkdir(parents=True, exist_ok=True)
    calls = {row.name: (row, out.resolve(), table_fn, dict(options), version) for row in rows}
    outcomes = engine.map(measure_row, calls, progress=progress, label="measuring")
    return collect(rows, outcomes)


# ---------------------------------------------------------------- starting and stopping ---


@contextlib.contextmanager
def open_engine(
    scheduler: str | None,
    *,
    say: Callable[[str], None] | None = None,
    device: str = "auto",
    timeout_s: float | None = None,
    on_done: Callable[[int, int], None] | None = None,
) -> Iterator[Engine]:
    """The engine for ``--scheduler``; a cluster it starts is stopped on the way out (also on
    Ctrl-C or an error), a scheduler it connected to is left running. ``say`` gets one line
    when a cluster is started (with its dashboard link) or connected; ``on_done(done, total)``
    after each finished task (:class:`Engine`)."""
    parsed = parse_scheduler(scheduler)
    if parsed is None:
        yield Engine(on_done=on_done)
        return
    tell = say or (lambda _msg: None)
    timeout = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise InputError(
            "--scheduler needs dask distributed: pip install 'cordwatch[scale]'"
        ) from err
    with contextlib.ExitStack() as stack:
        kind, where = parsed
        if kind == "local":
            stack.enter_context(_untrimmed_malloc())
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=int(where),
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0" if _has_bokeh() else None,
                    resources={"GPU": 1} if _local_gpus(device) else None,
                    silence_logs=40,  # logging.ERROR
                )
            )
            address = str(cluster.scheduler_address)
            link = cluster.dashboard_link if _has_bokeh() else "none (pip install bokeh)"
            tell(f"started a LocalCluster of {where} workers at {address}; dashboard: {link}")
            client = stack.enter_context(Client(cluster, timeout=timeout, set_as_default=False))
        else:
            address = str(where)
            try:
                client = stack.enter_context(Client(address, timeout=timeout, set_as_default=False))
            except (OSError, TimeoutError) as err:
                raise EngineError(
                    f"no Dask scheduler answered within {timeout:g} s", address
                ) from err
            n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            tell(f"connected to the Dask scheduler at {address} ({n} workers)")
        yield Engine(client, address=address, gpu_wait_s=timeout, on_done=on_done)


@contextlib.contextmanager
def _untrimmed_malloc() -> Iterator[None]:
    """Start workers without distributed's ``MALLOC_TRIM_THRESHOLD_=65536``: with it glibc
    maps and zeroes every large array afresh, and a PAM50-size morphometry took 2.6x the CPU
    time of the same call in this process (benchmarks/README.md, "Scale-out engine"). The
    thread limits (OMP/MKL/OpenBLAS = 1 per single-threaded worker) are kept."""
    import dask.config

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        yield


def _has_bokeh() -> bool:
    from importlib.util import find_spec

    return find_spec("bokeh") is not None


def _local_gpus(device: str) -> bool:
    """Whether a LocalCluster's workers offer the GPU (all of them share what torch sees)."""
    if device == "cpu":
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
