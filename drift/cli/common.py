"""The CLI boundary: one place where cordwatch errors become exit codes and one-line messages."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from registry.errors import CordwatchError

if TYPE_CHECKING:
    from registry.api import Registry

F = TypeVar("F", bound=Callable[..., Any])

# Set by the root callback (``cordwatch --traceback ...``).
SETTINGS: dict[str, bool] = {"traceback": False}


def command(fn: F) -> F:
    """Wrap a CLI command: CordwatchError -> ``cordwatch: error: <file>: <problem>`` + exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CordwatchError as err:
            if SETTINGS["traceback"]:
                raise
            typer.echo(f"cordwatch: error: {err}", err=True)
            raise typer.Exit(err.exit_code) from err
        except KeyboardInterrupt:
            typer.echo("cordwatch: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Machine-readable output for CI: one JSON document on stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


REGISTRY_HELP = (
    "Registry URI: sqlite:///PATH.db, postgresql://..., or http(s)://MLFLOW-SERVER. "
    "Default: $MLFLOW_TRACKING_URI, else sqlite:///$CORDWATCH_HOME/registry.db."
)


def quiet_mlflow() -> None:
    """Quiet, fail-fast MLflow defaults for a command line (an explicit environment wins)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"  # read when MLflow is imported
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # in case it already was
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def registry_from(ctx: typer.Context) -> Registry:
    """The registry named by the group's ``--registry`` option (else the default one)."""
    from registry.api import connect

    return connect((ctx.obj or {}).get("registry"))
