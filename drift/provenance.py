"""What produced an output: cordwatch version and commit, library versions, time (UTC).

Imported by every layer that writes results, so it imports nothing of drift but the version.
"""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from pathlib import Path
from typing import Any

from drift import __version__


def git_commit() -> str | None:
    """The commit of the cordwatch checkout, when it is one (provenance); else None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def base_provenance() -> dict[str, Any]:
    """What produced an output: cordwatch version and commit, Python, time (UTC)."""
    import numpy
    import pandas
    import scipy

    return {
        "cordwatch_version": __version__,
        "cordwatch_commit": git_commit(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pandas": pandas.__version__,
        "created_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
