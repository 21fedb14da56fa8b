"""``cordwatch``: the console entry point. Each command group lives in its own ``cli_*`` module.

Heavy libraries (torch, nnunetv2, mlflow) are imported inside the commands that need them so
that ``cordwatch --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from drift import __version__
from drift.cli.cohort import cohort_app
from drift.cli.common import SETTINGS, command, readable_metavars
from drift.cli.drift import drift_app
from drift.cli.models import models_app
from drift.cli.morphometry import morphometry
from drift.cli.normative import normative_app
from drift.cli.policy import policy_app
from drift.cli.release import release_app
from drift.cli.serve import serve
from registry.errors import GateFailed

readable_metavars()
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


@app.command("demo")
@command
def demo(
    out: Path = typer.Option(
        Path("demo-output"),
        "--out",
        metavar="DIR",
        help="Where the reports go (and the demo registry, in DIR/home, unless $CORDWATCH_HOME "
        "is set).",
    ),
    subjects: int = typer.Option(
        10, "--subjects", metavar="N", help="Phantom subjects for the accuracy table."
    ),
    keep: bool = typer.Option(
        False,
        "--keep",
        help="Keep an existing DIR/home registry instead of starting fresh ($CORDWATCH_HOME "
        "is never deleted).",
    ),
) -> None:
    """Run the main job on embedded defaults: phantom accuracy, then passing and failing drift
    checks of the demo models (sqlite registry, local artifacts, phantom cohort, CPU).

    The registry is $CORDWATCH_HOME when set (used as it is, never deleted), else DIR/home
    (started fresh unless --keep); MLFLOW_TRACKING_URI is ignored (the demo always runs on an
    embedded sqlite registry). The first lines say where everything is written.

    Exit 0 when every check ends as expected (the re-release passes and is promoted, the
    re-train is not failed: pass, or warn = not promotable under the default policy; the
    biased model fails), 1 otherwise.
    """
    import os
    import shutil

    from rich.console import Console
    from rich.table import Table

    from drift.cli.demo import phantom_level_accuracy, run_drift_demo, summarise

    console = Console(width=120)
    summary = summarise(phantom_level_accuracy(subjects))
    table = Table(title=f"1. The instrument: phantom CSA per level ({subjects} subjects), mm²")
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
    console.print(table)

    from registry.settings import HOME_ENV

    env_home = os.environ.get(HOME_ENV, "").strip()
    home = Path(env_home).expanduser() if env_home else out / "home"
    if not env_home and home.exists() and not keep:
        shutil.rmtree(home)
    console.print(
        f"registry: {home.resolve()} "
        + (f"(${HOME_ENV})" if env_home else f"(set ${HOME_ENV} to choose; fresh unless --keep)")
        + f"; reports: {out.resolve()}",
        soft_wrap=True,
    )
    if os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        console.print(
            "MLFLOW_TRACKING_URI is ignored: the demo runs on an embedded sqlite registry",
            soft_wrap=True,
        )
    console.print("\n[bold]2. The gate[/]: demo models on the phantom cohort")
    checks = run_drift_demo(home.resolve(), out.resolve(), lambda m: console.print(f"[dim]{m}[/]"))
    result = Table(title="Drift checks (candidate vs champion)")
    for col in ("check", "candidate", "verdict", "champion?", "area scaling per level"):
        result.add_column(col)
    for chk in checks:
        factors = " ".join(f"{lv} {f:.3f}" for lv, f in chk.area_factors.items())
        style = "green" if chk.as_expected else "bold red"
        fate = "promoted" if chk.promoted else f"not promotable ({chk.verdict})"
        result.add_row(chk.label, chk.candidate, f"[{style}]{chk.verdict}[/]", fate, factors)
    console.print(result)
    for chk in checks:
        console.print(f"{chk.verdict} report: {chk.report / 'report.html'}", soft_wrap=True)
    if not all(chk.as_expected for chk in checks):
        raise GateFailed("a demo check did not end as expected (see the table above)")
    console.print(
        "every check ended as expected: the re-release passes and is promoted, the re-train "
        "is not failed (a warn would stay candidate: not promotable), the biased model fails"
    )


app.add_typer(
    models_app,
    name="models",
    help="Model registry: register, list, show, pull, promote, history, diff.",
)
app.add_typer(drift_app, name="drift", help="Morphometric drift between two model versions.")
app.add_typer(cohort_app, name="cohort", help="Frozen cohort manifests: list, show, verify.")
app.add_typer(normative_app, name="normative", help="Normative databases linked to models.")
app.add_typer(policy_app, name="policy", help="Policy file formats (JSON Schema).")
app.add_typer(release_app, name="release", help="Steps of the gate and release workflows.")

if __name__ == "__main__":  # pragma: no cover
    app()
