"""The command-line form of the config fields, built from each field's ``OptionSpec``.

Why generated: an option used to be declared three or four times (the dataclass field, a flag -> key
table, the click option of each command, the docs tables) and the copies drifted. Now the field in
``torchsae.config`` declares it once (flag, help, DeepFaceLab's name, choices, which commands take
it), and this module derives the click options and the flag <-> key table; ``options_doc`` derives
the tables of docs/OPTIONS.md and the README.

Two forms of a command's options:

- **layered** (``train``, ``info model``): every option defaults to "not given" (None), so a value can
  come from ``--config``, a resumed checkpoint or a preset first; ``--help`` shows the field's default
  (or its ``default_text`` where it is resolved at run time, e.g. ``d_dims÷3, even``). A bool is
  ``--x/--no-x``; an option with ``bare`` takes a value or none (bare ``--amp`` = auto).
- **concrete** (``bench train``'s run options, which have no config to layer): the field's default is
  the click default; a bool that defaults off is a plain switch, and every other option needs its
  value. (``bench train``'s model options stay layered: they override ``--model-size``'s preset.)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import click

from torchsae.config import OptionSpec, option_fields

MODEL_SIZES = ("128", "256", "384")  # the --model-size presets (torchsae.config.PRESETS)


class ConfigOption(click.Option):
    """A click option whose textual default shows as ``[default: liae-ud]``, not ``(liae-ud)``."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None or not isinstance(self.show_default, str):
            return record
        shown = f"default: {self.show_default}"
        return record[0], record[1].replace(f"default: ({self.show_default})", shown)


def default_text(f: dataclasses.Field, spec: OptionSpec) -> str | None:
    """A field's default in words, as ``--help`` and the docs show it (None: no default to show)."""
    if spec.default_text is not None:
        return spec.default_text
    value = f.default
    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return re.sub(
            r"e([+-])0*(\d)", lambda m: "e" + m.group(1).replace("+", "") + m.group(2), f"{value:g}"
        )
    return str(value)


def _click_type(f: dataclasses.Field, spec: OptionSpec) -> Any:
    if spec.choices is not None:
        return click.Choice(spec.choices)
    if spec.folder:
        return click.Path(file_okay=False)
    kinds = {part.strip() for part in str(f.type).split("|")} - {"None"}
    return {"int": int, "float": float}.get(kinds.pop()) if len(kinds) == 1 else None


def _click_option(f: dataclasses.Field, spec: OptionSpec, concrete: bool):
    flag = spec.flag_for(f.name)
    kwargs: dict[str, Any] = {"help": spec.help, "cls": ConfigOption}
    is_bool = str(f.type) == "bool"
    if concrete:
        kwargs.update(default=f.default, show_default=True)
        if is_bool and not f.default:
            return click.option(flag, f.name, is_flag=True, **kwargs)
    else:
        kwargs["default"] = None
        kwargs["show_default"] = default_text(f, spec) or False
    if is_bool:
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, **kwargs)
    kwargs["type"] = _click_type(f, spec)
    if spec.bare is not None and not concrete:
        kwargs.update(is_flag=False, flag_value=spec.bare)
    return click.option(flag, f.name, **kwargs)


def config_options(command: str, *, concrete: bool = False, sections: tuple[str, ...] | None = None):
    """A decorator adding every config option ``command`` takes (the fields whose spec lists it), of
    ``sections`` only where given."""
    options = [
        _click_option(f, spec, concrete)
        for section, f, spec in option_fields()
        if command in spec.commands and (sections is None or section in sections)
    ]

    def apply(func):
        for option in reversed(options):
            func = option(func)
        return func

    return apply


def option_map(command: str) -> dict[str, tuple[str, str]]:
    """Click's parameter name -> (config section, key) for ``command``'s config options."""
    return {f.name: (section, f.name) for section, f, spec in option_fields() if command in spec.commands}


def option_flags(command: str) -> dict[str, str]:
    """Click's parameter name -> the flag, e.g. ``batch_size`` -> ``--batch-size``."""
    return {f.name: spec.flag_for(f.name) for _s, f, spec in option_fields() if command in spec.commands}


def model_size_option(help_text: str = "Preset resolution and dims."):
    """``--model-size 128|256|384`` (train, bench train, info model); None when not given."""
    return click.option("--model-size", type=click.Choice(MODEL_SIZES), default=None, help=help_text)
