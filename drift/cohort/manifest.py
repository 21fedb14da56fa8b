"""Frozen cohort manifests: which images a drift check runs on, pinned by sha256.

A drift check is only meaningful when both model versions see the very same bytes, so a
cohort is a list of files with their hashes, and the data themselves live under a *root*
directory given at run time (``--root``, ``$CORDWATCH_COHORT_ROOT``, or the cache folder of a
cohort cordwatch generates itself).

Manifest format (``cordwatch-cohort/1``)
----------------------------------------
A cohort is two files with the same stem in one folder, e.g. ``reference_data/cohorts/``:

``<stem>.tsv`` — the table: UTF-8, tab-separated, one header line, one row per
(subject, contrast). Column order is free; unknown columns are refused (a misspelt column
would silently drop a check).

- ``participant_id`` (required): subject id (``sub-XXX``), no whitespace or ``/``;
- ``contrast`` (required): ``T1w``, ``T2w``, ``T2star``, ``MTon``, ``MToff``, ``DWI``, ...;
- ``image``, ``image_sha256`` (required): the image path relative to the root (POSIX,
  canonical, no ``..``) and its sha256 (64 lowercase hex digits);
- ``image_bytes``: its size in bytes (optional; checked before hashing, a cheap early miss);
- the same three columns (``<kind>``, ``<kind>_sha256``, ``<kind>_bytes``), all optional,
  for the ground truths: ``gt_seg`` (binary cord segmentation), ``disc_labels`` (C2/C3
  disc = 3, ...), ``gt_softseg`` (soft segmentation), ``labeled_seg`` (value = level).

An optional file column may be missing or empty on a row (empty = no such file for that
row); a path needs its ``_sha256``, and a ``_sha256`` or ``_bytes`` needs its path. One path
listed on several rows must have one hash.

``<stem>.yaml`` — the header::

    format: cordwatch-cohort/1
    name: phantom                      # [A-Za-z0-9][A-Za-z0-9._-]*; cache folder name
    description: free text
    level_source: disc_labels          # or labeled_seg: a column of the table
    license: free text
    source: {...}                      # free-form provenance (dataset, url, tag, listing...)
    generator:                         # only for cohorts cordwatch generates itself
      function: drift.phantoms.write_cohort
      n_subjects: 10
      seed: 0
      contrasts: [T1w, T2w, T2star]
      spacing: [1.0, 1.0, 1.0]

``level_source`` names the ground-truth file that assigns vertebral levels: both versions
of a comparison take their levels from it, so only the segmentation changes.

The manifest's identity for provenance, :attr:`Cohort.manifest_sha256`, is the sha256 of
the text ``"cordwatch-cohort/1\\ntable <sha256 of the .tsv>\\nheader <sha256 of the .yaml>\\n"``:
it changes when either file changes and not when the folder is renamed.

Use (what the drift check does)::

    cohort = load_cohort("phantom")              # a shipped name, or a path to .tsv/.yaml
    root = ensure_root(cohort, root_flag)        # generates a phantom cohort on first use
    verify_cohort(cohort, root).raise_for_problems()
    for item in cohort.items:
        image = item.image.locate(root)          # and item.image.sha256, item.levels, ...
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from registry.errors import InputError
from registry.fsutil import atomic_path

__all__ = [
    "COHORTS_DIR",
    "COHORT_ROOT_ENV",
    "FILE_KINDS",
    "FORMAT",
    "PHANTOM_GENERATOR",
    "Cohort",
    "CohortFile",
    "CohortItem",
    "PhantomRecipe",
    "find_manifest",
    "list_manifests",
    "load_cohort",
    "phantom_manifest_rows",
    "write_manifest_table",
    "write_phantom_manifest",
]

FORMAT = "cordwatch-cohort/1"
#: The shipped manifests (a source checkout or an editable install).
COHORTS_DIR = Path(__file__).resolve().parents[2] / "reference_data" / "cohorts"
#: Root of a real dataset cohort when ``--root`` is not given (not used by generated cohorts).
COHORT_ROOT_ENV = "CORDWATCH_COHORT_ROOT"
# The generator id recorded in manifests (and in their hash); a stable name, not an import
# path: the function lives in drift.measure.phantoms.
PHANTOM_GENERATOR = "drift.phantoms.write_cohort"

#: File kinds, in canonical column order. ``image`` is required, the others optional.
FILE_KINDS: tuple[str, ...] = ("image", "gt_seg", "disc_labels", "gt_softseg", "labeled_seg")
LEVEL_SOURCES: tuple[str, ...] = ("disc_labels", "labeled_seg")
_ID_COLUMNS = ("participant_id", "contrast")
#: Every column a table may have, in the order the writer uses.
COLUMNS: tuple[str, ...] = _ID_COLUMNS + tuple(
    f"{kind}{suffix}" for kind in FILE_KINDS for suffix in ("", "_sha256", "_bytes")
)
_REQUIRED_COLUMNS = ("participant_id", "contrast", "image", "image_sha256")
_HEADER_KEYS = ("format", "name", "description", "level_source", "license", "source", "generator")
_GENERATOR_KEYS = ("function", "n_subjects", "seed", "contrasts", "spacing")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TOKEN = re.compile(r"[^\s/\\]+")

Status = Literal["ok", "missing", "changed", "unreadable"]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CohortFile:
    """One file of a cohort: its kind, its path relative to the root, and what it must be."""

    kind: str  # one of FILE_KINDS
    path: str  # POSIX, relative to the cohort root
    sha256: str
    size: int | None = None  # bytes, when the manifest records it

    def locate(self, root: str | Path) -> Path:
        """The file under ``root``.

        >>> CohortFile("image", "sub-01/anat/sub-01_T2w.nii.gz", "0" * 64).locate("/data")
        PosixPath('/data/sub-01/anat/sub-01_T2w.nii.gz')
        """
        return Path(root).joinpath(*PurePosixPath(self.path).parts)


@dataclass(frozen=True)
class CohortItem:
    """One (subject, contrast) row: the image and its ground-truth files (None when absent)."""

    subject: str
    contrast: str
    image: CohortFile
    gt_seg: CohortFile | None
    disc_labels: CohortFile | None
    gt_softseg: CohortFile | None
    labeled_seg: CohortFile | None
    level_source: str  # the cohort's: "disc_labels" or "labeled_seg"
    line: int  # line number in the .tsv (the header is line 1)

    @property
    def key(self) -> tuple[str, str]:
        """``(subject, contrast)``, unique within a cohort."""
        return (self.subject, self.contrast)

    @property
    def levels(self) -> CohortFile | None:
        """The ground-truth level file (per the cohort's ``level_source``), or None."""
        found: CohortFile | None = getattr(self, self.level_source)
        return found

    def files(self) -> tuple[CohortFile, ...]:
        """Every file of the row, image first."""
        found = (getattr(self, kind) for kind in FILE_KINDS)
        return tuple(f for f in found if f is not None)


@dataclass(frozen=True)
class PhantomRecipe:
    """How a generated cohort is made: the arguments of
    :func:`drift.measure.phantoms.write_cohort`."""

    n_subjects: int = 10
    seed: int = 0
    contrasts: tuple[str, ...] = ("T1w", "T2w", "T2star")
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    function: str = PHANTOM_GENERATOR

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``write_cohort`` (besides the root)."""
        return {
            "n_subjects": self.n_subjects,
            "seed": self.seed,
            "contrasts": self.contrasts,
            "spacing": self.spacing,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "n_subjects": self.n_subjects,
            "seed": self.seed,
            "contrasts": list(self.contrasts),
            "spacing": list(self.spacing),
        }


@dataclass(frozen=True)
class Cohort:
    """A validated cohort manifest (see the module doc for the format)."""

    name: str
    description: str
    level_source: str
    license: str
    source: Mapping[str, Any]
    generator: PhantomRecipe | None
    manifest: Path  # the .tsv table
    header: Path  # the .yaml header
    table_sha256: str
    header_sha256: str
    items: tuple[CohortItem, ...]

    @property
    def manifest_sha256(self) -> str:
        """Identity of the manifest (table + header) for provenance; see the module doc."""
        return _manifest_digest(self.table_sha256, self.header_sha256)

    @property
    def is_generated(self) -> bool:
        """True for a cohort cordwatch generates itself (the phantom cohort)."""
        return self.generator is not None

    @property
    def subjects(self) -> tuple[str, ...]:
        """Subject ids, in order of first appearance."""
        return tuple(dict.fromkeys(item.subject for item in self.items))

    @property
    def contrasts(self) -> tuple[str, ...]:
        """Contrasts, in order of first appearance."""
        return tuple(dict.fromkeys(item.contrast for item in self.items))

    def files(self) -> tuple[CohortFile, ...]:
        """Every distinct file of the cohort (a path listed on several rows counts once)."""
        seen: dict[str, CohortFile] = {}
        for item in self.items:
            for f in item.files():
                seen.setdefault(f.path, f)
        return tuple(seen.values())

    def provenance(self) -> dict[str, str]:
        """What an output records about the cohort it was computed on."""
        return {
            "cohort": self.name,
            "cohort_manifest": str(self.manifest),
            "cohort_manifest_sha256": self.manifest_sha256,
            "cohort_level_source": self.level_source,
        }

    def summary(self) -> dict[str, Any]:
        """Counts and header fields (``cordwatch cohort list/show``)."""
        per_contrast: dict[str, dict[str, int]] = {}
        for item in self.items:
            counts = per_contrast.setdefault(
                item.contrast, {"subjects": 0, **{k: 0 for k in FILE_KINDS[1:]}}
            )
            counts["subjects"] += 1
            for kind in FILE_KINDS[1:]:
                counts[kind] += getattr(item, kind) is not None
        return {
            "name": self.name,
            "description": self.description,
            "manifest": str(self.manifest),
            "header": str(self.header),
            "manifest_sha256": self.manifest_sha256,
            "n_items": len(self.items),
            "n_subjects": len(self.subjects),
            "n_contrasts": len(self.contrasts),
            "n_files": len(self.files()),
            "contrasts": list(self.contrasts),
            "level_source": self.level_source,
            "generated": self.is_generated,
            "generator": None if self.generator is None else self.generator.to_dict(),
            "license": self.license,
            "source": dict(self.source),
            "per_contrast": per_contrast,
        }


def _manifest_digest(table_sha256: str, header_sha256: str) -> str:
    """sha256 naming a (table, header) pair.

    >>> _manifest_digest("a" * 64, "b" * 64)[:12]
    'c47ec15e1ee8'
    """
    text = f"{FORMAT}\ntable {table_sha256}\nheader {header_sha256}\n"
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def list_manifests(directory: str | Path = COHORTS_DIR) -> list[Path]:
    """The cohort tables (``*.tsv`` with a ``.yaml`` beside them) in ``directory``, by name."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.tsv") if p.with_suffix(".yaml").is_file())


