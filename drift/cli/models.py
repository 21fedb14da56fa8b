"""``cordwatch models ...``: the model registry on the command line (a thin shell over
:mod:`registry.api`).

    cordwatch models register NAME PATH|URL... [--sha256 HEX] [--alias A] [--tag K=V ...]
                              [--description TEXT] [--json]
    cordwatch models list [NAME] [--json]
    cordwatch models show NAME@ALIAS|NAME/VERSION [--json]
    cordwatch models pull NAME@ALIAS|NAME/VERSION [-o DIR] [--refresh]
    cordwatch models promote NAME/VERSION [--alias champion] [--force --reason TEXT]
    cordwatch models history NAME [--json]
    cordwatch models diff NAME/V1 NAME/V2 [--json]
    cordwatch models audit NAME [--json]

``--registry URI`` (after the sub-command, or before it: ``models --registry URI list``)
selects the registry; else ``MLFLOW_TRACKING_URI``;
else ``sqlite:///$CORDWATCH_HOME/registry.db``. Exit codes: 0 ok, 1 promotion refused by the
drift gate, 2 bad input, integrity or registry error (one line on stderr naming the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

models_app = typer.Typer(
    help="Model registry on MLflow: register, list, show, pull, promote, history, diff, audit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@models_app.callback()
def models(
    ctx: typer.Context,
    registry: str | None = typer.Option(
        None,
        "--registry",
        metavar="URI",
        help=REGISTRY_HELP,
    ),
) -> None:
    """Model registry on MLflow: register, list, show, pull, promote, history, diff, audit."""
    ctx.ensure_object(dict)["registry"] = registry
    quiet_mlflow()


_JSON = JSON_OPTION


def _parse_tags(items: list[str]) -> dict[str, str]:
    from registry.errors import InputError
    from registry.refs import parse_tag

    tags: dict[str, str] = {}
    for item in items:
        key, value = parse_tag(item)
        if key in tags:
            raise InputError("tag given twice", key)
        tags[key] = value
    return tags


@models_app.command("register")
@command
def register(
    ctx: typer.Context,
    name: str = typer.Argument(
        ..., metavar="NAME", help="Registered model name (letters, digits, . _ + -)."
    ),
    paths: list[str] = typer.Argument(
        ...,
        metavar="PATH|URL",
        help="An nnU-Net v2 results folder (plain, SCT release layout or external segmenter), "
        "a release zip of one, one zip per fold, or the https:// URL of a release zip "
        "(with --sha256).",
    ),
    sha256: list[str] = typer.Option(
        [],
        "--sha256",
        metavar="HEX",
        help="sha256 of the zip at each URL, in order (required for URLs): checked before "
        "anything is unpacked.",
    ),
    alias: str | None = typer.Option(
        None,
        "--alias",
        metavar="ALIAS",
        help="Point this alias (e.g. candidate) at the new version.",
    ),
    tag: list[str] = typer.Option(
        [],
        "--tag",
        metavar="K=V",
        help="Version tag, repeatable: task, contrasts, training_datasets, release_tag, "
        "source_url, git_commit, parent (NAME/V, NAME@ALIAS or a version number), or any key.",
    ),
    description: str | None = typer.Option(
        None, "--description", help="Changelog line stored with the version."
    ),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """Register a model package as a new version; print its version number."""
    import tempfile

    from registry.download import download, is_url
    from registry.errors import InputError

    tags = _parse_tags(tag)
    urls = [p for p in paths if is_url(p)]
    if sha256 and not urls:
        raise InputError("--sha256 applies to URL sources only", "--sha256")
    if len(sha256) != len(urls):
        raise InputError(
            f"--sha256 given {len(sha256)} time(s) for {len(urls)} URL(s): one per URL, in order",
            "--sha256",
        )
    reg = registry_from(ctx, registry)
    with tempfile.TemporaryDirectory(prefix="cordwatch-download-") as tmp:
        sources: list[str | Path] = []
        hashes = iter(sha256)
        for i, item in enumerate(paths):
            if is_url(item):
                folder = Path(tmp) / str(i)
                folder.mkdir()
                sources.append(download(item, next(hashes), folder).path)
            else:
                sources.append(Path(item))
        if len(urls) == 1 and "source_url" not in tags:
            tags["source_url"] = urls[0]
        info = reg.register(name, sources, tags=tags, alias=alias, description=description)
    if json_out:
        print_json({"name": info.name, "version": info.version, "sha256": info.sha256})
    else:
        typer.echo(str(info.version))


@models_app.command("list")
@command
def list_(
    ctx: typer.Context,
    name: str | None = typer.Argument(
        None, metavar="[NAME]", help="List this model's versions (default: models)."
    ),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """List registered models, or the versions of one model ordered by number.

    On a fresh $CORDWATCH_HOME (no registry.db yet) the list of models is empty (exit 0, no
    file created); a model NAME is not found there (exit 2), nor is a sqlite file named by
    --registry or $MLFLOW_TRACKING_URI that does not exist (a typo, exit 2).
    """
    from rich.console import Console
    from rich.table import Table

    reg = registry_from(ctx, registry)
    fresh = name is None and nothing_registered(reg)
    if not fresh:
        require_store(reg)
    if name is None:
        summaries = [] if fresh else reg.list_models()
        if json_out:
            print_json([s.to_dict() for s in summaries])
            return
        if not summaries:
            typer.echo("no model registered")
            return
        table = Table("name", "versions", "latest", "aliases", "updated")
        for s in summaries:
            aliases = ", ".join(f"{a}->{v}" for a, v in sorted(s.aliases.items()))
            table.add_row(
                s.name, str(s.versions), str(s.latest or "-"), aliases, _date(s.updated.isoformat())
            )
        Console(width=200).print(table)
        return
    versions = reg.list_versions(name)
    if json_out:
        print_json([v.to_dict() for v in versions])
        return
    table = Table("version", "aliases", "sha256", "created", "task", "release", "description")
    for v in versions:
        table.add_row(
            str(v.version),
            ", ".join(v.aliases),
            v.sha256[:12],
            _date(v.created.isoformat()),
            v.tags.get("task", ""),
            v.tags.get("release_tag", ""),
            v.description,
        )
    Console(width=200).print(table)


def _date(iso: str) -> str:
    return iso[:19].replace("T", " ")


def _size(n: int) -> str:
    """Human-readable bytes.

    >>> _size(2048), _size(64 * 1024 * 1024)
    ('2.0 KiB', '64.0 MiB')
    """
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@models_app.command("show")
@command
def show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="REF", help="NAME@ALIAS or NAME/VERSION."),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """Show one version: metadata, tags, aliases and the file manifest."""
    from registry.package import package_summary

    info = registry_from(ctx, registry, must_exist=True).resolve(ref, manifest=True)
    package = package_summary(info.tags)
    if json_out:
        print_json(info.to_dict() | {"package": package})
        return
    lines = [
        f"{info.ref}",
        f"  sha256:      {info.sha256}",
        f"  aliases:     {', '.join(info.aliases) or '-'}",
        f"  created:     {_date(info.created.isoformat())} UTC",
        f"  description: {info.description or '-'}",
        f"  run:         {info.run_id}",
        f"  source:      {info.source}",
        f"  format:      {package['format']}",
        *(
            [f"  orientation: {package['image_orientation']}"]
            if "image_orientation" in package
            else []
        ),
        *(
            [
                "  crop_metadata.json (mm): "
                + ", ".join(f"{k}={v:g}" for k, v in package["crop_metadata"].items())
            ]
            if "crop_metadata" in package
            else []
        ),
        "  tags:",
        *(f"    {k} = {v}" for k, v in sorted(info.tags.items())),
    ]
    assert info.manifest is not None
    lines.append(f"  files ({len(info.manifest.files)}, {_size(info.manifest.total_bytes)}):")
    lines += [f"    {f.sha256[:12]}  {_size(f.size):>10}  {f.path}" for f in info.manifest.files]
    typer.echo("\n".join(lines))


@models_app.command("pull")
@command
def pull(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="REF", help="NAME@ALIAS or NAME/VERSION."),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        metavar="DIR",
        help="Also copy the verified package into this new or empty folder.",
    ),
    refresh: bool = typer.Option(
        False, "--refresh", help="Drop the cached copy and download the package again."
    ),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """Fetch a version's package (verified against its sha256 manifest); print its folder."""
    from registry.fsutil import refuse_outputs_onto_inputs

    reg = registry_from(ctx, registry)
    refuse_outputs_onto_inputs({"--output": output}, [reg.settings.cache_dir], folders=["--output"])
    require_store(reg)
    folder = reg.pull(ref, output, refresh=refresh)
    if json_out:
        print_json({"ref": ref, "folder": str(folder)})
    else:
        typer.echo(str(folder))


