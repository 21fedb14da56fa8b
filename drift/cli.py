"""``cordwatch``: the console entry point. Each command group lives in its own ``cli_*`` module.

Heavy libraries (torch, nnunetv2, mlflow) are imported inside the commands that need them so
that ``cordwatch --help`` stays fast.
"""

from __future__ import annotations

import typer

from drift import __version__
from drift.cli_common import SETTINGS
from drift.cli_models import models_app
from drift.cli_morphometry import morphometry

app = typer.Typer(
    name="cordwatch",
    help="Model registry and morphometric-drift gate for spinal-cord segmentation models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cordwatch {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    traceback: bool = typer.Option(
        False, "--traceback", help="Re-raise errors with their full traceback (for debugging)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Model registry and morphometric-drift gate for spinal-cord segmentation models."""
    SETTINGS["traceback"] = traceback


app.command("morphometry")(morphometry)
app.add_typer(
    models_app,
    name="models",
    help="Model registry: register, list, show, pull, promote, history, diff.",
)

if __name__ == "__main__":  # pragma: no cover
    app()
