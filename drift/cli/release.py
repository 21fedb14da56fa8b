"""``cordwatch release ...``: the steps of the drift-gate and release workflows that decide
something, as commands (a thin shell over :mod:`drift.gate.release`).

    cordwatch release candidate [--name NAME] [--model PATH|URL] [--local-only] [--json]
    cordwatch release gated VERSIONS.json CHAMPION.json --tree GIT_OBJECT --path PATH
                            [--require-promotable] [--json]
    cordwatch release outputs FILE.json KEY [KEY ...] [--json]
    cordwatch release record OUT.json --model NAME --version V --sha256 S --baseline V ...

``candidate``, ``gated`` and ``outputs`` print ``key=value`` lines for ``$GITHUB_OUTPUT``, or
with ``--json`` the same values as one JSON object on stdout (``record`` prints nothing: it
writes OUT.json).
None of them talks to the registry: they read the files given (the JSON that ``cordwatch
models list/show --json`` printed). Exit 2 with one line naming the file on bad input;
``gated --require-promotable`` exits 1 on a version that ``models promote`` would refuse.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from drift.cli.common import JSON_OPTION, command, print_json

release_app = typer.Typer(
    help="Workflow steps as commands: the candidate, the gated version, outputs, the record.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@release_app.command("candidate")
@command
def candidate(
    name: str = typer.Option(
        "", "--name", metavar="NAME", help="Registry name (overrides the manifest's)."
    ),
    model: str = typer.Option(
        "",
        "--model",
        metavar="PATH|URL",
        help="Package path or https URL (overrides the manifest's).",
    ),
    root: Path = typer.Option(
        Path("."), "--root", metavar="DIR", help="The repository (default: here)."
    ),
    local_only: bool = typer.Option(
        False,
        "--local-only",
        help="The package must be a path inside the repository (no URL): the release flow.",
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Resolve the candidate of models/candidate.yaml: name, model, kind, description, path."""
    from drift.gate.release import output_lines, resolve_candidate

    found = resolve_candidate(root, name, model, local_only=local_only)
    if json_out:
        print_json(found.outputs())
    else:
        typer.echo(output_lines(found.outputs()), nl=False)


@release_app.command("gated")
@command
def gated(
    versions: Path = typer.Argument(
        ..., metavar="VERSIONS.json", help="`cordwatch models list NAME --json` output."
    ),
    champion: Path = typer.Argument(
        ..., metavar="CHAMPION.json", help="`cordwatch models show NAME@champion --json`."
    ),
    tree: str = typer.Option(
        ..., "--tree", metavar="GIT_OBJECT", help="Git object id of the package (git_tree tag)."
    ),
    path: str = typer.Option(
        ..., "--path", metavar="PATH", help="The package's path (for messages)."
    ),
    require_promotable: bool = typer.Option(
        False,
        "--require-promotable",
        help="Exit 1 unless `models promote` would move champion to the version (its drift "
        "verdict's policy promotes it), as the release flow needs after its drift check.",
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """The registered version of the package to promote: version, sha256, champion, already,
    its drift verdict and whether it is promotable (the rule `models promote` applies)."""
    from drift.gate.release import gated_version, output_lines, read_json_file

    found = gated_version(
        read_json_file(versions, "version list"),
        read_json_file(champion, "champion version"),
        tree,
        path,
        require_promotable=require_promotable,
    )
    if json_out:  # typed: version and champion numbers, already and promotable booleans
        print_json(dataclasses.asdict(found))
    else:
        typer.echo(output_lines(found.outputs()), nl=False)


@release_app.command("outputs")
@command
def outputs(
    file: Path = typer.Argument(
        ..., metavar="FILE.json", help="A JSON document cordwatch wrote (--json)."
    ),
    keys: list[str] = typer.Argument(
        ..., metavar="KEY...", help="Keys to print, dotted for nested ones."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Print ``key=value`` lines of a JSON document's values (line breaks refused), or with
    --json the picked values as one JSON object (``{"version": 7}``, last part of each key)."""
    from drift.gate.release import output_lines, pick, read_json_file

    values = pick(read_json_file(file), keys, file)
    if json_out:
        print_json(values)
    else:
        typer.echo(output_lines(values), nl=False)


@release_app.command("record")
@command
def record(
    out: Path = typer.Argument(..., metavar="OUT.json", help="Where to write promotion.json."),
    model: str = typer.Option(
        ..., "--model", metavar="NAME", help="Registry name of the promoted model."
    ),
    version: int = typer.Option(..., "--version", metavar="N", help="The promoted version."),
    sha256: str = typer.Option(..., "--sha256", metavar="HEX", help="Its package sha256."),
    baseline: int = typer.Option(..., "--baseline", metavar="N", help="The champion it replaces."),
    commit: str = typer.Option(
        ..., "--commit", metavar="SHA", help="The git commit of the release run."
    ),
    normative_name: str = typer.Option(
        ..., "--normative-name", metavar="NAME", help="Normative database."
    ),
    normative_version: int = typer.Option(
        ..., "--normative-version", metavar="N", help="Its new version."
    ),
    normative_mode: str = typer.Option(
        ..., "--normative-mode", metavar="scaling|recompute", help="scaling or recompute."
    ),
) -> None:
    """Write the promotion record a release attaches (JSON, written all at once); prints
    nothing (the record is OUT.json)."""
    from drift.gate.release import promotion_record, write_json_file

    doc = promotion_record(
        model=model,
        version=version,
        sha256=sha256,
        baseline_version=baseline,
        git_commit=commit,
        normative_name=normative_name,
        normative_version=normative_version,
        normative_mode=normative_mode,
    )
    write_json_file(doc, out)
