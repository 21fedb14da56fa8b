"""Load a version's model with every check and no code from the artifact store.

:func:`load_verified` is the safe counterpart of ``mlflow.pyfunc.load_model`` (see
:mod:`registry.pyfunc` and docs/registry.md, "What is verified, and against what").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from registry.pyfunc import NnunetPackageModel


class VerifiedModel:
    """A version's model built by :func:`load_verified`: ``predict(paths, params)``."""

    def __init__(self, ref: str, package_dir: Path) -> None:
        self.ref = ref
        self.package_dir = package_dir
        self._model = NnunetPackageModel()
        self._model.package_dir = package_dir

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """As the pyfunc's ``predict``: NIfTI paths in, (``path``, ``segmentation``) out."""
        return self._model.predict(None, model_input, params)


def load_verified(
    ref: str, registry: str | None = None, home: str | Path | None = None
) -> VerifiedModel:
    """Load version ``ref`` (``NAME@ALIAS`` or ``NAME/N``) with every check and no stored code.

    The package comes from :meth:`registry.api.Registry.pull` (manifest against the
    database's ``cordwatch.sha256``, every file against the manifest, before the path is
    returned); the model code is the installed cordwatch.
    """
    from registry.api import connect

    reg = connect(registry, home)
    package = reg.pull(ref)
    return VerifiedModel(ref, package)
