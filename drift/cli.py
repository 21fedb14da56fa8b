"""``cordwatch``: the console entry point. Each command group lives in its own ``cli_*`` module.

Heavy libraries (torch, nnunetv2, mlflow) are imported inside the commands that need them so
that ``cordwatch --help`` stays fast.
"""

from __future__ import annotations

import typer

from drift import __version__
from drift.cli_cohort import cohort_app
from drift.cli_common import SETTINGS, command
from drift.cli_drift import drift_app
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


@app.command("demo")
@command
def demo(
    subjects: int = typer.Option(10, "--subjects", help="Number of phantom subjects."),
) -> None:
    """Run the main job on embedded defaults: the phantom cohort, measured against truth."""
    from rich.console import Console
    from rich.table import Table

    from drift.demo import phantom_level_accuracy, summarise

    summary = summarise(phantom_level_accuracy(subjects))
    table = Table(title=f"Phantom cohort ({subjects} subjects, T2w): CSA per level, mm²")
    for col in (
        "level",
        "n",
        "true",
        "soft exact",
        "err %",
        "soft sct",
        "err %",
        "binary",
        "err %",
    ):
        table.add_column(col, justify="right")
    for row in summary.itertuples():
        table.add_row(
            row.name,
            str(row.n),
            f"{row.true:.2f}",
            f"{row.soft_exact:.2f}",
            f"{row.soft_exact_err_pct:+.2f}",
            f"{row.soft_sct:.2f}",
            f"{row.soft_sct_err_pct:+.2f}",
            f"{row.binary_exact:.2f}",
            f"{row.binary_exact_err_pct:+.2f}",
        )
    Console(width=120).print(table)


app.add_typer(
    models_app,
    name="models",
    help="Model registry: register, list, show, pull, promote, history, diff.",
)
app.add_typer(drift_app, name="drift", help="Morphometric drift between two model versions.")
app.add_typer(cohort_app, name="cohort", help="Frozen cohort manifests: list, show, verify.")

if __name__ == "__main__":  # pragma: no cover
    app()
