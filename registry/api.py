"""Python API of the cordwatch model registry (the CLI and the drift monitor call this).

Usage::

    from registry.api import connect

    reg = connect()                          # --registry / MLFLOW_TRACKING_URI / embedded sqlite
    info = reg.register("sc-seg", "nnUNetTrainer__nnUNetPlans__3d_fullres",
                        tags={"task": "spinal cord", "parent": "sc-seg@champion"},
                        alias="candidate", description="retrained with 20 more subjects")
    info.version, info.sha256                # 4, 'c0ffee...'
    folder = reg.pull("sc-seg@candidate")    # verified package folder in the cache
    reg.set_version_tags("sc-seg/4", {"cordwatch.drift.verdict": "pass"})
    reg.promote("sc-seg/4")                  # moves champion; GateFailed unless promotable
    reg.history("sc-seg")                    # [AliasEvent(...), ...] oldest first

Model versions are MLflow registered-model versions; the package and a pyfunc wrapper are the
artifacts of one registration run (experiment ``cordwatch-models/<name>``); the package sha256
and descriptive metadata are version tags; aliases are MLflow aliases. MLflow keeps no alias
history, so every alias move is also written as a run (tag ``cordwatch.kind=alias-event``) in
the model's experiment: append-only, one run per move, no read-modify-write of a shared value.

For the drift side: ``Registry.client`` is a ready :class:`mlflow.MlflowClient`,
``Registry.tracking_uri`` its URI, ``Registry.ensure_experiment(name)`` creates an experiment
with the right artifact location, and ``VersionInfo.run_id`` is the registration run (log a
drift run with tag ``cordwatch.model_version=<name>/<version>`` to link it).

Tags (``--tag K=V``): free keys, with these conventional ones: ``task``, ``contrasts``,
``training_datasets``, ``release_tag``, ``source_url``, ``git_commit`` and ``parent``
(lineage: ``NAME/V``, ``NAME@ALIAS`` or a bare version number of the same model, stored
resolved as ``NAME/V``). Keys ``cordwatch.*`` / ``mlflow.*`` are written by cordwatch only;
``set_version_tags`` may write ``cordwatch.drift.*`` (the drift verdict; see
:mod:`registry.promotion` for the tags that let ``champion`` move).

Concurrency: on an embedded sqlite registry every write holds a file lock beside the
database (``registry.db.lock``), so any number of processes may register at once. On a
server, version numbers come from the database (MLflow retries conflicting inserts; this
module retries more and never creates a version twice: it looks for its run first).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import cache
from registry.archive import ZipLimits
from registry.errors import CordwatchError, GateFailed, InputError, IntegrityError, RegistryError
from registry.fsutil import file_lock
from registry.lookup import SHA_TAG, fast_sha256
from registry.manifest import (
    JUNK_NAMES,
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    build_manifest,
    read_verified_manifest,
    verify_tree,
)
from registry.package import stage_package
from registry.promotion import GATED_ALIASES, PROMOTABLE_TAG, VERDICT_TAG, promotion_tags, refusal
from registry.refs import Ref, check_alias, check_model_name, check_tag_key, parse_ref
from registry.settings import (
    DB_NAME,
    NETWORK_CAUSE,
    RegistrySettings,
    ensure_sqlite_store,
    probe_database,
    resolve_settings,
    sqlite_path,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

#: Run-relative artifact paths of a version.
MODEL_PATH = "model"
PACKAGE_ARTIFACT = f"{MODEL_PATH}/artifacts/package"
MANIFEST_ARTIFACT = f"{MODEL_PATH}/artifacts/{MANIFEST_NAME}"
EXPERIMENT_PREFIX = "cordwatch-models/"
_KIND_TAG = "cordwatch.kind"
_MAX_REASON = 5000


def current_user() -> str:
    """Who acts: ``CORDWATCH_USER``, ``GITHUB_ACTOR``, ``MLFLOW_TRACKING_USERNAME`` or the login."""
    for key in ("CORDWATCH_USER", "GITHUB_ACTOR", "MLFLOW_TRACKING_USERNAME"):
        if os.environ.get(key, "").strip():
            return os.environ[key].strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _when(ms: int | None) -> datetime:
    return datetime.fromtimestamp((ms or 0) / 1000, tz=UTC)


@dataclass(frozen=True)
class VersionInfo:
    """One registered version. ``manifest`` is None unless asked for (it is an extra download)."""

    name: str
    version: int
    sha256: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    manifest: Manifest | None
    run_id: str | None
    source: str
    created: datetime
    description: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "aliases": list(self.aliases),
            "description": self.description,
            "created": self.created.isoformat(),
            "run_id": self.run_id,
            "source": self.source,
            "tags": dict(sorted(self.tags.items())),
        }
        if self.manifest is not None:
            out["files"] = self.manifest.to_dict()["files"]
        return out


@dataclass(frozen=True)
class ModelSummary:
    """A registered model: how many versions, the newest, and where its aliases point."""

    name: str
    versions: int
    latest: int | None
    aliases: dict[str, int]
    description: str
    updated: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": self.versions,
            "latest": self.latest,
            "aliases": dict(sorted(self.aliases.items())),
            "description": self.description,
            "updated": self.updated.isoformat(),
        }


@dataclass(frozen=True)
class AliasEvent:
    """One alias move, as recorded in the append-only history."""

    name: str
    alias: str
    from_version: int | None
    to_version: int
    who: str
    when: datetime
    reason: str
    forced: bool
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alias": self.alias,
            "from": self.from_version,
            "to": self.to_version,
            "who": self.who,
            "when": self.when.isoformat(),
            "reason": self.reason,
            "forced": self.forced,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class VersionDiff:
    """Metadata and file-manifest differences between two versions (a -> b)."""

    a: str
    b: str
    sha256: tuple[str, str]
    description: tuple[str, str] | None
    tags: dict[str, tuple[str | None, str | None]]
    added: list[FileEntry] = field(default_factory=list)
    removed: list[FileEntry] = field(default_factory=list)
    changed: list[tuple[FileEntry, FileEntry]] = field(default_factory=list)

    @property
    def same_package(self) -> bool:
        return self.sha256[0] == self.sha256[1]

    def to_dict(self) -> dict[str, Any]:
        def entry(f: FileEntry) -> dict[str, Any]:
            return {"path": f.path, "size": f.size, "sha256": f.sha256}

        return {
            "a": self.a,
            "b": self.b,
            "same_package": self.same_package,
            "sha256": {"a": self.sha256[0], "b": self.sha256[1]},
            "description": None
            if self.description is None
            else {"a": self.description[0], "b": self.description[1]},
            "tags": {k: {"a": v[0], "b": v[1]} for k, v in sorted(self.tags.items())},
            "files": {
                "added": [entry(f) for f in self.added],
                "removed": [entry(f) for f in self.removed],
                "changed": [
                    {"path": old.path, "a": entry(old), "b": entry(new)}
                    for old, new in self.changed
                ],
            },
        }


def diff_versions(a: VersionInfo, b: VersionInfo) -> VersionDiff:
    """Compare two versions (with manifests) without touching the registry."""
    keys = set(a.tags) | set(b.tags)
    tags = {k: (a.tags.get(k), b.tags.get(k)) for k in keys if a.tags.get(k) != b.tags.get(k)}
    fa = a.manifest.by_path() if a.manifest else {}
    fb = b.manifest.by_path() if b.manifest else {}
    return VersionDiff(
        a=a.ref,
        b=b.ref,
        sha256=(a.sha256, b.sha256),
        description=None if a.description == b.description else (a.description, b.description),
        tags=tags,
        added=[fb[p] for p in sorted(set(fb) - set(fa))],
        removed=[fa[p] for p in sorted(set(fa) - set(fb))],
        changed=[(fa[p], fb[p]) for p in sorted(set(fa) & set(fb)) if fa[p] != fb[p]],
    )


def _first_line(text: str) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else "unknown error"
    return line if len(line) <= 300 else line[:297] + "..."


@contextlib.contextmanager
def _mlflow_errors(subject: str, uri: str) -> Iterator[None]:
    """Turn MLflow/transport errors into one-line RegistryErrors about ``subject``."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except CordwatchError:
        raise
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"not found in {uri}: {_first_line(err.message)}", subject) from err
        if "API request to" in err.message and "failed with exception" in err.message:
            cause = NETWORK_CAUSE.search(err.message)
            why = cause.group(1) if cause else "connection failed"
            raise RegistryError(f"cannot reach the registry server ({why})", uri) from err
        raise RegistryError(f"{_first_line(err.message)} (registry {uri})", subject) from err
    except OSError as err:
        raise RegistryError(f"storage error: {err} (registry {uri})", subject) from err


