"""The flags of ``evolve.py run``, generated from the `Settings` fields and their metadata (evolver/settings.py):
a setting is declared once, and its flag, its HRM_<NAME> variable and its .env key follow from that field."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from evolver.settings import ENV_PREFIX, FIELDS, Settings, check_value, value_type


def flag_of(f: dataclasses.Field[Any]) -> str | None:
    """The field's flag: its declared one, ``--field-name`` when it declares "", None for HRM_* / .env only."""
    flag = f.metadata.get("flag", "")
    if flag is None:
        return None
    return flag or "--" + f.name.replace("_", "-")


def _parser_of(name: str) -> Any:
    """An argparse ``type`` that parses one value of setting ``name`` and applies its declared check."""
    kind = value_type(name)
    is_list = str(FIELDS[name].type).startswith("list")

    def parse(text: str) -> Any:
        try:
            if is_list:
                value: Any = [kind(x.strip()) for x in text.split(",") if x.strip()]
                if not value:
                    raise argparse.ArgumentTypeError("give at least one value")
            else:
                value = kind(text)
        except ValueError as exc:
            what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise argparse.ArgumentTypeError(f"expected {what}{' list (comma-separated)' if is_list else ''}, "
                                             f"got {text!r}") from exc
        problem = check_value(name, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = name  # argparse names the type in its errors
    return parse


def _default_text(f: dataclasses.Field[Any]) -> str:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(default, list):
        default = ",".join(str(x) for x in default) or "none"
    return "" if default is None else f" (default {default}; {ENV_PREFIX}{f.name.upper()})"


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag for every setting that declares one; each defaults to None, so only the flags given override
    the environment, .env and the field defaults (`load_settings`)."""
    for f in dataclasses.fields(Settings):
        flag = flag_of(f)
        if flag is None:
            continue
        meta = f.metadata
        help_text = meta.get("help", "")
        if value_type(f.name) is bool:
            # a flag that turns its setting off (--serial-pairs); on by default: --x and --no-x; else --x turns it on
            on_by_default = f.default is True
            action: Any = ("store_false" if meta.get("negate")
                           else argparse.BooleanOptionalAction if on_by_default else "store_true")
            parser.add_argument(flag, action=action, default=None, dest=f.name,
                                help=f"{help_text} ({ENV_PREFIX}{f.name.upper()})")
            continue
        extra: dict[str, Any] = {}
        if meta.get("choices"):
            extra["choices"] = list(meta["choices"])
        else:
            extra["type"] = _parser_of(f.name)
        if meta.get("metavar"):
            extra["metavar"] = meta["metavar"]
        parser.add_argument(flag, default=None, dest=f.name, help=help_text + _default_text(f), **extra)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags gave (None where a flag was not given): `load_settings`' overrides."""
    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(Settings) if flag_of(f) is not None}
