"""Train the tiny demo nnU-Net v2 models on phantom data, on CPU.

Usage (from the repository root; each model takes about 12 min of CPU on one core, 2,000
iterations, 13 min of wall time on a free core)::

    python -m models.recipes.train_demo train demo-good
    python -m models.recipes.train_demo train demo-biased
    python -m models.recipes.train_demo train demo-good-seed2
    python -m models.recipes.train_demo train demo-sct-crop   # after demo-good: fine-tunes it
    python -m models.recipes.train_demo train demo-sct-crop-local   # from scratch, ~40 min
    python -m models.recipes.train_demo evaluate        # numbers for the model cards

``train`` drives nnU-Net's own pipeline, unchanged except for its size: it writes the phantom
training subjects as an nnU-Net raw dataset, extracts the fingerprint and plans with nnU-Net's
``ExperimentPlanner``, shrinks the ``3d_fullres`` configuration (3 stages, 8-16-32 features, a
32 x 48 x 48 patch), preprocesses with nnU-Net's ``DefaultPreprocessor`` and trains with a
subclass of ``nnUNetTrainer`` that only shortens the schedule. The package written to
``models/demo/<name>`` is a standard results folder (``dataset.json``, ``plans.json``,
``fold_0/checkpoint_final.pth``) whose checkpoint keeps the keys ``nnUNetPredictor`` reads
(``network_weights``, ``init_args``, ``trainer_name``, ``inference_allowed_mirroring_axes``)
and drops the optimizer state and the training log, so it loads with
``torch.load(weights_only=True)``.

Training subjects are phantom indices 100..111 of phantom seed 1: disjoint from the demo
evaluation cohort (``write_cohort(n_subjects=10, seed=0)``: indices 0..9 of seed 0). The run
is seeded and deterministic on one machine and set of library versions (two runs gave
bit-identical weights). Model cards: ``models/cards/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from registry.package import SCT_PAD_KEYS

REPO = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO / "models" / "demo"
DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID:03d}_CordwatchPhantom"
PLANS_NAME = "nnUNetPlansTiny"
CONFIGURATION = "3d_fullres"
TRAINER_NAME = "nnUNetTrainerCordwatchTiny"
CONTRASTS = ("T1w", "T2w", "T2star")
EVAL_SUBJECTS = range(10)  # the demo cohort: write_cohort(n_subjects=10, seed=0)
EVAL_SEED = 0


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a demo model's weights."""

    name: str
    labels: str  # "gt": the phantom's binary ground truth; "biased": see _labels
    seed: int  # torch / numpy / python seed of the training run
    phantom_seed: int = 1
    subjects: tuple[int, ...] = tuple(range(100, 112))
    val_subjects: tuple[int, ...] = (110, 111)
    epochs: int = 50
    iterations_per_epoch: int = 40
    val_iterations_per_epoch: int = 4
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (32, 48, 48)  # (z, y, x): the whole 48 mm axial view
    features: tuple[int, ...] = (8, 16, 32)
    initial_lr: float = 1e-2
    biased_threshold: float = 0.4
    # nnU-Net channel name: "MRI" is z-scored per image (a crop by its own statistics);
    # "noNorm" feeds the intensities as they are.
    channel: str = "MRI"
    # Crops per training image around the ground-truth cord (beside the whole image), each face
    # padded by a seeded uniform draw from crop_pad_mm (mm), as sc-crop pads a detection.
    crops: int = 0
    crop_pad_mm: tuple[float, float] = (3.0, 20.0)
    # SCT's release extras: crop_metadata.json paddings (mm) and image_orientation.
    sct_paddings: tuple[tuple[str, float], ...] | None = None
    image_orientation: str | None = None
    # Start from this demo model's weights (fine-tuning) instead of nnU-Net's random init.
    init_from: str | None = None
    # Downsample in-plane too (nnU-Net's default) or along z only (a network whose in-plane
    # output does not depend on where a tile starts modulo its stride).
    inplane_stride: bool = True
    # Feature normalisation: nnU-Net's "instance" (statistics of each patch) or "batch"
    # (running statistics at inference: a prediction that does not depend on the rest of
    # the tile).
    norm: str = "instance"