def find_manifest(ref: str | Path, directory: str | Path = COHORTS_DIR) -> Path:
    """The table of a manifest given as a path (``.tsv`` or ``.yaml``) or a shipped name.

    An existing file wins; else a bare name such as ``phantom`` means
    ``<directory>/phantom.tsv``.
    """
    path = Path(ref).expanduser()
    if path.suffix in (".tsv", ".yaml") and path.is_file():
        return path.with_suffix(".tsv")
    if not path.suffix and path.with_name(path.name + ".tsv").is_file():
        return path.with_name(path.name + ".tsv")  # a stem: dir/phantom
    text = str(ref)
    if _NAME.fullmatch(text) and not text.endswith((".tsv", ".yaml")):
        shipped = Path(directory) / f"{text}.tsv"
        if shipped.is_file():
            return shipped
    if path.is_file():
        raise InputError("a cohort manifest is a .tsv table (with a .yaml header beside it)", path)
    known = ", ".join(p.stem for p in list_manifests(directory)) or "none"
    raise InputError(f"cohort manifest not found (shipped cohorts: {known})", path)


def load_cohort(manifest: str | Path) -> Cohort:
    """Read and validate a cohort manifest (``.tsv`` or ``.yaml`` path, or a shipped name).

    Every problem raises :class:`InputError` naming the file and the line/column: a missing
    header or table, unknown or missing columns, duplicate (subject, contrast), a malformed
    sha256 or size, an unsafe path, a path listed with two hashes, a bad header field, or a
    generator that disagrees with the table.
    """
    table = find_manifest(manifest)
    header = table.with_suffix(".yaml")
    if not header.is_file():
        raise InputError(f"cohort header missing (expected {header.name} beside the table)", header)
    header_bytes = _read_bytes(header)
    table_bytes = _read_bytes(table)
    meta = _parse_header(header, header_bytes)
    rows = _read_rows(table, table_bytes)
    items = _parse_items(table, rows, meta["level_source"])
    generator = meta["generator"]
    if generator is not None:
        _check_generator(header, generator, items)
    return Cohort(
        name=meta["name"],
        description=meta["description"],
        level_source=meta["level_source"],
        license=meta["license"],
        source=meta["source"],
        generator=generator,
        manifest=table,
        header=header,
        table_sha256=hashlib.sha256(table_bytes).hexdigest(),
        header_sha256=hashlib.sha256(header_bytes).hexdigest(),
        items=items,
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read cohort manifest: {err.strerror or err}", path) from err


def _parse_header(path: Path, payload: bytes) -> dict[str, Any]:
    try:
        data = yaml.safe_load(payload.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"not a valid YAML cohort header: {problem}", path) from err
    if not isinstance(data, dict):
        raise InputError("cohort header must be a YAML mapping", path)
    unknown = sorted(set(map(str, data)) - set(_HEADER_KEYS))
    if unknown:
        raise InputError(f"unknown header key(s) {unknown}; known: {list(_HEADER_KEYS)}", path)
    if data.get("format") != FORMAT:
        raise InputError(
            f"header key 'format' must be {FORMAT!r}, got {data.get('format')!r}", path
        )
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"header key 'name' must match {_NAME.pattern}, got {name!r}", path)
    level_source = data.get("level_source")
    if level_source not in LEVEL_SOURCES:
        raise InputError(
            f"header key 'level_source' must be one of {list(LEVEL_SOURCES)}, got {level_source!r}",
            path,
        )
    for key in ("description", "license"):
        if not isinstance(data.get(key, ""), str):
            raise InputError(f"header key {key!r} must be text", path)
    source = data.get("source", {})
    if not isinstance(source, dict):
        raise InputError("header key 'source' must be a mapping", path)
    raw_generator = data.get("generator")
    generator = None if raw_generator is None else _parse_generator(path, raw_generator)
    return {
        "name": name,
        "level_source": level_source,
        "description": data.get("description", "").strip(),
        "license": data.get("license", "").strip(),
        "source": source,
        "generator": generator,
    }


