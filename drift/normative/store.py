"""Normative database versions in the cordwatch registry (MLflow), and the operations that
only store or read them: import, list, resolve, export.

Storage: database ``NAME`` is the experiment ``cordwatch-normative/NAME``; version ``V`` (an
integer, ordered as one) is one FINISHED run tagged ``cordwatch.kind=normative-version`` and
``cordwatch.normative.*`` (``name``, ``version``, ``kind`` = import | rescale | recompute,
``source``, ``model`` = the segmentation model ``NAME/VERSION`` that produced the values,
``parent``, ``files_sha256``, ``sha256`` of the manifest, ``n_subjects``, ``created_by``,
``created_utc``, ...). Its artifacts are the database files (:mod:`drift.normative.layout`),
byte for byte, plus ``manifest.json`` (path, size and sha256 of every other artifact; the
run's ``sha256`` tag authenticates it) and, for a rescale or a recompute, the records under
``cordwatch/`` (factor tables, the drift result used, notes).

Writing is all-or-nothing: the run is created (RUNNING), the files uploaded, downloaded
again and verified, and only then marked FINISHED; readers ignore every other run. Reading
always verifies the manifest: a changed, missing or extra artifact is an IntegrityError
naming the stored file (exit 2). MLflow is imported only when a registry is touched.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drift import __version__
from drift.normative.datasets import (
    DATASETS,
    LAYOUTS,
    convert_layout,
    detect_layout,
    read_layout,
    stage_layout,
    stored_kind,
)
from drift.normative.layout import DATA_DIR, PARTICIPANTS
from drift.normative.policy import RESCALE_NOTE
from registry.errors import InputError, IntegrityError, RegistryError
from registry.manifest import Manifest, build_manifest, read_verified_manifest, verify_tree
from registry.refs import check_model_name, parse_ref

if TYPE_CHECKING:
    from mlflow.entities import Run

    from drift.normative.layout import NormativeData
    from registry.api import Registry


EXPERIMENT_PREFIX = "cordwatch-normative/"


MANIFEST = "manifest.json"


RECORDS_DIR = "cordwatch"


KINDS: tuple[str, ...] = ("import", "rescale", "recompute")


KIND_TAG = "cordwatch.kind"


KIND_VALUE = "normative-version"


TAG = "cordwatch.normative."


_VERSION_TEXT = re.compile(r"^[vV]?(\d+)$")


def check_db_name(name: str) -> str:
    """A database name: letters, digits and ``._+-`` (no ``/``, ``@`` or spaces).

    >>> check_db_name("pam50-hc")
    'pam50-hc'
    """
    try:
        return check_model_name(name)
    except InputError as err:
        raise InputError(
            "invalid normative database name: use letters, digits and . _ + -", name or "''"
        ) from err


def parse_db_ref(text: str) -> tuple[str, int | None]:
    """``NAME/VERSION``, ``NAME@latest`` or ``NAME`` -> (name, version), the models' syntax
    (``/`` a version, ``@`` an alias); version None means the latest. ``NAME@VERSION`` (the
    syntax of 0.1, still in stored records) is read too.

    >>> parse_db_ref("pam50/3"), parse_db_ref("pam50@latest"), parse_db_ref("pam50")
    (('pam50', 3), ('pam50', None), ('pam50', None))
    >>> parse_db_ref("pam50@3")
    ('pam50', 3)
    """
    raw = (text or "").strip()
    name, sep, version = raw.partition("/") if "/" in raw else raw.partition("@")
    check_db_name(name)
    if not sep or (sep == "@" and version.lower() == "latest"):
        return name, None
    m = _VERSION_TEXT.match(version)
    if not m or int(m.group(1)) < 1:
        raise InputError("expected NAME/VERSION (a positive integer), NAME@latest or NAME", raw)
    return name, int(m.group(1))


@dataclass(frozen=True)
class NormativeVersion:
    """One stored version of a normative database."""

    name: str
    version: int
    kind: str
    source: str
    model: str | None
    parent: int | None
    files_sha256: str
    sha256: str
    n_subjects: int
    n_files: int
    contrast: str
    created_by: str
    created: str
    run_id: str
    artifact_uri: str
    tags: dict[str, str]

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    def stored(self, rel: str) -> str:
        """Where an artifact of this version is stored (for messages)."""
        return f"{self.artifact_uri.rstrip('/')}/{rel}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "kind": self.kind,
            "source": self.source,
            "model": self.model,
            "parent": self.parent,
            "files_sha256": self.files_sha256,
            "sha256": self.sha256,
            "n_subjects": self.n_subjects,
            "n_files": self.n_files,
            "contrast": self.contrast,
            "created_by": self.created_by,
            "created": self.created,
            "run_id": self.run_id,
            "artifact_uri": self.artifact_uri,
            "tags": dict(sorted(self.tags.items())),
        }


def _version_from_run(run: Run) -> NormativeVersion:
    tags = dict(run.data.tags)

    def tag(key: str, default: str = "") -> str:
        return tags.get(TAG + key, default)

    parent = tag("parent")
    return NormativeVersion(
        name=tag("name"),
        version=int(tag("version", "0")),
        kind=tag("kind"),
        source=tag("source"),
        model=tag("model") or None,
        parent=int(parent) if parent.isdigit() else None,
        files_sha256=tag("files_sha256"),
        sha256=tag("sha256"),
        n_subjects=int(tag("n_subjects", "0") or 0),
        n_files=int(tag("n_files", "0") or 0),
        contrast=tag("contrast"),
        created_by=tag("created_by"),
        created=tag("created_utc"),
        run_id=run.info.run_id,
        artifact_uri=run.info.artifact_uri or "",
        tags={k: v for k, v in tags.items() if k.startswith(TAG)},
    )


def files_sha256(manifest: Manifest) -> str:
    """One sha256 over a manifest's files: of the sorted ``"<path> <sha256>\\n"`` lines."""
    lines = sorted(f"{f.path} {f.sha256}\n" for f in manifest.files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def jsonable(obj: Any) -> Any:
    """Recursively: NaN/inf -> None, numpy scalars -> Python, tuples -> lists (for JSON).

    >>> jsonable({"a": np.float64("nan"), "b": (np.int64(2), 1.5)})
    {'a': None, 'b': [2, 1.5]}
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NormativeStore:
    """Normative database versions in one registry (see the module doc for the layout)."""

    def __init__(self, registry: Registry) -> None:
        self.reg = registry

    # -- reading ----------------------------------------------------------------------------
    def _errors(self, subject: str) -> contextlib.AbstractContextManager[None]:
        from registry.api import _mlflow_errors

        return _mlflow_errors(subject, self.reg.tracking_uri)

    def _experiment_id(self, name: str) -> str | None:
        exp = self.reg.client.get_experiment_by_name(EXPERIMENT_PREFIX + name)
        return None if exp is None or exp.lifecycle_stage != "active" else str(exp.experiment_id)

    def _runs(self, exp_id: str, extra: str = "") -> list[Run]:
        query = f"tags.`{KIND_TAG}` = '{KIND_VALUE}'" + (f" and {extra}" if extra else "")
        found: list[Run] = []
        token = None
        while True:
            page = self.reg.client.search_runs(
                [exp_id], filter_string=query, max_results=1000, page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                return found

    def names(self) -> list[str]:
        """Every database name, sorted."""
        with self._errors(self.reg.tracking_uri):
            exps = self.reg.client.search_experiments(
                filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'"
            )
        return sorted(e.name[len(EXPERIMENT_PREFIX) :] for e in exps)

    def versions(self, name: str) -> list[NormativeVersion]:
        """The finished versions of ``name``, ordered by version number (an integer)."""
        check_db_name(name)
        with self._errors(name):
            exp_id = self._experiment_id(name)
            if exp_id is None:
                return []
            runs = self._runs(exp_id, "attributes.status = 'FINISHED'")
        found: dict[int, NormativeVersion] = {}
        for run in sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
            v = _version_from_run(run)
            found.setdefault(v.version, v)  # a duplicate number (should not happen): the first
        return [found[k] for k in sorted(found)]

    def resolve(self, ref: str) -> NormativeVersion:
        """The version ``NAME/VERSION`` / ``NAME@latest`` / ``NAME`` points at."""
        name, number = parse_db_ref(ref)
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"no normative database {name!r} in {self.reg.tracking_uri}", ref)
        if number is None:
            return versions[-1]
        for v in versions:
            if v.version == number:
                return v
        raise RegistryError(
            f"no version {number} (versions: {', '.join(str(v.version) for v in versions)})", ref
        )

    def fetch(self, version: NormativeVersion, dest: Path) -> Path:
        """Download a version's artifacts into the empty folder ``dest`` and verify them
        against the manifest (and the manifest against the run's sha256 tag); returns
        ``dest``. A tampered, missing or extra file is an IntegrityError naming it."""
        with self._errors(version.ref):
            local = Path(self.reg.client.download_artifacts(version.run_id, "", str(dest)))
        try:
            manifest = read_verified_manifest(local / MANIFEST, version.sha256)
            if files_sha256(manifest) != version.files_sha256:
                raise IntegrityError("manifest does not match the files_sha256 tag", MANIFEST)
            verify_tree(local, manifest, extra_allowed=[MANIFEST])
        except IntegrityError as err:
            rel = err.path or MANIFEST
            with contextlib.suppress(ValueError):
                rel = Path(rel).relative_to(local).as_posix()
            raise IntegrityError(
                f"{err.message} (normative {version.ref})", version.stored(rel)
            ) from err
        return local

    @contextlib.contextmanager
    def opened(self, ref: str | NormativeVersion) -> Iterator[tuple[NormativeVersion, Path]]:
        """A verified temporary copy of a version: ``with store.opened("db@2") as (v, folder)``."""
        version = ref if isinstance(ref, NormativeVersion) else self.resolve(ref)
        with tempfile.TemporaryDirectory(prefix="cordwatch-normative-") as tmp:
            yield version, self.fetch(version, Path(tmp))

    # -- writing ----------------------------------------------------------------------------
    def _live_versions(self, exp_id: str) -> list[tuple[int, int, str]]:
        """(version, start_time, run_id) of every run that holds a number (not failed)."""
        out = []
        for run in self._runs(exp_id):
            if run.info.status in ("FAILED", "KILLED"):
                continue
            text = run.data.tags.get(TAG + "version", "")
            if text.isdigit():
                out.append((int(text), int(run.info.start_time or 0), run.info.run_id))
        return out

    def _settle(self, exp_id: str, run_id: str, version: int) -> int:
        """Re-check under the write lock that no earlier live run holds ``version`` (two
        writers on a server may have drawn the same number); if one does, take the next
        free number. Returns the number this run keeps."""
        while True:
            live = self._live_versions(exp_id)
            mine = next(((s, r) for v, s, r in live if r == run_id), (0, run_id))
            earlier = [r for v, s, r in live if v == version and r != run_id and (s, r) < mine]
            if not earlier:
                return version
            version = max(v for v, _, _ in live) + 1
            self.reg.client.set_tag(run_id, TAG + "version", str(version))

    def store(self, name: str, folder: Path, tags: Mapping[str, str]) -> NormativeVersion:
        """Store ``folder`` (the staged database files, without manifest.json) as the next
        version of ``name``; nothing is visible unless every step succeeds."""
        from registry.api import current_user

        check_db_name(name)
        if (folder / MANIFEST).exists():
            raise InputError(f"{MANIFEST} is reserved", folder / MANIFEST)
        manifest = build_manifest(folder)
        (folder / MANIFEST).write_bytes(manifest.to_bytes())
        exp_id = self.reg.ensure_experiment(EXPERIMENT_PREFIX + name)
        data_files = [
            f
            for f in manifest.files
            if f.path.startswith(DATA_DIR + "/") and f.path.endswith("_PAM50.csv")
        ]
        all_tags = {
            **{TAG + k: v for k, v in tags.items()},
            KIND_TAG: KIND_VALUE,
            TAG + "name": name,
            TAG + "sha256": manifest.sha256,
            TAG + "files_sha256": files_sha256(manifest),
            TAG + "n_files": str(len(data_files)),
            TAG + "bytes": str(manifest.total_bytes),
            TAG + "created_by": current_user(),
            TAG + "created_utc": _now(),
            TAG + "cordwatch_version": __version__,
            "mlflow.user": current_user(),
        }
        with self._errors(name):
            with self.reg.write_lock():
                live = self._live_versions(exp_id)
                version = max((v for v, _, _ in live), default=0) + 1
                run = self.reg.client.create_run(
                    exp_id,
                    run_name=f"{name}/{version}",
                    tags=all_tags | {TAG + "version": str(version)},
                )
            run_id = run.info.run_id
            try:
                self.reg.client.log_artifacts(run_id, str(folder))
                with tempfile.TemporaryDirectory(prefix="cordwatch-normative-check-") as tmp:
                    stored = self.reg.client.get_run(run_id)
                    self.fetch(_version_from_run(stored), Path(tmp))
                with self.reg.write_lock():
                    version = self._settle(exp_id, run_id, version)
                    self.reg.client.set_tag(run_id, "mlflow.runName", f"{name}/{version}")
                    self.reg.client.set_terminated(run_id, "FINISHED")
            except BaseException:
                with contextlib.suppress(Exception), self.reg.write_lock():
                    self.reg.client.set_terminated(run_id, "FAILED")
                raise
            return _version_from_run(self.reg.client.get_run(run_id))


def store_for(registry: Registry | None) -> NormativeStore:
    from registry.api import connect

    return NormativeStore(registry if registry is not None else connect())


def model_version_ref(reg: Registry, ref: str, what: str = "--model") -> str:
    """``NAME/VERSION`` of a registered model version (aliases resolved)."""
    parse_ref(ref)
    try:
        return reg.resolve(ref).ref
    except RegistryError as err:
        raise InputError(f"{what}: {err.message}", ref) from err


def copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def import_db(
    src_dir: str | Path | Sequence[str | Path],
    name: str,
    model_ref: str | None = None,
    *,
    registry: Registry | None = None,
) -> NormativeVersion:
    """Store SCT's normative layout at ``src_dir`` as the next version of ``name``: the
    single-folder layout (r20250321) or the multi-dataset one, or several roots combined into
    one multi-dataset database (:mod:`drift.normative.datasets`).

    Every CSV is read and validated first (InputError naming the first bad file; nothing is
    stored then); the stored files are byte-identical copies. ``model_ref`` (a registered
    model version, aliases resolved) records which segmentation model made the values.
    """
    check_db_name(name)
    layout = detect_layout(src_dir)
    data = read_layout(layout)
    store = store_for(registry)
    model = model_version_ref(store.reg, model_ref) if model_ref else ""
    with tempfile.TemporaryDirectory(prefix="cordwatch-normative-import-") as tmp:
        staged = Path(tmp)
        stage_layout(layout, data, staged)
        # What was validated is what is stored: re-read the staged copy's hashes only.
        tags = {
            "kind": "import",
            "source": ";".join(str(r.resolve()) for r in layout.roots),
            "model": model,
            "parent": "",
            "n_subjects": str(data.n_subjects),
            "contrast": data.contrast,
            "layout": str(data.layout),
            **layout_tags(data),
        }
        return store.store(name, staged, tags)


def layout_tags(data: NormativeData) -> dict[str, str]:
    """The tags of a version's on-disk layout: ``db_layout`` (single | datasets) and, for
    several datasets, their names and number and the number of records (CSV files)."""
    if data.kind != DATASETS:
        return {"db_layout": data.kind}
    return {
        "db_layout": data.kind,
        "datasets": ",".join(data.datasets),
        "n_datasets": str(len(data.datasets)),
        "n_records": str(len(data.files)),
    }


def list_databases(*, registry: Registry | None = None) -> list[NormativeVersion]:
    """Every version of every database, by name then version number."""
    store = store_for(registry)
    return [v for name in store.names() for v in store.versions(name)]


def resolve(ref: str, *, registry: Registry | None = None) -> NormativeVersion:
    """The version a ``NAME/VERSION`` / ``NAME@latest`` / ``NAME`` reference points at."""
    return store_for(registry).resolve(ref)


def read_records(folder: Path) -> dict[str, Any]:
    """The JSON records under ``cordwatch/`` of a fetched version (rescale.json, ...)."""
    out: dict[str, Any] = {}
    records = folder / RECORDS_DIR
    if records.is_dir():
        for path in sorted(records.glob("*.json")):
            if path.name != "drift_result.json":
                out[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    return out


def export_db(
    ref: str,
    dest_dir: str | Path,
    *,
    layout: str | None = None,
    dataset_name: str | None = None,
    registry: Registry | None = None,
) -> Path:
    """Write version ``ref`` in SCT's layout into ``dest_dir`` (new or empty folder): the
    database files exactly as stored (``layout`` None or the stored one) or converted to
    ``layout`` (``single`` | ``datasets``, :func:`drift.normative.datasets.convert_layout`;
    ``dataset_name`` names the one dataset of a single-layout version, default the database
    name), ``PROVENANCE.md`` and ``cordwatch/`` (manifest, version record, rescale records).
    Written into a temporary folder and renamed into place: an error leaves nothing."""
    from drift.provenance import base_provenance

    if layout is not None and layout not in LAYOUTS:
        raise InputError(f"--layout must be one of {', '.join(LAYOUTS)}", layout)
    dest = Path(dest_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError("export folder exists and is not empty", dest)
    store = store_for(registry)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with store.opened(ref) as (version, folder):
        kind = stored_kind(folder)
        convert = layout is not None and layout != kind
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            if convert:
                assert layout is not None
                convert_layout(folder, work, layout, dataset_name or version.name)
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    rel = path.relative_to(folder).as_posix()
                    if convert and (rel == PARTICIPANTS or rel.startswith(DATA_DIR + "/")):
                        continue
                    if convert and rel == "participants.json" and layout == DATASETS:
                        continue
                    target = work / (f"{RECORDS_DIR}/{MANIFEST}" if rel == MANIFEST else rel)
                    copy_file(path, target)
            records = read_records(folder)
            meta = {
                "format": "cordwatch-normative-export/1",
                "version": version.to_dict(),
                "layout": layout or kind,
                "stored_layout": kind,
                "exported": base_provenance(),
            }
            (work / RECORDS_DIR).mkdir(exist_ok=True)
            (work / RECORDS_DIR / "version.json").write_text(
                json.dumps(meta, indent=2) + "\n", encoding="utf-8"
            )
            (work / "PROVENANCE.md").write_text(
                provenance_markdown(version, records, layout or kind, kind), encoding="utf-8"
            )
            if dest.exists():
                dest.rmdir()
            work.rename(dest)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return dest


def provenance_markdown(
    version: NormativeVersion,
    records: Mapping[str, Any],
    layout: str = "single",
    stored: str = "single",
) -> str:
    """The human-readable provenance file of an export."""
    where = (
        "`spinal_cord/*_PAM50.csv` +\n`participants.tsv`"
        if layout != DATASETS
        else "`spinal_cord/<DATASET>/*_PAM50.csv`\n+ `spinal_cord/<DATASET>/participants.tsv`"
    )
    lines = [
        f"# Normative database {version.ref}",
        "",
        f"Exported by cordwatch in Spinal Cord Toolbox's {layout} layout ({where}), usable by",
        "`sct_compute_compression -normalize-hc 1`.",
        "",
        *(
            [f"Converted from the stored {stored} layout (CSV files byte for byte).", ""]
            if layout != stored
            else []
        ),
        f"- kind: **{version.kind}**",
        f"- segmentation model: {version.model or 'not recorded'}",
        f"- source: {version.source}",
        f"- parent version: {version.parent if version.parent is not None else '-'}",
        f"- subjects: {version.n_subjects} ({version.contrast})",
        f"- files sha256 (sorted `path sha256` lines): `{version.files_sha256}`",
        f"- manifest sha256: `{version.sha256}` (cordwatch/manifest.json)",
        f"- created: {version.created} by {version.created_by}",
        "",
    ]
    rescale = records.get("rescale")
    if rescale:
        lines += [
            "## Rescale, not a recompute",
            "",
            str(rescale.get("note", RESCALE_NOTE)),
            "",
            f"- baseline model (parent's): {rescale.get('baseline_model')}",
            f"- candidate model (this version's): {rescale.get('candidate_model')}",
            f"- drift result sha256: `{rescale.get('drift_result_sha256')}`",
            "- factors: cordwatch/factors_level.csv, cordwatch/factors_slice.csv",
            "",
        ]
    recompute = records.get("recompute")
    if recompute:
        lines += [
            "## Recomputed",
            "",
            f"Segmented with {recompute.get('model')} on cohort {recompute.get('cohort')} "
            f"({recompute.get('cohort_manifest_sha256')}).",
            "",
        ]
    return "\n".join(lines)