RECIPES = {
    r.name: r
    for r in (
        Recipe(name="demo-good", labels="gt", seed=1),
        Recipe(name="demo-biased", labels="biased", seed=1),
        Recipe(name="demo-good-seed2", labels="gt", seed=2),
        # A cropped SCT package (issue 10), trained as SCT's contrast-agnostic v4 is, on crops
        # around the cord beside the whole images, z-scored per image (per crop) as SCT's model
        # is. Its patch (32 voxels in-plane) is smaller than any crop (13 mm paddings around a
        # cord >= 7 mm), so nnU-Net never zero-pads a crop: with the 48-voxel patch of the
        # first version, that padding (the crop's own mean after its z-score) moved the cropped
        # CSA +0.7..+1.9 % per level from full-image inference; now +0.0..+0.36 % (model card).
        # Two stages: demo-good -> demo-sct-crop-stage1 (not committed; trained first when
        # demo-sct-crop is trained) -> demo-sct-crop.
        Recipe(
            name="demo-sct-crop-stage1",
            labels="gt",
            seed=1,
            epochs=30,
            initial_lr=3e-3,
            init_from="demo-good",
            channel="MRI",
            patch_size=(32, 32, 32),
            crops=2,
            crop_pad_mm=(13.0, 20.0),
            sct_paddings=tuple((k, 13.0) for k in SCT_PAD_KEYS),
            image_orientation="RPI",
        ),
        Recipe(
            name="demo-sct-crop",
            labels="gt",
            seed=2,
            epochs=30,
            initial_lr=2e-3,
            init_from="demo-sct-crop-stage1",
            channel="MRI",
            patch_size=(32, 32, 32),
            crops=3,
            crop_pad_mm=(13.0, 20.0),
            sct_paddings=tuple((k, 13.0) for k in SCT_PAD_KEYS),
            image_orientation="RPI",
        ),
        # The same SCT package layout with a network whose answer at a voxel depends only on
        # the 21-voxel in-plane neighbourhood around it (issue 10): downsampling along z only,
        # batch norm (fixed statistics at inference) instead of instance norm, raw intensities
        # ("noNorm") instead of a z-score per crop, and a 48-voxel patch that holds the whole
        # axial view. A 13 mm padding is more than the 10-voxel reach, so around the cord a
        # crop and the whole image give the network the same input (model card).
        Recipe(
            name="demo-sct-crop-local",
            labels="gt",
            seed=1,
            epochs=50,
            channel="noNorm",
            norm="batch",
            inplane_stride=False,
            crops=3,
            crop_pad_mm=(13.0, 20.0),
            sct_paddings=tuple((k, 13.0) for k in SCT_PAD_KEYS),
            image_orientation="RPI",
        ),
    )
}


def _labels(subject: Any, recipe: Recipe) -> np.ndarray:
    """Training labels. ``biased`` thresholds the partial-volume mask lower than the ground
    truth's 0.5, which moves the boundary outwards by a fraction of a voxel: a systematic CSA
    over-estimate of a few percent, the kind of drift the gate must catch."""
    if recipe.labels == "gt":
        return np.asarray(subject.binary_seg, dtype=np.uint8)
    if recipe.labels == "biased":
        return (np.asarray(subject.soft_seg) >= recipe.biased_threshold).astype(np.uint8)
    raise ValueError(f"unknown label mode {recipe.labels!r}")


def _make_subject(index: int, seed: int) -> Any:
    from drift.measure.phantoms import make_subject

    return make_subject(index, seed=seed, contrasts=CONTRASTS)


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, affine), path)


