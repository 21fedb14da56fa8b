"""``cordwatch policy ...``: the file formats of the gate and of the normative database.

    cordwatch policy schema [--kind gate|normative|scaling] [--json]

``schema`` prints the JSON Schema of a format (from its pydantic model) so that an editor can
validate a policy file while it is written, e.g. with a first line
``# yaml-language-server: $schema=policy.schema.json``.
"""

from __future__ import annotations

from enum import StrEnum

import typer

from drift.cli.common import command

policy_app = typer.Typer(
    help="Policy file formats: the JSON Schema of the gate policy, the normative policy and "
    "the scaling result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Kind(StrEnum):
    """The file formats with a schema."""

    gate = "gate"
    normative = "normative"
    scaling = "scaling"


@policy_app.command("schema")
@command
def schema(
    kind: Kind = typer.Option(
        Kind.gate,
        "--kind",
        help="gate: the drift gate policy (reference_data/policy.yaml); normative: when a "
        "rescale may stand in for a recompute (reference_data/normative_policy.yaml); "
        "scaling: the drift result `normative update --scaling` reads.",
    ),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print the result as JSON on stdout: the schema is JSON either way (accepted so "
        "that every command that prints a result takes --json).",
    ),
) -> None:
    """Print the JSON Schema (draft 2020-12) of a policy file format."""
    from pydantic import BaseModel

    from drift.gate.policy import PolicyFile
    from drift.gate.schema import json_schema
    from drift.normative.policy import NormativePolicyFile, ScalingResult

    formats: dict[Kind, tuple[type[BaseModel], str]] = {
        Kind.gate: (PolicyFile, "cordwatch drift gate policy"),
        Kind.normative: (NormativePolicyFile, "cordwatch normative policy"),
        Kind.scaling: (ScalingResult, "cordwatch scaling result (drift result JSON)"),
    }
    model, title = formats[kind]
    del json_out  # the schema is one JSON document already: --json changes nothing
    typer.echo(json_schema(model, title), nl=False)
