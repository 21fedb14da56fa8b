"""Load an nnU-Net v2 results folder and segment arrays or NIfTI files with it.

A package is an nnU-Net v2 results folder: ``dataset.json``, ``plans.json`` and
``fold_*/checkpoint_final.pth``. The network is rebuilt from the plans (not from the trainer
class named in the checkpoint, whose lookup fails for trainer variants such as
``nnUNetTrainer_2000epochs`` or the project's own tiny trainer) and handed to
``nnUNetPredictor.manual_initialization``.

Checkpoints are pickles. The registry verifies a package's sha256 manifest before calling this
module; :func:`load_predictor` verifies it again when given ``expected_sha256``, before anything
is unpickled. A checkpoint is first read with ``torch.load(weights_only=True)``; only a checkpoint
that needs more than tensors and plain containers (stock nnU-Net ones hold numpy scalars in their
training log) is unpickled fully, which is safe exactly because its bytes were verified.

Axis order: nibabel gives arrays as (x, y, z) with voxel sizes (px, py, pz); nnU-Net follows
SimpleITK, (z, y, x) with spacing (pz, py, px). :func:`predict_array` takes and returns (x, y, z)
and transposes both the data and the spacing on the way in and out.

torch and nnunetv2 are imported inside the functions so that importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import io
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from registry.errors import InputError, IntegrityError
from registry.fsutil import atomic_path, sha256_file

if TYPE_CHECKING:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

CHECKPOINT_NAME = "checkpoint_final.pth"
Fold = int | str


def available_cpus() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """torch CPU threads for inference: ``$CORDWATCH_TORCH_THREADS``, else the cores that are
    not already busy (available cores minus the 1-minute load average, at least one).

    On a shared machine a thread without a core of its own only spins: measured on 2 cores
    with the other one busy, 2 threads took 2.9 s per phantom image and 1 thread 1.4 s; on an
    idle machine 2 threads took 0.9 s.
    """
    env = os.environ.get("CORDWATCH_TORCH_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError as err:
            raise InputError(f"CORDWATCH_TORCH_THREADS must be an integer, not {env!r}") from err
    cpus = available_cpus()
    try:
        busy = int(os.getloadavg()[0])
    except OSError:  # pragma: no cover - no load average on this platform
        busy = 0
    return max(1, min(cpus, cpus - busy))


@contextlib.contextmanager
def _quiet_stdout(keep: bool = True) -> Iterator[None]:
    """nnU-Net prints on stdout; keep stdout for --json. ``keep``: send it to stderr (what it
    says while predicting, e.g. a fall-back to CPU memory), else drop it (the notices it
    prints on import and construction: unset training folders, "CPU is not cuda")."""
    with contextlib.redirect_stdout(sys.stderr if keep else io.StringIO()):
        yield


def _import_nnunet() -> None:
    """Import nnunetv2 with thread counts suited to this machine and its notices on stderr."""
    # nnU-Net reads these once, at import: without them it resamples with 8 threads and asks
    # `hostname` for a lookup table of DKFZ machines.
    os.environ.setdefault("nnUNet_def_n_proc", str(default_threads()))
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    with _quiet_stdout(keep=False):
        importlib.import_module("nnunetv2.paths")
        importlib.import_module("nnunetv2.inference.predict_from_raw_data")


def results_folder(package_dir: str | Path) -> Path:
    """The nnU-Net results folder inside ``package_dir``: itself, or the one nested folder
    holding ``plans.json`` (release zips often wrap the results folder in a directory)."""
    package_dir = Path(package_dir)
    if not package_dir.is_dir():
        raise InputError("model package folder not found", package_dir)
    if (package_dir / "plans.json").is_file():
        return package_dir
    found = sorted(p.parent for p in package_dir.rglob("plans.json"))
    if len(found) != 1:
        what = "no plans.json" if not found else f"{len(found)} plans.json files"
        raise InputError(f"not an nnU-Net v2 results folder ({what} found)", package_dir)
    return found[0]


def available_folds(results_dir: Path, checkpoint_name: str = CHECKPOINT_NAME) -> list[Fold]:
    """Folds with a checkpoint, numbered ones in order; ``"all"`` only when there is no other."""
    numbered: list[Fold] = []
    for sub in results_dir.glob("fold_*"):
        suffix = sub.name.removeprefix("fold_")
        if suffix.isdigit() and (sub / checkpoint_name).is_file():
            numbered.append(int(suffix))
    if numbered:
        return sorted(numbered, key=int)
    if (results_dir / "fold_all" / checkpoint_name).is_file():
        return ["all"]
    raise InputError(f"no fold_*/{checkpoint_name} in the model package", results_dir)


def resolve_device(device: str = "auto") -> Any:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise InputError(f"unknown device {device!r} (use auto, cpu or cuda)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda requested but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {device!r} (use auto, cpu or cuda)")
    return dev


def verify_files(
    root: Path, expected_sha256: Mapping[str, str], required: Sequence[Path] = ()
) -> None:
    """Check every file of ``expected_sha256`` (paths relative to ``root``) and that each of
    ``required`` is listed. Raises IntegrityError naming the first bad file."""
    for rel, sha in expected_sha256.items():
        path = root / rel
        if not path.is_file():
            raise IntegrityError("listed in the sha256 manifest but missing", path)
        actual = sha256_file(path)
        if actual != sha.lower():
            raise IntegrityError(f"sha256 {actual[:12]}... does not match {sha[:12]}...", path)
    listed = {Path(rel).as_posix() for rel in expected_sha256}
    for path in required:
        if path.relative_to(root).as_posix() not in listed:
            raise IntegrityError("not covered by the sha256 manifest; refusing to load it", path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as err:
        raise InputError("missing from the model package", path) from err
    except (OSError, ValueError) as err:
        raise InputError(f"unreadable JSON: {err}", path) from err
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path)
    return data


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU: tensors-only first, a full unpickle only when needed.

    The caller has verified the file's sha256 (the registry always does; see module doc).
    """
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Stock nnU-Net checkpoints pickle numpy scalars and torch.device in their metadata.
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise InputError(f"unreadable checkpoint: {err}", path) from err
    except Exception as err:
        raise InputError(f"unreadable checkpoint: {err}", path) from err
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise InputError("not an nnU-Net v2 checkpoint (no 'network_weights')", path)
    return ckpt


