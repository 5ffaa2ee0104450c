"""The commands that plugins add, and the names they may not take (the built-ins).

Kept apart from :mod:`dyncli.cli.app` so that ``dyncli plugins`` can list plugin commands
without importing the app that imports it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import typer

# The built-in commands, in the order ``dyncli --help`` lists them (``dyncli.cli.app.COMMANDS``
# holds their modules and checks it matches).
BUILTIN_COMMANDS = (
    "train",
    "convert",
    "distill",
    "prune",
    "profile",
    "evaluate",
    "transcribe",
    "export",
    "inspect",
    "plugins",
)


def plugin_commands(reserved: Collection[str] = ()) -> dict[str, Any]:
    """The click commands that plugins add through ``register_commands``, by name.

    Loads the plugins. Each plugin adds its commands to a Typer app of its own, so one whose
    hook raises is skipped whole (see :func:`dyncli.registry.manager.call_each`). A name in
    ``reserved`` (the built-in commands) or already added by an earlier plugin is skipped with a
    warning.
    """
    from typer.main import get_group

    from dyncli.registry.manager import call_each, warn_name_clash

    found: dict[str, Any] = {}
    owners: dict[str, str] = {}

    def call(plugin: str, hook: Any) -> None:
        cli = typer.Typer()
        hook(cli=cli)
        for name, command in get_group(cli).commands.items():
            if name in reserved or name in found:
                warn_name_clash("command", name, kept=owners.get(name), skipped=plugin)
                continue
            found[name], owners[name] = command, plugin

    call_each("register_commands", call)
    return found
