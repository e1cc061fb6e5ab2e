"""Flow parameter types that make a good Prefect form and fail early, naming the field.

Two layers, because a deployment's parameters are checked in two places:

* the JSON schema Prefect stores with a deployment (``pattern``, ``enum``, bounds): the server
  checks every ``run_deployment`` / ``prefect deployment run --param`` / UI run against it
  before a flow run exists, and answers ``Validation failed for field 'model'. Failure
  reason: ...``;
* pydantic ``AfterValidator``\\ s, which no JSON schema can express (a weights file must
  exist on the machine that runs the flow): Prefect runs them when the flow run starts and
  fails it with ``ParameterTypeError`` listing ``- model: Value error, ...``.

:func:`form_descriptions` works around Prefect building its parameter schema with an
explicit ``description=None`` (``prefect._internal.pydantic.v2_schema.process_v2_params``),
which silently drops every ``Annotated[..., Field(description=...)]`` description: the form
then shows bare field names. Decorate a flow function with it (under ``@flow``) and the
descriptions reach the schema, the UI form and ``prefect deployment inspect``.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, Field
from pydantic.fields import FieldInfo

from vsrflow.models import WEIGHT_SUFFIXES, list_specs
from vsrflow.storage import parse_s3_uri

F = TypeVar("F", bound=Callable[..., Any])

#: AWS bucket naming rules (as ``vsrflow.storage``), checked in Python.
# The JSON-schema patterns below catch what people get wrong (another scheme, no key, an
# empty value) and stay free of [...] classes: Prefect's CLI prints server errors through
# rich, which swallows bracketed text as markup. The Python validators check the rest.
_NO_SCHEME = r"(?!\w+://)\S.*"
#: ``s3://bucket/key`` or a local path (anything without a ``scheme://``).
LOCATION_PATTERN = rf"^(s3://(\w|\.|-){{3,63}}/\S+|{_NO_SCHEME})$"
#: ``s3://bucket``, ``s3://bucket/some/prefix/`` or a local directory.
PREFIX_PATTERN = rf"^(s3://(\w|\.|-){{3,63}}(/\S*)?|{_NO_SCHEME})$"
REGISTRY_NAMES = tuple(spec.name for spec in list_specs())
#: A registry name, or a path ending in .pth / .safetensors.
MODEL_PATTERN = (
    "^("
    + "|".join(REGISTRY_NAMES)
    + "|.+("
    + "|".join(re.escape(s) for s in WEIGHT_SUFFIXES)
    + "))$"
)


def _s3_problem(value: str, *, require_key: bool) -> str | None:
    """The storage layer's own URI rules (bucket name, key present), as one message."""
    try:
        parse_s3_uri(value, require_key=require_key)
    except ValueError as exc:
        return str(exc)
    return None


def _uri_checker(pattern: str, expected: str, *, require_key: bool) -> Callable[[str], str]:
    """A validator: ``value`` matches ``pattern`` (else it is not ``expected``) and, for
    s3:// values, passes the storage layer's bucket/key rules."""

    def check(value: str) -> str:
        value = value.strip()
        if re.fullmatch(pattern, value) is None:
            raise ValueError(f"{value!r} is neither {expected}")
        if value.startswith("s3://") and (problem := _s3_problem(value, require_key=require_key)):
            raise ValueError(f"{value!r}: {problem}")
        return value

    return check


_check_location = _uri_checker(
    LOCATION_PATTERN, "a local path nor an s3://bucket/key URI", require_key=True
)
_check_prefix = _uri_checker(
    PREFIX_PATTERN, "a local directory nor an s3://bucket/prefix/ URI", require_key=False
)


def _check_model(value: str) -> str:
    value = value.strip()
    if value in REGISTRY_NAMES:
        return value
    if not value.lower().endswith(WEIGHT_SUFFIXES):
        raise ValueError(
            f"unknown model {value!r}: use a registry name ({', '.join(REGISTRY_NAMES)}) "
            f"or a path to a {'/'.join(WEIGHT_SUFFIXES)} file"
        )
    if not Path(value).expanduser().is_file():
        raise ValueError(f"weights file {value!r} does not exist on this machine")
    return value


# The patterns go into the JSON schema only (the server and the UI check them); in Python the
# validators below check the same and say what is wrong in words instead of a regex.

#: A source or output: local path or s3://bucket/key.
Location = Annotated[
    str, Field(json_schema_extra={"pattern": LOCATION_PATTERN}), AfterValidator(_check_location)
]
#: A folder to scan or to write into: local directory or s3://bucket[/prefix/].
Prefix = Annotated[
    str, Field(json_schema_extra={"pattern": PREFIX_PATTERN}), AfterValidator(_check_prefix)
]
#: A registry model name or a weights file that exists where the flow runs.
ModelChoice = Annotated[
    str,
    Field(json_schema_extra={"pattern": MODEL_PATTERN, "examples": list(REGISTRY_NAMES)}),
    AfterValidator(_check_model),
]


def _description(hint: Any) -> str | None:
    if typing.get_origin(hint) is not Annotated:
        return None
    for meta in reversed(hint.__metadata__):
        if isinstance(meta, FieldInfo) and meta.description:
            return meta.description
    return None


def form_descriptions(fn: F) -> F:
    """Make every ``Annotated[..., Field(description=...)]`` description of ``fn``'s
    parameters survive into Prefect's parameter schema (see the module docstring).

    Each annotation gets one more ``Field(json_schema_extra={"description": ...})``, which
    pydantic merges into the field Prefect builds; validation is unchanged.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    for name, hint in hints.items():
        if name == "return":
            continue
        text = _description(hint)
        if text:
            fn.__annotations__[name] = Annotated[
                hint, Field(json_schema_extra={"description": text})
            ]
    return fn
