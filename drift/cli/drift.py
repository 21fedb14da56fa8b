"""``cordwatch drift ...``: compare two model versions' morphometrics and gate the result.

    cordwatch drift compare BASELINE_DIR CANDIDATE_DIR [--policy FILE] [--result OUT.json]
                            [--report DIR] [--json]
    cordwatch drift check NAME@ALIAS|NAME/VERSION --baseline REF --cohort MANIFEST
                          [--result OUT.json] [--report DIR] [--json] [--registry URI]

``--json`` prints the result document on stdout (the tables and messages then go to stderr);
``--result FILE`` writes the same document to FILE. ``--json FILE`` (0.1) still writes
FILE, with a deprecation warning, until 0.3.

``compare`` reads two directories of per-subject SCT morphometry CSVs (``sub-XXX_*.csv``, e.g.
PAM50-normalised per-slice files), pairs them by subject and contrast, and runs the drift
statistics and the gate of :mod:`drift.gate.compare` / :mod:`drift.gate.policy`. ``check``
(registry,
cohort, inference) is added to :data:`drift_app` by its own module and reuses
:func:`print_result`, :func:`emit_result` and :func:`raise_on_fail`.

Exit codes: 0 pass or warn, 1 fail, 2 bad input (missing directory, no CSV, unreadable CSV,
no paired subjects, invalid policy). Outputs (``--result``, ``--report``) are written only after
everything was computed, each file atomically: an error leaves none behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import typer.core

from drift.cli.common import REGISTRY_HELP, command, quiet_mlflow
from drift.cohort.engine import SCHEDULER_HELP
from drift.gate.tables import files_sha256, read_csv_dir
from drift.provenance import base_provenance
from registry.errors import GateFailed, InputError
from registry.fsutil import refuse_outputs_onto_inputs

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

    from drift.gate.policy import DriftResult

#: Until 0.3: ``--json FILE`` is the ``--result FILE`` of 0.1 (``--json`` is now a flag).
DEPRECATED_JSON_FILE = (
    "cordwatch: warning: --json FILE is deprecated (removed in 0.3): use --result FILE; "
    "--json alone prints the result on stdout"
)


def rewrite_deprecated_json(
    args: list[str], value_options: set[str], n_positional: int
) -> tuple[list[str], bool]:
    """Read 0.1's ``--json FILE`` as ``--result FILE``: ``--json=FILE``, or ``--json`` followed
    by a word when the command line then holds one positional argument too many.

    ``value_options``: the options that take a value; ``n_positional``: how many positional
    arguments the command takes. True when something was rewritten.

    >>> rewrite_deprecated_json(["A", "B", "--json", "r.txt"], {"--report"}, 2)
    (['A', 'B', '--result', 'r.txt'], True)
    >>> rewrite_deprecated_json(["--json", "r.json", "A", "B"], set(), 2)
    (['--result', 'r.json', 'A', 'B'], True)
    >>> rewrite_deprecated_json(["A", "--json", "B"], set(), 2)
    (['A', '--json', 'B'], False)
    """
    positional: list[int] = []
    after_json: int | None = None
    out = list(args)
    changed = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positional += range(i + 1, len(args))
            break
        if arg.startswith("--json="):
            out[i : i + 1] = ["--result", arg[len("--json=") :]]
            return out, True
        if arg.startswith("-") and arg != "-":
            if arg in value_options:
                i += 1  # its value
            elif arg == "--json" and after_json is None and i + 1 < len(args):
                after_json = i + 1
        else:
            positional.append(i)
        i += 1
    if after_json in positional and len(positional) > n_positional:
        out[after_json - 1] = "--result"
        changed = True
    return out, changed


class DriftGroup(typer.core.TyperGroup):
    """``cordwatch drift``: reads the deprecated ``--json FILE`` as ``--result FILE``."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None and any(a == "--json" or a.startswith("--json=") for a in rest):
            values = {
                opt
                for p in cmd.params
                if p.param_type_name == "option"
                and not (getattr(p, "is_flag", False) or getattr(p, "count", False))
                for opt in (*p.opts, *p.secondary_opts)
            }
            n_args = sum(p.nargs for p in cmd.params if p.param_type_name == "argument")
            rest, changed = rewrite_deprecated_json(list(rest), values, n_args)
            if changed:
                typer.echo(DEPRECATED_JSON_FILE, err=True)
        return name, cmd, rest


