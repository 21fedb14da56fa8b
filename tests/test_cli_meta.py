"""One CLI (issue 13, item 6): the same options mean the same thing on every command.

Every command that prints a result takes ``--json`` (a flag: JSON on stdout), every command
that touches the registry takes ``--registry URI`` after its name, ``--help`` shows metavars
and never a Python type, shell completion and ``-V`` are on, read-only commands never create
a registry, normative databases use the models' reference syntax, 0.1's ``drift ... --json
FILE`` still works with a deprecation warning, and the demo uses ``$CORDWATCH_HOME``.
All in-process (typer's CliRunner); nothing here trains or runs a drift check on a cohort.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer.main
from typer.testing import CliRunner

from drift.cli.main import app

runner = CliRunner()

#: The only commands without ``--json``, because they print no result of their own. Every
#: other command (the enumeration below finds them all, new ones included) must take it.
NO_JSON = {
    # A long-running service: it prints log lines until stopped; its results are the check
    # records and reports it writes (read them with `drift`/`models` commands, which have --json).
    "serve",
    # Writes its result to OUT.json (the promotion record) and prints nothing on stdout.
    "release record",
}
#: Commands that touch the registry (the demo makes its own, in $CORDWATCH_HOME).
REGISTRY_COMMANDS = {"serve", "drift check"} | {
    f"{group} {name}"
    for group, names in {
        "models": ("register", "list", "show", "pull", "promote", "history", "diff", "audit"),
        "normative": ("import", "list", "show", "summary", "update", "export", "zscore"),
    }.items()
    for name in names
}
PYTHON_TYPE = re.compile(r"<(bool|str|int|float|path|list\[|dict|tuple|[a-z_]+ range)[^>]*>")


def leaves(command: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    subs = getattr(command, "commands", None)
    if not subs:
        yield path, command
        return
    for name, sub in subs.items():
        yield from leaves(sub, f"{path} {name}".strip())


ROOT = typer.main.get_command(app)
LEAVES = dict(leaves(ROOT))


def option(command: Any, name: str) -> Any:
    for p in command.params:
        if p.param_type_name == "option" and name in (*p.opts, *p.secondary_opts):
            return p
    return None


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})
    return result.exit_code, result.stdout, result.stderr


def test_the_command_tree_is_what_these_tests_assume() -> None:
    assert {"models list", "normative zscore", "drift check", "drift compare"} <= set(LEAVES)
    assert set(LEAVES) >= REGISTRY_COMMANDS | NO_JSON


def test_every_command_that_prints_a_result_takes_json_as_a_flag() -> None:
    missing = []
    for path, command in LEAVES.items():
        opt = option(command, "--json")
        if path in NO_JSON:
            continue
        if opt is None or not opt.is_flag or "stdout" not in (opt.help or ""):
            missing.append(path)
    assert missing == []


def test_the_commands_exempt_from_json_print_nothing_and_take_no_json(tmp_path: Path) -> None:
    # A stale exemption (the command grew --json, or started printing) fails here.
    assert [path for path in sorted(NO_JSON) if option(LEAVES[path], "--json")] == []
    out = tmp_path / "promotion.json"
    options = "--model m --version 2 --sha256 ab --baseline 1 --commit c0ffee "
    options += "--normative-name hc --normative-version 3 --normative-mode scaling"
    assert invoke("release", "record", out, *options.split()) == (0, "", "")
    record = json.loads(out.read_text())
    assert record["normative"] == {"name": "hc", "version": 3, "mode": "scaling"}


def test_release_steps_print_their_outputs_as_json(tmp_path: Path) -> None:
    (tmp_path / "models" / "pkg").mkdir(parents=True)
    (tmp_path / "models" / "candidate.yaml").write_text("name: m\npath: models/pkg\n")
    code, text, _ = invoke("release", "candidate", "--root", tmp_path)
    assert code == 0
    code, stdout, stderr = invoke("release", "candidate", "--root", tmp_path, "--json")
    assert (code, stderr) == (0, "")
    found = {"name": "m", "model": str((tmp_path / "models" / "pkg").resolve()), "kind": "path"}
    assert json.loads(stdout) == found | {"description": "", "path": "models/pkg"}
    assert text == "".join(f"{k}={v}\n" for k, v in json.loads(stdout).items())

    versions, champion = tmp_path / "versions.json", tmp_path / "champion.json"
    versions.write_text(json.dumps([{"version": 2, "sha256": "b", "tags": {"git_tree": "t"}}]))
    champion.write_text(json.dumps({"version": 1, "sha256": "a"}))
    args = ("release", "gated", versions, champion, "--tree", "t", "--path", "models/pkg")
    lines = "version=2\nsha256=b\nchampion=1\nalready=false\nverdict=\npromotable=false\n"
    assert invoke(*args)[:2] == (0, lines)
    code, stdout, _ = invoke(*args, "--json")
    assert code == 0
    assert json.loads(stdout) == {
        "version": 2, "sha256": "b", "champion": 1, "already": False,
        "verdict": "", "promotable": False,
    }  # fmt: skip

    doc = tmp_path / "result.json"
    doc.write_text(json.dumps({"normative": {"version": 7}, "verdict": "pass"}))
    args = ("release", "outputs", doc, "normative.version", "verdict")
    assert invoke(*args)[:2] == (0, "version=7\nverdict=pass\n")
    code, stdout, _ = invoke(*args, "--json")
    assert code == 0 and json.loads(stdout) == {"version": 7, "verdict": "pass"}


def test_policy_schema_takes_json_and_prints_the_same_schema() -> None:
    code, plain, _ = invoke("policy", "schema", "--kind", "normative")
    assert code == 0
    assert invoke("policy", "schema", "--kind", "normative", "--json")[:2] == (0, plain)
    assert json.loads(plain)["title"] == "cordwatch normative policy"


def test_every_command_that_touches_the_registry_takes_registry() -> None:
    for path in REGISTRY_COMMANDS:
        opt = option(LEAVES[path], "--registry")
        assert opt is not None and opt.metavar == "URI", path
    # ... and the group form of 0.1 (cordwatch models --registry URI list) still parses.
    for group in ("models", "normative"):
        assert option(ROOT.commands[group], "--registry") is not None


def test_help_shows_metavars_never_python_types() -> None:
    bad = []
    for path in ["", "models", *LEAVES]:
        code, out, err = invoke(*path.split(), "--help")
        assert code == 0, (path, err)
        for line in out.splitlines():
            if PYTHON_TYPE.search(line) or re.search(r"\{[A-Za-z_.|]+\}", line):
                bad.append(f"{path}: {line.strip()}")
    assert bad == []
    # What a reader sees instead: the option's own metavar, else click's TEXT/N/PATH.
    _, out, _ = invoke("drift", "check", "--help")
    assert re.search(r"--registry\s+URI", out) and re.search(r"--device\s+TEXT", out)
    assert re.search(r"--result\s+OUT\.json", out)
    assert re.search(r"Usage: .*drift check \[OPTIONS\] NAME@ALIAS\|NAME/VERSION", out)
    _, out, _ = invoke("serve", "--help")
    assert re.search(r"--port\s+N\s", out) and re.search(r"--poll-seconds\s+NUMBER", out)


def test_version_and_shell_completion() -> None:
    from drift import __version__

    for flag in ("-V", "--version"):
        assert invoke(flag)[:2] == (0, f"cordwatch {__version__}\n")
    names = {o for p in ROOT.params for o in p.opts}
    assert {"--install-completion", "--show-completion"} <= names
    code, out, _ = invoke("--show-completion", "bash", env={"SHELL": "/bin/bash"})
    assert code == 0 and "_CORDWATCH_COMPLETE" in out.upper()


#: Read-only commands that name no registry file of their own. ``models list`` is among them
#: for an explicit ``--registry`` file that does not exist (a typo: exit 2); on a fresh
#: $CORDWATCH_HOME it lists nothing (exit 0), see the test after this one.
READ_ONLY = [
    ("models", "list"),
    ("models", "list", "m"),
    ("models", "show", "m/1"),
    ("models", "pull", "m/1"),
    ("models", "history", "m"),
    ("models", "diff", "m/1", "m/2"),
    ("models", "audit", "m"),
    ("models", "promote", "m/1"),
    ("normative", "list"),
    ("normative", "show", "hc/1"),
    ("normative", "summary", "hc@latest"),
    ("normative", "export", "hc/1", "OUT"),
    ("normative", "zscore", "SUBJECT", "--db", "hc/1"),
    ("normative", "update", "hc", "--model", "m/2", "--scaling", "SUBJECT"),
]


@pytest.mark.parametrize("form", ["flag", "group", "default home"])
def test_read_only_commands_never_create_a_registry(
    form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("CORDWATCH_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    subject = tmp_path / "sub-01_T2w_PAM50.csv"
    subject.write_text("Slice (I->S),VertLevel,MEAN(area)\n900,3,70\n")
    db = tmp_path / "x" / "none.db"
    for argv in READ_ONLY:
        if form == "default home" and argv in (("models", "list"), ("normative", "list")):
            continue  # empty, exit 0: test_models_list_on_a_fresh_home_is_an_empty_list
        args = [{"OUT": str(tmp_path / "out"), "SUBJECT": str(subject)}.get(a, a) for a in argv]
        if form == "flag":
            args += ["--registry", f"sqlite:///{db}"]
        elif form == "group":
            args[1:1] = ["--registry", f"sqlite:///{db}"]
        code, out, err = invoke(*args)
        where = db if form != "default home" else home / "registry.db"
        assert code == 2, (argv, out, err)
        assert err.startswith(f"cordwatch: error: {where}: no registry here yet"), (argv, err)
        assert len(err.strip().splitlines()) == 1, (argv, err)
    assert not db.parent.exists() and not home.exists()
    assert not (tmp_path / "out").exists()


def test_models_list_on_a_fresh_home_is_an_empty_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("CORDWATCH_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert invoke("models", "list") == (0, "no model registered\n", "")
    code, stdout, stderr = invoke("models", "list", "--json")
    assert (code, json.loads(stdout), stderr) == (0, [], "")
    assert invoke("normative", "list") == (0, "no normative database\n", "")
    code, stdout, stderr = invoke("normative", "list", "--json")
    assert (code, json.loads(stdout), stderr) == (0, [], "")
    # A name is not found there (exit 2, as in a registry without it); nothing is created.
    for argv in (("list", "m"), ("show", "m/1"), ("pull", "m@champion"), ("history", "m")):
        code, _, err = invoke("models", *argv)
        assert code == 2 and "no registry here yet: nothing was registered" in err, argv
    # A sqlite file named explicitly that does not exist is a typo, not an empty registry.
    typo = tmp_path / "regsitry.db"
    code, _, err = invoke("models", "list", "--registry", f"sqlite:///{typo}")
    assert code == 2 and err.startswith(f"cordwatch: error: {typo}: no registry here yet")
    assert not home.exists() and not typo.exists()


def test_normative_references_use_the_models_syntax() -> None:
    from drift.normative.store import parse_db_ref

    assert parse_db_ref("pam50-hc/2") == ("pam50-hc", 2)
    assert parse_db_ref("pam50-hc@latest") == ("pam50-hc", None)
    with pytest.raises(Exception, match="NAME/VERSION"):
        parse_db_ref("pam50-hc/latest")
    for path in ("normative show", "normative summary", "normative export"):
        arg = next(p for p in LEAVES[path].params if p.param_type_name == "argument")
        assert arg.metavar == "NAME/VERSION", path
    assert option(LEAVES["normative zscore"], "--db").metavar == "NAME/VERSION"


def test_normative_at_version_still_works_with_a_warning(tmp_path: Path) -> None:
    db = tmp_path / "none.db"
    code, _, err = invoke("normative", "show", "hc@3", "--registry", f"sqlite:///{db}")
    first, second = err.splitlines()[:2]
    assert first.startswith("cordwatch: warning: hc@3 is deprecated") and "hc/3" in first
    assert code == 2 and "no registry here yet" in second  # and it went on, as hc/3


def write_csvs(folder: Path, factor: float) -> Path:
    from drift.measure.sctcsv import write_sct_csv

    folder.mkdir()
    for s in range(6):
        rows = pd.DataFrame(
            {
                "Slice (I->S)": range(40, 30, -1),
                "VertLevel": [2] * 5 + [3] * 5,
                "MEAN(area)": [70.0 + s + factor * k / 10 for k in range(10)],
                "MEAN(diameter_AP)": [8.0 + s / 10] * 10,
                "MEAN(diameter_RL)": [12.0 + s / 10] * 10,
            }
        )
        write_sct_csv(rows, folder / f"sub-{s:02d}_T2w_PAM50.csv", filename="x", version="t")
    return folder


@pytest.fixture(scope="module")
def csv_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("csvs")
    return write_csvs(root / "v1", 0.0), write_csvs(root / "v2", 0.001)


def test_drift_json_prints_the_result_on_stdout(
    csv_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    base, cand = csv_dirs
    out = tmp_path / "result.json"
    code, stdout, stderr = invoke("drift", "compare", base, cand, "--json", "--result", out)
    assert code == 0, stderr
    doc = json.loads(stdout)  # stdout is the document alone; the table went to stderr
    assert doc["verdict"] == "pass" and "verdict: PASS" in stderr
    assert json.loads(out.read_text()) == doc


@pytest.mark.parametrize(
    "args",
    [
        ["BASE", "CAND", "--json", "OUT"],
        ["--json", "OUT", "BASE", "CAND"],
        ["BASE", "CAND", "--json=OUT"],
    ],
)
def test_drift_json_file_of_0_1_still_writes_the_file(
    args: list[str], csv_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    base, cand = csv_dirs
    out = tmp_path / "old.txt"  # any name: 0.1 took one
    swap = {"BASE": str(base), "CAND": str(cand), "OUT": str(out), "--json=OUT": f"--json={out}"}
    code, stdout, stderr = invoke("drift", "compare", *[swap.get(a, a) for a in args])
    assert code == 0, stderr
    assert stderr.startswith("cordwatch: warning: --json FILE is deprecated")
    assert "use --result FILE" in stderr
    assert json.loads(out.read_text())["verdict"] == "pass"
    assert "verdict: PASS" in stdout  # the old behaviour: the table on stdout


def test_the_workflows_use_result_not_the_deprecated_json_file() -> None:
    root = Path(__file__).resolve().parents[1] / ".github" / "workflows"
    text = "\n".join(p.read_text() for p in sorted(root.glob("*.yml")))
    assert '--result "$out/drift-result.json"' in text
    assert not re.search(r"--json\s+\"?\$", text)  # no --json FILE left
    assert not re.search(r"normative (export|show|summary) \"?\$\w+@", text)


def test_demo_uses_cordwatch_home_and_says_where_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import drift.cli.demo as demo

    home = tmp_path / "my-home"
    home.mkdir()
    (home / "keep.txt").write_text("mine")
    seen: dict[str, Path] = {}

    def fake_demo(h: Path, out: Path, say: Any) -> list[Any]:
        seen.update(home=h, out=out)
        return []

    monkeypatch.setattr(demo, "run_drift_demo", fake_demo)
    monkeypatch.setattr(
        demo,
        "phantom_level_accuracy",
        lambda n: pd.DataFrame(
            [dict(subject="s", level=3, true=1.0, soft_exact=1.0, soft_sct=1.0, binary_exact=1.0)]
        ),
    )
    out = tmp_path / "demo-out"
    env = {"CORDWATCH_HOME": str(home), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    code, stdout, stderr = invoke("demo", "--out", out, env=env)
    assert code == 0, stderr
    assert seen == {"home": home.resolve(), "out": out.resolve()}
    assert (home / "keep.txt").read_text() == "mine"  # $CORDWATCH_HOME is never wiped
    flat = " ".join(stdout.split())
    assert f"registry: {home.resolve()} ($CORDWATCH_HOME)" in flat
    assert f"reports: {out.resolve()}" in flat
    assert "MLFLOW_TRACKING_URI is ignored" in flat
    # Without CORDWATCH_HOME: DIR/home, and it says how to choose another.
    code, stdout, _ = invoke("demo", "--out", out, env={"CORDWATCH_HOME": ""})
    assert code == 0 and seen["home"] == (out / "home").resolve()
    assert "set $CORDWATCH_HOME to choose" in " ".join(stdout.split())


def test_demo_json_prints_one_object_with_the_table_verdicts_exit_codes_and_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import drift.cli.demo as demo

    def fake_checks(verdicts: tuple[str, str, str]) -> Any:
        def fake_demo(h: Path, out: Path, say: Any) -> list[Any]:
            say("progress goes to stderr")
            checks = []
            for (folder, expected), verdict in zip(
                [("pass", ("pass",)), ("retrain", ("pass", "warn")), ("fail", ("fail",))],
                verdicts,
                strict=True,
            ):
                files = {"json": out / f"{folder}.json", "html": out / folder / "report.html"}
                checks.append(
                    demo.DemoCheck(
                        f"{folder} check",
                        f"cordseg-demo/{len(checks) + 2}",
                        verdict,
                        expected,
                        out / folder,
                        {"C3": 1.004},
                        promoted=verdict == "pass",
                        exit_code=int(verdict == "fail"),
                        outputs=files,
                    )
                )
            return checks

        return fake_demo

    monkeypatch.setattr(
        demo,
        "phantom_level_accuracy",
        lambda n: pd.DataFrame(
            [dict(subject="s", level=3, true=2.0, soft_exact=2.02, soft_sct=2.0, binary_exact=1.9)]
        ),
    )
    home, out = tmp_path / "home", tmp_path / "out"
    env = {"CORDWATCH_HOME": str(home), "MLFLOW_TRACKING_URI": ""}
    monkeypatch.setattr(demo, "run_drift_demo", fake_checks(("pass", "warn", "fail")))
    code, stdout, stderr = invoke("demo", "--out", out, "--json", env=env)
    assert code == 0, stderr
    doc = json.loads(stdout)  # stdout is the object alone: tables and progress on stderr
    assert "Drift checks" in stderr and "progress goes to stderr" in stderr
    assert doc["exit_code"] == 0 and doc["as_expected"] is True
    assert doc["registry"] == {
        "home": str(home.resolve()),
        "from": "$CORDWATCH_HOME",
        "mlflow_tracking_uri_ignored": False,
    }
    assert doc["reports"] == str(out.resolve())
    assert doc["accuracy"]["levels"] == [
        {
            "level": 3,
            "name": "C3",
            "n": 1,
            "true": 2.0,
            "soft_exact": 2.02,
            "soft_exact_err_pct": pytest.approx(1.0),
            "soft_sct": 2.0,
            "soft_sct_err_pct": 0.0,
            "binary_exact": 1.9,
            "binary_exact_err_pct": pytest.approx(-5.0),
        }
    ]
    rows = [
        (c["verdict"], c["exit_code"], c["promoted"], c["champion"], c["as_expected"])
        for c in doc["checks"]
    ]
    assert rows == [
        ("pass", 0, True, "promoted", True),
        ("warn", 0, False, "not promotable (warn)", True),
        ("fail", 1, False, "not promotable (fail)", True),
    ]
    retrain = doc["checks"][1]
    assert retrain["candidate"] == "cordseg-demo/3" and retrain["expected"] == ["pass", "warn"]
    assert retrain["report"] == str(out.resolve() / "retrain" / "report.html")
    assert retrain["files"]["json"] == str(out.resolve() / "retrain.json")
    assert retrain["area_scaling"] == {"C3": 1.004} and retrain["promotable"] == ["pass"]
    # A check that ends otherwise: the object still comes, then exit 1 with one error line.
    monkeypatch.setattr(demo, "run_drift_demo", fake_checks(("pass", "fail", "fail")))
    code, stdout, stderr = invoke("demo", "--out", out, "--json", env=env)
    doc = json.loads(stdout)
    assert code == 1 and doc["exit_code"] == 1 and doc["as_expected"] is False
    assert [c["as_expected"] for c in doc["checks"]] == [True, False, True]
    assert stderr.splitlines()[-1].startswith("cordwatch: error: a demo check did not end")