def write_raw_dataset(raw_root: Path, recipe: Recipe) -> list[list[str]]:
    """Write the training phantoms as an nnU-Net raw dataset; return case ids per subject."""
    folder = raw_root / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    cases_per_subject = []
    for index in recipe.subjects:
        subject = _make_subject(index, recipe.phantom_seed)
        labels = _labels(subject, recipe)
        cases = []
        rng = np.random.default_rng([recipe.seed, index])
        for contrast in CONTRASTS:
            case = f"sub{index:03d}_{contrast}"
            image = np.asarray(subject.images[contrast], dtype=np.float32)
            _save_nifti(image, subject.affine, folder / "imagesTr" / f"{case}_0000.nii.gz")
            _save_nifti(labels, subject.affine, folder / "labelsTr" / f"{case}.nii.gz")
            cases.append(case)
            for k in range(recipe.crops):
                window, affine = _training_crop(subject, rng, recipe.crop_pad_mm)
                crop_case = f"{case}_crop{k}"
                path = folder / "imagesTr" / f"{crop_case}_0000.nii.gz"
                _save_nifti(np.ascontiguousarray(image[window]), affine, path)
                path = folder / "labelsTr" / f"{crop_case}.nii.gz"
                _save_nifti(np.ascontiguousarray(labels[window]), affine, path)
                cases.append(crop_case)
        cases_per_subject.append(cases)
    dataset_json: dict[str, Any] = {
        "channel_names": {"0": recipe.channel},
        "labels": {"background": 0, "spinal_cord": 1},
        "numTraining": sum(len(c) for c in cases_per_subject),
        "file_ending": ".nii.gz",
        "name": f"cordwatch {recipe.name}",
        "description": f"cordwatch phantom training data ({recipe.labels} labels); "
        f"phantom seed {recipe.phantom_seed}, subjects {recipe.subjects[0]}..{recipe.subjects[-1]}",
    }
    if recipe.image_orientation:
        dataset_json["image_orientation"] = recipe.image_orientation
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return cases_per_subject


def _training_crop(
    subject: Any, rng: np.random.Generator, pad_mm: tuple[float, float]
) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """A crop around the ground-truth cord with seeded paddings, by the same box code the
    inference uses (sc-crop's padding rule); returns the index window and its affine."""
    from drift.cohort.sct_pipeline import box_from_mask

    pads = {k: float(rng.uniform(*pad_mm)) for k in SCT_PAD_KEYS}
    box = box_from_mask(np.asarray(subject.binary_seg), subject.affine, subject.spacing, pads)
    window = box.slices()
    affine = np.array(subject.affine, dtype=float)
    affine[:3, 3] = affine[:3, :3] @ np.array([box.xmin, box.ymin, box.zmin]) + affine[:3, 3]
    return window, affine


