"""docs/cli.md is generated from the command definitions; it must match the code."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
import typer.main

from dyncli.cli import command as cli_command
from dyncli.cli.reference import builtin_cli, render_commands, render_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    expected = render_reference()
    assert DOC.read_text(encoding="utf-8") == expected, (
        "docs/cli.md is out of date: run 'make docs'"
    )
    assert "## dyncli profile" in expected


@pytest.mark.parametrize(
    "env",
    [
        {"COLUMNS": "40", "LINES": "10", "TERM": "dumb", "NO_COLOR": "1"},
        {"COLUMNS": "250", "TERM": "xterm-256color", "FORCE_COLOR": "1", "NO_COLOR": None},
        {"_TYPER_FORCE_DISABLE_TERMINAL": "1", "DYNCLI_LOAD_PLUGINS": "no-such-plugin"},
        {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1", "COLUMNS": None, "TERM": None},
    ],
)
def test_reference_ignores_terminal_and_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None]
) -> None:
    baseline = render_reference()
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert render_reference() == baseline
    assert "\x1b" not in baseline and "╭" not in baseline  # no colour codes, no rich boxes


def test_reference_restores_plugin_state(monkeypatch: pytest.MonkeyPatch) -> None:
    from dyncli.registry import manager as plugins

    callers_pm = object()
    monkeypatch.setenv("DYNCLI_LOAD_PLUGINS", "someone-elses")
    monkeypatch.setattr(plugins, "_pm", callers_pm)
    render_reference()
    assert plugins._pm is callers_pm
    assert os.environ["DYNCLI_LOAD_PLUGINS"] == "someone-elses"


def _sections(doc: str) -> dict[str, str]:
    """'dyncli profile' -> the text of its section."""
    chunks = doc.split("\n## ")[1:]
    return {chunk.split("\n", 1)[0]: chunk for chunk in chunks}


def test_reference_lists_every_visible_option_of_every_command() -> None:
    sections = _sections(render_reference())
    with builtin_cli() as root:
        root_ctx = root.context_class(root, info_name="dyncli", **root.context_settings)
        commands: list[tuple[str, Any, Any]] = [("dyncli", root, root_ctx)]
        for name, cmd in root.commands.items():
            if not cmd.hidden:
                ctx = cmd.context_class(cmd, info_name=name, parent=root_ctx)
                commands.append((f"dyncli {name}", cmd, ctx))
        assert list(sections) == [path for path, _, _ in commands]
        for path, cmd, ctx in commands:
            for param in cmd.get_params(ctx):
                if param.hidden:
                    continue
                names = (
                    [*param.opts, *param.secondary_opts]
                    if param.param_type_name == "option"
                    else [param.name.upper()]
                )
                for flag in names:
                    assert f"`{flag}`" in sections[path], f"{flag} missing from '{path}'"


class Colour(StrEnum):
    red = "red"
    blue = "blue"


def _demo_app() -> typer.Typer:
    app = typer.Typer(
        add_completion=False, context_settings={"help_option_names": ["-h", "--help"]}
    )

    @app.callback()
    def root() -> None:
        """Root help."""

    @app.command()
    def paint(
        path: Annotated[Path, typer.Argument(help="Where | to paint.", show_default=False)],
        colour: Annotated[Colour, typer.Option("--colour", "-c", help="Colour.")] = Colour.red,
        coats: Annotated[int, typer.Option(min=1, max=3, help="Coats.")] = 2,
        thinner: Annotated[float, typer.Option(min=0.0, help="Thinner.")] = 0.25,
        gloss: Annotated[bool, typer.Option("--gloss/--matt", help="Finish.")] = True,
        dry: Annotated[bool, typer.Option("--dry", help="Only print.")] = False,
        secret: Annotated[str, typer.Option("--secret", hidden=True)] = "x",
        policy: Annotated[
            str | None, typer.Option(help="One of {skip_policies}.", show_default=False)
        ] = None,
    ) -> None:
        """Paint   it.

        Second paragraph,
        wrapped <TAB> here."""

    @app.command(hidden=True)
    def ghost() -> None:
        """Not listed."""

    return app


def test_render_commands_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_command, "skip_policy_choices", lambda: "a: first; b: second")
    doc = render_commands(typer.main.get_command(_demo_app()), "demo")
    sections = _sections("\n" + doc)
    assert list(sections) == ["demo", "demo paint"]
    assert "demo [OPTIONS] COMMAND [ARGS]...\n" in sections["demo"]
    assert "| `paint` | Paint it. |" in sections["demo"]
    paint = sections["demo paint"]
    assert "demo paint [OPTIONS] PATH\n" in paint
    assert "\n\nPaint it.\n\nSecond paragraph, wrapped \\<TAB> here.\n" in paint
    assert "| `PATH` | `PATH` |  | yes | Where \\| to paint. |" in paint
    assert "| `-c`, `--colour` | `{red,blue}` | `red` |  | Colour. |" in paint
    assert "| `--coats` | `INTEGER RANGE 1<=x<=3` | `2` |  | Coats. |" in paint
    assert "| `--thinner` | `FLOAT RANGE x>=0.0` | `0.25` |  | Thinner. |" in paint
    assert "| `--gloss` / `--matt` |  | `on` |  | Finish. |" in paint
    assert "| `--dry` |  |  |  | Only print. |" in paint
    assert "| `--policy` | `TEXT` |  |  | One of a: first; b: second. |" in paint
    assert "| `-h`, `--help` |  |  |  | Show this message and exit. |" in paint
    assert "secret" not in doc and "ghost" not in doc
