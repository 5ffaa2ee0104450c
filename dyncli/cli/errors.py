"""How the CLI turns a :class:`~dyncli.errors.DyncliError` into one line and an exit code."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from dyncli.errors import DyncliError

F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get("DYNCLI_DEBUG", "") not in ("", "0", "false", "no")


def report(exc: DyncliError) -> None:
    message = " ".join(str(exc).split())  # always one line
    typer.echo(f"error: {message}", err=True)


def guarded(fn: F) -> F:
    """Wrap a command: a DyncliError prints one line and exits with its code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DyncliError as exc:
            if debug_enabled():
                raise
            report(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; earlier outputs are left as they were", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
