"""Assembles the ``dyncli`` app: built-in commands plus those that plugins register."""

from __future__ import annotations

import sys

import typer

from dyncli import __version__
from dyncli.cli import convert, evaluate, inspect, plugins, profile, train, transcribe
from dyncli.cli.errors import debug_enabled, guarded, report
from dyncli.errors import DyncliError

HELP = """Give CTC speech encoders input-dependent depth, and measure what it buys.

Exit codes: 0 success, 1 failed job or failed gate, 2 usage or input error.
Set DYNCLI_DEBUG=1 to see tracebacks."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dyncli {__version__}")
        raise typer.Exit()


def _help(doc: str | None) -> str:
    """A docstring as help text: paragraphs kept, hard line breaks inside them removed."""
    import inspect as _inspect

    paragraphs = _inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="dyncli",
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

    for module in (train, convert, profile, evaluate, transcribe, inspect, plugins):
        app.command(name=module.NAME, help=_help(module.run.__doc__))(guarded(module.run))

    from dyncli.plugins import get_plugin_manager

    get_plugin_manager().hook.register_commands(cli=app)
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
