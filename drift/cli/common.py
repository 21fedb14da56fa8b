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

from registry.errors import CordwatchError, redact

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


def quiet_mlflow() -> None:
    """Quiet, fail-fast MLflow defaults for a command line (an explicit environment wins)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"  # read when MLflow is imported
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # in case it already was
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def registry_from(ctx: typer.Context) -> Registry:
    """The registry named by the group's ``--registry`` option (else the default one)."""
    from registry.api import connect

    return connect((ctx.obj or {}).get("registry"))
