"""Flow parameter types that make a good Prefect form and fail early, in words, naming the field.

A deployment's parameters are checked in two places:

* the JSON schema Prefect stores with a deployment: the server checks every UI run,
  ``prefect deployment run --param`` and ``run_deployment`` against it *before a flow run
  exists*, and answers ``Validation failed for field 'output_path'. Failure reason: ...``.
  JSON schema's own messages for a ``pattern`` print the regular expression; so each common
  mistake is a rule ``if <pattern> then <const: the accepted form in words>``, whose failure
  reads ``'s3://bucket/key.mp4 (two slashes after s3:)' was expected``;
* pydantic ``AfterValidator``\\ s, which no JSON schema can express (a weights file must
  exist where the flow runs): Prefect runs them when the run starts.

:func:`form_descriptions` works around Prefect building its parameter schema with an
explicit ``description=None`` (``prefect._internal.pydantic.v2_schema.process_v2_params``),
which silently drops every ``Annotated[..., Field(description=...)]`` description.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, Field
from pydantic.fields import FieldInfo

from vsrflow.settings import UpscaleSettings
from vsrflow.storage import parse_s3_uri

F = TypeVar("F", bound=Callable[..., Any])

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

#: (regex that a wrong value matches, what was expected instead), checked in this order.
#: The regexes avoid [...] classes: Prefect's CLI prints server errors through rich, which
#: swallows bracketed text as markup.
_MISTAKES: tuple[tuple[str, str], ...] = (
    (r"^$", "a value (it is empty)"),
    (r"^\s|\s$", "no spaces before or after the value"),
    (r"^S3:", "s3:// in lower case, e.g. s3://bucket/key"),
    (r"^s3:(?!//)", "s3://bucket/key (two slashes after s3:)"),
    (r"^(s|S)3//", "s3://bucket/key (a colon after s3)"),
    (r"^(?!s3://)\w+://", "a local path or s3://bucket/key (no other scheme)"),
    (r"^s3://(\S*\s)", "an s3:// URI without spaces"),
)


def _rules(mistakes: tuple[tuple[str, str], ...], last: tuple[str, str] | None) -> dict[str, Any]:
    """The JSON-schema form of the mistake table: one ``if/then`` per mistake."""
    rules = [{"if": {"pattern": p}, "then": {"const": words}} for p, words in mistakes]
    if last is not None:
        rules.append({"if": {"not": {"pattern": last[0]}}, "then": {"const": last[1]}})
    return {"allOf": rules}


def _suffix_rule(suffixes: tuple[str, ...], what: str) -> tuple[str, str]:
    spellings = [s for suffix in suffixes for s in (suffix, suffix.upper())]
    ends = "|".join(s.replace(".", r"\.") for s in spellings)
    return rf"({ends})$", f"{what} ending in {' or '.join(suffixes)}"


def _checker(
    mistakes: tuple[tuple[str, str], ...],
    *,
    kind: str,
    require_key: bool,
    suffix: tuple[str, str] | None,
) -> Callable[[str], str]:
    """A pydantic validator applying the same rules in Python, plus the storage layer's
    bucket rules (which the schema does not spell out)."""

    def check(value: str) -> str:
        for pattern, words in mistakes:
            if re.search(pattern, value):
                raise ValueError(f"{value!r} is not {kind}: expected {words}")
        if suffix is not None and not re.search(suffix[0], value):
            raise ValueError(f"{value!r} is not {kind}: expected {suffix[1]}")
        if value.startswith("s3://"):
            try:
                parse_s3_uri(value, require_key=require_key)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return value

    return check


def location_type(
    kind: str,
    *,
    suffixes: tuple[str, ...] | None,
    what: str,
    require_key: bool = True,
    allow_empty: bool = False,
) -> Any:
    """An ``Annotated[str, ...]`` for a local path or s3:// URI of ``kind`` (form rules in the
    schema, the same rules in Python). ``allow_empty``: "" is accepted here (a deployment
    default the user must replace; the flow then says what to set)."""
    suffix = _suffix_rule(suffixes, what) if suffixes else None
    mistakes = _MISTAKES[1:] if allow_empty else _MISTAKES
    check = _checker(mistakes, kind=kind, require_key=require_key, suffix=suffix)
    return Annotated[
        str,
        Field(
            min_length=0 if allow_empty else 1,
            max_length=4096,
            json_schema_extra=_rules(mistakes, suffix),
        ),
        AfterValidator(lambda value: value if allow_empty and value == "" else check(value)),
    ]


#: A source video: a local path or s3://bucket/key.
VideoSource = location_type("a video", suffixes=None, what="")
#: An output video: the container comes from the extension.
VideoOutput = location_type(
    "an output video", suffixes=VIDEO_SUFFIXES, what="a local path or s3://bucket/key"
)
#: An image file or a folder / prefix of images.
ImageLocation = location_type(
    "an image or a folder of images", suffixes=None, what="", require_key=False
)
#: A folder to scan or to write into: local directory or s3://bucket[/prefix/]; "" = not set
#: yet (the archive deployments ship that way: the flow says what to set).
Prefix = location_type(
    "a folder or s3:// prefix", suffixes=None, what="", require_key=False, allow_empty=True
)

# Where a run happens (not what it produces): shared by every flow's form.
ProfileParam = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="Where the upscaling runs: local (this machine) or slurm (GPU jobs on "
        "the cluster); more in deployments/profiles.yaml.",
    ),
]
WorkDirParam = Annotated[
    str,
    Field(
        max_length=4096,
        description="Scratch space for finished pieces, so a rerun resumes where a crash "
        "stopped: a local folder or s3://bucket/prefix/. Empty: .vsrflow-work beside the "
        "output (or $VSRFLOW_WORK_DIR).",
    ),
]
CredentialsParam = Annotated[
    str,
    Field(
        max_length=256,
        description="Name of a saved AWS Credentials block (Blocks page) used for every "
        "s3:// location; its client parameters hold the endpoint of S3-compatible stores. "
        "Empty: the AWS_* environment of the machine that runs the job.",
    ),
]
KeepChunksParam = Annotated[
    bool,
    Field(
        description="Keep the finished pieces after publishing (a rerun then recomputes "
        "nothing); off frees the scratch space."
    ),
]
#: The one settings model as a flow parameter (defined here, not in a flow module, so the
#: control flows can take it without importing the upscale flow's torch-bound tasks).
SettingsParam = Annotated[
    UpscaleSettings,
    Field(
        description="What the output will be: model, size, precision and tiles, codec and "
        "quality, batch length. Every field has a tested default."
    ),
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
