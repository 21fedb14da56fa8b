"""registry/nnunet.py: loading nnU-Net v2 results folders and predicting with them."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from registry import nnunet
from registry.errors import InputError, IntegrityError
from registry.fsutil import sha256_file

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "demo"
PACKAGE_FILES = ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth")

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")


# --------------------------------------------------------------------------------------------
# A pointwise "network" with an analytic answer, to test the axis order without training
# --------------------------------------------------------------------------------------------


class SignNet(torch.nn.Module):
    """Logits (-x, x): foreground exactly where the z-scored input is positive.

    Records the shape of every patch it sees (batch, channel, then nnU-Net's axes).
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return torch.cat([-x, x], dim=1)


def _plans(spacing_zyx: list[float], patch_zyx: list[int]) -> dict:
    """Minimal nnU-Net v2 plans: one 3d_fullres configuration at ``spacing_zyx``."""
    resampling = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset999_Stub",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing_zyx,
        "original_median_shape_after_transp": [11, 17, 13],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": patch_zyx,
                "median_image_size_in_voxels": [11, 17, 13],
                "spacing": spacing_zyx,
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {**resampling, "order": 3},
                "resampling_fn_seg_kwargs": {**resampling, "is_seg": True},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": resampling,
                "architecture": {
                    "network_class_name": "stub.SignNet",
                    "arch_kwargs": {},
                    "_kw_requires_import": [],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {}},
    }


def _stub_predictor(spacing_zyx: list[float], patch_zyx: list[int]):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(_plans(spacing_zyx, patch_zyx))
    dataset_json = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "cord": 1},
        "file_ending": ".nii.gz",
    }
    net = SignNet()
    # No Gaussian blending: its weights underflow float16 in patch corners, which would zero
    # the logits of border voxels; this test is about axes, not blending.
    predictor = nnUNetPredictor(
        use_gaussian=False,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        net,
        plans,
        plans.get_configuration("3d_fullres"),
        [net.state_dict()],
        dataset_json,
        "SignNetTrainer",
        None,
    )
    return predictor, net


@pytest.fixture()
def anisotropic_case() -> tuple[np.ndarray, tuple[float, float, float]]:
    """A non-symmetric (x, y, z) volume with anisotropic voxels: every axis is different."""
    rng = np.random.default_rng(7)
    data = rng.uniform(100.0, 200.0, size=(13, 17, 11)).astype(np.float32)
    data[:4] += 60.0  # a structure that is not symmetric under any axis swap
    return data, (0.5, 0.8, 2.0)


def test_predict_array_transposes_data_and_spacing(anisotropic_case) -> None:
    data, spacing_xyz = anisotropic_case
    # The plans' spacing is the input's, in nnU-Net's (z, y, x) order: with the right
    # transposition nnU-Net resamples nothing and the answer is exact.
    predictor, net = _stub_predictor(list(reversed(spacing_xyz)), [8, 16, 12])
    soft, binary = nnunet.predict_array(predictor, data, spacing_xyz)

    z = (data - data.mean()) / data.std()
    assert soft.shape == binary.shape == data.shape
    assert soft.dtype == np.float32 and binary.dtype == np.uint8
    np.testing.assert_array_equal(binary, (z > 0).astype(np.uint8))
    # softmax(-z, z)[1] = sigmoid(2z); nnU-Net accumulates logits in float16
    np.testing.assert_allclose(soft, 1.0 / (1.0 + np.exp(-2.0 * z)), atol=5e-3)
    assert net.seen and all(s == (1, 1, 8, 16, 12) for s in net.seen)  # the plans' patch


def test_untransposed_spacing_would_be_caught(anisotropic_case) -> None:
    """The control: handing nnU-Net (x, y, z) spacing makes it resample, which the exact
    comparison above detects."""
    data, spacing_xyz = anisotropic_case
    predictor, _ = _stub_predictor(list(reversed(spacing_xyz)), [8, 16, 12])
    seg_zyx = predictor.predict_single_npy_array(
        np.ascontiguousarray(data.transpose(2, 1, 0))[None], {"spacing": list(spacing_xyz)}
    )
    z = (data - data.mean()) / data.std()
    mismatch = np.mean(seg_zyx.transpose(2, 1, 0) != (z > 0))
    assert mismatch > 0.05


def test_predict_array_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="3D"):
        nnunet.predict_array(None, np.zeros((2, 2)), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="positive voxel sizes"):
        nnunet.predict_array(None, np.zeros((2, 2, 2)), (1.0, 0.0, 1.0))


# --------------------------------------------------------------------------------------------
# Packages: layout, devices, integrity
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def demo_good(tmp_path: Path) -> Path:
    """A private copy of the committed demo-good package."""
    src = DEMO / "demo-good"
    if not (src / "plans.json").is_file():
        pytest.fail(f"{src}: committed demo package missing")
    dst = tmp_path / "demo-good"
    shutil.copytree(src, dst)
    return dst


def _manifest(root: Path) -> dict[str, str]:
    return {rel: sha256_file(root / rel) for rel in PACKAGE_FILES}


