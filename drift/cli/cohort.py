"""``cordwatch cohort ...``: frozen cohort manifests on the command line (a thin shell over
:mod:`drift.cohort.manifest`).

    cordwatch cohort list [--dir DIR] [--json]
    cordwatch cohort show MANIFEST [--json]
    cordwatch cohort verify MANIFEST [--root DIR] [--json]

MANIFEST is a shipped cohort's name (``phantom``, ``spine-generic_r20250310``) or the path
of a manifest's ``.tsv`` or ``.yaml``. Exit codes: 0 ok, 2 bad manifest, missing data or a
file that is missing or changed (the last stderr line names the manifest).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from drift.cli.common import JSON_OPTION, command, print_json

cohort_app = typer.Typer(
    help="Frozen cohort manifests: list, show, verify every file's sha256.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_MANIFEST = typer.Argument(
    ...,
    metavar="MANIFEST",
    help="A shipped cohort's name (e.g. phantom, spine-generic_r20250310) or the path of a "
    "manifest's .tsv table or .yaml header.",
)
_JSON = JSON_OPTION
_MAX_PROBLEM_LINES = 20


def _console() -> Any:
    from rich.console import Console

    return Console(width=120)


@cohort_app.command("list")
@command
def list_cohorts(
    directory: Path | None = typer.Option(
        None,
        "--dir",
        metavar="DIR",
        help="Folder of manifests to list (default: the shipped reference_data/cohorts).",
    ),
    as_json: bool = _JSON,
) -> None:
    """List the cohort manifests with their numbers of subjects, contrasts and images."""
    from rich.table import Table

    from drift.cohort.manifest import COHORTS_DIR, list_manifests, load_cohort

    folder = directory if directory is not None else COHORTS_DIR
    summaries = [load_cohort(path).summary() for path in list_manifests(folder)]
    for summary in summaries:
        summary.pop("per_contrast")
    if as_json:
        print_json(summaries)
        return
    if not summaries:
        typer.echo(f"no cohort manifests in {folder}")
        return
    table = Table(title=f"Cohort manifests in {folder}")
    table.add_column("name", no_wrap=True)
    for col in ("subjects", "contrasts", "images", "levels from", "kind"):
        table.add_column(col, justify="right" if col in ("subjects", "images") else "left")
    for s in summaries:
        table.add_row(
            s["name"],
            str(s["n_subjects"]),
            ", ".join(s["contrasts"]),
            str(s["n_items"]),
            s["level_source"],
            "generated" if s["generated"] else "dataset",
        )
    _console().print(table)


@cohort_app.command("show")
@command
def show(manifest: str = _MANIFEST, as_json: bool = _JSON) -> None:
    """Show a manifest: header, provenance, files per contrast and where its data are."""
    import os

    from rich.table import Table

    from drift.cohort.manifest import COHORT_ROOT_ENV, FILE_KINDS, load_cohort
    from drift.cohort.roots import resolve_root

    cohort = load_cohort(manifest)
    summary = cohort.summary()
    if cohort.is_generated:
        cache = resolve_root(cohort)
        root: str | None = str(cache)
        root_note = "generated" if cache.exists() else "generated on first use"
    elif os.environ.get(COHORT_ROOT_ENV, "").strip():
        root, root_note = os.environ[COHORT_ROOT_ENV].strip(), f"from ${COHORT_ROOT_ENV}"
    else:
        root, root_note = None, f"give --root DIR or set ${COHORT_ROOT_ENV}"
    summary["default_root"] = root
    if as_json:
        summary["items"] = [
            {
                "participant_id": item.subject,
                "contrast": item.contrast,
                **{
                    kind: None
                    if getattr(item, kind) is None
                    else {
                        "path": getattr(item, kind).path,
                        "sha256": getattr(item, kind).sha256,
                        "bytes": getattr(item, kind).size,
                    }
                    for kind in FILE_KINDS
                },
            }
            for item in cohort.items
        ]
        print_json(summary)
        return
    fields = [
        ("cohort", cohort.name),
        ("description", cohort.description),
        ("manifest", f"{cohort.manifest}  (+ {cohort.header.name})"),
        ("manifest sha256", cohort.manifest_sha256),
        (
            "contents",
            f"{summary['n_subjects']} subjects x {summary['n_contrasts']} contrasts, "
            f"{summary['n_items']} images, {summary['n_files']} files",
        ),
        ("levels from", f"{cohort.level_source} (ground truth: the same for both versions)"),
        ("license", cohort.license),
        ("root", f"{root or '-'}  ({root_note})"),
    ]
    if cohort.generator is not None:
        g = cohort.generator
        fields.append(
            (
                "generator",
                f"{g.function}(n_subjects={g.n_subjects}, seed={g.seed}, "
                f"contrasts={list(g.contrasts)}, spacing={list(g.spacing)})",
            )
        )
    fields += [(f"source.{key}", str(value)) for key, value in cohort.source.items()]
    width = max(len(key) for key, _ in fields) + 2
    lines = [f"{key:<{width}}{value}" for key, value in fields]
    typer.echo("\n".join(lines))
    table = Table(title="Files per contrast")
    for col in ("contrast", "images", *FILE_KINDS[1:]):
        table.add_column(col, justify="left" if col == "contrast" else "right")
    for contrast, counts in summary["per_contrast"].items():
        table.add_row(contrast, str(counts["subjects"]), *(str(counts[k]) for k in FILE_KINDS[1:]))
    _console().print(table)


@cohort_app.command("verify")
@command
def verify(
    manifest: str = _MANIFEST,
    root: Path | None = typer.Option(
        None,
        "--root",
        metavar="DIR",
        help="Folder holding the cohort's files. Default: for a generated cohort (phantom) "
        "$CORDWATCH_HOME/cohorts/NAME, generated on first use; else $CORDWATCH_COHORT_ROOT.",
    ),
    as_json: bool = _JSON,
) -> None:
    """Check every file of a cohort against its sha256 (and size); report missing or changed.

    Exit 0 when every file is ok, 2 otherwise (the last line names the manifest).
    """
    from drift.cohort.manifest import load_cohort
    from drift.cohort.roots import ensure_root, resolve_root

    cohort = load_cohort(manifest)
    if root is None and cohort.is_generated and not resolve_root(cohort).exists():
        typer.echo(
            f"generating cohort {cohort.name} into {resolve_root(cohort)} (first use)", err=True
        )
    folder = ensure_root(cohort, root)
    report = _verify_with_progress(cohort, folder, show=not as_json and sys.stderr.isatty())
    if as_json:
        print_json(report.to_dict())
    else:
        typer.echo(
            f"cohort {cohort.name}  manifest {cohort.manifest}  "
            f"sha256 {cohort.manifest_sha256[:12]}\nroot {folder}\n{report.summary_line()}"
        )
        problems = report.problems
        for check in problems[:_MAX_PROBLEM_LINES]:
            typer.echo(f"  {check.describe()}")
        if len(problems) > _MAX_PROBLEM_LINES:
            typer.echo(f"  ... and {len(problems) - _MAX_PROBLEM_LINES} more (--json lists all)")
    report.raise_for_problems()


def _verify_with_progress(cohort: Any, folder: Path, show: bool) -> Any:
    from drift.cohort.verify import verify_cohort

    if not show:
        return verify_cohort(cohort, folder)
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("verifying", total=len(cohort.files()))
        return verify_cohort(cohort, folder, on_file=lambda _: progress.advance(task))
