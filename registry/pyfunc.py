"""The MLflow pyfunc stored with every version: segment NIfTI files with the package.

Stored as a "model from code" (no pickled Python object in the artifacts): the entry file
written by :func:`save_pyfunc` builds :class:`NnunetPackageModel` from the *installed*
cordwatch (no copy of cordwatch's code is stored: code in the artifact store is not covered
by the registry's sha256). The version's artifact tree:

    model/MLmodel, requirements.txt, python_env.yaml, conda.yaml, cordwatch_model.py
    model/artifacts/package/...                  the nnU-Net v2 results folder
    model/artifacts/cordwatch_manifest.json      sha256 of every package file

Two ways to load it:

- :func:`registry.verified.load_verified` (``load_verified("sc-seg@champion")``): looks the
  package sha256 up in the registry's database, pulls the package into the verified cache
  (manifest against that sha256, every file against the manifest) and builds the model from
  the installed code. No file of the artifact store is executed. Use this one.
- ``mlflow.pyfunc.load_model("models:/sc-seg@champion")``: MLflow's own loader. Before
  anything else of the package is read, ``load_context`` checks the stored manifest's sha256
  against the ``cordwatch.sha256`` tag of a version in the registry MLflow is using, then
  every package file against the manifest, all before nnU-Net (which unpickles checkpoints)
  is touched. MLflow itself, though, executes the stored ``MLmodel`` loader and the entry
  file ``cordwatch_model.py`` before cordwatch gets control: whoever can write the artifact
  store can change those, so this path is only as safe as the store.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from registry.errors import IntegrityError, RegistryError
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
#: A stored manifest larger than this is refused before it is read (10 000 files ~ 1.5 MB).
MAX_MANIFEST_BYTES = 64 << 20


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


def _registry_uri() -> str | None:
    """The registry MLflow is using when one was set (``set_registry_uri``/``set_tracking_uri``
    or their variables), else None: cordwatch's default (``CORDWATCH_HOME``)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    if (
        registry_utils._get_registry_uri_from_context() is not None
        or tracking_utils.is_tracking_uri_set()
    ):
        return str(mlflow.get_registry_uri())
    return None


def registered_manifest(manifest_path: Path, registry_uri: str | None = None) -> Manifest:
    """Read a stored manifest and check that its sha256 is the ``cordwatch.sha256`` tag of a
    version in the registry (the one MLflow uses, else cordwatch's default).

    IntegrityError (naming ``manifest_path``) when no version of that registry carries it:
    the manifest was rewritten in the artifact store, or the model is not from this registry.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from registry.lookup import SHA_TAG
    from registry.settings import ensure_sqlite_store, resolve_settings

    try:
        size = manifest_path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise IntegrityError(
                f"package manifest of {size} bytes (limit {MAX_MANIFEST_BYTES})", manifest_path
            )
        data = manifest_path.read_bytes()
    except OSError as err:
        raise IntegrityError(
            f"cannot read the package manifest: {err.strerror}", manifest_path
        ) from err
    sha = hashlib.sha256(data).hexdigest()
    settings = resolve_settings(registry_uri if registry_uri is not None else _registry_uri())
    try:
        ensure_sqlite_store(settings)
        client = MlflowClient(tracking_uri=settings.uri, registry_uri=settings.uri)
        found = client.search_model_versions(f"tags.`{SHA_TAG}` = '{sha}'")
    except MlflowException as err:
        raise RegistryError(
            f"cannot look up the package sha256 in {settings.redacted_uri}: {err.message}",
            manifest_path,
        ) from err
    if not [mv for mv in found if (mv.tags or {}).get(SHA_TAG) == sha]:
        raise IntegrityError(
            f"manifest sha256 {sha[:12]}... is the cordwatch.sha256 of no version in "
            f"{settings.redacted_uri}: the stored model was altered (or is not from this "
            "registry)",
            manifest_path,
        )
    return Manifest.from_bytes(data, manifest_path)


class NnunetPackageModel(PythonModel):
    """Segments NIfTI images with the version's nnU-Net package (via ``registry.nnunet``)."""

    package_dir: Path

    def load_context(self, context: Any) -> None:
        package_dir = Path(context.artifacts["package"])
        manifest = registered_manifest(Path(context.artifacts["manifest"]))
        verify_tree(package_dir, manifest)
        self.package_dir = package_dir

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
    # No code_paths: a stored copy of cordwatch would be imported from the artifact store,
    # outside the verified manifest; the entry file imports the installed package instead.
    with warnings.catch_warnings():
        # "no input example": an example would be run through predict, i.e. through nnU-Net
        warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)
        mlflow.pyfunc.save_model(
            path=str(model_dir),
            python_model=str(entry),
            artifacts={"package": str(package_dir), "manifest": str(manifest_file)},
            pip_requirements=pip_requirements(),
            signature=_signature(),
        )
    for rel in (PACKAGE_PATH, MANIFEST_PATH):
        if not (model_dir / rel).exists():
            raise RuntimeError(f"MLflow did not store {rel} where expected")
