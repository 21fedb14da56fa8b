"""``cordwatch normative ...``: versioned normative databases (a thin shell over
:mod:`drift.normative`).

    cordwatch normative import DIR [DIR...] --name NAME [--model NAME/VERSION]
    cordwatch normative list [--json]
    cordwatch normative show NAME/VERSION [--json]
    cordwatch normative summary NAME/VERSION [--sex F] [--age 20:40] [--vendor Siemens] [--json]
    cordwatch normative update NAME --model NAME/VERSION --scaling RESULT.json [--assume-baseline]
    cordwatch normative update NAME --model NAME/VERSION --recompute --cohort MANIFEST [--root DIR]
                               [--cohort MANIFEST [--root DIR] ...] [--scheduler local:N]
    cordwatch normative export NAME/VERSION DIR [--layout single|datasets] [--dataset NAME]
    cordwatch normative zscore SUBJECT.csv --db NAME/VERSION [--sex F] [--age 20:40]
                               [--vendor Siemens] [--model NAME/VERSION] [--json]

A database reference is ``NAME/VERSION``, ``NAME@latest`` or ``NAME`` (the latest), as for
models (``NAME@VERSION``, the syntax of 0.1, is read with a deprecation warning).
``--registry URI`` goes after the sub-command (or before it, as before). Read-only commands
never create a registry.
``import`` and ``update`` print the new version number alone on the last line of stdout (a
workflow reads it). Loud warnings go to stderr. Exit codes: 0 ok, 2 bad input, refused
rescale or model mismatch, integrity or registry error (one line on stderr naming the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from drift.cli.common import (
    JSON_OPTION,
    REGISTRY_HELP,
    REGISTRY_OPTION,
    command,
    nothing_registered,
    print_json,
    quiet_mlflow,
    registry_from,
    require_store,
)
from drift.cohort.engine import SCHEDULER_HELP

if TYPE_CHECKING:
    import pandas as pd

    from drift.normative.store import NormativeVersion
    from drift.normative.summary import Filters

normative_app = typer.Typer(
    help="Versioned normative databases (SCT's PAM50 layout) linked to the model that made them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_WIDTH = 160


@normative_app.callback()
def normative(
    ctx: typer.Context,
    registry: str | None = typer.Option(
        None,
        "--registry",
        metavar="URI",
        help=REGISTRY_HELP,
    ),
) -> None:
    """Versioned normative databases (SCT's PAM50 layout) linked to the model that made them."""
    ctx.ensure_object(dict)["registry"] = registry
    quiet_mlflow()


def _warn(message: str) -> None:
    typer.secho(f"cordwatch: WARNING: {message}", fg="red", bold=True, err=True)


def _db_ref(text: str) -> str:
    """A database reference as given; ``NAME@3`` (the syntax of 0.1, where ``@`` meant a
    version) still works, with a deprecation warning: ``@`` names an alias, as for models."""
    import re

    m = re.fullmatch(r"\s*([^@/\s]+)@[vV]?(\d+)\s*", text or "")
    if m is None:
        return text
    typer.echo(
        f"cordwatch: warning: {text.strip()} is deprecated (removed in 0.3): a version is "
        f"{m.group(1)}/{m.group(2)}, as for models (@ names an alias: @latest)",
        err=True,
    )
    return f"{m.group(1)}/{m.group(2)}"


_JSON = JSON_OPTION
_SEX = typer.Option(None, "--sex", metavar="M|F", help="Only reference subjects of this sex.")
_AGE = typer.Option(
    None,
    "--age",
    metavar="LO:HI",
    help="Only reference subjects aged LO to HI (inclusive; '60:' and ':30' are open-ended).",
)
_VENDOR = typer.Option(
    None,
    "--vendor",
    metavar="NAME",
    help="Only reference subjects scanned on this manufacturer (e.g. Siemens, GE, Philips).",
)


def _filters(sex: str | None, age: str | None, vendor: str | None) -> Filters:
    from drift.normative.summary import Filters, parse_age_range
    from registry.errors import InputError

    if sex is not None and sex.strip().upper() not in ("M", "F"):
        raise InputError("--sex must be M or F", sex)
    return Filters(sex=sex, age=parse_age_range(age), vendor=vendor)


def _fmt(x: Any, spec: str = ".2f") -> str:
    import math

    try:
        value = float(x)
    except (TypeError, ValueError):
        return "-"
    return format(value, spec) if math.isfinite(value) else "-"


def _version_lines(v: NormativeVersion) -> list[str]:
    from drift.normative.store import TAG

    datasets = v.tags.get(f"{TAG}datasets")
    return [
        f"{v.ref}",
        f"  kind:         {v.kind}",
        f"  model:        {v.model or '- (not recorded)'}",
        f"  source:       {v.source}",
        f"  parent:       {v.parent if v.parent is not None else '-'}",
        f"  subjects:     {v.n_subjects} ({v.contrast})",
        *(
            [f"  datasets:     {len(datasets.split(','))} ({datasets}; {v.n_files} CSV files)"]
            if datasets
            else []
        ),
        f"  files sha256: {v.files_sha256}",
        f"  sha256:       {v.sha256} (manifest.json)",
        f"  created:      {v.created} by {v.created_by}",
        f"  run:          {v.run_id}",
    ]


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    from drift.normative.store import jsonable

    return list(jsonable(df.to_dict("records")))


def _summary_table(table: pd.DataFrame, title: str) -> Any:
    from rich.table import Table

    from drift.normative.summary import PERCENTILES

    out = Table(title=title, title_justify="left")
    for col in ("metric", "level", "n", "mean", "SD", *(f"p{q:g}" for q in PERCENTILES)):
        out.add_column(col, justify="left" if col in ("metric", "level") else "right")
    for r in table.to_dict("records"):
        out.add_row(
            r["metric"],
            r["level_name"],
            str(r["n"]),
            _fmt(r["mean"]),
            _fmt(r["sd"]),
            *(_fmt(r[f"p{q:g}"]) for q in PERCENTILES),
        )
    return out


# --------------------------------------------------------------------------------- import ---


@normative_app.command("import")
@command
def import_(
    ctx: typer.Context,
    directories: list[Path] = typer.Argument(
        ...,
        metavar="DIR...",
        help="SCT's normative layout: DIR/spinal_cord/sub-*_<contrast>_PAM50.csv + "
        "DIR/participants.tsv (or DIR holding the CSVs itself), or the multi-dataset one: "
        "DIR/spinal_cord/<DATASET>/ each with its participants.tsv and CSVs. Several DIRs "
        "make one multi-dataset database (a single-folder DIR is the dataset named after it).",
    ),
    name: str = typer.Option(..., "--name", metavar="NAME", help="Database name."),
    model: str | None = typer.Option(
        None,
        "--model",
        metavar="NAME/VERSION",
        help="Registered model version that produced the values (aliases are resolved).",
    ),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """Store a database folder as the next version of NAME.

    Every CSV is validated; the files are stored byte for byte with a sha256 manifest. Prints
    the new version number on the last line.
    """
    from drift.normative.store import TAG, import_db

    source = directories[0] if len(directories) == 1 else directories
    v = import_db(source, name, model, registry=registry_from(ctx, registry))
    if json_out:
        print_json(v.to_dict())
        return
    where = ", ".join(str(d) for d in directories)
    datasets = v.tags.get(f"{TAG}datasets")
    spread = f" in {v.tags.get(f'{TAG}n_datasets')} datasets ({datasets})" if datasets else ""
    typer.echo(
        f"imported {v.n_subjects} subjects{spread} ({v.contrast}) from {where} as {v.ref} "
        f"(model {v.model or 'not recorded'})"
    )
    if not v.model:
        _warn(f"{v.ref} records no model: z-scores against it cannot check model consistency")
    typer.echo(f"files sha256 {v.files_sha256}")
    typer.echo(str(v.version))


# ----------------------------------------------------------------------------------- list ---


@normative_app.command("list")
@command
def list_(
    ctx: typer.Context, json_out: bool = _JSON, registry: str | None = REGISTRY_OPTION
) -> None:
    """Every version of every normative database, by name and version number."""
    from rich.console import Console
    from rich.table import Table

    from drift.normative.store import list_databases

    reg = registry_from(ctx, registry)
    fresh = nothing_registered(reg)  # a fresh home: an empty list, nothing created
    if not fresh:
        require_store(reg)
    versions = [] if fresh else list_databases(registry=reg)
    if json_out:
        print_json([v.to_dict() for v in versions])
        return
    if not versions:
        typer.echo("no normative database")
        return
    table = Table(title="Normative databases")
    for col in ("database", "kind", "model", "subjects", "parent", "created", "files sha256"):
        table.add_column(col)
    for v in versions:
        table.add_row(
            v.ref,
            v.kind,
            v.model or "-",
            str(v.n_subjects),
            "-" if v.parent is None else str(v.parent),
            v.created,
            v.files_sha256[:12],
        )
    Console(width=_WIDTH).print(table)


# ----------------------------------------------------------------------------------- show ---


@normative_app.command("show")
@command
def show(
    ctx: typer.Context,
    ref: str = typer.Argument(
        ..., metavar="NAME/VERSION", help="NAME/VERSION, NAME@latest or NAME (the latest)."
    ),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """One version: metadata, how it was made and its per-level summary."""
    from rich.console import Console

    from drift.normative.summary import show as show_version

    info = show_version(_db_ref(ref), registry=registry_from(ctx, registry, must_exist=True))
    v: NormativeVersion = info["version"]
    if json_out:
        doc = v.to_dict() | {
            "records": info["records"],
            "n_participants": info["n_participants"],
            "summary": _records(info["summary"]),
            "factors": None if info["factors"] is None else _records(info["factors"]),
        }
        print_json(doc)
        return
    typer.echo("\n".join(_version_lines(v)))
    rescale = info["records"].get("rescale")
    if rescale:
        typer.echo(f"  note:         {rescale['note']}")
        typer.echo(
            f"  drift result: sha256 {rescale['drift_result_sha256']} "
            f"(baseline {rescale['drift_result_baseline']}, verdict {rescale['drift_verdict']})"
        )
        if rescale.get("overrides"):
            typer.echo(f"  overridden:   {'; '.join(rescale['overrides'])}")
        if rescale.get("blanked_levels"):
            typer.echo(f"  emptied:      {rescale['blanked_levels']}")
    factors = info["factors"]
    console = Console(width=_WIDTH)
    if factors is not None and not factors.empty:
        from rich.table import Table

        t = Table(title="Scaling factors used (candidate / baseline)", title_justify="left")
        for col in ("metric", "level", "factor", "95 % CI", "slice CoV %", "subjects", "used"):
            t.add_column(col)
        for r in factors.to_dict("records"):
            t.add_row(
                r["metric"],
                r["level_name"],
                _fmt(r["scaling_factor"], ".4f"),
                f"[{_fmt(r['ci95_low'], '.4f')}, {_fmt(r['ci95_high'], '.4f')}]",
                _fmt(r["slicewise_cov_pct"]),
                str(r["n_subjects"]),
                "yes" if r["used"] else "no",
            )
        console.print(t)
    table = info["summary"]
    console.print(
        _summary_table(
            table[table["metric"].isin(["area", "diameter_AP", "diameter_RL"])],
            f"Per-level summary of subject level means, all {v.n_subjects} subjects",
        )
    )


# -------------------------------------------------------------------------------- summary ---


@normative_app.command("summary")
@command
def summary(
    ctx: typer.Context,
    ref: str = typer.Argument(
        ..., metavar="NAME/VERSION", help="NAME/VERSION, NAME@latest or NAME (the latest)."
    ),
    sex: str | None = _SEX,
    age: str | None = _AGE,
    vendor: str | None = _VENDOR,
    metric: list[str] = typer.Option(
        [],
        "--metric",
        metavar="METRIC",
        help="Metric to summarise (repeatable; default: area, diameters, eccentricity, "
        "solidity, orientation, angles).",
    ),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """Per-level mean, SD and percentiles of the subjects' level means, filtered."""
    from rich.console import Console

    from drift.normative.store import resolve
    from drift.normative.summary import SUMMARY_METRICS
    from drift.normative.summary import summary as summarise

    reg = registry_from(ctx, registry, must_exist=True)
    filters = _filters(sex, age, vendor)
    version = resolve(_db_ref(ref), registry=reg)
    table = summarise(
        version.ref,
        filters.sex,
        filters.age,
        filters.vendor,
        metrics=tuple(metric) or SUMMARY_METRICS,
        registry=reg,
    )
    if json_out:
        print_json(
            {
                "database": version.ref,
                "model": version.model,
                "filters": filters.to_dict(),
                "levels": _records(table),
            }
        )
        return
    Console(width=_WIDTH).print(
        _summary_table(
            table,
            f"{version.ref} (model {version.model or 'not recorded'}), {filters.describe()}",
        )
    )


# --------------------------------------------------------------------------------- update ---


@normative_app.command("update")
@command
def update(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="Database to update."),
    model: str = typer.Option(
        ...,
        "--model",
        metavar="NAME/VERSION",
        help="The model version the new database version is for (e.g. the promoted one).",
    ),
    scaling: Path | None = typer.Option(
        None,
        "--scaling",
        metavar="RESULT.json",
        help="Rescale from this drift result (cordwatch drift check --json), whose baseline "
        "must be the database's model and candidate --model.",
    ),
    recompute: bool = typer.Option(
        False, "--recompute", help="Recompute: segment --cohort with --model and measure it."
    ),
    cohort: list[str] = typer.Option(
        [],
        "--cohort",
        metavar="MANIFEST",
        help="Cohort for --recompute (name or .tsv path). Repeat it for a multi-dataset "
        "version: one dataset per cohort, named after it.",
    ),
    root: list[Path] = typer.Option(
        [],
        "--root",
        metavar="DIR",
        help="Where the cohort's images are (--recompute); one per --cohort, in order.",
    ),
    contrast: str | None = typer.Option(
        None,
        "--contrast",
        metavar="CONTRAST",
        help="Contrast to keep for --recompute (default: the database's, e.g. T2w).",
    ),
    participants: list[Path] = typer.Option(
        [],
        "--participants",
        metavar="TSV",
        help="participants.tsv for --recompute, one per --cohort (default: the previous "
        "version's rows; with several cohorts, else the cohort root's participants.tsv).",
    ),
    device: str = typer.Option(
        "auto", "--device", help="Inference device for --recompute: auto, cpu or cuda."
    ),
    assume_baseline: bool = typer.Option(
        False,
        "--assume-baseline",
        help="Rescale although the drift result or the database does not name the models "
        "(or they differ); recorded in the new version.",
    ),
    policy: Path | None = typer.Option(
        None,
        "--policy",
        metavar="FILE",
        help="Rescale policy (default: reference_data/normative_policy.yaml).",
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", metavar="local[:N]|tcp://HOST:PORT", help=SCHEDULER_HELP
    ),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """Make the next version for a new model (rescale or recompute).

    --scaling RESULT.json rescales the latest version by the drift result's factors
    (refused when the scaling is not uniform, see reference_data/normative_policy.yaml);
    --recompute segments a cohort with --model. Prints the new version number on the last
    line.
    """
    from drift.cohort.engine import open_engine
    from drift.normative.update import update as do_update
    from registry.errors import InputError

    if scheduler is not None and not recompute:
        raise InputError("--scheduler is for --recompute (a rescale runs no model)")

    def say(msg: str) -> None:
        typer.echo(msg, err=True)

    # A cluster started here is stopped before the new version is printed (also on Ctrl-C).
    with open_engine(scheduler, say=say, device=device) as engine:
        result = do_update(
            name,
            model,
            scaling,
            recompute=recompute,
            cohort=cohort or None,
            root=root or None,
            contrast=contrast,
            participants=participants or None,
            device=device,
            progress=False,
            assume_baseline=assume_baseline,
            policy_path=policy,
            registry=registry_from(ctx, registry, must_exist=True),
            engine=engine if engine.distributed else None,
        )
    v = result.version
    if json_out:
        for note in result.notes:
            _warn(note)
        print_json(v.to_dict() | {"notes": list(result.notes)})
        return
    for note in result.notes:
        if note.startswith("--assume-baseline"):
            _warn(note)
        else:
            typer.echo(f"note: {note}")
    parent = f" from {v.name}/{v.parent}" if v.parent is not None else ""
    typer.echo(f"{v.kind}{parent} -> {v.ref} for model {v.model} ({v.n_subjects} subjects)")
    typer.echo(f"files sha256 {v.files_sha256}")
    typer.echo(str(v.version))


# --------------------------------------------------------------------------------- export ---


@normative_app.command("export")
@command
def export(
    ctx: typer.Context,
    ref: str = typer.Argument(
        ..., metavar="NAME/VERSION", help="NAME/VERSION, NAME@latest or NAME (the latest)."
    ),
    directory: Path = typer.Argument(..., metavar="DIR", help="New or empty output folder."),
    layout: str | None = typer.Option(
        None,
        "--layout",
        metavar="single|datasets",
        help="Layout to write: single (spinal_cord/*.csv + participants.tsv, r20250321) or "
        "datasets (spinal_cord/<DATASET>/, PAM50-normalized-metrics since 2026); default: "
        "as stored.",
    ),
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        metavar="NAME",
        help="Dataset folder name when a single-layout version is written as datasets "
        "(default: the database name).",
    ),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """Write a version in SCT's layout, for sct_compute_compression -normalize-hc 1.

    The database files exactly as stored (or converted with --layout: the CSVs byte for
    byte), plus PROVENANCE.md and cordwatch/ (manifest, version record, rescale records).
    """
    from drift.normative.store import export_db
    from registry.fsutil import refuse_outputs_onto_inputs

    reg = registry_from(ctx, registry)
    refuse_outputs_onto_inputs({"DIR": directory}, [reg.settings.cache_dir], folders=["DIR"])
    require_store(reg)
    out = export_db(_db_ref(ref), directory, layout=layout, dataset_name=dataset, registry=reg)
    if json_out:
        print_json({"database": _db_ref(ref), "folder": str(out), "layout": layout})
        return
    typer.echo(str(out))


# --------------------------------------------------------------------------------- zscore ---


@normative_app.command("zscore")
@command
def zscore(
    ctx: typer.Context,
    subject_csv: Path = typer.Argument(
        ...,
        metavar="SUBJECT.csv",
        help="The subject's PAM50-normalised per-slice CSV (sct_process_segmentation "
        "-perslice 1 -normalize-PAM50 1).",
    ),
    db: str = typer.Option(
        ..., "--db", metavar="NAME/VERSION", help="Normative database version to compare with."
    ),
    sex: str | None = _SEX,
    age: str | None = _AGE,
    vendor: str | None = _VENDOR,
    model: str | None = typer.Option(
        None,
        "--model",
        metavar="NAME/VERSION",
        help="Model that segmented the subject; must be the database's model.",
    ),
    allow_model_mismatch: bool = typer.Option(
        False,
        "--allow-model-mismatch",
        help="Compute z-scores although the subject's model is not the database's (warns).",
    ),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """Per-level z-scores and percentiles of a subject against a normative database."""
    from rich.console import Console
    from rich.table import Table

    from drift.normative.summary import zscore as compute

    filters = _filters(sex, age, vendor)
    result = compute(
        subject_csv,
        _db_ref(db),
        filters.sex,
        filters.age,
        filters.vendor,
        model,
        allow_model_mismatch=allow_model_mismatch,
        registry=registry_from(ctx, registry, must_exist=True),
    )
    for w in result.warnings:
        _warn(w)
    if json_out:
        print_json(result.to_dict())
        return
    v = result.database
    table = Table(
        title=f"{result.subject} vs {v.ref} (model {v.model or 'not recorded'}; "
        f"{result.n_reference} reference subjects, {filters.describe()})",
        title_justify="left",
    )
    for col in ("metric", "level", "subject", "ref mean", "ref SD", "n", "z", "percentile"):
        table.add_column(col, justify="left" if col in ("metric", "level") else "right")
    for r in result.table.to_dict("records"):
        table.add_row(
            r["metric"],
            r["level_name"],
            _fmt(r["value"], ".3f"),
            _fmt(r["mean"], ".3f"),
            _fmt(r["sd"], ".3f"),
            str(r["n"]),
            _fmt(r["z"], "+.2f"),
            _fmt(r["percentile"], ".1f"),
        )
    Console(width=_WIDTH).print(table)
    typer.echo(f"model check: {result.model_check}")
