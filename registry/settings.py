"""Where the registry lives: one precedence order, resolved once per connection.

Registry URI, first match wins:

1. the ``--registry URI`` flag (``connect(uri=...)``);
2. the ``MLFLOW_TRACKING_URI`` environment variable;
3. the embedded default ``sqlite:///<CORDWATCH_HOME>/registry.db``.

``CORDWATCH_HOME`` (default ``~/.cordwatch``) also holds the package cache (``cache/``) and,
for the embedded default, the artifact store (``artifacts/``).

Artifact root of the experiments cordwatch creates: ``CORDWATCH_ARTIFACT_ROOT`` when set
(e.g. ``s3://bucket/cordwatch``); else, for a sqlite registry, ``artifacts/`` beside the
database file; else (an ``http(s)://`` tracking server) whatever the server decides, which is
``mlflow-artifacts:/`` when it proxies artifacts. A direct database URI such as
``postgresql://`` has no sensible local default: it needs ``CORDWATCH_ARTIFACT_ROOT``.

A fresh sqlite file is initialised once, under a file lock, before any client touches it:
several processes creating MLflow's tables in one new sqlite file at once corrupt it.
"""

from __future__ import annotations

import os
import re
import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from registry.errors import RegistryError, redact
from registry.fsutil import atomic_path, file_lock

HOME_ENV = "CORDWATCH_HOME"
ARTIFACT_ROOT_ENV = "CORDWATCH_ARTIFACT_ROOT"
DB_NAME = "registry.db"


def cordwatch_home() -> Path:
    """``$CORDWATCH_HOME`` or ``~/.cordwatch`` (not created here)."""
    raw = os.environ.get(HOME_ENV, "").strip()
    return Path(raw).expanduser().resolve() if raw else Path.home() / ".cordwatch"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None.

    >>> sqlite_path("sqlite:////tmp/r.db")
    PosixPath('/tmp/r.db')
    >>> sqlite_path("http://127.0.0.1:5000") is None
    True
    """
    if not uri.startswith("sqlite:"):
        return None
    if not uri.startswith("sqlite:///"):
        raise RegistryError("an in-memory sqlite registry cannot hold versions", uri)
    # sqlite:///rel.db is relative to the working directory, sqlite:////abs.db absolute
    path = urllib.parse.unquote(uri[len("sqlite:///") :].split("?", 1)[0])
    if not path or path == ":memory:":
        raise RegistryError("an in-memory sqlite registry cannot hold versions", uri)
    return Path(path).expanduser().resolve()


@dataclass(frozen=True)
class RegistrySettings:
    """A resolved registry location."""

    uri: str
    home: Path
    artifact_root: str | None

    @property
    def redacted_uri(self) -> str:
        """The URI without credentials, for messages and logs."""
        return redact(self.uri)

    @property
    def is_sqlite(self) -> bool:
        return self.uri.startswith("sqlite:")

    @property
    def is_server(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def lock_path(self) -> Path | None:
        """Lock file serialising writers of an embedded sqlite registry (None otherwise)."""
        db = sqlite_path(self.uri)
        return None if db is None else db.with_name(db.name + ".lock")


def resolve_settings(uri: str | None = None, home: str | Path | None = None) -> RegistrySettings:
    """Apply the precedence order (flag > ``MLFLOW_TRACKING_URI`` > embedded sqlite)."""
    home_path = Path(home).expanduser().resolve() if home is not None else cordwatch_home()
    chosen = (uri or "").strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not chosen:
        chosen = "sqlite:///" + str(home_path / DB_NAME)
    if chosen.startswith("file:") or ("://" not in chosen and not chosen.startswith("sqlite:")):
        raise RegistryError(
            "the file-system tracking store is not supported; use sqlite:///PATH.db, "
            "postgresql://... or http(s)://SERVER",
            chosen,
        )
    root = os.environ.get(ARTIFACT_ROOT_ENV, "").strip() or None
    db = sqlite_path(chosen)
    if db is not None:
        chosen = "sqlite:///" + str(db)  # absolute, so that the working directory is irrelevant
    if root is None and db is not None:
        root = (db.parent / "artifacts").as_uri()
    return RegistrySettings(uri=chosen, home=home_path, artifact_root=root)


def _marker(db: Path) -> Path:
    return db.with_name(db.name + ".initialised")


def _identity(db: Path) -> str:
    st = db.stat()
    return f"{st.st_dev}:{st.st_ino}"


def _store_initialised(db: Path) -> bool:
    """True when cordwatch finished initialising this very database file (marker beside it).

    Tables and an alembic stamp are not enough: MLflow stamps each migration as it goes and
    its sqlite migrations drop and re-create tables, so a store being initialised looks
    initialised half-way through, and a second process would start migrating it too.
    """
    try:
        return db.is_file() and _marker(db).read_text().strip() == _identity(db)
    except OSError:
        return False


def ensure_sqlite_store(settings: RegistrySettings) -> None:
    """Initialise (create or verify) the sqlite registry once, under a file lock.

    Cheap afterwards (one small marker file read, no lock). Processes that arrive while the
    first one initialises wait for the lock, then find the marker. An existing MLflow database
    without the marker is verified by MLflow (an out-of-date schema is reported) and marked.
    """
    db = sqlite_path(settings.uri)
    if db is None or _store_initialised(db):
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    assert settings.lock_path is not None
    with file_lock(settings.lock_path):
        if _store_initialised(db):
            return
        if db.is_file() and db.stat().st_size > 0:
            try:
                con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30)
                try:
                    con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                finally:
                    con.close()
            except sqlite3.DatabaseError as err:
                raise RegistryError(f"not a readable sqlite registry: {err}", db) from err
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.store.model_registry.sqlalchemy_store import (
            SqlAlchemyStore as RegistryStore,
        )
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        try:
            SqlAlchemyStore(settings.uri, settings.artifact_root)
            RegistryStore(settings.uri)
        except Exception as err:  # MLflow raises a variety of SQLAlchemy/alembic errors here
            raise RegistryError(f"cannot initialise the sqlite registry: {err}", db) from err
        with atomic_path(_marker(db)) as tmp:
            tmp.write_text(_identity(db) + "\n")


# Transport failures worth naming in "cannot reach ..." messages.
NETWORK_CAUSE = re.compile(
    r"(Connection refused|Name or service not known|Temporary failure in name resolution|"
    r"timed out|certificate verify failed|Connection reset by peer)"
)


def _first_line(text: str) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else "unknown error"
    return line if len(line) <= 300 else line[:297] + "..."


_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")


def probe_database(uri: str) -> None:
    """Fail fast, in one line, on a registry database that does not answer.

    MLflow's SQL store retries its first connection for about two minutes and logs a warning
    per attempt; one connection with a timeout (``CORDWATCH_DB_CONNECT_TIMEOUT`` seconds,
    default 10) says the same at once.
    """
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in _DATABASE_SCHEMES:
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    timeout = int(os.environ.get("CORDWATCH_DB_CONNECT_TIMEOUT", "10"))
    args = {"connect_timeout": timeout} if scheme != "mssql" else {"timeout": timeout}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=args, poolclass=NullPool)
    except (sqlalchemy.exc.ArgumentError, ImportError) as err:  # no driver, malformed URI
        why = _first_line(str(err))
        raise RegistryError(f"cannot open the registry database: {why}", uri) from err
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as err:
        cause = NETWORK_CAUSE.search(str(err))
        why = cause.group(1) if cause else _first_line(str(err.orig)).rstrip(".")
        raise RegistryError(f"cannot reach the registry database ({why})", uri) from None
    finally:
        engine.dispose()