def _clean_state_dict(weights: Mapping[str, Any]) -> dict[str, Any]:
    """Strip the prefixes torch.compile (``_orig_mod.``) and DDP (``module.``) add to keys."""
    out = {}
    for key, value in weights.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def load_predictor(
    package_dir: str | Path,
    device: str = "auto",
    tta: bool = False,
    folds: Sequence[Fold] | None = None,
    *,
    expected_sha256: Mapping[str, str] | None = None,
    checkpoint_name: str = CHECKPOINT_NAME,
    num_threads: int | None = None,
) -> nnUNetPredictor:
    """An ``nnUNetPredictor`` for the nnU-Net v2 results folder in ``package_dir``.

    ``folds=None`` ensembles every fold with a checkpoint. ``tta`` enables nnU-Net's mirroring
    test-time augmentation (off by default: 8x slower for 3D). ``expected_sha256`` maps paths
    relative to the results folder to their sha256; when given, every listed file is checked
    and the plans, dataset.json and checkpoints must be listed, before any checkpoint is read.
    ``num_threads`` (default: :func:`default_threads`) bounds torch's CPU threads. Several
    folds are an ensemble: nnU-Net averages their logits before the softmax.
    """
    import torch

    _import_nnunet()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    root = results_folder(package_dir)
    fold_list: list[Fold] = (
        available_folds(root, checkpoint_name) if folds is None else [_fold(f) for f in folds]
    )
    if not fold_list:
        raise InputError("no folds selected", root)
    ckpt_paths = [root / f"fold_{f}" / checkpoint_name for f in fold_list]
    for path in ckpt_paths:
        if not path.is_file():
            raise InputError("checkpoint missing from the model package", path)
    if expected_sha256 is not None:
        # Manifest paths are relative to the package, which may hold the results folder one
        # level down (SCT's layout: crop_metadata.json beside it).
        verify_files(
            Path(package_dir),
            expected_sha256,
            [root / "plans.json", root / "dataset.json", *ckpt_paths],
        )

    dev = resolve_device(device)
    torch.set_num_threads(num_threads or default_threads())

    plans = _read_json(root / "plans.json")
    dataset_json = _read_json(root / "dataset.json")
    checkpoints = [_load_checkpoint(p) for p in ckpt_paths]
    first = checkpoints[0]
    try:
        configuration = first["init_args"]["configuration"]
        plans_manager = PlansManager(plans)
        config_manager = plans_manager.get_configuration(configuration)
        label_manager = plans_manager.get_label_manager(dataset_json)
        network = get_network_from_plans(
            config_manager.network_arch_class_name,
            config_manager.network_arch_init_kwargs,
            config_manager.network_arch_init_kwargs_req_import,
            determine_num_input_channels(plans_manager, config_manager, dataset_json),
            label_manager.num_segmentation_heads,
            allow_init=False,
            deep_supervision=False,
        )
        parameters = [_clean_state_dict(c["network_weights"]) for c in checkpoints]
        network.load_state_dict(parameters[0])
    except (KeyError, TypeError, ValueError, RuntimeError, ImportError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"plans and checkpoint do not make a network: {msg}", root) from err

    mirroring = first.get("inference_allowed_mirroring_axes")
    with _quiet_stdout(keep=False):
        predictor = nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=tta,
            perform_everything_on_device=dev.type == "cuda",
            device=dev,
            verbose=False,
            allow_tqdm=False,
        )
        predictor.manual_initialization(
            network,
            plans_manager,
            config_manager,
            parameters,
            dataset_json,
            str(first.get("trainer_name", "nnUNetTrainer")),
            tuple(mirroring) if mirroring is not None else None,
        )
    return predictor


