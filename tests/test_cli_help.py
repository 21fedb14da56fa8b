"""Every command and every option of ``cordwatch`` says what it does (GTO's meta-test)."""

from __future__ import annotations

import typer.main

from drift.cli.main import app


def walk(command, path: str = "cordwatch"):
    # typer vendors its own click: duck-type groups and parameters.
    yield path, command
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from walk(sub, f"{path} {name}")


def test_every_command_and_option_has_help() -> None:
    root = typer.main.get_command(app)
    missing = []
    seen = 0
    for path, command in walk(root):
        seen += 1
        if not (command.help or command.short_help):
            missing.append(path)
        for param in command.params:
            kind = param.param_type_name
            if kind == "option" and not param.hidden and not param.help:
                missing.append(f"{path} {param.opts[0]}")
            if kind == "argument" and not getattr(param, "help", None):
                missing.append(f"{path} <{param.name}>")
    assert seen >= 2
    assert missing == []


def test_help_is_fast_to_import() -> None:
    """``cordwatch --help`` must not import the heavy libraries."""
    import subprocess
    import sys

    code = (
        "import sys, drift.cli.main; "
        "print(sorted(m for m in ('torch', 'nnunetv2', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