class Registry:
    """A connection to one registry (see :func:`connect`). Cheap to create: MLflow is imported
    and its client built only on first use, so a pull served by the cache never imports it."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self._client: MlflowClient | None = None
        self._lock_guard = threading.RLock()
        self._lock_depth = 0

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        return self.settings.uri

    @property
    def client(self) -> MlflowClient:
        """The MlflowClient of this registry (tracking and registry URI are the same)."""
        if self._client is None:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            # MLflow prints "View run ... at: URL" on stdout for server runs; stdout is ours.
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
            ensure_sqlite_store(self.settings)
            probe_database(self.settings.uri)
            from mlflow import MlflowClient

            self._client = MlflowClient(
                tracking_uri=self.settings.uri, registry_uri=self.settings.uri
            )
        return self._client

    def _errors(self, subject: str) -> contextlib.AbstractContextManager[None]:
        return _mlflow_errors(subject, self.settings.uri)

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Serialise writers of an embedded sqlite registry (no-op for other back ends).

        Re-entrant within this object, so that write helpers may nest.
        """
        lock = self.settings.lock_path
        if lock is None:
            yield
            return
        with self._lock_guard:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            with file_lock(lock):
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0

    def ensure_experiment(self, name: str) -> str:
        """Id of the experiment ``name``, created (with the right artifact location) if needed."""
        from mlflow.exceptions import MlflowException

        with self._errors(name):
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                root = self.settings.artifact_root
                location = None
                if root is not None:
                    location = root.rstrip("/") + "/" + name.replace("/", "-").replace(" ", "_")
                elif not self.settings.is_server:
                    raise RegistryError(
                        "no artifact store: set CORDWATCH_ARTIFACT_ROOT (e.g. s3://bucket/prefix)",
                        self.settings.uri,
                    )
                with self.write_lock():
                    try:
                        return str(self.client.create_experiment(name, artifact_location=location))
                    except MlflowException as err:  # created meanwhile by another process
                        exp = self.client.get_experiment_by_name(name)
                        if exp is None:
                            raise err from None
            if exp.lifecycle_stage != "active":
                raise RegistryError("experiment is deleted; restore it in MLflow first", name)
            return str(exp.experiment_id)

    def _aliases(self, name: str) -> dict[str, int]:
        # Read aliases from the registered model: search results may leave them empty.
        model = self.client.get_registered_model(name)
        return {alias: int(version) for alias, version in (model.aliases or {}).items()}

    def _info(
        self, mv: ModelVersion, aliases: Mapping[str, int], manifest: Manifest | None = None
    ) -> VersionInfo:
        version = int(mv.version)
        tags = dict(mv.tags or {})
        return VersionInfo(
            name=mv.name,
            version=version,
            sha256=tags.get(SHA_TAG, ""),
            aliases=tuple(sorted(a for a, v in aliases.items() if v == version)),
            tags=tags,
            manifest=manifest,
            run_id=mv.run_id,
            source=mv.source or "",
            created=_when(mv.creation_timestamp),
            description=mv.description or "",
        )

    def _package_sha(self, info: VersionInfo) -> str:
        if len(info.sha256) != 64 or not info.run_id:
            raise RegistryError(f"not a cordwatch package (no {SHA_TAG} tag)", info.ref)
        return info.sha256

    def _manifest(self, info: VersionInfo) -> Manifest:
        sha = self._package_sha(info)
        with (
            tempfile.TemporaryDirectory(prefix="cordwatch-manifest-") as tmp,
            self._errors(info.ref),
        ):
            local = self.client.download_artifacts(str(info.run_id), MANIFEST_ARTIFACT, tmp)
            try:
                return read_verified_manifest(Path(local), sha)
            except IntegrityError as err:  # name the stored file, not the deleted temporary copy
                stored = f"{info.source}/artifacts/{MANIFEST_NAME}"
                raise IntegrityError(f"{err.message} (stored copy of {info.ref})", stored) from err

    def _existing_store(self) -> None:
        """Reading from a sqlite file named explicitly (``--registry``, ``MLFLOW_TRACKING_URI``)
        that does not exist is an error: a typo must not create folders and a new registry.
        The default ``$CORDWATCH_HOME/registry.db`` is created on first use, as before."""
        db = sqlite_path(self.settings.uri)
        if db is None or db.is_file() or db == self.settings.home / DB_NAME:
            return
        raise RegistryError("no registry database at this path (a typo in the URI?)", db)

    # -- reading ----------------------------------------------------------------------------
    def resolve(self, ref: str, *, manifest: bool = False) -> VersionInfo:
        """The version ``ref`` (``NAME@ALIAS`` or ``NAME/VERSION``) points at."""
        r = parse_ref(ref)
        self._existing_store()
        with self._errors(str(r)):
            if r.alias is not None:
                mv = self.client.get_model_version_by_alias(r.name, r.alias)
            else:
                mv = self.client.get_model_version(r.name, str(r.version))
            info = self._info(mv, self._aliases(r.name))
        if manifest:
            info = _with_manifest(info, self._manifest(info))
        return info

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, ordered by version number (an integer, never text)."""
        check_model_name(name)
        self._existing_store()
        with self._errors(name):
            aliases = self._aliases(name)
            found: list[ModelVersion] = []
            token = None
            while True:
                page = self.client.search_model_versions(
                    f"name = '{name}'", max_results=1000, page_token=token
                )
                found.extend(page)
                token = page.token
                if not token:
                    break
        return sorted((self._info(mv, aliases) for mv in found), key=lambda v: v.version)

    def list_models(self) -> list[ModelSummary]:
        """Every registered model, by name."""
        self._existing_store()
        with self._errors(self.settings.uri):
            models: list[RegisteredModel] = []
            token = None
            while True:
                page = self.client.search_registered_models(max_results=1000, page_token=token)
                models.extend(page)
                token = page.token
                if not token:
                    break
        out = []
        for model in models:
            versions = self.list_versions(model.name)
            out.append(
                ModelSummary(
                    name=model.name,
                    versions=len(versions),
                    latest=versions[-1].version if versions else None,
                    aliases={a: int(v) for a, v in (model.aliases or {}).items()},
                    description=model.description or "",
                    updated=_when(model.last_updated_timestamp),
                )
            )
        return sorted(out, key=lambda m: m.name)

    def diff(self, a: str, b: str) -> VersionDiff:
        """Metadata and file differences between two versions."""
        return diff_versions(self.resolve(a, manifest=True), self.resolve(b, manifest=True))

    def history(self, name: str) -> list[AliasEvent]:
        """Every alias move of ``name``, oldest first."""
        check_model_name(name)
        self._existing_store()
        with self._errors(name):
            self.client.get_registered_model(name)  # a clear error for an unknown model
            exp = self.client.get_experiment_by_name(EXPERIMENT_PREFIX + name)
            if exp is None:
                return []
            runs: list[Run] = []
            token = None
            while True:
                page = self.client.search_runs(
                    [exp.experiment_id],
                    filter_string=f"tags.`{_KIND_TAG}` = 'alias-event'",
                    max_results=1000,
                    page_token=token,
                )
                runs.extend(page)
                token = page.token
                if not token:
                    break
        events = [_event_from_tags(name, run.data.tags) for run in runs]
        return sorted(events, key=lambda e: e.when)

    # -- fetching ---------------------------------------------------------------------------
    def pull(self, ref: str, dest: str | Path | None = None, *, refresh: bool = False) -> Path:
        """A verified local copy of the package of ``ref``; returns its folder.

        The package lands in the content-addressed cache (``<home>/cache/packages/<sha256>``);
        a second pull of the same package downloads nothing. Every file is checked against
        the manifest, and the manifest against the registry's sha256, before the path is
        returned; an altered file is an IntegrityError naming it. With ``dest``, the verified
        files are copied there (a new or empty folder). ``refresh`` drops the cached copy first.
        """
        r = parse_ref(ref)
        cache_dir = self.settings.cache_dir
        if not refresh:
            hit = fast_sha256(self.settings, r)
            if hit is not None:
                with self._entry_lock(hit[1]):
                    entry = cache.check_entry(cache_dir, hit[1])
                    if entry is not None:
                        return entry if dest is None else cache.copy_out(entry, Path(dest), hit[1])
        info = self.resolve(ref)
        sha = self._package_sha(info)
        # One process at a time per package: a --refresh never removes an entry that another
        # pull is verifying or copying (concurrent pulls used to fail with OSErrors).
        with self._entry_lock(sha):
            if refresh:
                cache.remove_entry(cache_dir, sha)
            entry = cache.check_entry(cache_dir, sha)
            if entry is None:
                entry = self._download(info, sha)
            return entry if dest is None else cache.copy_out(entry, Path(dest), sha)

    def _entry_lock(self, sha: str) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.settings.cache_dir / "locks" / f"{sha}.lock")

    def _download(self, info: VersionInfo, sha: str) -> Path:
        work = cache.staging_dir(self.settings.cache_dir)
        entry = work / "entry"
        try:
            (work / "dl").mkdir()
            (work / "dm").mkdir()
            with self._errors(info.ref):
                run_id = str(info.run_id)
                package = self.client.download_artifacts(run_id, PACKAGE_ARTIFACT, str(work / "dl"))
                manifest = self.client.download_artifacts(
                    run_id, MANIFEST_ARTIFACT, str(work / "dm")
                )
            os.rename(package, entry)
            os.rename(manifest, entry / MANIFEST_NAME)
            try:
                return cache.install(entry, self.settings.cache_dir, sha)
            except IntegrityError as err:
                # name the stored file, not the temporary copy
                rel = Path(err.path or "").relative_to(entry).as_posix() if err.path else ""
                inside = MANIFEST_NAME if rel == MANIFEST_NAME else f"package/{rel}"
                stored = f"{info.source}/artifacts/{inside}"
                raise IntegrityError(f"{err.message} (stored copy of {info.ref})", stored) from err
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # -- writing ----------------------------------------------------------------------------
    def register(
        self,
        name: str,
        path: str | Path | Sequence[str | Path],
        tags: Mapping[str, str] | None = None,
        alias: str | None = None,
        description: str | None = None,
        *,
        limits: ZipLimits | None = None,
    ) -> VersionInfo:
        """Validate, hash and store a package as a new version of ``name``; return it.

        ``path`` is a results folder, a zip, or a list of per-fold zips. Everything is
        validated before the registry is touched: a bad package creates nothing.
        """
        check_model_name(name)
        if alias is not None:
            check_alias(alias)
        user_tags = {check_tag_key(k): str(v) for k, v in (tags or {}).items()}
        if description is not None and len(description) > _MAX_REASON:
            raise InputError(f"description longer than {_MAX_REASON} characters", name)
        sources = [path] if isinstance(path, (str, Path)) else list(path)
        work_root = self.settings.home / "tmp"
        work_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="register-", dir=work_root) as tmp:
            work = Path(tmp)
            (work / "staging").mkdir()
            staged = stage_package(sources, work / "staging", limits)
            if alias in GATED_ALIASES:
                # A new version has no drift verdict yet: it reaches a gated alias only
                # through promote (after a passing check, or --force --reason, recorded).
                raise GateFailed(
                    f"cannot register straight into {alias}: register it (e.g. as candidate), "
                    "run the drift check, then promote",
                    name,
                )
            package = work / "package"
            if staged.kind == "folder":  # snapshot: what is hashed is what is uploaded
                shutil.copytree(
                    staged.root,
                    package,
                    copy_function=shutil.copyfile,
                    ignore=shutil.ignore_patterns(*JUNK_NAMES),
                )
            else:
                os.rename(staged.root, package)
            manifest = build_manifest(package)
            manifest_file = work / MANIFEST_NAME
            manifest_file.write_bytes(manifest.to_bytes())
            from registry.pyfunc import PACKAGE_PATH, save_pyfunc

            save_pyfunc(package, manifest_file, work / MODEL_PATH, work)
            verify_tree(work / MODEL_PATH / PACKAGE_PATH, manifest)
            if "parent" in user_tags:
                user_tags["parent"] = self._parent(name, user_tags["parent"])
            version_tags = {
                **user_tags,
                **staged.layout.tags(),
                SHA_TAG: manifest.sha256,
                "cordwatch.files": str(len(manifest.files)),
                "cordwatch.bytes": str(manifest.total_bytes),
                "cordwatch.source": ",".join(staged.source_names),
                "cordwatch.format": staged.kind,
                "cordwatch.registered_by": current_user(),
            }
            mv = self._store(name, work / MODEL_PATH, manifest, version_tags, description or "")
        if alias is not None:
            self._move_alias(
                name, int(mv.version), alias, reason="set at registration", forced=False
            )
        info = self.resolve(f"{name}/{mv.version}")
        return _with_manifest(info, manifest)

    def _parent(self, name: str, value: str) -> str:
        text = value.strip()
        ref = f"{name}/{text}" if text.isdigit() else text
        try:
            info = self.resolve(ref)
        except RegistryError as err:
            raise InputError(f"parent {ref}: {err.message}", "--tag parent") from err
        return info.ref

    def _ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
            return
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        with self.write_lock():
            try:
                self.client.create_registered_model(name, tags={_KIND_TAG: "nnunet-package"})
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

    def _store(
        self, name: str, model_dir: Path, manifest: Manifest, tags: dict[str, str], description: str
    ) -> ModelVersion:
        exp_id = self.ensure_experiment(EXPERIMENT_PREFIX + name)
        with self._errors(name):
            self._ensure_model(name)
            with self.write_lock():
                run = self.client.create_run(
                    exp_id,
                    run_name=f"register {name}",
                    tags={
                        _KIND_TAG: "registration",
                        "cordwatch.model": name,
                        SHA_TAG: manifest.sha256,
                        "mlflow.user": current_user(),
                    },
                )
            run_id = run.info.run_id
            try:
                self.client.log_artifacts(run_id, str(model_dir), MODEL_PATH)
                self._check_upload(run_id, manifest)
                mv = self._create_version(
                    name, f"{run.info.artifact_uri}/{MODEL_PATH}", run_id, tags, description
                )
            except BaseException:
                with contextlib.suppress(Exception), self.write_lock():
                    self.client.set_terminated(run_id, "FAILED")
                raise
            with self.write_lock():
                self.client.set_tag(run_id, "cordwatch.model_version", f"{name}/{mv.version}")
                self.client.set_terminated(run_id, "FINISHED")
        return mv

    def _check_upload(self, run_id: str, manifest: Manifest) -> None:
        """The stored package lists exactly the manifest's files with their sizes."""
        stored: dict[str, int] = {}
        pending = [PACKAGE_ARTIFACT]
        while pending:
            for item in self.client.list_artifacts(run_id, pending.pop()):
                if item.is_dir:
                    pending.append(item.path)
                else:
                    stored[item.path.removeprefix(PACKAGE_ARTIFACT + "/")] = int(
                        item.file_size or 0
                    )
        expected = {f.path: f.size for f in manifest.files}
        if stored != expected:
            bad = sorted(set(stored.items()) ^ set(expected.items()))[0][0]
            raise RegistryError(
                "upload incomplete: the stored package differs from the manifest", bad
            )

    def _create_version(
        self, name: str, source: str, run_id: str, tags: dict[str, str], description: str
    ) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        attempts = 12
        for attempt in range(attempts):
            try:
                with self.write_lock():
                    return self.client.create_model_version(
                        name, source, run_id=run_id, tags=tags, description=description or None
                    )
            except MlflowException as err:
                # It may exist although the call failed (e.g. a timeout after the commit).
                mine = self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
                if mine:
                    return mine[0]
                retry = err.error_code in (
                    "INTERNAL_ERROR",
                    "TEMPORARILY_UNAVAILABLE",
                    "RESOURCE_ALREADY_EXISTS",
                    "ABORTED",
                    "REQUEST_LIMIT_EXCEEDED",
                ) or "locked" in str(err)
                if not retry or attempt == attempts - 1:
                    raise
                time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))
        raise AssertionError("unreachable")

    def set_version_tags(self, ref: str, tags: Mapping[str, str]) -> VersionInfo:
        """Set tags on a version (e.g. ``{"cordwatch.drift.verdict": "pass"}``); return it.

        User keys and ``cordwatch.drift.*`` are allowed; the other ``cordwatch.*`` tags
        (sha256, file counts, ...) are immutable. A verdict set without
        ``cordwatch.drift.promotable`` gets it by the old rule (``true`` for pass only).
        """
        checked = {}
        for key, value in promotion_tags(tags).items():
            reserved_ok = key.startswith("cordwatch.drift.")
            checked[check_tag_key(key, allow_reserved=reserved_ok)] = str(value)
        info = self.resolve(ref)
        if "parent" in checked:
            checked["parent"] = self._parent(info.name, checked["parent"])
        with self._errors(info.ref), self.write_lock():
            for key, value in checked.items():
                self.client.set_model_version_tag(info.name, str(info.version), key, value)
        return self.resolve(info.ref)

    def promote(
        self, ref: str, alias: str = "champion", *, force: bool = False, reason: str | None = None
    ) -> AliasEvent | None:
        """Point ``alias`` at the version ``ref``; return the recorded move (None: no change).

        ``champion`` moves only to a promotable version: ``cordwatch.drift.promotable=true``
        (its drift check's policy promotes its verdict), or, checked before that tag existed,
        ``cordwatch.drift.verdict=pass`` (:mod:`registry.promotion`); GateFailed, exit 1,
        otherwise. ``force=True`` overrides and needs a ``reason``; both are recorded.
        """
        check_alias(alias)
        reason = (reason or "").strip()
        if force and not reason:
            raise InputError("--force needs --reason saying why the gate is overridden", ref)
        if len(reason) > _MAX_REASON:
            raise InputError(f"reason longer than {_MAX_REASON} characters", ref)
        info = self.resolve(ref)
        verdict = info.tags.get(VERDICT_TAG, "")
        refused = None if force else refusal(alias, info.tags)
        if refused:
            raise GateFailed(refused, info.ref)
        return self._move_alias(
            info.name, info.version, alias, reason=reason, forced=force, verdict=verdict
        )

    def _move_alias(
        self, name: str, version: int, alias: str, *, reason: str, forced: bool, verdict: str = ""
    ) -> AliasEvent | None:
        with self._errors(f"{name}@{alias}"), self.write_lock():
            previous = self._aliases(name).get(alias)
            if previous == version:
                return None
            self.client.set_registered_model_alias(name, alias, str(version))
            event = AliasEvent(
                name=name,
                alias=alias,
                from_version=previous,
                to_version=version,
                who=current_user(),
                when=datetime.now(tz=UTC),
                reason=reason,
                forced=forced,
                verdict=verdict,
            )
            try:
                self._record(event)
            except BaseException:  # keep alias and history consistent: undo the move
                with contextlib.suppress(Exception):
                    if previous is None:
                        self.client.delete_registered_model_alias(name, alias)
                    else:
                        self.client.set_registered_model_alias(name, alias, str(previous))
                raise
        return event

    def _record(self, event: AliasEvent) -> None:
        exp_id = self.ensure_experiment(EXPERIMENT_PREFIX + event.name)
        frm = "-" if event.from_version is None else str(event.from_version)
        run = self.client.create_run(
            exp_id,
            start_time=int(event.when.timestamp() * 1000),
            run_name=f"alias {event.alias}: {frm} -> {event.to_version}",
            tags={
                _KIND_TAG: "alias-event",
                "cordwatch.model": event.name,
                "cordwatch.alias": event.alias,
                "cordwatch.from": "" if event.from_version is None else str(event.from_version),
                "cordwatch.to": str(event.to_version),
                "cordwatch.who": event.who,
                "cordwatch.when": event.when.isoformat(),
                "cordwatch.reason": event.reason,
                "cordwatch.forced": "true" if event.forced else "false",
                "cordwatch.verdict": event.verdict,
                "mlflow.user": event.who,
            },
        )
        self.client.set_terminated(run.info.run_id, "FINISHED")


