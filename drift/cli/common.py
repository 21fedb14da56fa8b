"""The CLI boundary: one place where cordwatch errors become exit codes and one-line messages."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from typer.exceptions import TyperException

from registry.errors import CordwatchError, RegistryError, redact

if TYPE_CHECKING:
    from registry.api import Registry

F = TypeVar("F", bound=Callable[..., Any])

# Set by the root callback (``cordwatch --traceback ...``).
SETTINGS: dict[str, bool] = {"traceback": False}


class Terminated(BaseException):
    """SIGTERM arrived (raised in the main thread by :func:`command`'s handler)."""


#: Exit codes of the two signals a user or a CI runner sends (128 + signal number).
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
#: Error lines are cut to this length (an unexpected error's to 300): a message quoting a
#: 9 MB policy must not print 18 MB.
MAX_MESSAGE = 4000


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """A message as one line of at most :data:`MAX_MESSAGE` characters, credentials redacted.

    >>> one_line("a\\nb  c")
    'a b c'
    """
    flat = " ".join(str(text).split())
    flat = redact(flat)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _unexpected(err: BaseException) -> str:
    if isinstance(err, MemoryError):
        return "out of memory (the input is larger than this machine can hold)"
    if isinstance(err, OSError):
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        why = err.strerror or str(err) or type(err).__name__
        return f"{where}{why}"
    detail = str(err)
    return f"unexpected {type(err).__name__}" + (f": {detail}" if detail else "")


def redact_log_records() -> None:
    """Every log record (MLflow's, urllib3's, ours) has URI credentials replaced by ``***``.

    Installed once, as a record factory, so that it covers loggers configured later too.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_cordwatch_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    factory._cordwatch_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def command(fn: F) -> F:
    """Wrap a CLI command: the one error boundary of cordwatch.

    CordwatchError -> ``cordwatch: error: <file>: <problem>`` and its exit code (1 only for
    GateFailed); any other exception (OSError, MemoryError, a bug) -> one line and exit 2,
    never a traceback and never 1; Ctrl-C -> 130, SIGTERM -> 143. ``cordwatch --traceback``
    re-raises instead.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        redact_log_records()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):  # typer's own exits and usage errors
            raise
        except CordwatchError as err:
            if SETTINGS["traceback"]:
                raise
            typer.echo(f"cordwatch: error: {one_line(err)}", err=True)
            raise typer.Exit(err.exit_code) from err
        except KeyboardInterrupt:
            typer.echo("cordwatch: interrupted", err=True)
            raise typer.Exit(EXIT_SIGINT) from None
        except Terminated:
            typer.echo("cordwatch: terminated", err=True)
            raise typer.Exit(EXIT_SIGTERM) from None
        except Exception as err:  # the boundary: everything else is exit 2, not a traceback
            if SETTINGS["traceback"]:
                raise
            typer.echo(
                f"cordwatch: error: {one_line(_unexpected(err), 300)} (--traceback shows where)",
                err=True,
            )
            raise typer.Exit(2) from err
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    wrapper.__cordwatch_command__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Machine-readable output for CI: one JSON document on stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


REGISTRY_HELP = (
    "Registry URI: sqlite:///PATH.db, postgresql://..., or http(s)://MLFLOW-SERVER. "
    "Default: $MLFLOW_TRACKING_URI, else sqlite:///$CORDWATCH_HOME/registry.db."
)
#: ``--registry`` of every command that touches the registry (also accepted before the
#: sub-command, ``cordwatch models --registry URI list``, as before).
REGISTRY_OPTION: Any = typer.Option(None, "--registry", metavar="URI", help=REGISTRY_HELP)
#: ``--json`` of every command that prints a result: the result as one JSON document on stdout.
JSON_OPTION: Any = typer.Option(
    False, "--json", help="Print the result as JSON on stdout (for scripts and CI) instead of text."
)


