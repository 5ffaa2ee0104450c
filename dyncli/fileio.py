"""Output files: paths checked before a job starts, and atomic writes (an interrupted run never
leaves a half-written file in place of a good one).

The rules every output follows:

* **Checked before work.** :func:`check_output_path` refuses what could not be written (a
  directory, a parent that is a file, a read-only directory, ``/proc`` or ``/sys``), and
  :func:`check_io` refuses an output that is one of the command's inputs or another output.
* **Atomic.** A regular file is written to a temporary file beside it (``.NAME.PID.XXXX.tmp``),
  flushed, then renamed over it. The existing file's permission bits are kept. An interrupt
  (SIGINT, SIGTERM) during the write discards the new file and leaves the old one as it was.
* **Special files are written through**, not replaced: a FIFO, a character device
  (``/dev/null``), a socket, and the process's own streams (``/dev/stdout``, ``/dev/stderr``,
  ``/dev/fd/N``). A symlink is **followed**: the file it points to is replaced and the link
  stays a link.
* **Stale temporaries are removed.** A killed process leaves its ``.NAME.PID.XXXX.tmp`` behind;
  the next write of ``NAME`` removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from dyncli.errors import InputError, JobFailed, UsageError

PathLike = str | os.PathLike[str]
# Pseudo file systems: nothing written under them is a file a user can keep.
PSEUDO_ROOTS = (Path("/proc"), Path("/sys"))
_STREAM_FD = re.compile(r"^/(?:dev/fd|proc/self/fd)/(\d+)$")
_STREAM_NAMES = {"/dev/stdout": 1, "/dev/stderr": 2}


def stream_fd(path: PathLike) -> int | None:
    """The file descriptor ``path`` names (``/dev/stdout`` -> 1, ``/dev/fd/3`` -> 3), if any."""
    text = os.fspath(path)
    if text in _STREAM_NAMES:
        return _STREAM_NAMES[text]
    match = _STREAM_FD.match(text)
    return int(match.group(1)) if match else None


def resolve(path: PathLike, flag: str = "") -> Path:
    """``path`` with every symlink followed; a symlink loop is one line (``InputError``)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:  # RuntimeError: symlink loop (Python < 3.13)
        where = f"{flag} " if flag else ""
        raise InputError(f"{where}{os.fspath(path)}: symlink loop ({exc})") from None


def is_special(path: PathLike) -> bool:
    """A stream, FIFO, character/block device or socket: written through, never replaced."""
    if stream_fd(path) is not None:
        return True
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def under_pseudo(path: Path) -> bool:
    """``path`` (resolved) lies under ``/proc`` or ``/sys``."""
    return any(path == root or root in path.parents for root in PSEUDO_ROOTS)


# What the atomic writer adds to a name for its temporary: '.' NAME '.' PID '.' XXXXXXXX '.tmp'
# (PIDs up to 7 digits on Linux, 8 random characters from mkstemp).
TEMP_NAME_EXTRA = len("..1234567.abcdefgh.tmp")