def _with_manifest(info: VersionInfo, manifest: Manifest) -> VersionInfo:
    return replace(info, manifest=manifest)


def _event_from_tags(name: str, tags: Mapping[str, str]) -> AliasEvent:
    frm = tags.get("cordwatch.from", "")
    return AliasEvent(
        name=name,
        alias=tags.get("cordwatch.alias", ""),
        from_version=int(frm) if frm.isdigit() else None,
        to_version=int(tags.get("cordwatch.to", "0") or 0),
        who=tags.get("cordwatch.who", ""),
        when=datetime.fromisoformat(tags["cordwatch.when"]),
        reason=tags.get("cordwatch.reason", ""),
        forced=tags.get("cordwatch.forced") == "true",
        verdict=tags.get("cordwatch.verdict", ""),
    )


def connect(uri: str | None = None, home: str | Path | None = None) -> Registry:
    """Open the registry at ``uri`` (else ``MLFLOW_TRACKING_URI``, else the embedded sqlite
    store in ``home``/``CORDWATCH_HOME``). Nothing is contacted until the first call."""
    return Registry(resolve_settings(uri, home))


__all__ = [
    "GATED_ALIASES",
    "PROMOTABLE_TAG",
    "VERDICT_TAG",
    "AliasEvent",
    "ModelSummary",
    "Ref",
    "Registry",
    "VersionDiff",
    "VersionInfo",
    "connect",
    "current_user",
    "diff_versions",
]
