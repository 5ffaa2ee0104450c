"""Output files: paths checked before a job starts, and atomic writes (an interrupted run never
leaves a half-written file in place of a good one)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from dyncli.errors import InputError, UsageError


def check_output_path(
    path: str | os.PathLike[str], flag: str, *, allow_stdout: bool = False
) -> None:
    """Refuse an output path that could not be written, before any work starts.

    ``flag`` names the option in the message (``--json``). ``-`` (stdout) is accepted only with
    ``allow_stdout``. An existing directory is refused; a missing parent directory is created.
    Raises :class:`UsageError` (exit code 2) with a one-line message.
    """
    text = os.fspath(path)
    if text == "-":
        if allow_stdout:
            return
        raise UsageError(f"{flag} -: this option cannot write to stdout; give a file path")
    if not text:
        raise UsageError(f"{flag}: empty path; give a file path")
    target = Path(text)
    if target.is_dir():
        raise UsageError(f"{flag} {text}: is a directory; give a file path")
    parent = target.parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "" if blocker == parent else f"cannot create {parent}: "
        raise UsageError(f"{flag} {text}: {where}{blocker} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"{flag} {text}: cannot create {parent} ({reason})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {text}: directory {parent} is not writable")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    Raises :class:`InputError` if ``path`` is an existing directory.
    """
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target}: is a directory; give a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a temporary binary file, then move it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    data = text.encode("utf-8")

    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    atomic_write(path, write)
