"""The two on-disk layouts of a normative database: detecting, reading, staging, converting.

*single* (SCT's r20250321 release, 203 subjects)::

    spinal_cord/sub-XXX_<contrast>_PAM50.csv      one per subject
    participants.tsv                               participant_id, sex, age, manufacturer, ...
    README.md, participants.json, LICENSE, ...     kept as they are

*datasets* (PAM50-normalized-metrics since 2026: several datasets, each its own folder under
the metric folder; spinalcordtoolbox/PAM50-normalized-metrics, commit 61c5a21)::

    spinal_cord/<DATASET>/participants.tsv         the dataset's own (BIDS: one row per
                                                   participant, or per session with session_id)
    spinal_cord/<DATASET>/sub-XXX[_ses-YYY]_<contrast>_PAM50.csv
    spinal_cord/<DATASET>/dataset_description.json, participants.json   kept as they are
    datasets.tsv, README.md, LICENSE               kept as they are
    spinal_canal/...                               canal measures: not a cord database, ignored

Several roots given at once are read as one *datasets* database (a single-layout root is the
dataset named after its folder, e.g. ``import site-a/ site-b/`` or ``import ROOT/*/``) and
stored in the layout above. A folder that merely holds database folders is not a database.

A record (one CSV) is keyed ``DATASET/sub-XXX`` (``DATASET/sub-XXX/ses-YYY``), so the same
participant_id in two datasets never collides. The participants tables are unioned (a
``dataset`` column first; a column a dataset lacks is ``n/a``, BIDS's missing value). A CSV
whose participant (and session, when the dataset's table has ``session_id``) has no row in its
dataset's participants.tsv is refused, as in the single layout.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from drift.normative.layout import (
    DATA_DIR,
    EXTRA_FILES,
    PARTICIPANTS,
    NormativeData,
    RawColumns,
    _checked_tidy,
    _read_raw,
    locate_layout,
    read_database,
    read_participants,
)
from registry.errors import InputError

SINGLE = "single"
DATASETS = "datasets"
LAYOUTS: tuple[str, ...] = (SINGLE, DATASETS)

#: Per-dataset files kept byte for byte (beside the dataset's participants.tsv).
DESCRIPTION = "dataset_description.json"
DATASET_EXTRAS: tuple[str, ...] = (DESCRIPTION, "participants.json", "README.md")

#: Top-level files kept in the multi-dataset layout (its generated overview included).
DATASETS_TSV = "datasets.tsv"
ROOT_EXTRAS: tuple[str, ...] = (*EXTRA_FILES, DATASETS_TSV)

#: A missing value in a unioned participants table (BIDS).
NA = "n/a"

_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_RECORD_CSV = re.compile(r"^(sub-[A-Za-z0-9]+)(?:_(ses-[A-Za-z0-9]+))?_(.+)_PAM50\.csv$")


def record_csv(name: str) -> tuple[str, str | None, str] | None:
    """(participant, session or None, contrast) of ``sub-XXX[_ses-YYY]_<contrast>_PAM50.csv``.

    >>> record_csv("sub-1003_ses-wave1_T1w_PAM50.csv"), record_csv("sub-amu01_T2w_PAM50.csv")
    (('sub-1003', 'ses-wave1', 'T1w'), ('sub-amu01', None, 'T2w'))
    """
    m = _RECORD_CSV.match(name)
    return (m.group(1), m.group(2), m.group(3)) if m else None


@dataclass(frozen=True)
class DatasetSource:
    """One dataset of a multi-dataset source: its CSV folder, participants.tsv and extras."""

    name: str
    folder: Path
    participants: Path
    extras: tuple[Path, ...] = ()
    strict: bool = True  # every other file must be a per-subject CSV (not a flat folder)


@dataclass(frozen=True)
class SourceLayout:
    """What :func:`detect_layout` found: ``kind`` single (``data_dir`` + ``participants``) or
    datasets (``datasets``); ``extras`` are the top-level files kept."""

    kind: str
    roots: tuple[Path, ...]
    datasets: tuple[DatasetSource, ...] = ()
    data_dir: Path | None = None
    participants: Path | None = None
    extras: tuple[Path, ...] = ()


def _kept(folder: Path, names: Sequence[str]) -> tuple[Path, ...]:
    return tuple(
        folder / n for n in names if (folder / n).is_file() and not (folder / n).is_symlink()
    )


def _dataset(name: str, folder: Path, home: Path) -> DatasetSource:
    if not _DATASET_NAME.match(name):
        raise InputError(
            "dataset folder name must be letters, digits and . _ + - (it keys the subjects)",
            home,
        )
    participants = home / PARTICIPANTS
    if not participants.is_file():
        raise InputError(
            f"dataset {name} has no {PARTICIPANTS} (each dataset folder needs its own)",
            participants,
        )
    return DatasetSource(name, folder, participants, _kept(home, DATASET_EXTRAS))


def _has_csv(folder: Path) -> Path | None:
    return next(
        (p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() == ".csv"), None
    )


def _single(root: Path) -> SourceLayout:
    data_dir, participants = locate_layout(root)
    extras = _kept(participants.parent, EXTRA_FILES)
    return SourceLayout(SINGLE, (root,), (), data_dir, participants, extras)


def _detect_one(root: Path) -> SourceLayout:
    if not root.is_dir():
        raise InputError("not a directory (expected SCT's normative layout)", root)
    cord = root / DATA_DIR
    mix = "mix of the single-folder and multi-dataset layouts"
    if cord.is_dir():
        subdirs = sorted(p for p in cord.iterdir() if p.is_dir())
        if not subdirs:
            return _single(root)
        stray = _has_csv(cord)
        if stray is not None:
            raise InputError(
                f"{mix}: {DATA_DIR}/ holds per-subject CSVs and dataset folders "
                f"({subdirs[0].name}/)",
                stray,
            )
        if (root / PARTICIPANTS).is_file():
            raise InputError(
                f"{mix}: a top-level {PARTICIPANTS} beside dataset folders under {DATA_DIR}/ "
                "(each dataset has its own)",
                root / PARTICIPANTS,
            )
        found = tuple(_dataset(p.name, p, p) for p in subdirs)
        return SourceLayout(DATASETS, (root,), found, extras=_kept(root, ROOT_EXTRAS))
    return _single(root)


def detect_layout(src: str | Path | Sequence[str | Path]) -> SourceLayout:
    """The layout of one source folder, or of several roots combined into one multi-dataset
    database (a single-layout root is the dataset named after its folder; top-level extras
    are then not kept). InputError naming the file: a mix of both layouts at one root, a
    dataset folder without participants.tsv, a dataset given twice."""
    roots = [Path(src)] if isinstance(src, str | Path) else [Path(s) for s in src]
    if not roots:
        raise InputError("no database folder given")
    if len(roots) == 1:
        layout = _detect_one(roots[0])
    else:
        found: list[DatasetSource] = []
        for root in roots:
            one = _detect_one(root)
            if one.kind == DATASETS:
                found.extend(one.datasets)
            else:
                assert one.data_dir is not None and one.participants is not None
                name = root.resolve().name
                if not _DATASET_NAME.match(name):
                    raise InputError("dataset folder name must be letters, digits and . _ + -",
                                     root)  # fmt: skip
                extras = _kept(one.participants.parent, ("participants.json", DESCRIPTION))
                strict = one.data_dir.name == DATA_DIR
                found.append(DatasetSource(name, one.data_dir, one.participants, extras, strict))
        layout = SourceLayout(DATASETS, tuple(roots), tuple(found))
    seen: dict[str, DatasetSource] = {}
    for ds in layout.datasets:
        first = seen.get(ds.name.casefold())
        if first is not None:
            raise InputError(
                f"dataset {ds.name} given twice (first: {first.participants.parent})",
                ds.participants.parent,
            )
        seen[ds.name.casefold()] = ds
    return layout


def _rows_key(pid: str, session: str | None) -> str:
    return pid if not session else f"{pid}/{session}"


def _session_value(text: str) -> str | None:
    text = str(text).strip()
    return None if text.lower() in ("", NA, "na", "nan") else text


def read_layout(layout: SourceLayout) -> NormativeData:
    """Read and validate every CSV and participants.tsv of a detected source (InputError
    naming the first bad file; nothing half-read is returned)."""
    if layout.kind == SINGLE:
        assert layout.data_dir is not None and layout.participants is not None
        return read_database(layout.data_dir, layout.participants)
    files: dict[str, Path] = {}
    raws: list[RawColumns] = []
    keys: list[tuple[str, str]] = []
    contrasts: set[str] = set()
    layouts: set[int] = set()
    tables: list[pd.DataFrame] = []
    row_keys: list[str] = []
    record_rows: dict[str, str] = {}
    for ds in layout.datasets:
        table = read_participants(ds.participants, sessions=True)
        with_sessions = "session_id" in table.columns
        sessions = (
            [_session_value(v) for v in table["session_id"]]
            if with_sessions
            else [None] * len(table)
        )
        names = [_rows_key(p, s) for p, s in zip(table["participant_id"], sessions, strict=True)]
        listed = set(names)
        row_keys.extend(f"{ds.name}/{k}" for k in names)
        tables.append(table.assign(dataset=ds.name))
        skip = {ds.participants.name, *(e.name for e in ds.extras)}
        same_home = ds.folder == ds.participants.parent
        missing: list[str] = []
        for path in sorted(ds.folder.iterdir()):
            if same_home and path.name in skip and path.is_file():
                continue
            key = record_csv(path.name) if path.is_file() else None
            if key is None:
                if not ds.strict and path.suffix.lower() != ".csv":
                    continue  # a flat single-layout folder also holds README.md, ...
                raise InputError(
                    "not a sub-XXX[_ses-YYY]_<contrast>_PAM50.csv file (would not be stored)",
                    path,
                )
            pid, session, contrast = key
            record = f"{ds.name}/{_rows_key(pid, session)}"
            if record in files:
                raise InputError(f"second file for {record} (first: {files[record].name})", path)
            row = _rows_key(pid, session) if with_sessions else pid
            if row not in listed:
                missing.append(f"{pid} {session}" if session else pid)
            raw, n_columns = _read_raw(path)
            if layouts and n_columns not in layouts:
                raise InputError(
                    f"{n_columns}-column layout among {next(iter(layouts))}-column files", path
                )
            files[record] = path
            record_rows[record] = f"{ds.name}/{row}"
            contrasts.add(contrast)
            layouts.add(n_columns)
            raws.append(raw)
            keys.append((record, contrast))
        if missing:
            raise InputError(
                f"{missing[0]} has a CSV but no row ({len(missing)} missing)", ds.participants
            )
        if not any(r.startswith(ds.name + "/") for r in record_rows):
            raise InputError(f"dataset {ds.name} has no sub-*_PAM50.csv file", ds.folder)
    tidy = _checked_tidy(raws, keys, files)
    tidy.insert(0, "dataset", tidy["subject"].str.split("/", n=1).str[0])
    return NormativeData(
        tidy=tidy,
        participants=union_participants(tables),
        files=files,
        contrast=",".join(sorted(contrasts)),
        layout=layouts.pop(),
        kind=DATASETS,
        datasets=tuple(ds.name for ds in layout.datasets),
        row_keys=row_keys,
        record_rows=record_rows,
    )


def union_participants(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The datasets' participants tables (each with its ``dataset`` column) as one: ``dataset``,
    ``participant_id``, ``session_id`` (when any has it) first, then every other column in
    first-seen order; a cell a dataset does not have is ``n/a``.

    >>> a = pd.DataFrame({"participant_id": ["sub-1"], "sex": ["F"], "dataset": "A"})
    >>> b = pd.DataFrame({"participant_id": ["sub-1"], "age": ["30"], "dataset": "B"})
    >>> union_participants([a, b]).values.tolist()
    [['A', 'sub-1', 'F', 'n/a'], ['B', 'sub-1', 'n/a', '30']]
    """
    joined = pd.concat(list(tables), ignore_index=True, sort=False)
    first = ["dataset", "participant_id"] + (["session_id"] if "session_id" in joined else [])
    order = first + [c for c in joined.columns if c not in first]
    return joined[order].astype(object).fillna(NA).astype(str)


