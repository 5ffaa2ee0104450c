"""The CLI reference (docs/cli.md), generated from each command's ``--help``.

    python -m dyncli.cli.reference > docs/cli.md     (or: make docs)

A test regenerates it and compares, so the reference cannot drift from the code.
"""

from __future__ import annotations

import os

WIDTH = 100


def render_reference() -> str:
    from typer.testing import CliRunner

    from dyncli.cli.app import build_app

    app = build_app()
    runner = CliRunner()
    env = {
        "COLUMNS": str(WIDTH),
        "NO_COLOR": "1",
        "TERM": "dumb",
        "_TYPER_FORCE_DISABLE_TERMINAL": "1",
    }
    names = [c.name for c in app.registered_commands if c.name]
    parts = [
        "# dyncli command reference",
        "",
        "Generated from `--help` by `python -m dyncli.cli.reference` (`make docs`); do not edit.",
        "",
        "```text",
        _help(runner, app, [], env),
        "```",
    ]
    for name in names:
        parts += ["", f"## dyncli {name}", "", "```text", _help(runner, app, [name], env), "```"]
    return "\n".join(parts) + "\n"


def _help(runner: object, app: object, args: list[str], env: dict[str, str]) -> str:
    result = runner.invoke(app, [*args, "--help"], env=env, terminal_width=WIDTH)  # type: ignore[attr-defined]
    lines = [line.rstrip() for line in result.output.strip("\n").splitlines()]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", str(WIDTH))
    os.environ.setdefault("DYNCLI_LOAD_PLUGINS", "")  # built-in commands only
    print(render_reference(), end="")