def tiny_plans(plans: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """nnU-Net's own plans with the 3d_fullres network and patch shrunk to demo size."""
    config = plans["configurations"][CONFIGURATION]
    n_stages = len(recipe.features)
    arch = config["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=n_stages,
        features_per_stage=list(recipe.features),
        kernel_sizes=[[3, 3, 3]] * n_stages,
        strides=[[1, 1, 1]] + [[2, 2, 2] if recipe.inplane_stride else [2, 1, 1]] * (n_stages - 1),
        n_conv_per_stage=[2] * n_stages,
        n_conv_per_stage_decoder=[2] * (n_stages - 1),
    )
    if recipe.norm == "batch":
        arch["norm_op"] = "torch.nn.modules.batchnorm.BatchNorm3d"
    elif recipe.norm != "instance":
        raise ValueError(f"unknown norm {recipe.norm!r}")
    config.update(
        patch_size=list(recipe.patch_size),
        batch_size=recipe.batch_size,
        data_identifier=f"{PLANS_NAME}_{CONFIGURATION}",
    )
    plans["plans_name"] = PLANS_NAME
    plans["configurations"] = {CONFIGURATION: config}
    return plans


def _trainer_class() -> type:
    """nnUNetTrainer with a short schedule; everything else (loss, augmentation, deep
    supervision, poly learning rate, SGD with Nesterov momentum) is nnU-Net's default."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return type(TRAINER_NAME, (nnUNetTrainer,), {})


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def slim_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What inference needs, nothing pickled beyond tensors and plain containers."""
    init_args = dict(ckpt["init_args"])
    init_args.pop("device", None)  # a torch.device; inference picks its own
    mirror = ckpt.get("inference_allowed_mirroring_axes")
    return {
        "network_weights": {
            k: v.detach().cpu().contiguous() for k, v in ckpt["network_weights"].items()
        },
        "init_args": init_args,
        "trainer_name": ckpt["trainer_name"],
        "inference_allowed_mirroring_axes": None if mirror is None else [int(a) for a in mirror],
        "current_epoch": int(ckpt["current_epoch"]),
    }


def _start_package(name: str, work: Path) -> Path:
    """The package whose weights a fine-tuning starts from: the committed models/demo/NAME,
    else (an intermediate stage of a recipe chain, not committed) that recipe trained first,
    in its own process (nnU-Net reads its folders from the environment at import time)."""
    committed = DEMO_DIR / name
    if (committed / "fold_0" / "checkpoint_final.pth").is_file():
        return committed
    if name not in RECIPES:
        raise SystemExit(f"train_demo: {name}: neither a committed demo model nor a recipe")
    out = work / "stages" / name
    cmd = [sys.executable, "-m", "models.recipes.train_demo", "train", name, "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=DEMO_DIR.parents[1], stdout=sys.stderr)
    return out


def train(
    recipe: Recipe, out_dir: Path, workdir: Path | None = None, threads: int = 1
) -> dict[str, Any]:
    """Train one demo model and write its package to ``out_dir``. Returns a summary.

    ``threads``: torch CPU threads. One is the default: on a shared 2-core machine a second
    OpenMP thread mostly spins waiting for a core (measured: 4x the CPU time per epoch).
    """
    started = time.perf_counter()
    cpu_started = time.process_time()
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"cordwatch-{recipe.name}-"))
    if work.exists():
        shutil.rmtree(work)
    for sub in ("raw", "preprocessed", "results"):
        (work / sub).mkdir(parents=True)
    # nnU-Net reads its folders and process counts from the environment at import time.
    os.environ.update(
        nnUNet_raw=str(work / "raw"),
        nnUNet_preprocessed=str(work / "preprocessed"),
        nnUNet_results=str(work / "results"),
        nnUNet_n_proc_DA="1",  # the planner needs >= 1; training sets 0 below
        nnUNet_def_n_proc="1",
        nnUNet_compile="false",
    )
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    torch.set_num_threads(threads)
    _seed_everything(recipe.seed)

    cases = write_raw_dataset(work / "raw", recipe)
    extract_fingerprint_dataset(DATASET_ID, num_processes=1, clean=True, verbose=False)
    ExperimentPlanner(DATASET_ID).plan_experiment()
    pre = work / "preprocessed" / DATASET_NAME
    plans = tiny_plans(load_json(str(pre / "nnUNetPlans.json")), recipe)
    save_json(plans, str(pre / f"{PLANS_NAME}.json"), sort_keys=False)
    DefaultPreprocessor(verbose=False).run(DATASET_ID, CONFIGURATION, PLANS_NAME, 1)
    val = {f"sub{i:03d}" for i in recipe.val_subjects}
    split: dict[str, list[str]] = {"train": [], "val": []}
    for subject_cases in cases:
        split["val" if subject_cases[0][:6] in val else "train"].extend(subject_cases)
    save_json([split], str(pre / "splits_final.json"))
    prepared = time.perf_counter()
    cpu_prepared = time.process_time()

    # Augment in this process (nnU-Net's SingleThreadedAugmenter): no worker start-up, and the
    # seeded run is reproducible on the same machine and library versions.
    os.environ.update(nnUNet_n_proc_DA="0")
    _seed_everything(recipe.seed)
    trainer = _trainer_class()(
        plans=plans,
        configuration=CONFIGURATION,
        fold=0,
        dataset_json=load_json(str(pre / "dataset.json")),
        device=torch.device("cpu"),
    )
    trainer.num_epochs = recipe.epochs
    trainer.num_iterations_per_epoch = recipe.iterations_per_epoch
    trainer.num_val_iterations_per_epoch = recipe.val_iterations_per_epoch
    trainer.initial_lr = recipe.initial_lr
    trainer.save_every = recipe.epochs + 1
    if recipe.init_from:  # the same architecture: every weight, the segmentation heads too
        trainer.initialize()
        start = _start_package(recipe.init_from, work) / "fold_0" / "checkpoint_final.pth"
        trainer.network.load_state_dict(torch.load(start, weights_only=True)["network_weights"])
    trainer.run_training()
    trained = time.perf_counter()
    cpu_trained = time.process_time()

    results = Path(trainer.output_folder_base)
    ckpt = torch.load(results / "fold_0" / "checkpoint_final.pth", weights_only=False)
    log = ckpt["logging"]
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "fold_0").mkdir(parents=True)
    shutil.copy(results / "dataset.json", out_dir / "dataset.json")
    shutil.copy(results / "plans.json", out_dir / "plans.json")
    if recipe.sct_paddings:  # SCT's v4 release extra, read by sct_deepseg and by cordwatch
        meta = {"sc_crop_version": "0.12.1", **dict(recipe.sct_paddings)}
        (out_dir / "crop_metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    torch.save(slim_checkpoint(ckpt), out_dir / "fold_0" / "checkpoint_final.pth")
    summary = {
        "recipe": asdict(recipe),
        "torch": torch.__version__,
        "nnunetv2": _version("nnunetv2"),
        "n_training_images": len(split["train"]),
        "n_validation_images": len(split["val"]),
        "seconds_prepare": round(prepared - started, 1),
        "seconds_train": round(trained - prepared, 1),
        # CPU time of this process: wall time depends on what else runs on the machine
        "cpu_seconds_prepare": round(cpu_prepared - cpu_started, 1),
        "cpu_seconds_train": round(cpu_trained - cpu_prepared, 1),
        "torch_threads": threads,
        "final_train_loss": float(log["train_losses"][-1]),
        "final_val_loss": float(log["val_losses"][-1]),
        "final_val_pseudo_dice": float(np.mean(log["dice_per_class_or_region"][-1])),
        "package_bytes": sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file()),
    }
    if workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def evaluate(names: list[str], device: str = "cpu", models_dir: Path = DEMO_DIR) -> dict[str, Any]:
    """Dice and CSA bias of each demo model against the phantom ground truth of the demo
    evaluation cohort, and the CSA ratio of every other model to demo-good, overall and per
    vertebral level.

    CSA here is the in-plane area of the label map per axial slice (voxel count x px x py) on
    the slices whose whole slab lies in the cord; per level, on that level's slices. A ratio is
    the geometric mean over the 30 images of mean-area(model) / mean-area(reference); the 95 %
    interval resamples subjects (with their three contrasts), as the gate's bootstrap does. No
    angle correction: it is the same factor for both sides of a ratio on the same slices.
    """
    from drift.measure.phantoms import LEVEL_NAMES
    from registry.nnunet import load_predictor, predict_array

    subjects = [_make_subject(i, EVAL_SEED) for i in EVAL_SUBJECTS]
    levels = sorted({int(v) for s in subjects for v in s.slice_levels} - {0})
    # area[name][subject, contrast, level or -1 (all slices)]; NaN where a level is absent
    shape = (len(subjects), len(CONTRASTS), len(levels) + 1)
    gt_area = np.full(shape, np.nan)
    area: dict[str, np.ndarray] = {}
    per_model: dict[str, dict[str, Any]] = {}
    for i, subject in enumerate(subjects):
        gt_area[i] = _level_means(np.asarray(subject.binary_seg), subject, levels)
    for name in names:
        predictor = load_predictor(models_dir / name, device=device)
        area[name] = np.full(shape, np.nan)
        dice, soft_ratio, seconds = [], [], []
        for i, subject in enumerate(subjects):
            gt = np.asarray(subject.binary_seg) > 0
            whole = np.isfinite(subject.true_area)
            for j, contrast in enumerate(CONTRASTS):
                t0 = time.perf_counter()
                soft, binary = predict_array(predictor, subject.images[contrast], subject.spacing)
                seconds.append(time.perf_counter() - t0)
                pred = binary > 0
                dice.append(2 * np.sum(pred & gt) / (pred.sum() + gt.sum()))
                area[name][i, j] = _level_means(pred, subject, levels)
                soft_ratio.append(soft[:, :, whole].sum() / gt[:, :, whole].sum())
        vs_gt = area[name] / gt_area
        per_model[name] = {
            "n_images": len(dice),
            "dice_mean": round(float(np.mean(dice)), 4),
            "dice_min": round(float(np.min(dice)), 4),
            "csa_bias_vs_gt": _ratio_summary(vs_gt[..., -1]),
            "csa_bias_vs_gt_per_level": {
                LEVEL_NAMES[lv]: _ratio_summary(vs_gt[..., k]) for k, lv in enumerate(levels)
            },
            "soft_csa_bias_vs_gt_percent": _pct(np.exp(np.mean(np.log(soft_ratio)))),
            "seconds_per_image_median": round(float(np.median(seconds)), 2),
        }
    pairs = {}
    for name in area:
        if name != "demo-good" and "demo-good" in area:
            r = area[name] / area["demo-good"]
            pairs[f"{name} / demo-good"] = {
                "all_slices": _ratio_summary(r[..., -1]),
                "per_level": {
                    LEVEL_NAMES[lv]: _ratio_summary(r[..., k]) for k, lv in enumerate(levels)
                },
            }
    return {
        "cohort": f"make_subject(0..{len(subjects) - 1}, seed={EVAL_SEED}) x {CONTRASTS}",
        "models": per_model,
        "pairs": pairs,
    }


