"""The normative policy (when a rescale may stand in for a recompute) and the drift result
format a rescale reads (``cordwatch drift check/compare --json``).

Both are validated strictly: unknown keys, duplicate YAML keys, wrong types or out-of-range
values are an InputError naming the file (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from drift.measure.levels import level_number
from registry.errors import InputError

if TYPE_CHECKING:
    pass


#: Metrics a rescale multiplies by their own scaling factor (MEAN and STD columns); every
#: other column (angles, eccentricity, solidity, orientation, lengths, ids) is left as it is.
RESCALED_METRICS: tuple[str, ...] = ("area", "diameter_AP", "diameter_RL", "diameter_AP_ellipse")


DEFAULT_POLICY_PATH = (
    Path(__file__).resolve().parents[2] / "reference_data" / "normative_policy.yaml"
)


RESCALE_NOTE = (
    "RESCALE, not a recompute: the parent's per-slice values multiplied by the scaling factors "
    "measured between the two models on a drift cohort (candidate / baseline). area, "
    "diameter_AP and diameter_RL are rescaled; shape metrics (eccentricity, solidity, "
    "orientation, angles) and lengths are the parent's values, unchanged."
)


_POLICY_KEYS = (
    "schema",
    "max_slicewise_cov_pct",
    "max_level_spread_pct",
    "max_ci_width_pct",
    "min_subjects",
    "slice_factors",
    "min_slice_pairs",
    "uncovered_levels",
)


@dataclass(frozen=True)
class NormativePolicy:
    """When a database may be rescaled instead of recomputed (see the YAML's comments)."""

    max_slicewise_cov_pct: float = 2.0
    max_level_spread_pct: float = 2.0
    max_ci_width_pct: float | None = 2.0
    min_subjects: int = 5
    slice_factors: str = "profile"
    min_slice_pairs: int = 5
    uncovered_levels: str = "blank"
    source: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": 1} | {k: getattr(self, k) for k in _POLICY_KEYS[1:]}

    @property
    def sha256(self) -> str:
        """sha256 of the canonical JSON of the values (not of the file's text)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a repeated key would silently win)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    for key in keys:
        if keys.count(key) > 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", node.start_mark
            )
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_normative_policy(data: Any, source: str | Path | None = None) -> NormativePolicy:
    """Validate a policy document (a mapping); InputError naming ``source`` otherwise."""
    where = None if source is None else str(source)

    def bad(message: str) -> InputError:
        return InputError(f"normative policy: {message}", where)

    if not isinstance(data, Mapping):
        raise bad("expected a mapping of settings")
    unknown = sorted(set(map(str, data)) - set(_POLICY_KEYS))
    if unknown:
        raise bad(f"unknown key(s) {unknown} (allowed: {list(_POLICY_KEYS)})")
    if data.get("schema", 1) != 1:
        raise bad(f"schema must be 1, not {data.get('schema')!r}")
    defaults = NormativePolicy()

    def number(key: str, *, optional: bool = False, integer: bool = False) -> Any:
        value = data.get(key, getattr(defaults, key))
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(f"{key} must be a number{' or null' if optional else ''}, not {value!r}")
        if integer and (not float(value).is_integer() or value < 1):
            raise bad(f"{key} must be a positive integer, not {value!r}")
        if not math.isfinite(float(value)) or value < 0:
            raise bad(f"{key} must be a finite number >= 0, not {value!r}")
        return int(value) if integer else float(value)

    def choice(key: str, allowed: Sequence[str]) -> str:
        value = data.get(key, getattr(defaults, key))
        if value not in allowed:
            raise bad(f"{key} must be one of {list(allowed)}, not {value!r}")
        return str(value)

    return NormativePolicy(
        max_slicewise_cov_pct=number("max_slicewise_cov_pct"),
        max_level_spread_pct=number("max_level_spread_pct"),
        max_ci_width_pct=number("max_ci_width_pct", optional=True),
        min_subjects=number("min_subjects", integer=True),
        slice_factors=choice("slice_factors", ("profile", "level")),
        min_slice_pairs=number("min_slice_pairs", integer=True),
        uncovered_levels=choice("uncovered_levels", ("blank", "refuse")),
        source=where,
    )


def load_normative_policy(path: str | Path | None = None) -> NormativePolicy:
    """The policy in ``path`` (default ``reference_data/normative_policy.yaml``; the built-in
    defaults when that file is not there)."""
    target = Path(path) if path is not None else DEFAULT_POLICY_PATH
    if not target.is_file():
        if path is None:
            return NormativePolicy(source="builtin default")
        raise InputError("policy file not found", target)
    try:
        data = yaml.load(target.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        why = getattr(err, "problem", None) or err.__class__.__name__
        raise InputError(f"not valid YAML ({why})", target) from err
    return parse_normative_policy(data, target)


@dataclass(frozen=True)
class Scaling:
    """The parts of a drift result a rescale uses."""

    levels: (
        pd.DataFrame
    )  # metric, level, scaling_factor, ci95_low, ci95_high, slicewise_cov, n_subjects
    profile: pd.DataFrame  # metric, slice, level, n, scaling_factor[, q025, q975]
    baseline: str | None
    candidate: str | None
    verdict: str | None


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def parse_scaling(doc: Any, source: str | Path | None = None) -> Scaling:
    """Validate the drift result JSON (``cordwatch drift check/compare --json``)."""
    where = None if source is None else str(source)
    if not isinstance(doc, Mapping) or not isinstance(doc.get("metrics"), Mapping):
        raise InputError("not a cordwatch drift result (no 'metrics' object)", where)
    level_rows, profile_rows = [], []
    for metric, entry in doc["metrics"].items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("levels"), Mapping):
            raise InputError(f"drift result: metrics.{metric} has no 'levels' object", where)
        for name, lv in entry["levels"].items():
            try:
                number = level_number(str(name))
                ci = lv.get("ci95") or [None, None]
                level_rows.append(
                    {
                        "metric": str(metric),
                        "level": number,
                        "scaling_factor": _num(lv["scaling_factor"]),
                        "ci95_low": _num(ci[0]),
                        "ci95_high": _num(ci[1]),
                        "slicewise_cov": _num(lv.get("slicewise_cov")),
                        "n_subjects": int(lv.get("n_subjects") or 0),
                    }
                )
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
                raise InputError(
                    f"drift result: bad entry metrics.{metric}.levels.{name} ({err})", where
                ) from err
        prof = entry.get("slice_profile") or {}
        if prof:
            try:
                n = len(prof["slice"])
                for i in range(n):
                    row = {
                        "metric": str(metric),
                        "slice": int(prof["slice"][i]),
                        "level": int(prof["level"][i]),
                        "n": int(prof["n"][i]),
                        "scaling_factor": _num(prof["scaling_factor"][i]),
                    }
                    for extra in ("q025", "q975"):
                        if extra in prof:
                            row[extra] = _num(prof[extra][i])
                    profile_rows.append(row)
            except (KeyError, TypeError, ValueError, IndexError) as err:
                raise InputError(
                    f"drift result: bad metrics.{metric}.slice_profile ({err})", where
                ) from err
    prov = doc.get("provenance") or {}

    def ref(role: str) -> str | None:
        value = prov.get(role) if isinstance(prov, Mapping) else None
        if isinstance(value, Mapping):
            value = value.get("ref")
        return str(value) if value else None

    level_cols = [
        "metric",
        "level",
        "scaling_factor",
        "ci95_low",
        "ci95_high",
        "slicewise_cov",
        "n_subjects",
    ]
    return Scaling(
        levels=pd.DataFrame(level_rows, columns=level_cols),
        profile=pd.DataFrame(
            profile_rows,
            columns=["metric", "slice", "level", "n", "scaling_factor"]
            + [c for c in ("q025", "q975") if any(c in r for r in profile_rows)],
        ),
        baseline=ref("baseline"),
        candidate=ref("candidate"),
        verdict=str(doc["verdict"]) if doc.get("verdict") else None,
    )
