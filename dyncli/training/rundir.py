"""Run directories: created and marked by dyncli, locked while a run uses them, and cleaned up
by deleting only what dyncli wrote there.

A run directory (``--run-dir``, default ``OUTPUT.run``) holds a run's in-progress state. It
carries a marker file, :data:`MARKER`, that says dyncli made it and for which output. dyncli
uses a directory only if it is new, empty, or carries the marker (or, for run directories
written before the marker existed, holds nothing but names dyncli writes); anything else is
refused, so ``--run-dir .`` or ``--run-dir ~`` can never be emptied.

The marker file is also the lock: a run holds an exclusive ``flock`` on it from start to end,
so a second run on the same directory is refused with one line instead of sharing it.

When a run ends, :func:`remove_run_dir` deletes the names dyncli writes (``state.pt``,
``best.ckpt``, prune's ``round-N.*``, their temporaries, the marker) and then the directory
if it is empty; any other file is left where it is.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import IO

from dyncli.errors import UsageError
from dyncli.fileio import check_name_length, pid_alive, resolve, under_pseudo

MARKER = ".dyncli-run"
MARKER_FORMAT = "dyncli-run-dir"
# Names dyncli writes in a run directory (files), and the nested run directories (prune rounds).
_FILES = re.compile(r"^(?:state\.pt|best\.ckpt|round-\d+(?:\.tmp)?\.ckpt)$")
_TEMPS = re.compile(r"^\.(?:state\.pt|best\.ckpt|round-\d+(?:\.tmp)?\.ckpt)\.(\d+)\.\w+\.tmp$")
_DIRS = re.compile(r"^round-\d+\.run$")

# Locks held by this process: directory -> open marker file (the lock lives as long as it).
_HELD: dict[Path, IO[str]] = {}


@atexit.register
def release_all() -> None:
    """Release every run directory this process holds (a command ends, or the process exits).

    One that holds nothing but the marker (the run failed before it saved any state) is
    removed; one with state stays for ``--resume``."""
    for directory in list(_HELD):
        try:
            names = {e.name for e in os.scandir(directory)}
        except OSError:
            continue
        if names <= {MARKER}:
            remove_run_dir(directory)
        else:
            release_run_dir(directory)


def is_dyncli_name(name: str, is_dir: bool) -> bool:
    if is_dir:
        return bool(_DIRS.match(name))
    return name == MARKER or bool(_FILES.match(name) or _TEMPS.match(name))


def check_run_dir(
    path: str | os.PathLike[str],
    flag: str = "--run-dir",
    *,
    output: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse, before any work, a run directory dyncli may not use (see the module doc), or one
    where ``output`` would be a file dyncli deletes when the run ends."""
    text = os.fspath(path)
    check_name_length(text, flag, extra=0)
    target = resolve(text, flag)
    if output is not None:
        out = resolve(output)
        if out.parent == target and is_dyncli_name(out.name, False):
            raise UsageError(
                f"--output {os.fspath(output)}: {out.name} in the run directory {text} is a "
                "file dyncli deletes when the run ends; give another name or --run-dir"
            )
    if under_pseudo(target):
        raise UsageError(f"{flag} {text}: {target} is on a kernel file system; give a directory")
    if target.exists() and not target.is_dir():
        raise UsageError(f"{flag} {text}: exists and is not a directory")
    if target.is_dir():
        if not _usable(target):
            raise UsageError(
                f"{flag} {text}: exists and was not made by dyncli (no {MARKER} marker, and it "
                "holds other files); give a new or empty directory"
            )
        probe = target
    else:
        probe = next((p for p in target.parents if p.exists()), Path("/"))
        if not probe.is_dir():
            raise UsageError(f"{flag} {text}: cannot create it: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {text}: {probe} is not writable")


def _usable(directory: Path) -> bool:
    """Empty, marked by dyncli, or holding only names dyncli writes (an older run dir)."""
    if (directory / MARKER).is_file():
        return True
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return False
    return all(is_dyncli_name(e.name, e.is_dir(follow_symlinks=False)) for e in entries)


def claim_run_dir(path: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Create (or take over) the run directory ``path`` for ``output`` and lock it.

    Raises :class:`UsageError` if dyncli may not use it or another live run holds it. The lock
    is released by :func:`release_run_dir` or when this process ends.
    """
    directory = Path(path)
    check_run_dir(directory, output=output)
    key = resolve(directory)
    if key in _HELD:
        return directory
    marker = directory / MARKER
    # Delete the directory itself at the end only if dyncli made it (not an empty one the
    # user gave, such as '.').
    if marker.is_file():
        created = _read_marker(marker.read_text(encoding="utf-8")).get("created", True) is True
    else:
        created = not directory.exists()
    key.mkdir(parents=True, exist_ok=True)  # a dangling symlink: the directory it names
    fh = open(marker, "a+", encoding="utf-8")  # noqa: SIM115 - held open: it is the lock
    try:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # not POSIX: no lock, the marker still guards deletion
        pass
    except OSError:
        fh.seek(0)
        holder = _read_marker(fh.read()).get("pid")
        fh.close()
        who = f" (process {holder})" if isinstance(holder, int) and pid_alive(holder) else ""
        raise UsageError(
            f"--run-dir {directory}: another dyncli run is using it{who}; wait for it to end, "
            "or give this run another --output or --run-dir"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(
        json.dumps(
            {
                "format": MARKER_FORMAT,
                "output": str(Path(output).resolve()),
                "created": created,
                "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        + "\n"
    )
    fh.flush()
    _HELD[key] = fh
    return directory


def _read_marker(text: str) -> dict[str, object]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def release_run_dir(path: str | os.PathLike[str]) -> None:
    """Drop this process's lock on ``path`` (no-op if it holds none)."""
    with contextlib.suppress(OSError):
        key = resolve(path)
        fh = _HELD.pop(key, None)
        if fh is not None:
            fh.close()


def remove_run_dir(path: str | os.PathLike[str]) -> list[Path]:
    """Delete what dyncli wrote in ``path`` (nested round directories included), then ``path``
    itself if nothing else is left. Returns what was kept (files dyncli did not write)."""
    directory = Path(path)
    if directory.is_symlink():  # a link the user gave: empty the directory it names, keep both
        directory = resolve(directory)
    if not directory.is_dir():
        return []
    kept: list[Path] = []
    marker = directory / MARKER
    created = True
    if marker.is_file():
        with contextlib.suppress(OSError):
            info = _read_marker(marker.read_text(encoding="utf-8"))
            created = info.get("created", True) is True
    release_run_dir(directory)
    # state.pt first: a removal cut short never leaves a run state without the files it needs.
    entries = sorted(os.scandir(directory), key=lambda e: e.name != "state.pt")
    for entry in entries:
        is_dir = entry.is_dir(follow_symlinks=False)
        if not is_dyncli_name(entry.name, is_dir):
            kept.append(Path(entry.path))
            continue
        if is_dir:
            kept.extend(remove_run_dir(entry.path))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    if not kept and created:
        with contextlib.suppress(OSError):
            directory.rmdir()
    return kept