def _fold(fold: Fold) -> Fold:
    if fold == "all":
        return "all"
    try:
        return int(fold)
    except (TypeError, ValueError) as err:
        raise InputError(f"fold must be an integer or 'all', got {fold!r}") from err


def predict_array(
    predictor: nnUNetPredictor,
    data_xyz: np.ndarray,
    spacing_xyz: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Segment one single-channel volume given in nibabel's (x, y, z) order.

    Returns the foreground probability (float32) and the nnU-Net label map (uint8: argmax over
    classes), both (x, y, z) with ``data_xyz``'s shape. For a multi-class model the
    probability is that of "any foreground" (1 - p(background)).
    """
    if data_xyz.ndim != 3:
        raise InputError(f"expected a 3D image, got shape {data_xyz.shape}")
    if len(spacing_xyz) != 3 or not all(float(s) > 0 for s in spacing_xyz):
        raise InputError(f"expected three positive voxel sizes, got {tuple(spacing_xyz)}")
    # (x, y, z) -> (z, y, x), for the data and for the spacing alike; add the channel axis.
    data_zyx = np.ascontiguousarray(np.asarray(data_xyz, dtype=np.float32).transpose(2, 1, 0))
    spacing_zyx = [float(s) for s in reversed(tuple(spacing_xyz))]
    with _quiet_stdout():
        seg_zyx, probs_czyx = predictor.predict_single_npy_array(
            data_zyx[None], {"spacing": spacing_zyx}, None, None, True
        )
    probs = np.asarray(probs_czyx, dtype=np.float32)
    soft_zyx = 1.0 - probs[0] if probs.shape[0] > 2 else probs[1]
    soft_xyz = np.ascontiguousarray(soft_zyx.transpose(2, 1, 0), dtype=np.float32)
    binary_xyz = np.ascontiguousarray(np.asarray(seg_zyx).transpose(2, 1, 0), dtype=np.uint8)
    return soft_xyz, binary_xyz


def segmentation_image(data: np.ndarray, reference: Any, *, soft: bool = False) -> Any:
    """A NIfTI of ``data`` with ``reference``'s affine and header (float32 if ``soft``, else
    uint8), values stored as they are (no scaling)."""
    import nibabel as nib

    dtype = np.float32 if soft else np.uint8
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    top = 1.0 if soft else float(max(1, int(np.max(data)) if np.size(data) else 1))
    img.header["cal_min"], img.header["cal_max"] = 0.0, top
    return img


def nifti_bytes(img: Any, *, gz: bool = True) -> bytes:
    """The file's bytes; gzip without time stamp, so equal images give equal bytes."""
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1, mtime=0) if gz else raw


