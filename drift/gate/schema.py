"""File formats on pydantic v2 models: strict reading and one-line errors.

Each file cordwatch reads as configuration or as the input of an update has one pydantic
model with ``extra="forbid"`` and strict types: the gate policy
(:class:`drift.gate.policy.PolicyFile`), the normative policy and the scaling result a
rescale reads (:mod:`drift.normative.policy`). This module reads such a file (a size cap;
YAML without duplicate keys, since PyYAML silently keeps the last one) and turns the first
validation error into one :class:`~registry.errors.InputError` line naming the file and the
key path, e.g. ``policy.yaml: key 'metrics.area.fail_margin_pct': must be in (0, 100), got
-1.0``. :func:`json_schema` gives the JSON Schema an editor validates the file with.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from registry.errors import InputError

#: Largest policy file read (a policy is a few hundred bytes).
MAX_YAML_BYTES = 1 << 20
#: Largest drift result read for a rescale (a 300-image result is well under 1 MiB).
MAX_JSON_BYTES = 64 << 20

#: What a value of each pydantic type error should have been.
_EXPECTED = {
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_RANGE_ERRORS = frozenset(
    {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "finite_number",
        "too_short",
        "literal_error",
    }
)


def fail(message: str) -> PydanticCustomError:
    """The error a validator raises: ``message`` is shown as it is, after the key path."""
    return PydanticCustomError("cordwatch", message)


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicated keys (PyYAML silently keeps the last one)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicated key {key!r}: a duplicate key would silently win",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_capped(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``; InputError when it is missing or larger than ``limit``."""
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    size = path.stat().st_size
    if size > limit:
        raise InputError(f"{what} is too large ({size} bytes > {limit} bytes)", path)
    return path.read_bytes()


def load_yaml(path: Path, what: str = "policy file", limit: int = MAX_YAML_BYTES) -> Any:
    """The parsed YAML of ``path`` (duplicate keys refused); InputError naming it otherwise."""
    raw = read_capped(path, limit, what)
    try:
        return yaml.load(raw.decode("utf-8"), Loader=StrictLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"not valid YAML ({first})", path) from err


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> X; ``Annotated[X, ...]`` -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _walk(model: type[BaseModel], loc: Sequence[int | str]) -> tuple[list[str], Any]:
    """The key path of ``loc`` (dict keys and field aliases, no list indices, no pydantic
    markers) and the type found at its end."""
    path: list[str] = []
    tp: Any = model
    for part in loc:
        if part == "[key]":  # the error is about a dict key, already in the path
            continue
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {(f.alias or name): f for name, f in tp.model_fields.items()}
            path.append(str(part))
            tp = fields[part].annotation if part in fields else None
        elif typing.get_origin(tp) in (dict, Mapping):
            path.append(str(part))
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) in (list, tuple, Sequence):
            tp = typing.get_args(tp)[0]
        else:
            tp = None
    return path, _unwrap(tp)


def allowed_keys(model: Any) -> list[str]:
    """The keys a mapping validated by ``model`` may hold."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [f.alias or name for name, f in model.model_fields.items()]
    return []


def error_line(
    err: ValidationError,
    model: type[BaseModel],
    expected: Mapping[str, str] | None = None,
    verb: str = "expected",
) -> str:
    """The first error of ``err`` in one line: ``key 'a.b': what is wrong, got VALUE``.

    ``expected`` overrides, per field name, what a value of the wrong type or out of range
    should have been (e.g. ``{"alpha": "must be in (0, 0.5)"}``); a wrong type says it only
    when the text starts with ``verb``, else ``VERB a number``.
    """
    first = err.errors(include_url=False)[0]
    kind, loc, value = first["type"], first["loc"], first.get("input")
    path, at = _walk(model, loc)
    key = ".".join(path)
    if kind == "extra_forbidden":
        owner = _walk(model, loc[:-1])[1]
        return f"unknown key '{key}' (allowed: {', '.join(allowed_keys(owner))})"
    if kind == "missing":
        return f"key '{key}': missing"
    if kind == "cordwatch":
        return f"key '{key}': {first['msg']}" if key else str(first["msg"])
    field = path[-1] if path else ""
    rule = (expected or {}).get(field)
    if at is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if rule is not None and (
        kind in _RANGE_ERRORS or (kind in _EXPECTED and rule.startswith(verb))
    ):
        return f"key '{key}': {rule}, got {value!r}"
    if kind in _EXPECTED:
        return f"key '{key}': {verb} {_EXPECTED[kind]}, got {value!r}"
    message = str(first["msg"])
    return f"key '{key}': {message[:1].lower()}{message[1:]}, got {value!r}"


def validate(
    model: type[BaseModel],
    data: Any,
    source: str | Path | None,
    *,
    prefix: str = "",
    expected: Mapping[str, str] | None = None,
    verb: str = "expected",
) -> Any:
    """``model`` validated from ``data``; InputError naming ``source`` and the key otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise InputError(prefix + error_line(err, model, expected, verb), source) from err


def json_schema(model: type[BaseModel], title: str) -> str:
    """The JSON Schema (draft 2020-12) of a file format, as indented JSON text; the model's
    docstring is its description.

    >>> class Point(BaseModel):
    ...     x: float
    >>> json.loads(json_schema(Point, "a point"))["properties"]["x"]["type"]
    'number'
    """
    schema = model.model_json_schema(by_alias=True, mode="validation")
    doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": title}
    return json.dumps(doc, indent=2) + "\n"