def _option_metavar(self: Any, ctx: Any) -> str | None:
    """What ``--help`` shows after an option: its metavar, else click's convention (TEXT, N,
    NUMBER, PATH, a|b); nothing for a flag."""
    if self.metavar is not None:
        return str(self.metavar)
    if self.is_flag or self.count:
        return None
    desc = self.type_descriptor
    if desc.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
    if desc.is_path:
        return "PATH"
    kind = desc.ranged_type_name if desc.is_ranged else getattr(desc.annotation, "__name__", "")
    return {"int": "N", "float": "NUMBER"}.get(str(kind), "TEXT")


def _argument_name(self: Any) -> str:
    return str(self.metavar) if self.metavar is not None else str(self.name).upper()


def _argument_usage(self: Any) -> str:
    name = _argument_name(self)
    name = name if self.required or name.startswith("[") else f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


def readable_metavars() -> None:
    """``--help`` without Python types: typer 0.29 shows ``<bool>``, ``<str>``,
    ``<list[Path]>`` beside every option and ``{NAME}`` in the usage line; cordwatch shows
    metavars (``--registry URI``, ``--device TEXT``, nothing for flags) and ``NAME``, as click
    does. Installed once, for every command (also those added later)."""
    from typer.core import TyperArgument, TyperOption

    if getattr(TyperOption, "_cordwatch_metavars", False):
        return
    TyperOption.display_type_rich = _option_metavar  # type: ignore[method-assign]
    TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]
    TyperArgument.display_name_raw = property(_argument_name)  # type: ignore[assignment,method-assign]
    TyperArgument._usage_display_name = _argument_usage  # type: ignore[method-assign]
    TyperOption._cordwatch_metavars = True  # type: ignore[attr-defined]


class _Undecided(Exception):
    """The value is not one that :func:`_plain_coercer` converts: typer's own coercion does."""


def _plain_coercer(descriptor: Any) -> Callable[..., Any] | None:
    """For a plain ``str``, ``int``, ``float``, ``bool`` or ``Path`` parameter (no parser,
    choices, bounds, files, lists), the conversion that typer's pydantic TypeAdapter makes
    of the values whose result is known without it: a value of the annotation's own type
    passes unchanged (pydantic's lax mode returns it as is); a ``str`` path becomes
    ``Path(value)`` (pydantic's path validator) and then goes through typer's own
    ``coerce_cli_path`` checks. Anything else (``"1.5"`` for a float, a failed path check,
    whose message quotes the raw value) raises :class:`_Undecided`."""
    from pathlib import Path

    from typer._param_types import coerce_cli_path, routes_to_path

    info = descriptor.parameter_info
    annotation = descriptor.annotation
    if (
        descriptor.file_annotation is not None
        or info.parser is not None
        or descriptor.is_choice
        or descriptor.is_list
        or descriptor.is_tuple
        or getattr(info, "min", None) is not None
        or getattr(info, "max", None) is not None
        or getattr(info, "clamp", None)
    ):
        return None
    if annotation in (str, int, float, bool):

        def same_type(value: Any, param: Any, ctx: Any) -> Any:
            if type(value) is annotation:
                return value
            raise _Undecided

        return same_type
    if annotation is Path and routes_to_path(annotation, info) and info.path_type in (None, Path):

        def path(value: Any, param: Any, ctx: Any) -> Any:
            if type(value) is not str and not isinstance(value, Path):
                raise _Undecided
            rv = Path(value) if type(value) is str else value
            try:
                return coerce_cli_path(rv, info, path_type=Path, param=param, ctx=ctx)
            except typer.BadParameter:
                raise _Undecided from None

        return path
    return None


class _PlainRuntimeParam:
    """typer's runtime coercion of one parameter, with the plain values converted here and
    every other value (and every error) left to typer's own (pydantic) coercion, built only
    then."""

    def __init__(self, descriptor: Any, plain: Callable[..., Any]) -> None:
        self.descriptor = descriptor
        self.plain = plain
        self.typer_own: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        multi = param.multiple or param.nargs == -1
        if value is None:  # as typer's RuntimeParam.coerce
            return () if multi else None
        if not multi:
            try:
                return self.plain(value, param, ctx)
            except _Undecided:
                pass
        if self.typer_own is None:
            from typer._coercion import build_runtime_param

            self.typer_own = build_runtime_param(self.descriptor)
        return self.typer_own.coerce(value, param=param, ctx=ctx)


