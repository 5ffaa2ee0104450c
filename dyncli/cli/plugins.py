"""``dyncli plugins``: what the plugin registry holds, and which plugins failed.

``--json`` schema::

    {"plugins": [name, ...],
     "commands": {name: {"help": str}},
     "backbones": {name: {"presets": [str], "description": str}},
     "skip_policies": {name: {"description": str}},
     "methods": {name: {"command": "convert" | "distill", "description": str}},
     "checkpoint_readers": {name: {"description": str}},
     "failed": [{"name": str, "distribution": str | null, "reason": "ExcType: message"}]}
"""

from __future__ import annotations

from typing import Any

from dyncli.cli.options import JsonOpt

NAME = "plugins"


def run(json_path: JsonOpt = None) -> None:
    """List loaded plugins, what they register, and the plugins that failed.

    Shows the commands, backbones, skip policies, trained methods (convert / distill --method)
    and checkpoint readers plugins register. A
    plugin that failed to load, or whose hook raised, is skipped and listed with the reason;
    this still exits 0."""
    from rich.markup import escape
    from rich.table import Table

    from dyncli.cli.output import print_table, write_json
    from dyncli.cli.plugin_commands import BUILTIN_COMMANDS, plugin_commands
    from dyncli.registry.manager import (
        backbones,
        checkpoint_readers,
        get_plugin_manager,
        methods,
        plugin_failures,
        skip_policies,
    )

    found_backbones, found_policies = backbones(), skip_policies()
    found_readers, found_methods = checkpoint_readers(), methods()
    commands = plugin_commands(reserved=set(BUILTIN_COMMANDS))
    # after the hooks ran: a plugin whose hook raised is unregistered and listed as failed
    pm = get_plugin_manager()
    info: dict[str, Any] = {
        "plugins": sorted(name for name, _ in pm.list_name_plugin()),
        "commands": {
            n: {"help": " ".join((c.get_short_help_str(limit=200) or "").split())}
            for n, c in sorted(commands.items())
        },
        "backbones": {
            n: {"presets": sorted(s.presets), "description": s.description}
            for n, s in found_backbones.items()
        },
        "skip_policies": {n: {"description": s.description} for n, s in found_policies.items()},
        "methods": {
            n: {"command": s.command, "description": s.description}
            for n, s in found_methods.items()
        },
        "checkpoint_readers": {n: {"description": s.description} for n, s in found_readers.items()},
        "failed": [
            {"name": f.name, "distribution": f.distribution, "reason": f.reason}
            for f in plugin_failures()
        ],
    }
    if json_path is not None:
        write_json(json_path, info)
        if str(json_path) == "-":
            return
    table = Table(title="dyncli plugins")
    for col in ("kind", "name", "details"):
        table.add_column(col)
    for name in info["plugins"]:
        table.add_row("plugin", name, "")
    for name, c in info["commands"].items():
        table.add_row("command", name, c["help"])
    for name, b in info["backbones"].items():
        table.add_row("backbone", name, f"{b['description']} (presets: {', '.join(b['presets'])})")
    for name, p in info["skip_policies"].items():
        table.add_row("skip policy", name, p["description"])
    for name, m in info["methods"].items():
        table.add_row("method", name, f"{m['command']} --method {name}: {m['description']}")
    for name, r in info["checkpoint_readers"].items():
        table.add_row("checkpoint reader", name, r["description"])
    for f in info["failed"]:
        where = f" (distribution {f['distribution']})" if f["distribution"] else ""
        table.add_row("failed plugin", f["name"], escape(f"{f['reason']}{where}"))
    print_table(table)