def _level_means(mask: np.ndarray, subject: Any, levels: list[int]) -> np.ndarray:
    """Mean in-plane area (mm^2) per level, then over all whole-slab slices."""
    px, py, _ = subject.spacing
    per_slice = np.asarray(mask, dtype=np.float64).sum(axis=(0, 1)) * px * py
    whole = np.isfinite(subject.true_area)
    out = [
        per_slice[whole & (subject.slice_levels == lv)].mean()
        if np.any(whole & (subject.slice_levels == lv))
        else np.nan
        for lv in levels
    ]
    return np.asarray([*out, per_slice[whole].mean()])


def _ratio_summary(ratios: np.ndarray, n_boot: int = 2000) -> dict[str, Any]:
    """Geometric mean (percent change), subject-bootstrap 95 % interval, image range."""
    logs = np.log(ratios)  # (subjects, contrasts)
    keep = np.isfinite(logs).all(axis=1)
    logs = logs[keep]
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(logs), size=(n_boot, len(logs)))
    boot = np.exp(logs[picks].reshape(n_boot, -1).mean(axis=1))
    return {
        "percent": _pct(np.exp(logs.mean())),
        "ci95_percent": [_pct(np.quantile(boot, 0.025)), _pct(np.quantile(boot, 0.975))],
        "range_percent": [_pct(np.exp(logs.min())), _pct(np.exp(logs.max()))],
        "n_subjects": int(keep.sum()),
    }