def test_results_folder_finds_nested_layout(tmp_path: Path, demo_good: Path) -> None:
    wrapper = tmp_path / "release"
    shutil.copytree(demo_good, wrapper / "model_v1" / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    assert nnunet.results_folder(demo_good) == demo_good
    found = nnunet.results_folder(wrapper)
    assert found == wrapper / "model_v1" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert nnunet.available_folds(found) == [0]
    with pytest.raises(InputError, match=r"no plans\.json"):
        nnunet.results_folder(found / "fold_0")


def test_available_folds_orders_numerically(tmp_path: Path) -> None:
    for fold in ("10", "2", "all"):
        (tmp_path / f"fold_{fold}").mkdir()
        (tmp_path / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"x")
    assert nnunet.available_folds(tmp_path) == [2, 10]
    shutil.rmtree(tmp_path / "fold_2")
    shutil.rmtree(tmp_path / "fold_10")
    assert nnunet.available_folds(tmp_path) == ["all"]


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert nnunet.resolve_device("auto").type == expected
    assert nnunet.resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="unknown device"):
        nnunet.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            nnunet.resolve_device("cuda")


def test_default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORDWATCH_TORCH_THREADS", "3")
    assert nnunet.default_threads() == 3
    monkeypatch.setenv("CORDWATCH_TORCH_THREADS", "many")
    with pytest.raises(InputError, match="CORDWATCH_TORCH_THREADS"):
        nnunet.default_threads()
    monkeypatch.delenv("CORDWATCH_TORCH_THREADS")
    monkeypatch.setattr(nnunet.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert nnunet.default_threads() == nnunet.available_cpus()
    monkeypatch.setattr(nnunet.os, "getloadavg", lambda: (50.0, 0.0, 0.0))
    assert nnunet.default_threads() == 1


def test_wrong_hash_is_refused_before_unpickling(
    demo_good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_load(*args, **kwargs):
        raise AssertionError("torch.load called on an unverified checkpoint")

    monkeypatch.setattr(torch, "load", no_load)
    manifest = _manifest(demo_good)
    manifest["fold_0/checkpoint_final.pth"] = "0" * 64
    with pytest.raises(IntegrityError, match=r"checkpoint_final\.pth: sha256"):
        nnunet.load_predictor(demo_good, device="cpu", expected_sha256=manifest)
    # a file the manifest does not cover is refused as well
    manifest = _manifest(demo_good)
    del manifest["fold_0/checkpoint_final.pth"]
    with pytest.raises(IntegrityError, match="not covered by the sha256 manifest"):
        nnunet.load_predictor(demo_good, device="cpu", expected_sha256=manifest)


def test_tampered_checkpoint_is_refused(demo_good: Path) -> None:
    manifest = _manifest(demo_good)
    ckpt = demo_good / "fold_0" / "checkpoint_final.pth"
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="does not match"):
        nnunet.load_predictor(demo_good, device="cpu", expected_sha256=manifest)


def test_loads_a_trainer_variant_that_nnunet_cannot_find(demo_good: Path) -> None:
    """The demo checkpoints name a trainer class nnU-Net does not ship: its own loader fails,
    ours rebuilds the network from the plans."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    ckpt = torch.load(demo_good / "fold_0" / "checkpoint_final.pth", weights_only=True)
    assert ckpt["trainer_name"] == "nnUNetTrainerCordwatchTiny"
    assert "optimizer_state" not in ckpt
    stock = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False)
    with pytest.raises(RuntimeError, match="Unable to locate trainer class"):
        stock.initialize_from_trained_model_folder(str(demo_good), (0,))

    predictor = nnunet.load_predictor(demo_good, device="cpu", expected_sha256=_manifest(demo_good))
    assert predictor.trainer_name == "nnUNetTrainerCordwatchTiny"
    assert predictor.use_mirroring is False
    assert predictor.device.type == "cpu"
    assert nnunet.load_predictor(demo_good, device="cpu", tta=True).use_mirroring is True


def test_loading_keeps_stdout_clean(demo_good: Path, capfd: pytest.CaptureFixture) -> None:
    """nnU-Net's notices must not end up in a ``--json`` document on stdout."""
    nnunet.load_predictor(demo_good, device="cpu")
    assert capfd.readouterr().out == ""


def _recipes():
    """models/recipes/train_demo.py, imported from its file (``models`` is not installed)."""
    import importlib.util

    path = REPO / "models" / "recipes" / "train_demo.py"
    spec = importlib.util.spec_from_file_location("cordwatch_train_demo", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["demo-good", "demo-biased", "demo-good-seed2"])
def test_committed_packages_match_their_recipe(name: str) -> None:
    """What is committed is what the recipe makes: architecture, patch, schedule, slim
    checkpoint (tensors and plain containers only), small size."""
    recipe = _recipes().RECIPES[name]
    root = DEMO / name
    plans = json.loads((root / "plans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    arch = config["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"] == list(recipe.features)
    assert config["patch_size"] == list(recipe.patch_size)
    assert config["spacing"] == [1.0, 1.0, 1.0]
    ckpt = torch.load(root / "fold_0" / "checkpoint_final.pth", weights_only=True)
    assert set(ckpt) == {
        "network_weights",
        "init_args",
        "trainer_name",
        "inference_allowed_mirroring_axes",
        "current_epoch",
    }
    assert ckpt["current_epoch"] == recipe.epochs
    assert ckpt["init_args"]["configuration"] == "3d_fullres" and ckpt["init_args"]["fold"] == 0
    assert ckpt["init_args"]["plans"] == plans
    assert json.loads((root / "dataset.json").read_text())["name"] == f"cordwatch {name}"
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 1_000_000
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "dataset.json",
        "fold_0/checkpoint_final.pth",
        "plans.json",
    ]


def test_bad_package_contents(tmp_path: Path, demo_good: Path) -> None:
    with pytest.raises(InputError, match="model package folder not found"):
        nnunet.load_predictor(tmp_path / "absent", device="cpu")
    with pytest.raises(InputError, match=r"fold_3/checkpoint_final\.pth: checkpoint missing"):
        nnunet.load_predictor(demo_good, device="cpu", folds=[3])
    (demo_good / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="unreadable checkpoint"):
        nnunet.load_predictor(demo_good, device="cpu")


# --------------------------------------------------------------------------------------------
# Files end to end with a demo model and a phantom
# --------------------------------------------------------------------------------------------


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * np.sum(a & b) / (a.sum() + b.sum()))


@pytest.mark.slow
def test_predict_paths_demo_good_on_phantoms(tmp_path: Path) -> None:
    """demo-good segments an unseen phantom (Dice > 0.9), also at anisotropic voxels (which
    nnU-Net resamples: only right if the spacing was transposed like the data)."""
    from drift.measure.phantoms import make_subject

    iso = make_subject(3, seed=0, contrasts=("T2w",))
    aniso = make_subject(4, seed=0, spacing=(0.8, 0.8, 2.0), contrasts=("T1w",))
    paths = []
    for name, subject, contrast in (("iso", iso, "T2w"), ("aniso", aniso, "T1w")):
        img = nib.Nifti1Image(subject.images[contrast].astype(np.int16), subject.affine)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, tmp_path / f"{name}_{contrast}.nii.gz")
        paths.append(tmp_path / f"{name}_{contrast}.nii.gz")

    out = nnunet.predict_paths(DEMO / "demo-good", paths, tmp_path / "segs", device="cpu")

    assert [p.name for p in out] == ["iso_T2w_seg.nii.gz", "aniso_T1w_seg.nii.gz"]
    for path, image, subject in zip(out, paths, (iso, aniso), strict=True):
        seg = nib.load(path)
        ref = nib.load(image)
        np.testing.assert_array_equal(seg.affine, ref.affine)
        assert seg.header.get_zooms() == ref.header.get_zooms()
        assert seg.get_data_dtype() == np.uint8
        data = np.asarray(seg.dataobj)
        assert set(np.unique(data).tolist()) <= {0, 1}
        assert _dice(data, subject.binary_seg) > 0.9, path.name