def load_data(folder: Path) -> NormativeData:
    """A fetched version folder (either layout) as tables."""
    return read_layout(detect_layout(folder))


def stored_kind(folder: Path) -> str:
    """The layout of a stored version's folder (datasets: folders under ``spinal_cord/``)."""
    cord = folder / DATA_DIR
    return DATASETS if cord.is_dir() and any(p.is_dir() for p in cord.iterdir()) else SINGLE


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def stage_layout(layout: SourceLayout, data: NormativeData, staged: Path) -> None:
    """Copy a validated source into ``staged`` in its stored layout, byte for byte (a folder
    of single-layout databases becomes ``spinal_cord/<DATASET>/``)."""
    if layout.kind == SINGLE:
        assert layout.participants is not None
        for path in data.files.values():
            _copy(path, staged / DATA_DIR / path.name)
        _copy(layout.participants, staged / PARTICIPANTS)
    else:
        by_name = {ds.name: ds for ds in layout.datasets}
        for record, path in data.files.items():
            _copy(path, staged / DATA_DIR / record.split("/", 1)[0] / path.name)
        for ds in by_name.values():
            _copy(ds.participants, staged / DATA_DIR / ds.name / PARTICIPANTS)
            for extra in ds.extras:
                _copy(extra, staged / DATA_DIR / ds.name / extra.name)
    for extra in layout.extras:
        _copy(extra, staged / extra.name)


