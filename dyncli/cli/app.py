"""Assembles the ``dyncli`` app: built-in commands plus those that plugins register.

Plugin commands load lazily: the root group (:class:`DyncliGroup`) lists the built-in commands
only, and loads the plugins when asked for a name that is not a built-in. So ``dyncli --help``
and the built-in commands start without importing any third-party plugin; ``dyncli plugins``
lists the commands plugins add.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from dyncli import __version__
from dyncli.cli import (
    convert,
    distill,
    evaluate,
    export,
    inspect,
    plugins,
    profile,
    prune,
    train,
    transcribe,
)
from dyncli.cli.command import DyncliCommand, one_line_usage_errors
from dyncli.cli.errors import debug_enabled, guarded, report
from dyncli.cli.plugin_commands import BUILTIN_COMMANDS, plugin_commands
from dyncli.errors import DyncliError

HELP = """Give CTC speech encoders input-dependent depth, and measure what it buys.

Exit codes: 0 success, 1 failed job or failed gate, 2 usage or input error.
Set DYNCLI_DEBUG=1 to see tracebacks. Commands that plugins add are listed by 'dyncli plugins'."""

COMMANDS = (
    train,
    convert,
    distill,
    prune,
    profile,
    evaluate,
    transcribe,
    export,
    inspect,
    plugins,
)
assert tuple(module.NAME for module in COMMANDS) == BUILTIN_COMMANDS, "keep the two lists in step"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dyncli {__version__}")
        raise typer.Exit()


def _help(doc: str | None) -> str:
    """A docstring as help text: paragraphs kept, hard line breaks inside them removed."""
    import inspect as _inspect

    paragraphs = _inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


class DyncliGroup(TyperGroup):
    """The root group: built-in commands first; plugin commands loaded only when asked for.

    :meth:`list_commands` (so ``dyncli --help`` and completion) gives the built-ins only. A name
    that is not a built-in loads the plugins and their commands (once per group). A usage
    error in any command, plugin commands included, prints one ``error:`` line and exits 2.
    """

    _plugin_commands: dict[str, Any] | None = None

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        return one_line_usage_errors(lambda: super(DyncliGroup, self).make_context(*args, **kwargs))

    def invoke(self, ctx: Any) -> Any:
        return one_line_usage_errors(lambda: super(DyncliGroup, self).invoke(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        if self._plugin_commands is None:
            self._plugin_commands = plugin_commands(reserved=self.commands)
        return self._plugin_commands.get(cmd_name)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="dyncli",
        cls=DyncliGroup,
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
        rich_markup_mode="rich",
    )

    @app.callback()
    def root(
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ) -> None:
        """dyncli command-line interface."""

    for module in COMMANDS:
        app.command(name=module.NAME, help=_help(module.run.__doc__), cls=DyncliCommand)(
            guarded(module.run)
        )
    return app


def main() -> None:
    try:
        app = build_app()
        app()
    except DyncliError as exc:
        if debug_enabled():
            raise
        report(exc)
        sys.exit(exc.exit_code)
