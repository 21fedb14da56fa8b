"""The MLflow pyfunc stored with every version: segment NIfTI files with the package.

Stored as a "model from code" (no pickled Python object in the artifacts): the entry file
written by :func:`save_pyfunc` builds :class:`NnunetPackageModel`. The version's artifact tree:

    model/MLmodel, requirements.txt, python_env.yaml, conda.yaml, cordwatch_model.py
    model/code/registry/...                      this package, so the model loads standalone
    model/artifacts/package/...                  the nnU-Net v2 results folder
    model/artifacts/cordwatch_manifest.json      sha256 of every package file

Use from MLflow::

    model = mlflow.pyfunc.load_model("models:/sc-seg@champion")
    model.predict(["sub-01_T2w.nii.gz"], params={"out_dir": "segs", "device": "cpu"})

``load_context`` verifies every package file against the manifest before nnU-Net (which
unpickles checkpoints) is touched; nnU-Net itself is imported only inside ``predict``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from registry.manifest import MANIFEST_NAME, Manifest, verify_tree

ENTRY_NAME = "cordwatch_model.py"
#: Where the package and its manifest sit inside the stored MLflow model folder.
PACKAGE_PATH = "artifacts/package"
MANIFEST_PATH = f"artifacts/{MANIFEST_NAME}"
_ENTRY_CODE = '''"""MLflow model-from-code entry of a cordwatch model version."""
from mlflow.models import set_model

from registry.pyfunc import NnunetPackageModel

set_model(NnunetPackageModel())
'''
#: Default inference parameters (all can be given in ``predict(..., params=...)``).
PARAMS: dict[str, Any] = {"out_dir": "", "device": "auto", "tta": False, "soft": False}


def _pin(dist: str, fallback: str) -> str:
    """``dist==<installed version>`` without a local suffix (``2.3.0+cpu`` -> ``2.3.0``)."""
    try:
        return f"{dist}=={metadata.version(dist).split('+')[0]}"
    except metadata.PackageNotFoundError:
        return fallback


def pip_requirements() -> list[str]:
    """Explicit requirements of the pyfunc (MLflow's inference would import torch)."""
    return [
        _pin("mlflow", "mlflow>=3.17,<3.18"),
        _pin("nnunetv2", "nnunetv2==2.6.0"),
        _pin("torch", "torch>=2.3"),
        _pin("nibabel", "nibabel>=5.1"),
        _pin("numpy", "numpy>=1.26"),
    ]


def _input_paths(model_input: Any) -> list[str]:
    """Accept a list of paths, a 1-D array, or a DataFrame whose first column holds paths."""
    columns = getattr(model_input, "columns", None)
    if columns is not None:
        col = "path" if "path" in columns else columns[0]
        return [str(p) for p in model_input[col].tolist()]
    if isinstance(model_input, (str, Path)):
        return [str(model_input)]
    return [str(p) for p in list(model_input)]


class NnunetPackageModel(PythonModel):
    """Segments NIfTI images with the version's nnU-Net package (via ``registry.nnunet``)."""

    package_dir: Path

    def load_context(self, context: Any) -> None:
        self.package_dir = Path(context.artifacts["package"])
        manifest_path = Path(context.artifacts["manifest"])
        verify_tree(
            self.package_dir, Manifest.from_bytes(manifest_path.read_bytes(), manifest_path)
        )

    # A DataFrame hint: MLflow then keeps our explicit signature instead of deriving one.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """NIfTI paths in; a table of input ``path`` and written ``segmentation`` out."""
        from registry.nnunet import predict_paths

        opts = {**PARAMS, **(params or {})}
        paths = _input_paths(model_input)
        out_dir = opts["out_dir"] or tempfile.mkdtemp(prefix="cordwatch-seg-")
        written = predict_paths(
            self.package_dir,
            paths,
            out_dir,
            device=str(opts["device"]),
            tta=bool(opts["tta"]),
            soft=bool(opts["soft"]),
        )
        return pd.DataFrame({"path": paths, "segmentation": [str(p) for p in written]})


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "path")]),
        outputs=Schema(
            [ColSpec(DataType.string, "path"), ColSpec(DataType.string, "segmentation")]
        ),
        params=ParamSchema(
            [
                ParamSpec("out_dir", DataType.string, PARAMS["out_dir"]),
                ParamSpec("device", DataType.string, PARAMS["device"]),
                ParamSpec("tta", DataType.boolean, PARAMS["tta"]),
                ParamSpec("soft", DataType.boolean, PARAMS["soft"]),
            ]
        ),
    )


def save_pyfunc(package_dir: Path, manifest_file: Path, model_dir: Path, workdir: Path) -> None:
    """Write the MLflow pyfunc model of a package into the new folder ``model_dir``.

    ``package_dir`` must be named ``package`` (MLflow keeps the base name of an artifact).
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow.pyfunc

    if package_dir.name != "package":
        raise ValueError(f"package folder must be named 'package', not {package_dir.name!r}")

    entry = workdir / ENTRY_NAME
    entry.write_text(_ENTRY_CODE)
    code = workdir / "code" / "registry"
    shutil.copytree(
        Path(__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    with warnings.catch_warnings():
        # "no input example": an example would be run through predict, i.e. through nnU-Net
        warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)
        mlflow.pyfunc.save_model(
            path=str(model_dir),
            python_model=str(entry),
            artifacts={"package": str(package_dir), "manifest": str(manifest_file)},
            code_paths=[str(code)],
            pip_requirements=pip_requirements(),
            signature=_signature(),
        )
    for rel in (PACKAGE_PATH, MANIFEST_PATH):
        if not (model_dir / rel).exists():
            raise RuntimeError(f"MLflow did not store {rel} where expected")