def convert_layout(
    folder: Path, out: Path, target: str, dataset_name: str, data: NormativeData | None = None
) -> None:
    """Write the database files of a fetched version ``folder`` into ``out`` in the layout
    ``target`` (the CSVs byte for byte; top-level extras are the caller's).

    single -> datasets: one dataset ``dataset_name`` (participants.tsv, participants.json and
    the CSVs move into ``spinal_cord/<dataset_name>/``). datasets -> single: the CSVs side by
    side and the unioned participants table (with its ``dataset`` column); refused when a
    participant is in two datasets or has several sessions (the single layout keys a file by
    participant), the dataset_description.json files go to ``cordwatch/datasets/<DATASET>/``.
    """
    if target not in LAYOUTS:
        raise InputError(f"layout must be one of {', '.join(LAYOUTS)}", target)
    kind = stored_kind(folder)
    if target == kind:
        raise InputError(f"the version is already in the {kind} layout", folder)
    if target == DATASETS:
        if not _DATASET_NAME.match(dataset_name):
            raise InputError("dataset name must be letters, digits and . _ + -", dataset_name)
        for path in sorted((folder / DATA_DIR).iterdir()):
            _copy(path, out / DATA_DIR / dataset_name / path.name)
        _copy(folder / PARTICIPANTS, out / DATA_DIR / dataset_name / PARTICIPANTS)
        if (folder / "participants.json").is_file():
            _copy(folder / "participants.json", out / DATA_DIR / dataset_name / "participants.json")
        return
    data = data if data is not None else load_data(folder)
    listed = data.participants
    twice = listed.duplicated("participant_id", keep=False)
    if twice.any():
        pid = listed.loc[twice, "participant_id"].iloc[0]
        rows = listed[listed["participant_id"] == pid]
        where = sorted(set(rows["dataset"]))
        raise InputError(
            f"cannot write the single-folder layout: {pid} has {len(rows)} participants rows "
            f"(datasets {', '.join(where)}; export --layout datasets)",
            folder / DATA_DIR / where[-1] / PARTICIPANTS,
        )
    owner: dict[str, str] = {}
    for record, path in sorted(data.files.items()):
        dataset, rest = record.split("/", 1)
        pid = rest.split("/", 1)[0]
        if "/" in rest:
            raise InputError(
                f"cannot write the single-folder layout: {pid} has several sessions in "
                f"{dataset} (export --layout datasets)",
                path,
            )
        if pid in owner:
            raise InputError(
                f"cannot write the single-folder layout: {pid} is in datasets {owner[pid]} and "
                f"{dataset} (export --layout datasets)",
                path,
            )
        owner[pid] = dataset
        _copy(path, out / DATA_DIR / path.name)
    cols = ["participant_id", "dataset"]
    table = data.participants[cols + [c for c in data.participants.columns if c not in cols]]
    (out / PARTICIPANTS).write_text(table.to_csv(sep="\t", index=False), encoding="utf-8")
    for ds in data.datasets:
        for name in DATASET_EXTRAS:
            src = folder / DATA_DIR / ds / name
            if src.is_file():
                _copy(src, out / "cordwatch" / "datasets" / ds / name)