def _parse_generator(path: Path, raw: Any) -> PhantomRecipe:
    def bad(message: str) -> InputError:
        return InputError(f"header key 'generator': {message}", path)

    if not isinstance(raw, dict):
        raise bad("must be a mapping")
    unknown = sorted(set(map(str, raw)) - set(_GENERATOR_KEYS))
    missing = [k for k in _GENERATOR_KEYS if k not in raw]
    if unknown or missing:
        raise bad(f"unknown key(s) {unknown}, missing key(s) {missing}")
    if raw["function"] != PHANTOM_GENERATOR:
        raise bad(f"function must be {PHANTOM_GENERATOR!r}, got {raw['function']!r}")
    n, seed = raw["n_subjects"], raw["seed"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise bad(f"n_subjects must be a positive integer, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise bad(f"seed must be a non-negative integer, got {seed!r}")
    contrasts = raw["contrasts"]
    if (
        not isinstance(contrasts, list)
        or not contrasts
        or not all(isinstance(c, str) and _TOKEN.fullmatch(c) for c in contrasts)
        or len(set(contrasts)) != len(contrasts)
    ):
        raise bad(f"contrasts must be a list of distinct names, got {contrasts!r}")
    spacing = raw["spacing"]
    if (
        not isinstance(spacing, list)
        or len(spacing) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in spacing)
        or not all(v > 0 for v in spacing)
    ):
        raise bad(f"spacing must be three positive numbers (mm), got {spacing!r}")
    return PhantomRecipe(
        n_subjects=n,
        seed=seed,
        contrasts=tuple(contrasts),
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
    )


def _read_rows(path: Path, payload: bytes) -> list[tuple[int, dict[str, str]]]:
    """(line number, {column: cell}) for every non-blank data row, columns validated."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"cohort table is not UTF-8 text: {err}", path) from err
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE, strict=True
    )
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("cohort table is empty (no header line)", path) from None
    duplicated = sorted(c for c, n in Counter(header).items() if n > 1)
    if duplicated:
        raise InputError(f"line 1: duplicate column(s) {duplicated}", path)
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        raise InputError(f"line 1: unknown column(s) {unknown}; known: {list(COLUMNS)}", path)
    missing = [c for c in _REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(f"line 1: missing required column(s) {missing}", path)
    for kind in FILE_KINDS[1:]:
        present = [c for c in (f"{kind}_sha256", f"{kind}_bytes") if c in header]
        if present and kind not in header:
            raise InputError(f"line 1: column(s) {present} without the path column {kind!r}", path)
        if kind in header and f"{kind}_sha256" not in header:
            raise InputError(f"line 1: column {kind!r} without {kind + '_sha256'!r}", path)
    rows: list[tuple[int, dict[str, str]]] = []
    for line, cells in enumerate(reader, start=2):
        if not cells or cells == [""]:
            continue
        if len(cells) != len(header):
            raise InputError(
                f"line {line}: {len(cells)} fields, the header has {len(header)}", path
            )
        rows.append((line, dict(zip(header, cells, strict=True))))
    if not rows:
        raise InputError("cohort table has no rows", path)
    return rows


def _check_path(path: Path, line: int, column: str, value: str) -> str:
    pure = PurePosixPath(value)
    if (
        "\\" in value
        or "\x00" in value
        or pure.is_absolute()
        or str(pure) != value
        or any(part in (".", "..") for part in pure.parts)
    ):
        raise InputError(
            f"line {line}, column {column}: path must be relative, POSIX and canonical "
            f"(no leading /, no . or .., no //), got {value!r}",
            path,
        )
    return value


def _parse_items(
    path: Path, rows: list[tuple[int, dict[str, str]]], level_source: str
) -> tuple[CohortItem, ...]:
    if level_source not in rows[0][1]:
        raise InputError(
            f"line 1: the header's level_source is {level_source!r} but the table has no "
            f"{level_source!r} column",
            path,
        )
    items: list[CohortItem] = []
    keys: dict[tuple[str, str], int] = {}
    hashes: dict[str, tuple[str, int]] = {}
    for line, row in rows:
        ids = []
        for column in _ID_COLUMNS:
            value = row[column]
            if not _TOKEN.fullmatch(value):
                raise InputError(
                    f"line {line}, column {column}: expected a non-empty name without "
                    f"whitespace or slashes, got {value!r}",
                    path,
                )
            ids.append(value)
        key = (ids[0], ids[1])
        if key in keys:
            raise InputError(
                f"line {line}: duplicate (participant_id, contrast) {key} (first on line "
                f"{keys[key]})",
                path,
            )
        keys[key] = line
        files: dict[str, CohortFile | None] = {}
        for kind in FILE_KINDS:
            files[kind] = _parse_file(path, line, row, kind)
            f = files[kind]
            if f is None:
                continue
            first = hashes.setdefault(f.path, (f.sha256, line))
            if first[0] != f.sha256:
                raise InputError(
                    f"line {line}, column {kind}_sha256: {f.path} listed with another sha256 "
                    f"on line {first[1]}",
                    path,
                )
        image = files["image"]
        assert image is not None  # required column, checked non-empty by _parse_file
        items.append(
            CohortItem(
                subject=key[0],
                contrast=key[1],
                image=image,
                gt_seg=files["gt_seg"],
                disc_labels=files["disc_labels"],
                gt_softseg=files["gt_softseg"],
                labeled_seg=files["labeled_seg"],
                level_source=level_source,
                line=line,
            )
        )
    return tuple(items)


def _parse_file(path: Path, line: int, row: dict[str, str], kind: str) -> CohortFile | None:
    rel = row.get(kind, "")
    sha = row.get(f"{kind}_sha256", "")
    size = row.get(f"{kind}_bytes", "")
    if not rel:
        if kind == "image":
            raise InputError(f"line {line}, column image: empty (every row needs an image)", path)
        if sha or size:
            raise InputError(
                f"line {line}, column {kind}: empty, but its sha256/bytes are filled in", path
            )
        return None
    _check_path(path, line, kind, rel)
    if not _SHA256.fullmatch(sha):
        raise InputError(
            f"line {line}, column {kind}_sha256: expected 64 lowercase hex digits, got {sha!r}",
            path,
        )
    if size and not size.isdecimal():
        raise InputError(
            f"line {line}, column {kind}_bytes: expected a non-negative integer, got {size!r}",
            path,
        )
    return CohortFile(kind=kind, path=rel, sha256=sha, size=int(size) if size else None)


def _check_generator(path: Path, recipe: PhantomRecipe, items: tuple[CohortItem, ...]) -> None:
    subjects = dict.fromkeys(item.subject for item in items)
    contrasts = dict.fromkeys(item.contrast for item in items)
    if len(subjects) != recipe.n_subjects or set(contrasts) != set(recipe.contrasts):
        raise InputError(
            f"generator makes {recipe.n_subjects} subjects x {list(recipe.contrasts)}, the "
            f"table lists {len(subjects)} subjects x {list(contrasts)}",
            path,
        )
    if len(items) != recipe.n_subjects * len(recipe.contrasts):
        raise InputError(
            f"generator makes {recipe.n_subjects * len(recipe.contrasts)} rows, the table "
            f"lists {len(items)}",
            path,
        )


# --------------------------------------------------------------------------------------------
# Where the data are
# --------------------------------------------------------------------------------------------


def write_manifest_table(target: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write a cohort table: canonical column order, only the columns some row fills in.

    Written atomically; refuses unknown columns. Returns ``target``.
    """
    rows = [dict(r) for r in rows]
    unknown = sorted({c for r in rows for c in r} - set(COLUMNS))
    if unknown:
        raise InputError(f"unknown cohort column(s) {unknown}", target)
    columns = [c for c in COLUMNS if c in _REQUIRED_COLUMNS or any(r.get(c) for r in rows)]
    lines = ["\t".join(columns)]
    for r in rows:
        cells = ["" if r.get(c) is None else str(r[c]) for c in columns]
        if any(("\t" in cell or "\n" in cell) for cell in cells):
            raise InputError(
                f"a cell of row {r.get('participant_id')} holds a tab or newline", target
            )
        lines.append("\t".join(cells))
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")
    return target


def phantom_manifest_rows(root: str | Path, table: Any) -> list[dict[str, Any]]:
    """Manifest rows of a cohort written by ``write_cohort`` (its table) under ``root``.

    Adds each file's size in bytes.
    """
    root = Path(root)
    out: list[dict[str, Any]] = []
    for row in table.to_dict("records"):
        entry: dict[str, Any] = {c: row[c] for c in _ID_COLUMNS}
        for kind in FILE_KINDS:
            entry[kind] = row[kind]
            entry[f"{kind}_sha256"] = row[f"{kind}_sha256"]
            entry[f"{kind}_bytes"] = (root / row[kind]).stat().st_size
        out.append(entry)
    return out


def write_phantom_manifest(
    directory: str | Path,
    name: str = "phantom",
    recipe: PhantomRecipe | None = None,
    description: str | None = None,
) -> Path:
    """Generate a phantom cohort in a temporary folder and write ``<name>.tsv`` + ``.yaml``.

    How ``reference_data/cohorts/phantom.*`` are made (``recipe`` defaults to 10 subjects,
    seed 0, T1w/T2w/T2star, 1 mm). Returns the table's path.
    """
    from drift.measure.phantoms import write_cohort

    recipe = recipe or PhantomRecipe()
    directory = Path(directory)
    with tempfile.TemporaryDirectory(prefix="cordwatch-phantom-") as tmp:
        table = write_cohort(Path(tmp), **recipe.kwargs())
        rows = phantom_manifest_rows(tmp, table)
    header = {
        "format": FORMAT,
        "name": name,
        "description": description
        or (
            f"Digital phantoms of the cervical spinal cord ({recipe.n_subjects} subjects x "
            f"{', '.join(recipe.contrasts)}) with analytic ground truth (drift.measure.phantoms). "
            "Generated on first use into $CORDWATCH_HOME/cohorts/<name> and verified against "
            "these hashes."
        ),
        "level_source": "disc_labels",
        "license": "MIT (generated by cordwatch)",
        "source": {
            "kind": "generated",
            "note": "byte-deterministic: the same recipe gives the same files and hashes",
        },
        "generator": recipe.to_dict(),
    }
    target = directory / f"{name}.tsv"
    write_manifest_table(target, rows)
    with atomic_path(target.with_suffix(".yaml")) as tmp_header:
        text = yaml.safe_dump(header, sort_keys=False, default_flow_style=False, width=88)
        note = (
            "# Cohort header (cordwatch-cohort/1) by "
            "drift.cohort.manifest.write_phantom_manifest.\n"
        )
        tmp_header.write_text(note + text, encoding="utf-8")
    return target
