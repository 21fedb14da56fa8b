"""``cordwatch demo``: the main job on embedded defaults, on the bundled phantom cohort.

1. The measuring instrument: phantom subjects measured against their analytic true CSA.
2. The gate: the demo models registered in a fresh embedded registry (sqlite + local
   artifacts), drift checks that should pass (the champion re-released as a zip; a re-train
   with another seed, pass or warn) and one that should fail (a model with a systematic CSA
   bias), reports written, verdicts recorded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from drift.cli.common import JSON_OPTION, command, print_json
from registry.errors import GateFailed

if TYPE_CHECKING:
    import pandas as pd

# numpy, pandas and the measuring code are imported inside the functions: ``cordwatch
# --help`` imports this module (main.py registers the command) and must stay fast.


def phantom_level_accuracy(n_subjects: int = 10, seed: int = 0) -> pd.DataFrame:
    """Per (subject, level): true CSA and the CSA measured on the soft and binary ground truth
    (``exact`` and ``sct`` angle correction). Pure: phantoms are generated in memory."""
    import numpy as np
    import pandas as pd

    from drift.measure.morphometry import slice_metrics
    from drift.measure.phantoms import make_subject

    rows = []
    for index in range(n_subjects):
        subject = make_subject(index, seed, contrasts=("T2w",))
        true = pd.Series(subject.true_area)
        levels = subject.slice_levels
        measured = {
            "soft_exact": slice_metrics(subject.soft_seg, subject.spacing, "exact")["area"],
            "soft_sct": slice_metrics(subject.soft_seg, subject.spacing, "sct")["area"],
            "binary_exact": slice_metrics(subject.binary_seg, subject.spacing, "exact")["area"],
        }
        for level in np.unique(levels[levels > 0]):
            in_level = levels == level
            row = {
                "subject": subject.subject_id,
                "level": int(level),
                "true": float(np.nanmean(true[in_level])),
            }
            for key, area in measured.items():
                row[key] = float(np.nanmean(area.to_numpy()[in_level]))
            rows.append(row)
    return pd.DataFrame(rows)


def summarise(per_subject: pd.DataFrame) -> pd.DataFrame:
    """Per level: mean true CSA, mean measured CSA, and mean signed error (%) of each method."""
    from drift.measure.levels import level_name

    table = per_subject.copy()
    methods = ["soft_exact", "soft_sct", "binary_exact"]
    for m in methods:
        table[f"{m}_err_pct"] = (table[m] / table["true"] - 1) * 100
    out = table.groupby("level").agg(
        n=("subject", "size"),
        true=("true", "mean"),
        **{m: (m, "mean") for m in methods},
        **{f"{m}_err_pct": (f"{m}_err_pct", "mean") for m in methods},
    )
    out.insert(0, "name", [level_name(int(lv)) for lv in out.index])
    return out.reset_index()


# ----------------------------------------------------------------- stage 2: the drift gate --

MODELS_DIR = Path(__file__).resolve().parents[2] / "models" / "demo"
DEMO_MODEL = "cordseg-demo"


@dataclass
class DemoCheck:
    """One drift check of the demo: what was checked, how it ended, where its files are."""

    label: str
    candidate: str
    verdict: str
    expected: tuple[str, ...]
    report: Path
    area_factors: dict[str, float]
    promoted: bool = False
    #: What ``cordwatch drift check`` exits with for this verdict (0 pass/warn, 1 fail).
    exit_code: int = 0
    #: The verdicts the policy lets become champion (default: pass only).
    promotable: tuple[str, ...] = ("pass",)
    #: The files written: ``json`` (the result), ``html``, ``markdown``, ``report_json``, ...
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def as_expected(self) -> bool:
        return self.verdict in self.expected

    @property
    def fate(self) -> str:
        """The "champion?" column: promoted, or why not."""
        return "promoted" if self.promoted else f"not promotable ({self.verdict})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.label,
            "candidate": self.candidate,
            "verdict": self.verdict,
            "expected": list(self.expected),
            "as_expected": self.as_expected,
            "exit_code": self.exit_code,
            "promotable": list(self.promotable),
            "promoted": self.promoted,
            "champion": self.fate,
            "area_scaling": self.area_factors,
            "report": str(self.report / "report.html"),
            "files": {key: str(path) for key, path in self.outputs.items()},
        }


def release_zip(package: Path, dest: Path) -> Path:
    """An SCT-style release zip of a results folder (nested one level, as SCT publishes)."""
    import zipfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in package.rglob("*") if p.is_file()):
            zf.write(path, f"{package.name}/{path.relative_to(package).as_posix()}")
    return dest


def run_drift_demo(home: Path, out: Path, say: Callable[[str], None]) -> list[DemoCheck]:
    """Register the demo models in a fresh embedded registry at ``home`` and run three checks
    against the champion: its weights re-released as an SCT-style zip (pass), a re-train with
    another seed (pass or warn: seed-to-seed shifts stay inside the ±1 % margin) and the biased
    model (fail), writing the reports under ``out``."""
    from drift.cli.drift import emit_result
    from drift.gate.check import record_verdict, run_check
    from registry.api import connect

    os.environ["CORDWATCH_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the demo always runs on embedded defaults
    reg = connect(None, home)
    say(f"registry: {reg.tracking_uri}")
    v1 = reg.register(
        DEMO_MODEL,
        MODELS_DIR / "demo-good",
        tags={"task": "spinal-cord", "contrasts": "T1w,T2w,T2star"},
        description="demo-good: tiny nnU-Net v2 trained on phantom binary ground truth",
    )
    reg.promote(
        v1.ref,
        "champion",
        force=True,
        reason="first champion of the demo registry: no earlier version to gate against",
    )
    say(f"{v1.ref} registered and made champion (forced, recorded in the alias history)")
    checks = []
    rerelease = release_zip(MODELS_DIR / "demo-good", home / "downloads" / "demo-good-r2.zip")
    plan = [
        ("the champion re-released as a zip (should pass)", rerelease, ("pass",), "pass"),
        (
            "re-train of the champion with another seed (should not fail: pass, or warn = "
            "not failed but not promotable under the default policy)",
            MODELS_DIR / "demo-good-seed2",
            ("pass", "warn"),
            "retrain",
        ),
        (
            "biased model, trained on wider labels (should fail)",
            MODELS_DIR / "demo-biased",
            ("fail",),
            "fail",
        ),
    ]
    for label, path, expected, folder in plan:
        info = reg.register(
            DEMO_MODEL,
            path,
            alias="candidate",
            tags={"parent": str(v1.version)},
            description=f"{path.name}: {label}",
        )
        say(f"{info.ref} registered as candidate: {label}")
        chk = run_check(
            f"{DEMO_MODEL}@candidate",
            f"{DEMO_MODEL}@champion",
            "phantom",
            device="cpu",
            progress=True,
            on_stage=say,
        )
        report_dir = out / folder
        outputs = emit_result(
            chk.result,
            json_out=out / f"{folder}.json",
            report_dir=report_dir,
            baseline_table=chk.baseline_table,
            candidate_table=chk.candidate_table,
            history=chk.history,
            qc=chk.qc,
        )
        record_verdict(chk, outputs)
        area = chk.result.to_dict()["metrics"]["area"]["levels"]
        promotable = tuple(getattr(chk.result.policy, "promotable", None) or ("pass",))
        checks.append(
            DemoCheck(
                label,
                info.ref,
                chk.result.verdict,
                expected,
                report_dir,
                {lv: v["scaling_factor"] for lv, v in area.items() if v.get("gated")},
                exit_code=chk.result.exit_code,
                promotable=promotable,
                outputs=dict(outputs),
            )
        )
        if chk.result.verdict in promotable:
            reg.promote(info.ref, "champion")
            checks[-1].promoted = True
            say(f"{info.ref} promoted to champion (drift verdict {chk.result.verdict})")
        else:
            say(
                f"{info.ref} stays candidate: verdict {chk.result.verdict} is not promotable "
                f"(policy promotable: {', '.join(promotable)}; `cordwatch models promote` "
                "refuses it)"
            )
    return checks


# ------------------------------------------------------------------------ the command --

#: The columns of the instrument table: (heading, column of :func:`summarise`, format).
_ACCURACY = (
    ("level", "name", "{}"),
    ("n", "n", "{}"),
    ("true", "true", "{:.2f}"),
    ("soft exact", "soft_exact", "{:.2f}"),
    ("err %", "soft_exact_err_pct", "{:+.2f}"),
    ("soft sct", "soft_sct", "{:.2f}"),
    ("err %", "soft_sct_err_pct", "{:+.2f}"),
    ("binary", "binary_exact", "{:.2f}"),
    ("err %", "binary_exact_err_pct", "{:+.2f}"),
)


def _accuracy_rows(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """The instrument table as JSON rows (plain ints, floats and strings)."""
    rows = []
    for row in summary.to_dict("records"):
        doc: dict[str, Any] = {"level": int(row["level"])}
        for _, key, _ in _ACCURACY:
            value = row[key]
            if not isinstance(value, str):
                value = int(value) if key == "n" else float(value)
            doc[key] = value
        rows.append(doc)
    return rows


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
    json_out: bool = JSON_OPTION,
) -> None:
    """Run the main job on embedded defaults: phantom accuracy, then passing and failing drift
    checks of the demo models (sqlite registry, local artifacts, phantom cohort, CPU).

    The registry is $CORDWATCH_HOME when set (used as it is, never deleted), else DIR/home
    (started fresh unless --keep); MLFLOW_TRACKING_URI is ignored (the demo always runs on an
    embedded sqlite registry). The first lines say where everything is written. With --json
    the tables and progress go to stderr and stdout holds one JSON object: the accuracy rows,
    each check (verdict, exit code, promoted or not, report paths), where it wrote, the exit code.

    Exit 0 when every check ends as expected (the re-release passes and is promoted, the
    re-train is not failed: pass, or warn = not promotable under the default policy; the
    biased model fails), 1 otherwise.
    """
    import shutil

    from rich.console import Console
    from rich.table import Table

    from registry.settings import HOME_ENV

    console = Console(width=120, stderr=json_out)
    summary = summarise(phantom_level_accuracy(subjects))
    table = Table(title=f"1. The instrument: phantom CSA per level ({subjects} subjects), mm²")
    for heading, _, _ in _ACCURACY:
        table.add_column(heading, justify="right")
    for row in summary.to_dict("records"):
        table.add_row(*(fmt.format(row[key]) for _, key, fmt in _ACCURACY))
    console.print(table)

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
    ignored = bool(os.environ.get("MLFLOW_TRACKING_URI", "").strip())
    if ignored:
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
        result.add_row(chk.label, chk.candidate, f"[{style}]{chk.verdict}[/]", chk.fate, factors)
    console.print(result)
    for chk in checks:
        console.print(f"{chk.verdict} report: {chk.report / 'report.html'}", soft_wrap=True)
    as_expected = all(chk.as_expected for chk in checks)
    if json_out:
        print_json(
            {
                "as_expected": as_expected,
                "exit_code": 0 if as_expected else 1,
                "registry": {
                    "home": str(home.resolve()),
                    "from": f"${HOME_ENV}" if env_home else "--out DIR/home",
                    "mlflow_tracking_uri_ignored": ignored,
                },
                "reports": str(out.resolve()),
                "accuracy": {
                    "subjects": subjects,
                    "unit": "mm²",
                    "levels": _accuracy_rows(summary),
                },
                "checks": [chk.to_dict() for chk in checks],
            }
        )
    if not as_expected:
        raise GateFailed("a demo check did not end as expected (see the table above)")
    console.print(
        "every check ended as expected: the re-release passes and is promoted, the re-train "
        "is not failed (a warn would stay candidate: not promotable), the biased model fails"
    )
