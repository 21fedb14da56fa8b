"""``cordwatch``: the console entry point. Each command group lives in its own ``cli_*`` module.

Heavy libraries (torch, nnunetv2, mlflow) are imported inside the commands that need them so
that ``cordwatch --help`` stays fast.
"""

from __future__ import annotations

import typer

from drift import __version__
from drift.cli.cohort import cohort_app
from drift.cli.common import SETTINGS, plain_coercion, readable_metavars
from drift.cli.demo import demo
from drift.cli.drift import drift_app
from drift.cli.models import models_app
from drift.cli.morphometry import morphometry
from drift.cli.normative import normative_app
from drift.cli.policy import policy_app
from drift.cli.release import release_app
from drift.cli.serve import serve

readable_metavars()
plain_coercion()
app = typer.Typer(
    name="cordwatch",
    help="Model registry and morphometric-drift gate for spinal-cord segmentation models.",
    no_args_is_help=True,
    add_completion=True,  # cordwatch --install-completion (bash, zsh, fish, PowerShell)
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
        False,
        "-V",
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Model registry and morphometric-drift gate for spinal-cord segmentation models."""
    SETTINGS["traceback"] = traceback


app.command("morphometry")(morphometry)
app.command("serve")(serve)
app.command("demo")(demo)


app.add_typer(
    models_app,
    name="models",
    help="Model registry: register, list, show, pull, promote, history, diff, audit.",
)
app.add_typer(drift_app, name="drift", help="Morphometric drift between two model versions.")
app.add_typer(cohort_app, name="cohort", help="Frozen cohort manifests: list, show, verify.")
app.add_typer(normative_app, name="normative", help="Normative databases linked to models.")
app.add_typer(policy_app, name="policy", help="Policy file formats (JSON Schema).")
app.add_typer(release_app, name="release", help="Steps of the gate and release workflows.")

if __name__ == "__main__":  # pragma: no cover
    app()
