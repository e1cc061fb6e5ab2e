"""The CLI's upscale options, derived from :class:`vsrflow.settings.UpscaleSettings`.

Each leaf setting becomes one option (its flag is declared on the field, its help is the
field's description, its choices the field's enum), so the CLI can neither miss nor
contradict a setting the flows' forms show. Options the user does not give are left out, and
the settings model supplies its own defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from vsrflow.settings import (
    WEIGHT_SUFFIXES,
    UpscaleSettings,
    choices_of,
    cli_flag_of,
    leaf_fields,
    settings_from_flat,
)

_DEST_PREFIX = "setting__"


def _dest(path: str) -> str:
    return _DEST_PREFIX + path.replace(".", "__")


def _help(info: FieldInfo) -> str:
    default = info.get_default(call_default_factory=True)
    return f"{info.description} (default: {default})".replace("%", "%%")


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """One option per setting, in form order, grouped like the form."""
    groups: dict[str, Any] = {}
    for path, info in leaf_fields():
        group_name = path.split(".")[0] if "." in path else "output"
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(f"{group_name} settings")
        group = groups[group_name]
        flag = cli_flag_of(info)
        common: dict[str, Any] = {"dest": _dest(path), "default": argparse.SUPPRESS}
        if info.annotation is bool:
            group.add_argument(flag, action="store_true", help=_help(info), **common)
            continue
        # --model also takes a weights file (moved to model.weights_path by the caller), so
        # its registry names are listed in the help instead of enforced by argparse.
        choices = None if path == "model.name" else choices_of(info)
        kind = info.annotation if info.annotation in (int, float) else str
        group.add_argument(
            flag,
            type=kind,
            choices=choices,
            metavar=None if choices else {int: "N", float: "NUMBER"}.get(kind, "PATH"),
            help=_help(info),
            **common,
        )


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``group.field -> value`` of the settings given on the command line (``--model`` with
    a .pth/.safetensors file becomes ``model.weights_path``)."""
    given = {
        path: getattr(args, _dest(path)) for path, _ in leaf_fields() if hasattr(args, _dest(path))
    }
    name = given.get("model.name")
    if isinstance(name, str) and name.lower().endswith(WEIGHT_SUFFIXES):
        if given.get("model.weights_path"):
            raise ValueError("--model names a weights file and --weights another: give one")
        given["model.weights_path"] = given.pop("model.name")
    return given


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> UpscaleSettings:
    """The settings the command line asks for, plus ``overrides`` (dotted names)."""
    return settings_from_flat({**given_settings(args), **overrides})


def describe(exc: ValidationError) -> str:
    """A settings validation error as one line naming each option and what is accepted."""
    flags = {path: cli_flag_of(info) for path, info in leaf_fields()}
    parts = []
    for error in exc.errors():
        path = ".".join(str(p) for p in error["loc"])
        flag = flags.get(path)
        where = f"{flag} ({path})" if flag else (path or "settings")
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