def write_segmentation(
    data: np.ndarray, reference: Any, out_path: str | Path, *, soft: bool = False
) -> Path:
    """Write ``data`` as NIfTI with ``reference``'s affine and header, atomically.

    ``soft`` stores float32 probabilities in [0, 1]; otherwise uint8 labels. ``.nii`` paths are
    written uncompressed, anything else gzipped.
    """
    out_path = Path(out_path)
    img = segmentation_image(data, reference, soft=soft)
    payload = nifti_bytes(img, gz=not out_path.name.endswith(".nii"))
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(payload)
    return out_path


def read_image(path: str | Path) -> tuple[Any, np.ndarray, tuple[float, float, float]]:
    """Read a 3D NIfTI: (image, float32 data (x, y, z), voxel sizes). InputError if unreadable."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(path)
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise InputError(f"not a NIfTI image ({type(img).__name__})", path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except FileNotFoundError as err:
        raise InputError("image not found", path) from err
    except InputError:
        raise
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"unreadable image: {first}", path) from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"expected a 3D image, got shape {data.shape}", path)
    if not np.all(np.isfinite(data)):
        raise InputError("image holds NaN or infinite values", path)
    zooms = img.header.get_zooms()[:3]
    spacing = (float(zooms[0]), float(zooms[1]), float(zooms[2]))
    return img, data, spacing


def seg_name(image_path: str | Path) -> str:
    """``sub-01_T2w.nii.gz`` -> ``sub-01_T2w_seg.nii.gz``."""
    name = Path(image_path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)] + "_seg" + ext
    return name + "_seg.nii.gz"


def predict_paths(
    package_dir: str | Path,
    image_paths: Sequence[str | Path],
    out_dir: str | Path,
    device: str = "auto",
    *,
    tta: bool = False,
    folds: Sequence[Fold] | None = None,
    soft: bool = False,
) -> list[Path]:
    """Segment NIfTI images one after the other; write ``<name>_seg.nii.gz`` into ``out_dir``.

    Each output keeps its input's affine and header. ``soft`` writes the foreground probability
    instead of the label map. The model is loaded once; images are predicted sequentially in
    this process (no worker processes per volume). Returns the written paths in input order.
    """
    images = [Path(p) for p in image_paths]
    names = [seg_name(p) for p in images]
    if len(set(names)) != len(names):
        raise InputError("two input images share a file name; outputs would collide", out_dir)
    predictor = load_predictor(package_dir, device=device, tta=tta, folds=folds)
    out = Path(out_dir)
    written = []
    for path, name in zip(images, names, strict=True):
        img, data, spacing = read_image(path)
        soft_xyz, binary_xyz = predict_array(predictor, data, spacing)
        written.append(
            write_segmentation(soft_xyz if soft else binary_xyz, img, out / name, soft=soft)
        )
    return written
