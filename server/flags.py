"""The ``turnout serve`` flags, made from the :class:`~server.settings.Settings` fields.

One flag per field, ``--kebab-case`` of its name, with the field's description and default as
help. Flags left out default to ``SUPPRESS``: an unset flag is absent from the parsed namespace,
so ``TURNOUT_*`` variables and then the field defaults apply. A field's ``json_schema_extra``
may say ``"cli": False`` (no flag, environment only) and list ``"aliases"`` (more flag names)."""

from __future__ import annotations

import argparse
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

METAVARS: dict[type, str] = {int: "INT", float: "NUM", Path: "PATH", str: "TEXT"}
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(v: str) -> bool:
    if v.lower() in TRUE_WORDS:
        return True
    if v.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{v}'")


class BoolFlag(argparse.Action):
    """``--x`` and ``--x true|false`` set a boolean, ``--no-x`` clears it. The optional value
    keeps the ``--x false`` form that scripts and tests use working."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        negatives = [f"--no-{s[2:]}" for s in option_strings if s.startswith("--")]
        super().__init__(
            [*option_strings, *negatives], dest, nargs="?", type=parse_bool, metavar="true|false", **kwargs
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if option_string is not None and option_string.startswith("--no-"):
            if values is not None:
                raise argparse.ArgumentError(self, f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
        else:
            setattr(namespace, self.dest, True if values is None else values)


class HelpFormatter(argparse.HelpFormatter):
    """Shows a :class:`BoolFlag` as ``--x [true|false], --no-x``."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, BoolFlag):
            positive = [s for s in action.option_strings if not s.startswith("--no-")]
            negative = [s for s in action.option_strings if s.startswith("--no-")]
            return ", ".join([*(f"{s} [true|false]" for s in positive), *negative])
        return super()._format_action_invocation(action)


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def has_flag(info: FieldInfo) -> bool:
    extra = info.json_schema_extra
    return not (isinstance(extra, dict) and extra.get("cli") is False)


def _aliases(info: FieldInfo) -> list[str]:
    extra = info.json_schema_extra
    aliases = extra.get("aliases", []) if isinstance(extra, dict) else []
    assert isinstance(aliases, list)
    return [str(a) for a in aliases]


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"no flag for the union {annotation}")
        return args[0]
    return annotation


def default_text(info: FieldInfo) -> str | None:
    """The default as the help shows it, None when there is none to show (unset, empty)."""
    default = info.get_default(call_default_factory=True)
    if default is None or default is PydanticUndefined or default == ():
        return None
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, str) and default == "":
        return "''"
    return str(default)


def argument_options(name: str, info: FieldInfo) -> dict[str, Any]:
    """``add_argument`` keyword arguments for the field: action, type, choices, metavar, help."""
    if not info.description:
        raise ValueError(f"setting {name} has no description")
    shown = default_text(info)
    help_text = info.description + (f" (default: {shown})" if shown is not None else "")
    options: dict[str, Any] = {"dest": name, "help": help_text.replace("%", "%%")}
    kind = _unwrap_optional(info.annotation)
    if kind is bool:
        options["action"] = BoolFlag
    elif get_origin(kind) is Literal:
        options.update(choices=[str(c) for c in get_args(kind)])
    elif get_origin(kind) is tuple:
        options.update(action="append", metavar="NAME[,NAME...]")
    elif kind is SecretStr:
        options.update(metavar="SECRET")
    elif kind in (int, float, Path, str):
        options.update(type=kind, metavar=METAVARS[kind])
    else:
        raise TypeError(f"no flag for setting {name} of type {info.annotation}")
    return options


def add_settings_flags(
    parser: argparse.ArgumentParser, fields: dict[str, FieldInfo], sections: dict[str, str]
) -> None:
    """One flag per field with a flag, under the section (argument group) it falls in."""
    group: argparse._ActionsContainer = parser
    for name, info in fields.items():
        if name in sections:
            group = parser.add_argument_group(sections[name])
        if has_flag(info):
            group.add_argument(flag_name(name), *_aliases(info), **argument_options(name, info))