def check_name_length(
    path: PathLike, flag: str, *, extra: int = TEMP_NAME_EXTRA, shown: str | None = None
) -> None:
    """Refuse a path the file system cannot hold, before any work: a component longer than the
    longest name there (``extra`` bytes are kept free in the last one, for the temporary file
    written beside it), or a path longer than the longest path. Raises :class:`UsageError`."""
    text = os.fspath(path)
    base = next((p for p in Path(os.path.abspath(text)).parents if os.path.isdir(p)), Path("/"))
    try:
        name_max = os.pathconf(base, "PC_NAME_MAX")
        path_max = os.pathconf(base, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    shown = shown if shown is not None else text
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    parts = Path(text).parts
    for i, part in enumerate(parts):
        size = len(os.fsencode(part))
        last = i == len(parts) - 1
        room = name_max - (extra if last else 0)
        if size > room:
            why = ", and dyncli writes a temporary file beside it" if last and extra else ""
            raise UsageError(
                f"{flag} {shown}: the name {part[:20]}... is {size} bytes; at most {room} fit "
                f"here (the file system allows {name_max}{why})"
            )
    total = len(os.fsencode(os.path.abspath(text))) + extra
    if total >= path_max:
        raise UsageError(
            f"{flag} {shown}: the path is too long ({total} bytes"
            + (" with the temporary file's name" if extra else "")
            + f"; at most {path_max - 1})"
        )


def check_output_path(path: PathLike, flag: str, *, allow_stdout: bool = False) -> None:
    """Refuse an output path that could not be written, before any work starts.

    ``flag`` names the option in the message (``--json``). ``-`` (stdout) is accepted only with
    ``allow_stdout``; so are ``/dev/stdout`` and the other special files (written through). An
    existing directory, a path under ``/proc`` or ``/sys``, and a symlink loop are refused; a
    missing parent directory is created. Raises :class:`UsageError` (exit code 2).
    """
    text = os.fspath(path)
    if text == "-" or stream_fd(text) is not None:
        if allow_stdout:
            return
        raise UsageError(f"{flag} {text}: this option cannot write to a stream; give a file path")
    if not text:
        raise UsageError(f"{flag}: empty path; give a file path")
    check_name_length(text, flag, extra=0)
    target = Path(text)
    if target.is_symlink() or target.exists():
        real = resolve(target, flag)
        if is_special(real):
            if not allow_stdout:
                raise UsageError(f"{flag} {text}: not a regular file; give a file path")
            return
    else:
        real = resolve(target, flag)
    if real.is_dir():
        raise UsageError(f"{flag} {text}: is a directory; give a file path")
    check_name_length(real, flag, shown=text)  # room for the temporary file beside the file written
    if under_pseudo(real):
        raise UsageError(f"{flag} {text}: {real.parent} is a kernel file system; give a file path")
    parent = real.parent
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


IOPaths = Mapping[str, PathLike | Iterable[PathLike] | None]


def _entries(paths: IOPaths) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for flag, value in paths.items():
        if value is None:
            continue
        values = [value] if isinstance(value, str | os.PathLike) else list(value)
        out.extend((flag, os.fspath(v)) for v in values if os.fspath(v) not in ("", "-"))
    return out


class _Identity:
    """How one path is compared: the file it is (device, inode) where it exists, else where it
    resolves to; a stream by its spelling."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.inode: tuple[int, int] | None = None
        self.stream = stream_fd(text) is not None
        self.real: Path | None = None
        if self.stream:
            return
        try:
            st = os.stat(text)
            self.inode = (st.st_dev, st.st_ino)
        except OSError:
            pass
        try:
            self.real = resolve(text)
        except InputError:
            self.real = Path(os.path.abspath(text))

    def same(self, other: _Identity) -> bool:
        if self.stream or other.stream:
            return self.text == other.text
        if self.inode is not None and other.inode is not None:
            return self.inode == other.inode
        return self.real == other.real


def check_io(*, inputs: IOPaths, outputs: IOPaths) -> None:
    """Refuse, before any work, an output that would overwrite an input or another output.

    ``inputs`` and ``outputs`` map a flag (``--train``, ``CHECKPOINT``, ``--data audio``) to a
    path, a list of paths, or ``None``. Two paths are the same when they are the same file
    (device and inode where both exist, so symlinks and hard links count; resolved paths
    otherwise). An output that is an existing file inside an input directory (a Hugging Face
    model folder, a Kaldi data dir) is refused too. Raises :class:`UsageError` naming both.
    """
    outs = [(flag, _Identity(path)) for flag, path in _entries(outputs)]
    ins = [(flag, _Identity(path)) for flag, path in _entries(inputs)]
    by_inode = {ident.inode: (flag, ident) for flag, ident in ins if ident.inode is not None}
    by_real = {ident.real: (flag, ident) for flag, ident in ins if ident.real is not None}
    dirs = [(flag, ident) for flag, ident in ins if ident.real is not None and ident.real.is_dir()]
    for i, (oflag, out) in enumerate(outs):
        hit = None
        if out.stream:
            hit = next(((f, d) for f, d in ins if d.same(out)), None)
        elif out.inode is not None:
            hit = by_inode.get(out.inode)
        if hit is None and not out.stream and out.real is not None:
            hit = by_real.get(out.real)
        if hit is not None:
            raise UsageError(
                f"{oflag} {out.text}: is the input {hit[0]} {hit[1].text}; writing it would "
                "destroy the input, give another path"
            )
        if out.inode is not None and out.real is not None:
            for iflag, d in dirs:
                if d.real is not None and d.real in out.real.parents:
                    raise UsageError(
                        f"{oflag} {out.text}: is a file inside the input {iflag} {d.text}; "
                        "writing it would change the input, give another path"
                    )
        for oflag2, out2 in outs[i + 1 :]:
            if out.same(out2):
                raise UsageError(
                    f"{oflag} and {oflag2} name the same file {out.text}; give two paths"
                )


# --- interrupts ---------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM that arrived while an output was being written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM back while the block runs; yields the list of those received.

    Python delivers SIGINT as an exception wherever the interpreter is, including inside
    ``torch.save``'s writer, which turns it into a ``RuntimeError`` and leaves a broken file.
    Outside the main thread (where handlers cannot be set) this does nothing.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def hold(signum: int, _frame: Any) -> None:
        received.append(signum)

    # A signal the process was told to ignore (a background job's SIGINT, nohup) stays ignored.
    previous = {
        s: signal.signal(s, hold)
        for s in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(s) is not signal.SIG_IGN
    }
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- stale temporaries ----------------------------------------------------------------------


def _tmp_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[A-Za-z0-9_]+\.tmp$")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove ``.NAME.PID.XXXX.tmp`` files beside ``target`` whose process has gone."""
    pattern = _tmp_pattern(target.name)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


# --- atomic writes ---------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success its contents become ``path`` (see module doc).

    A regular file (or a new one) is replaced by a rename; a symlink is followed; a special
    file is written through. Raises :class:`InputError` if ``path`` is an existing directory.
    An interrupt while the block runs discards the temporary file and re-raises as
    :class:`Interrupted` once the old file is known to be intact.
    """
    fd_target = stream_fd(path)
    target = Path(path) if fd_target is not None else resolve(path)
    if fd_target is None and target.is_dir():
        raise InputError(f"{os.fspath(path)}: is a directory; give a file path")
    through = fd_target is not None or is_special(target)
    if through:
        tmp_dir: Path = Path(tempfile.gettempdir())
        prefix = ".dyncli-stream."
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        tmp_dir, prefix = target.parent, f".{target.name}.{os.getpid()}."
    with deferred_signals() as received:
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=tmp_dir)
        except OSError as exc:
            raise _write_failed(path, exc) from None
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            if received:
                raise Interrupted(received[0])
            if through:
                _write_through(tmp, target, fd_target)
            else:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                _copy_mode(target, tmp)
                os.replace(tmp, target)
        except OSError as exc:  # a full disk, a closed pipe, a vanished directory
            raise _write_failed(path, exc) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    if received:
        raise Interrupted(received[0])


def _write_failed(path: PathLike, exc: OSError) -> JobFailed:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return JobFailed(f"cannot write {os.fspath(path)}: {reason}; the old file is left as it was")


def _copy_mode(target: Path, tmp: Path) -> None:
    """Give ``tmp`` the existing ``target``'s mode (and owner, where allowed), else 0666-umask."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        return
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    if hasattr(os, "chown"):
        with contextlib.suppress(OSError):
            os.chown(tmp, st.st_uid, st.st_gid)


def _write_through(tmp: Path, target: Path, fd: int | None) -> None:
    if fd is not None:
        import sys

        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with open(tmp, "rb") as src:
            data = src.read()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        return
    with open(tmp, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a temporary binary file, then move it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def atomic_write_text(path: PathLike, text: str) -> None:
    data = text.encode("utf-8")

    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    atomic_write(path, write)
