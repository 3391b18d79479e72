"""How every command takes its settings: ``--config-json`` plus the flags given explicitly.

Rules pass ``--config-json`` with the config sections a command reads; a person at the shell
may use flags instead. A flag counts only when it was given on the command line (its default
never overrides the config), and the result is validated against the workflow's schema
(:mod:`slide2expr.settings`), so the CLI and the workflow accept exactly the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import typer

CONFIG_JSON_HELP = ("Config sections as JSON keyed by section (e.g. '{\"tiling\": {...}}'), or "
                    "a YAML config file; flags given here win. The workflow passes this.")


def config_json_option() -> Any:
    """The ``--config-json`` option every stage command has."""
    return typer.Option(None, "--config-json", "--config", help=CONFIG_JSON_HELP)


def given(ctx: typer.Context, flags: Mapping[str, str]) -> dict[str, Any]:
    """``{config key: value}`` of the flags (``{parameter name: dotted key}``) that were given
    on the command line."""
    out: dict[str, Any] = {}
    for param, key in flags.items():
        # by name: typer 0.2x runs on its own copy of click, whose enum is not click's
        source = ctx.get_parameter_source(param)
        if source is not None and source.name == "COMMANDLINE":
            value = ctx.params[param]
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def section(ctx: typer.Context, name: str, config_json: str | None,
            flags: Mapping[str, str]) -> dict[str, Any]:
    """The validated ``name`` section: ``--config-json``, then the given flags on top."""
    from slide2expr.settings import resolve_section

    return resolve_section(name, config_json, given(ctx, flags))
