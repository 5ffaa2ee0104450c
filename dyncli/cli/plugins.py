"""``dyncli plugins``: what the plugin registry holds."""

from __future__ import annotations

from typing import Any

from dyncli.cli.options import JsonOpt

NAME = "plugins"


def run(json_path: JsonOpt = None) -> None:
    """List loaded plugins and the backbones and skip policies they register."""
    from rich.table import Table

    from dyncli.cli.render import console, write_json
    from dyncli.plugins import backbones, get_plugin_manager, skip_policies

    pm = get_plugin_manager()
    info: dict[str, Any] = {
        "plugins": sorted(name for name, _ in pm.list_name_plugin()),
        "backbones": {
            n: {"presets": sorted(s.presets), "description": s.description}
            for n, s in backbones().items()
        },
        "skip_policies": {n: {"description": s.description} for n, s in skip_policies().items()},
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
    for name, b in info["backbones"].items():
        table.add_row("backbone", name, f"{b['description']} (presets: {', '.join(b['presets'])})")
    for name, p in info["skip_policies"].items():
        table.add_row("skip policy", name, p["description"])
    console.print(table)