def test_write_segmentation_soft_and_binary(tmp_path: Path) -> None:
    affine = np.diag([-0.5, 0.6, 2.0, 1.0])
    ref = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), affine)
    probs = np.linspace(0, 1, 60, dtype=np.float32).reshape(3, 4, 5)
    soft = nnunet.write_segmentation(probs, ref, tmp_path / "soft.nii.gz", soft=True)
    hard = nnunet.write_segmentation(probs > 0.5, ref, tmp_path / "hard.nii.gz")
    s, h = nib.load(soft), nib.load(hard)
    np.testing.assert_allclose(np.asarray(s.dataobj), probs)
    np.testing.assert_array_equal(np.asarray(h.dataobj), (probs > 0.5).astype(np.uint8))
    assert s.get_data_dtype() == np.float32 and h.get_data_dtype() == np.uint8
    np.testing.assert_allclose(s.affine, affine, rtol=1e-6)  # NIfTI stores float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.nii.gz", "soft.nii.gz"]


def test_read_image_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match=r"bad\.nii\.gz: unreadable image"):
        nnunet.read_image(bad)
    with pytest.raises(InputError, match="image not found"):
        nnunet.read_image(tmp_path / "absent.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(InputError, match="expected a 3D image"):
        nnunet.read_image(tmp_path / "4d.nii")


def test_seg_name() -> None:
    assert nnunet.seg_name("a/sub-01_T2w.nii.gz") == "sub-01_T2w_seg.nii.gz"
    assert nnunet.seg_name("sub-01_T2w.nii") == "sub-01_T2w_seg.nii"


def test_expected_sha256_json_roundtrip(demo_good: Path) -> None:
    """The manifest the registry stores (JSON, posix relative paths) is what we accept."""
    manifest = json.loads(json.dumps(_manifest(demo_good)))
    nnunet.verify_files(demo_good, manifest, [demo_good / "plans.json"])