def plain_coercion() -> None:
    """Command lines parse without pydantic: typer 0.29 builds a pydantic TypeAdapter for
    every parameter that receives a value (importing pydantic, ~0.1 s of a ~0.7 s
    ``cordwatch morphometry`` run) to turn ``"a.nii.gz"`` into ``Path("a.nii.gz")``. Plain
    ``str``, ``int``, ``float``, ``bool`` and ``Path`` values are converted here exactly as
    typer's adapter converts them (see :func:`_plain_coercer`); everything else, and every
    error message, is still typer's (tests/test_levels_exact.py holds the two to each other
    for every parameter). Installed once; a typer without these hooks is left alone."""
    import importlib

    hooks = {
        "typer.core": ("_TyperParameter",),
        "typer._coercion": ("build_runtime_param",),
        "typer._param_types": ("coerce_cli_path", "routes_to_path"),
    }
    try:
        modules = {name: importlib.import_module(name) for name in hooks}
    except ImportError:  # another typer: its own coercion, untouched
        return
    if not all(hasattr(modules[m], a) for m, names in hooks.items() for a in names):
        return
    cls = modules["typer.core"]._TyperParameter
    original = getattr(cls, "get_runtime_param", None)
    if original is None or getattr(cls, "_cordwatch_plain", False):
        return

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            try:
                plain = _plain_coercer(self.type_descriptor)
            except AttributeError:  # a descriptor of another shape: typer's own coercion
                plain = None
            self._runtime_param = (
                original(self) if plain is None else _PlainRuntimeParam(self.type_descriptor, plain)
            )
        return self._runtime_param

    cls.get_runtime_param = get_runtime_param
    cls._cordwatch_plain = True


def quiet_mlflow() -> None:
    """Quiet, fail-fast MLflow defaults for a command line (an explicit environment wins)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"  # read when MLflow is imported
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # in case it already was
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def registry_from(
    ctx: typer.Context, registry: str | None = None, *, must_exist: bool = False
) -> Registry:
    """The registry named by the command's ``--registry`` (else the group's, else the default).

    ``must_exist`` (read-only commands): an embedded sqlite registry that does not exist yet is
    an error naming the file (exit 2), never created: a read must not leave an empty
    ``registry.db`` behind (:class:`NoRegistry`). ``models list`` asks
    :func:`nothing_registered` first: on a fresh ``$CORDWATCH_HOME`` its list is empty.
    """
    from registry.api import connect

    reg = connect(registry or (ctx.obj or {}).get("registry"))
    if must_exist:
        require_store(reg)
    return reg


def require_store(reg: Registry) -> None:
    """:class:`NoRegistry` when ``reg`` is an embedded sqlite registry whose file does not
    exist (nothing is created)."""
    from registry.settings import sqlite_path

    db = sqlite_path(reg.settings.uri)
    if db is not None and not db.is_file():
        raise NoRegistry(
            "no registry here yet: nothing was registered (`cordwatch models register` "
            "creates it; --registry or $CORDWATCH_HOME chooses another)",
            db,
        )


def nothing_registered(reg: Registry) -> bool:
    """True when ``reg`` is the default embedded registry (``$CORDWATCH_HOME/registry.db``)
    and its file does not exist yet: nothing was registered, so a listing is empty (exit 0,
    nothing created). A sqlite file named explicitly (``--registry``, ``MLFLOW_TRACKING_URI``)
    that does not exist stays an error (:func:`require_store`): a typo must not read as an
    empty registry."""
    from registry.settings import DB_NAME, sqlite_path

    db = sqlite_path(reg.settings.uri)
    return db is not None and not db.is_file() and db == reg.settings.home / DB_NAME


class NoRegistry(RegistryError):
    """A read-only command found no registry file (nothing registered yet, or a typo)."""
