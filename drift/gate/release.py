"""The release flow around the gate, as the workflows run it (``.github/workflows``): which
package a branch proposes, which registered version holds it, and the promotion record.

Pure functions on files and JSON documents (no registry calls: the workflows feed them what
``cordwatch models list/show --json`` printed), so every decision the workflows take is
tested here, not in inline scripts. Errors are InputError (exit 2) naming the file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from registry.errors import GateFailed, InputError
from registry.promotion import VERDICT_TAG, is_promotable, refusal

#: The manifest in which a branch names the model it proposes.
CANDIDATE_MANIFEST = Path("models") / "candidate.yaml"
_MANIFEST_KEYS = frozenset({"name", "path", "description"})
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
_MODEL_URL = re.compile(r"https://[^\s'\"]+")


@dataclass(frozen=True)
class Candidate:
    """The model a workflow gates: its registry name, the package (an absolute path or an
    https URL), ``kind`` (path | url), the description, and the package's path relative to
    the repository (posix; empty for a URL or a package outside it)."""

    name: str
    model: str
    kind: str
    description: str
    path: str

    def outputs(self) -> dict[str, str]:
        return {
            "name": self.name,
            "model": self.model,
            "kind": self.kind,
            "description": self.description,
            "path": self.path,
        }


def resolve_candidate(
    root: Path,
    name: str = "",
    model: str = "",
    *,
    manifest: Path | None = None,
    local_only: bool = False,
) -> Candidate:
    """The candidate of ``models/candidate.yaml`` under ``root``; ``name`` / ``model`` (the
    inputs of a manual run) override it. A package named by the manifest must lie inside the
    repository; ``local_only`` (the release flow) also refuses URLs and packages outside it.
    """
    root = root.resolve()
    manifest = manifest if manifest is not None else root / CANDIDATE_MANIFEST
    name, model, description = name.strip(), model.strip(), ""
    model_from_manifest = not model
    if not (name and model):
        try:
            doc = yaml.safe_load(manifest.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
            why = " ".join(str(err).split())
            raise InputError(f"cannot read the candidate manifest: {why}", manifest) from err
        if not isinstance(doc, dict) or not {"name", "path"} <= set(doc) <= _MANIFEST_KEYS:
            raise InputError("expected the keys name, path (and description)", manifest)
        name = name or str(doc["name"]).strip()
        model = model or str(doc["path"]).strip()
        description = " ".join(str(doc.get("description") or "").split())
    if not _MODEL_NAME.fullmatch(name):
        raise InputError(f"invalid model name {name!r}", manifest)
    if model.startswith("https://") and not local_only:
        if not _MODEL_URL.fullmatch(model):
            raise InputError(f"invalid model URL {model!r}")
        return Candidate(name, model, "url", description, "")
    target = (root / model).resolve()
    inside = target.is_relative_to(root)
    if local_only and ("\n" in model or not target.exists() or not inside):
        raise InputError(f"{model}: model package not found in the repository", manifest)
    if "\n" in model or not target.exists():
        raise InputError("model package not found", model)
    if model_from_manifest and not inside:
        raise InputError("the path must lie inside the repository", manifest)
    rel = target.relative_to(root).as_posix() if inside else ""
    return Candidate(name, str(target), "path", description, rel)


@dataclass(frozen=True)
class GatedVersion:
    """The registered version of a package the release flow promotes, with its drift verdict
    and whether ``cordwatch models promote`` would move champion to it (its tags, by the rule
    of :mod:`registry.promotion`)."""

    version: int
    sha256: str
    champion: int
    already: bool  # champion holds this package already: nothing to promote
    verdict: str = ""
    promotable: bool = False

    def outputs(self) -> dict[str, str]:
        return {
            "version": str(self.version),
            "sha256": self.sha256,
            "champion": str(self.champion),
            "already": "true" if self.already else "false",
            "verdict": self.verdict,
            "promotable": "true" if self.promotable else "false",
        }


def gated_version(
    versions: Sequence[Mapping[str, Any]],
    champion: Mapping[str, Any],
    tree: str,
    path: str,
    *,
    require_promotable: bool = False,
) -> GatedVersion:
    """The newest version registered for the package with git object id ``tree`` (tag
    ``git_tree``, set by the drift gate), given ``cordwatch models list --json`` and
    ``models show NAME@champion --json``. Refuses an unknown package and a rollback (champion
    newer than the package's version: moving champion back is a person's decision); with
    ``require_promotable``, also a version ``promote`` would refuse (GateFailed, exit 1), unless
    champion holds the package already."""
    gated = [v for v in versions if (v.get("tags") or {}).get("git_tree") == tree]
    if not gated:
        raise InputError(
            f"no registered version has this package (git object {tree}); the drift gate "
            "registers it when a pull request changes it",
            path,
        )
    latest = max(gated, key=lambda v: int(v["version"]))
    version, sha256 = int(latest["version"]), str(latest["sha256"])
    tags = {str(k): str(v) for k, v in (latest.get("tags") or {}).items()}
    champ = int(champion["version"])
    already = champion["sha256"] == sha256
    if already:
        version = champ  # promoted earlier (maybe registered twice): keep champion
    elif champ > version:
        raise InputError(
            f"champion ({champ}) is newer than this package's version ({version}); moving "
            "champion back is a person's decision",
            path,
        )
    promotable = is_promotable(tags)
    if require_promotable and not promotable and not already:
        ref = f"{latest['name']}/{version}" if latest.get("name") else f"{path} (v{version})"
        raise GateFailed(str(refusal("champion", tags)), ref)
    return GatedVersion(version, sha256, champ, already, tags.get(VERDICT_TAG, ""), promotable)


def promotion_record(
    *,
    model: str,
    version: int,
    sha256: str,
    baseline_version: int,
    git_commit: str,
    normative_name: str,
    normative_version: int,
    normative_mode: str,
) -> dict[str, Any]:
    """The ``promotion.json`` a release attaches (what was promoted, from what, with which
    normative database version)."""
    return {
        "model": model,
        "version": int(version),
        "sha256": sha256,
        "baseline_version": int(baseline_version),
        "git_commit": git_commit,
        "normative": {
            "name": normative_name,
            "version": int(normative_version),
            "mode": normative_mode,
        },
    }


def write_json_file(doc: Mapping[str, Any], path: Path) -> Path:
    """Write ``doc`` (indented, newline-terminated) to ``path`` all at once: a temporary file
    beside it, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_json_file(path: Path, what: str = "JSON file") -> Any:
    """The parsed JSON of ``path``; InputError naming it otherwise."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{what} not found", path) from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"not a readable {what} ({type(err).__name__})", path) from err


def output_lines(values: Mapping[str, Any]) -> str:
    """``key=value`` lines for ``$GITHUB_OUTPUT``; a value with a line break would inject
    other outputs, so it is refused.

    >>> print(output_lines({"version": 7, "sha256": "ab"}), end="")
    version=7
    sha256=ab
    """
    lines = []
    for key, value in values.items():
        text = "" if value is None else str(value)
        if any(c in text for c in "\r\n"):
            raise InputError(f"the value of {key!r} holds a line break: not a workflow output")
        lines.append(f"{key}={text}\n")
    return "".join(lines)


def pick(doc: Any, keys: Sequence[str], source: Path) -> dict[str, Any]:
    """``{key: doc[key]}`` for dotted keys (``normative.version``) of a JSON document whose
    values are scalars; InputError naming ``source`` for a missing key or a non-scalar."""
    out: dict[str, Any] = {}
    for key in keys:
        value = doc
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise InputError(f"no key {key!r}", source)
            value = value[part]
        if isinstance(value, dict | list):
            raise InputError(f"key {key!r} is not a single value", source)
        out[key.rpartition(".")[2]] = value
    return out
