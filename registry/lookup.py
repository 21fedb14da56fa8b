"""Fast, read-only lookup of a version's package sha256 without importing MLflow.

Importing MLflow takes 1.5-2 s, which would dominate a pull that the cache can answer.
For the two common back ends this module answers "which package is NAME@ALIAS / NAME/N?"
directly:

- an embedded sqlite registry: one read-only query on MLflow's own tables;
- a tracking server: MLflow's public REST API (``registered-models/alias`` and
  ``model-versions/get``), with ``MLFLOW_TRACKING_USERNAME/PASSWORD`` or
  ``MLFLOW_TRACKING_TOKEN`` when set.

Anything unusual (another back end, workspaces enabled, custom TLS settings, a schema or
answer that does not look as expected, any error) returns None and the caller goes the slow
way through MLflow, which also produces the proper error messages. The answer only selects a
cache entry, whose every file is then verified against that sha256.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import urllib.parse
import urllib.request
from typing import Any

from registry.refs import Ref
from registry.settings import RegistrySettings, sqlite_path

SHA_TAG = "cordwatch.sha256"
_DELETED_STAGE = "Deleted_Internal"  # mlflow.entities.model_registry.model_version_stages
_SLOW_ONLY_ENV = (
    "MLFLOW_ENABLE_WORKSPACES",
    "MLFLOW_WORKSPACE",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_TRACKING_AUTH",
)


def fast_sha256(settings: RegistrySettings, ref: Ref) -> tuple[int, str] | None:
    """(version, package sha256) of ``ref``, or None when this needs the MLflow client."""
    if any(os.environ.get(k, "").strip().lower() not in ("", "false", "0") for k in _SLOW_ONLY_ENV):
        return None
    try:
        if settings.is_sqlite:
            return _from_sqlite(settings, ref)
        if settings.is_server:
            return _from_rest(settings.uri, ref)
    except Exception:  # any surprise: fall back to the MLflow client, which reports properly
        return None
    return None


def _from_sqlite(settings: RegistrySettings, ref: Ref) -> tuple[int, str] | None:
    db = sqlite_path(settings.uri)
    if db is None or not db.is_file():
        return None
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        version = ref.version
        if ref.alias is not None:
            row = con.execute(
                "SELECT version FROM registered_model_aliases "
                "WHERE workspace = 'default' AND name = ? AND alias = ?",
                (ref.name, ref.alias),
            ).fetchone()
            if row is None:
                return None
            version = int(row[0])
        row = con.execute(
            "SELECT v.current_stage, t.value FROM model_versions v JOIN model_version_tags t "
            "ON t.workspace = v.workspace AND t.name = v.name AND t.version = v.version "
            "WHERE v.workspace = 'default' AND v.name = ? AND v.version = ? AND t.key = ?",
            (ref.name, version, SHA_TAG),
        ).fetchone()
    finally:
        con.close()
    if row is None or row[0] == _DELETED_STAGE or not row[1] or version is None:
        return None
    return int(version), str(row[1])


def _get_json(url: str) -> dict[str, Any] | None:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    user, password = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        cred = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {cred}")
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:  # URL is http(s), see caller
        if response.status != 200:
            return None
        obj = json.loads(response.read())
    return obj if isinstance(obj, dict) else None


def _from_rest(base: str, ref: Ref) -> tuple[int, str] | None:
    root = base.rstrip("/") + "/api/2.0/mlflow/"
    if ref.alias is not None:
        query = urllib.parse.urlencode({"name": ref.name, "alias": ref.alias})
        obj = _get_json(f"{root}registered-models/alias?{query}")
    else:
        query = urllib.parse.urlencode({"name": ref.name, "version": str(ref.version)})
        obj = _get_json(f"{root}model-versions/get?{query}")
    mv = (obj or {}).get("model_version")
    if not isinstance(mv, dict) or mv.get("name") != ref.name:
        return None
    tags = {t.get("key"): t.get("value") for t in mv.get("tags", []) if isinstance(t, dict)}
    sha = tags.get(SHA_TAG)
    if not sha or mv.get("current_stage") == _DELETED_STAGE:
        return None
    return int(mv["version"]), str(sha)