def _pct(ratio: float) -> float:
    return round(100.0 * (float(ratio) - 1.0), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.recipes.train_demo", description=__doc__
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train one demo model and write its package")
    p_train.add_argument("name", choices=sorted(RECIPES), help="which demo model")
    p_train.add_argument("--out", type=Path, help="package folder (default models/demo/NAME)")
    p_train.add_argument("--workdir", type=Path, help="keep nnU-Net's working folders here")
    p_train.add_argument("--epochs", type=int, help="override the recipe's number of epochs")
    p_train.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p_train.add_argument(
        "--summary", type=Path, help="also write the training summary (JSON) to this file"
    )
    p_eval = sub.add_parser("evaluate", help="Dice and CSA bias of the committed demo models")
    p_eval.add_argument("names", nargs="*", help="models (default: all committed ones)")
    p_eval.add_argument("--json", type=Path, help="also write the numbers to this file")
    p_eval.add_argument(
        "--models-dir", type=Path, default=DEMO_DIR, help="where the packages are (models/demo)"
    )
    args = parser.parse_args(argv)

    run: Callable[[], dict[str, Any]]
    if args.command == "train":
        recipe = RECIPES[args.name]
        if args.epochs:
            recipe = Recipe(**{**asdict(recipe), "epochs": args.epochs})
        out = args.out or DEMO_DIR / recipe.name

        def run() -> dict[str, Any]:
            return train(recipe, out, args.workdir, args.threads)

    else:
        names = args.names or [n for n in RECIPES if (args.models_dir / n / "plans.json").is_file()]

        def run() -> dict[str, Any]:
            return evaluate(names, models_dir=args.models_dir)

    # nnU-Net talks on stdout; keep stdout for the JSON result.
    with contextlib.redirect_stdout(sys.stderr):
        result = run()
    text = json.dumps(result, indent=2)
    print(text)
    target = args.json if args.command == "evaluate" else args.summary
    if target:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n")
    return 0


if __name__ == "__main__":  # nnU-Net preprocessing spawns processes: keep this guard
    sys.exit(main())