drift_app = typer.Typer(
    cls=DriftGroup,
    help="Morphometric drift between two model versions: compare, gate, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_RESULT = typer.Option(
    None,
    "--result",
    metavar="OUT.json",
    help="Write the result document (for CI; what --json prints) to this file.",
)
_JSON = typer.Option(
    False,
    "--json",
    help="Print the result document as JSON on stdout (tables and messages go to stderr).",
)


def _fmt(x: float, spec: str = ".4f") -> str:
    import math

    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def _fmt_p(p: float) -> str:
    import math

    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.2g}"


_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", None: "dim"}


def print_result(result: DriftResult, console: Console, *, all_levels: bool = False) -> None:
    """The rich table (metric, level, scaling, CI, TOST p, n, status), then the verdict and
    the failing/warning conditions. Gated levels only unless ``all_levels``."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Scaling factor per level (candidate / baseline)", title_justify="left")
    for col in ("metric", "level"):
        table.add_column(col)
    for col in ("scaling", "95 % CI", "TOST p", "n"):
        table.add_column(col, justify="right")
    table.add_column("status")
    for r in result.comparison.levels.to_dict("records"):
        status = result.gate.status_of(r["metric"], r["level_name"])
        if status is None and (not all_levels or r["n_subjects"] == 0):
            continue
        table.add_row(
            r["metric"],
            r["level_name"],
            _fmt(r["scaling_factor"]),
            f"{_fmt(r['ci95_low'])}-{_fmt(r['ci95_high'])}",
            _fmt_p(r["tost_p"]),
            str(r["n_subjects"]),
            f"[{_STYLE[status]}]{status or 'not gated'}[/]",
        )
    console.print(table)
    for c in result.gate.conditions:
        if c.status in ("fail", "warn"):
            # soft_wrap: one condition per line, whatever the terminal width (CI logs, grep).
            console.print(
                f"[{_STYLE[c.status]}]{c.status.upper()}[/] {escape(c.description)}",
                soft_wrap=True,
            )
    sets = result.comparison.subject_sets
    if sets["baseline_only"] or sets["candidate_only"]:
        console.print(
            f"unpaired subjects: {len(sets['baseline_only'])} baseline only, "
            f"{len(sets['candidate_only'])} candidate only"
        )
    console.print(
        f"verdict: [{_STYLE[result.verdict]}]{result.verdict.upper()}[/] "
        f"({len(sets['paired'])} paired subjects, policy {result.provenance['policy_sha256'][:12]})"
    )
    from drift.gate.report import identical_weights, next_step, version_refs

    if identical_weights(result.provenance):
        console.print("identical weights: same package sha256, the statistics are exact identity")
    nxt = next_step(result, version_refs(result.provenance)[0]["ref"])
    command = f": {nxt['command']}" if nxt["command"] else ""
    console.print(escape(f"{nxt['text']}{command}"), soft_wrap=True)


def emit_result(
    result: DriftResult,
    *,
    json_out: Path | None,
    report_dir: Path | None,
    baseline_table: pd.DataFrame,
    candidate_table: pd.DataFrame,
    history: pd.DataFrame | None = None,
    console: Console | None = None,
    qc: dict[str, tuple[str, bytes]] | None = None,
) -> dict[str, Path]:
    """Write ``--json`` and ``--report`` (the report is rendered fully before anything is
    written, each file atomically) and print where they are. Returns the paths written, keyed
    ``json`` (``--json``), ``html``, ``markdown``, ``report_json``, ``figure:<name>``. Call
    :func:`raise_on_fail` afterwards for the exit code."""
    from drift.gate import report

    rendered = None
    if report_dir is not None:
        # Render first (the costly part that can fail), so that a failure writes nothing.
        rendered = report.render_report(
            result,
            baseline_table=baseline_table,
            candidate_table=candidate_table,
            history=history,
            qc=qc,
        )
    written: dict[str, Path] = {}
    if rendered is not None and report_dir is not None:
        reported = report.write_rendered(rendered, report_dir)
        written.update({k: v for k, v in reported.items() if k != "json"})
        written["report_json"] = reported["json"]
    if json_out is not None:  # the result file CI reads comes last, after the report
        written["json"] = report.write_json(result, json_out)
    if console is not None:
        for key in ("json", "html", "markdown"):
            if key in written:
                console.print(f"{key}: {written[key]}")
    return written


def print_result_json(result: DriftResult) -> None:
    """``--json``: the result document (the one ``--result`` writes) on stdout."""
    import sys

    from drift.gate.report import result_json

    sys.stdout.write(result_json(result))  # (ends with a newline)
    sys.stdout.flush()


def raise_on_fail(result: DriftResult) -> None:
    """GateFailed (exit 1, one line on stderr) when the verdict is fail; else nothing."""
    if result.verdict == "fail":
        n = len(result.gate.failing)
        raise GateFailed(f"drift gate failed: {n} failing condition(s)")


@drift_app.command("compare")
@command
def compare(
    baseline_dir: Path = typer.Argument(
        ...,
        metavar="BASELINE_DIR",
        help="Directory of the baseline version's per-subject SCT CSVs (sub-XXX_*.csv).",
        show_default=False,
    ),
    candidate_dir: Path = typer.Argument(
        ...,
        metavar="CANDIDATE_DIR",
        help="Directory of the candidate version's per-subject SCT CSVs, paired by subject "
        "and contrast with the baseline's.",
        show_default=False,
    ),
    policy: Path | None = typer.Option(
        None,
        "--policy",
        metavar="FILE",
        help="Gate policy YAML (default: reference_data/policy.yaml: area ±1 % fail, "
        "±0.5 % warn; diameters ±2 % / ±1 %).",
    ),
    result_out: Path | None = _RESULT,
    report_dir: Path | None = typer.Option(
        None,
        "--report",
        metavar="DIR",
        help="Write report.html (self-contained), summary.md, result.json and figures here.",
    ),
    all_levels: bool = typer.Option(
        False, "--all-levels", help="Show every compared level in the table, not only gated ones."
    ),
    json_out: bool = _JSON,
) -> None:
    """Compare two directories of SCT morphometry CSVs and gate the drift.

    Exit 0 on pass or warn, 1 on fail, 2 on bad input.
    """
    from rich.console import Console

    from drift.gate.policy import drift_result, load_policy

    refuse_outputs_onto_inputs(
        {"--result": result_out, "--report": report_dir},
        [baseline_dir, candidate_dir, policy],
        folders=["--report"],
    )
    console = Console(stderr=json_out)
    pol = load_policy(policy)
    baseline, b_files = read_csv_dir(baseline_dir, "baseline", progress=True)
    candidate, c_files = read_csv_dir(candidate_dir, "candidate", progress=True)
    # unique() first: iterating a pyarrow string column value by value costs ~1 s here.
    b_subj = set(baseline["subject"].unique())
    if not b_subj & set(candidate["subject"].unique()):
        raise InputError(
            f"no subject in common with the baseline directory {baseline_dir}", candidate_dir
        )
    prov: dict[str, Any] = {
        "command": "cordwatch drift compare",
        "baseline_dir": str(Path(baseline_dir).resolve()),
        "candidate_dir": str(Path(candidate_dir).resolve()),
        "baseline_files": len(b_files),
        "candidate_files": len(c_files),
        "baseline_files_sha256": files_sha256(b_files),
        "candidate_files_sha256": files_sha256(c_files),
        **base_provenance(),
    }
    result = drift_result(baseline, candidate, pol, provenance=prov)
    print_result(result, console, all_levels=all_levels)
    emit_result(
        result,
        json_out=result_out,
        report_dir=report_dir,
        baseline_table=baseline,
        candidate_table=candidate,
        console=console,
    )
    if json_out:
        print_result_json(result)
    raise_on_fail(result)


def _cache_dir(registry: str | None) -> Path | None:
    """The package and segmentation cache of the registry (an input of every check)."""
    from registry.errors import RegistryError
    from registry.settings import resolve_settings

    try:
        return resolve_settings(registry).cache_dir
    except RegistryError:  # a bad URI is reported by the check itself
        return None


@drift_app.command("check")
@command
def check(
    candidate: str = typer.Argument(
        ...,
        metavar="NAME@ALIAS|NAME/VERSION",
        help="The candidate version, e.g. cordseg@candidate.",
    ),
    baseline: str = typer.Option(
        ..., "--baseline", metavar="REF", help="The baseline version, e.g. cordseg@champion."
    ),
    cohort: str = typer.Option(
        ...,
        "--cohort",
        metavar="MANIFEST",
        help="Frozen cohort manifest (path or shipped name, e.g. phantom).",
    ),
    root: Path | None = typer.Option(
        None,
        "--root",
        metavar="DIR",
        help="Cohort root (default: generated phantom cohort, else $CORDWATCH_COHORT_ROOT).",
    ),
    policy: Path | None = typer.Option(
        None,
        "--policy",
        metavar="FILE",
        help="Gate policy YAML (default: reference_data/policy.yaml).",
    ),
    device: str = typer.Option(
        "auto", "--device", help="Inference device: auto (cuda when present), cpu or cuda."
    ),
    report_dir: Path | None = typer.Option(
        None, "--report", metavar="DIR", help="Write report.html, summary.md and figures here."
    ),
    result_out: Path | None = _RESULT,
    json_out: bool = _JSON,
    registry: str | None = typer.Option(None, "--registry", metavar="URI", help=REGISTRY_HELP),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Show a progress bar during inference."
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", metavar="local[:N]|tcp://HOST:PORT", help=SCHEDULER_HELP
    ),
    crop_boxes: Path | None = typer.Option(
        None,
        "--crop-boxes",
        metavar="FILE",
        help='Crop boxes of cropped SCT models: a JSON object {"SUBJECT/CONTRAST": "box.json"} '
        "(box files with SCT's -box-* names xmin..zmax, paths relative to FILE) replacing the "
        "default box from the cohort's ground-truth cord mask for those images.",
    ),
) -> None:
    """Run both versions on the frozen cohort, compare their morphometry, gate and record.

    Exit 0 on pass or warn, 1 on fail, 2 on error. The verdict is written to the candidate
    version's tags (cordwatch.drift.verdict) only after every output is written.
    """
    from rich.console import Console

    from drift.cohort.engine import open_engine
    from drift.gate.check import record_verdict, run_check

    refuse_outputs_onto_inputs(
        {"--result": result_out, "--report": report_dir},
        [policy, root, cohort if Path(cohort).exists() else None, _cache_dir(registry)],
        folders=["--report"],
    )
    quiet_mlflow()
    console = Console(stderr=json_out)

    def say(msg: str) -> None:
        console.print(f"[dim]{msg}[/]", soft_wrap=True)

    # A cluster started here is stopped before any output is written (also on Ctrl-C).
    with open_engine(scheduler, say=say, device=device) as engine:
        chk = run_check(
            candidate,
            baseline,
            cohort,
            root=root,
            policy_path=policy,
            device=device,
            registry_uri=registry,
            progress=progress and not json_out,  # stdout holds only the JSON document
            on_stage=say,
            engine=engine if engine.distributed else None,
            crop_boxes=crop_boxes,
        )
    for role, failures in chk.failures.items():
        for f in failures:
            console.print(f"[yellow]{role}: {f['subject']} {f['contrast']}: {f['error']}[/]")
    print_result(chk.result, console)
    outputs = emit_result(
        chk.result,
        json_out=result_out,
        report_dir=report_dir,
        baseline_table=chk.baseline_table,
        candidate_table=chk.candidate_table,
        history=chk.history,
        console=console,
        qc=chk.qc,
    )
    run_id = record_verdict(chk, outputs, registry)
    console.print(
        f"recorded on {chk.candidate.ref}: cordwatch.drift.verdict={chk.result.verdict} "
        f"(run {run_id})",
        soft_wrap=True,
    )
    if json_out:
        print_result_json(chk.result)
    raise_on_fail(chk.result)
