"""How the CLI turns a :class:`~dyncli.errors.DyncliError` into one line and an exit code."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer

from dyncli.errors import DyncliError

F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get("DYNCLI_DEBUG", "") not in ("", "0", "false", "no")


def report(exc: DyncliError) -> None:
    message = " ".join(str(exc).split())  # always one line
    typer.echo(f"error: {message}", err=True)


def _raise_terminated(signum: int, _frame: Any) -> None:
    from dyncli.fileio import Interrupted

    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`~dyncli.fileio.Interrupted` (so ``finally`` blocks run and
    temporary files go) instead of ending the process on the spot. Main thread only."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # told to ignore it: it stays so
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _release_run_dirs() -> None:
    """Unlock the run directories the command claimed (only if it loaded that module: the
    CLI's start-up must not import torch)."""
    rundir = sys.modules.get("dyncli.training.rundir")
    if rundir is not None:
        rundir.release_all()


def guarded(fn: F) -> F:
    """Wrap a command: a DyncliError prints one line and exits with its code (no traceback).

    An interrupt (Ctrl-C, SIGTERM) prints one line and exits with 128 + the signal number
    (130, 143); outputs being written at that moment keep their old contents.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_as_interrupt():
                try:
                    return fn(*args, **kwargs)
                finally:
                    _release_run_dirs()
        except DyncliError as exc:
            if debug_enabled():
                raise
            report(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            typer.echo("interrupted; earlier outputs are left as they were", err=True)
            raise typer.Exit(128 + int(signum)) from None

    return wrapper  # type: ignore[return-value]