@models_app.command("promote")
@command
def promote(
    ctx: typer.Context,
    ref: str = typer.Argument(
        ..., metavar="REF", help="NAME/VERSION (or NAME@ALIAS) to point the alias at."
    ),
    alias: str = typer.Option("champion", "--alias", metavar="ALIAS", help="Alias to move."),
    force: bool = typer.Option(
        False, "--force", help="Move champion to a version that is not promotable (needs --reason)."
    ),
    reason: str | None = typer.Option(
        None, "--reason", help="Why; recorded in the alias history (required with --force)."
    ),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """Move an alias to a version; champion needs a promotable one: a drift verdict that the
    check's policy promotes (cordwatch.drift.promotable=true; default policy: pass only)."""
    event = registry_from(ctx, registry, must_exist=True).promote(
        ref, alias, force=force, reason=reason
    )
    if json_out:
        print_json(None if event is None else event.to_dict())
    elif event is None:
        typer.echo(f"{ref}: {alias} already points here (unchanged)")
    else:
        frm = "-" if event.from_version is None else str(event.from_version)
        forced = " (forced)" if event.forced else ""
        typer.echo(f"{event.name}@{alias}: {frm} -> {event.to_version}{forced}")


@models_app.command("history")
@command
def history(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="Registered model name."),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """The append-only alias history of a model: who moved which alias, when, and why."""
    from rich.console import Console
    from rich.table import Table

    events = registry_from(ctx, registry, must_exist=True).history(name)
    if json_out:
        print_json([e.to_dict() for e in events])
        return
    table = Table("when (UTC)", "alias", "from", "to", "who", "verdict", "forced", "reason")
    for e in events:
        table.add_row(
            _date(e.when.isoformat()),
            e.alias,
            "-" if e.from_version is None else str(e.from_version),
            str(e.to_version),
            e.who,
            e.verdict or "-",
            "yes" if e.forced else "",
            e.reason,
        )
    Console(width=200).print(table)


@models_app.command("diff")
@command
def diff(
    ctx: typer.Context,
    a: str = typer.Argument(..., metavar="A", help="First version, NAME/V1 (or NAME@ALIAS)."),
    b: str = typer.Argument(..., metavar="B", help="Second version, NAME/V2 (or NAME@ALIAS)."),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """Metadata and file-manifest differences between two versions."""
    d = registry_from(ctx, registry, must_exist=True).diff(a, b)
    if json_out:
        print_json(d.to_dict())
        return
    typer.echo("\n".join(_diff_lines(d.to_dict())))


def _diff_lines(d: dict[str, Any]) -> list[str]:
    lines = [f"--- {d['a']}", f"+++ {d['b']}"]
    if d["same_package"]:
        lines.append(f"  package: identical (sha256 {d['sha256']['a'][:12]})")
    else:
        lines.append(f"~ package sha256: {d['sha256']['a'][:12]} -> {d['sha256']['b'][:12]}")
    if d["description"] is not None:
        lines.append(f"~ description: {d['description']['a']!r} -> {d['description']['b']!r}")
    for key, change in d["tags"].items():
        if change["a"] is None:
            lines.append(f"+ tag {key} = {change['b']}")
        elif change["b"] is None:
            lines.append(f"- tag {key} = {change['a']}")
        else:
            lines.append(f"~ tag {key}: {change['a']} -> {change['b']}")
    files = d["files"]
    lines += [f"+ file {f['path']} ({_size(f['size'])})" for f in files["added"]]
    lines += [f"- file {f['path']} ({_size(f['size'])})" for f in files["removed"]]
    for c in files["changed"]:
        lines.append(
            f"~ file {c['path']}: {c['a']['sha256'][:12]} ({_size(c['a']['size'])}) -> "
            f"{c['b']['sha256'][:12]} ({_size(c['b']['size'])})"
        )
    return lines


@models_app.command("audit")
@command
def audit(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="Registered model name."),
    json_out: bool = _JSON,
    registry: str | None = REGISTRY_OPTION,
) -> None:
    """Compare MLflow's aliases and verdict tags with cordwatch's history: a champion that is
    not promotable, a verdict tag without its drift run, an alias moved outside cordwatch.

    Exit 0 when everything agrees, 1 when something is wrong.
    """
    from drift.gate.audit import AuditFailed, audit_model

    findings = audit_model(registry_from(ctx, registry, must_exist=True), name)
    if json_out:
        print_json({"model": name, "ok": not findings, "findings": [f.to_dict() for f in findings]})
    else:
        for f in findings:
            typer.echo(f"{f.kind}: {f.message}")
        if not findings:
            typer.echo(f"{name}: aliases and verdicts agree with cordwatch's history")
    if findings:
        raise AuditFailed(f"{len(findings)} problem(s) in {name}'s aliases and verdicts")
