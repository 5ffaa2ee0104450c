"""The one output sink of every command: results on stdout (a rich table on a terminal, the
same table at full width when piped, plain lines, TSV for scripts and spreadsheets, JSON, or
transcripts), and on stderr what a person reads beside them (``warning:`` lines, notes).
Progress displays (:mod:`dyncli.cli.progress`) print through its consoles, and errors through
:mod:`dyncli.cli.errors`.

Off a terminal nothing is cut: a table is printed at its natural width (however wide) and text
lines are never wrapped, so ``dyncli profile > out.txt`` keeps every header and figure. Results
go to stdout and nothing else does, so a pipe receives the result alone.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

# Off a terminal (CI logs, pipes) rich would wrap at 80 columns and cut table cells.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)


def interactive() -> bool:
    """stdout is a terminal outside CI: progress bars and live displays are wanted."""
    return sys.stdout.isatty() and not os.environ.get("CI")


def warn(text: str) -> None:
    """One ``warning:`` line on stderr."""
    note(f"warning: {text}")


def note(text: str) -> None:
    """One line on stderr, beside the result (what ran, what was skipped)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically, or to stdout when ``path`` is '-'."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    from dyncli.fileio import atomic_write_text

    atomic_write_text(path, text)


def print_table(table: Table) -> None:
    """A rich table: wrapped to the terminal on a terminal, at full natural width otherwise."""
    if console.is_terminal:
        console.print(table)
        return
    wide = console.options.update_width(1_000_000)
    width = max(Measurement.get(console, wide, table).maximum, 1)
    narrow = console.width  # Console.print clamps to this, so widen the console itself
    console.width = max(width, narrow)
    try:
        console.print(table, crop=False)
    finally:
        console.width = narrow


def print_line(text: str) -> None:
    """A line of plain text (no markup) on stdout; off a terminal it is never wrapped."""
    console.print(
        text, highlight=False, markup=False, soft_wrap=not console.is_terminal, crop=False
    )


def print_record(line: str) -> None:
    """One machine-read line on stdout, exactly as given (a transcript, a TSV row)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def tsv_value(value: Any) -> str:
    """A TSV cell: floats at full precision (repr round-trips), None empty, bools true/false,
    text escaped as ``transcribe`` escapes it (:func:`escape_field`: a tab, newline or
    backslash in a label or path is kept, written as ``\\t``, ``\\n``, ``\\\\``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return ",".join(tsv_value(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return escape_field(str(value))  # no tab or newline breaks a cell; nothing is lost


def tsv_columns(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of every record, in first-seen order."""
    cols: list[str] = []
    for rec in records:
        cols.extend(k for k in rec if k not in cols)
    return cols


def format_tsv(records: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None) -> str:
    cols = list(columns) if columns is not None else tsv_columns(records)
    lines = ["\t".join(cols)]
    lines += ["\t".join(tsv_value(rec.get(c)) for c in cols) for rec in records]
    return "\n".join(lines) + "\n"


def emit_machine(fmt: Any, report: dict[str, Any], records: list[dict[str, Any]]) -> bool:
    """Write ``report`` (json) or ``records`` (tsv) to stdout; False for the table format
    (``fmt``: a ``dyncli.cli.options.OutputFormat``)."""
    if fmt.value == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return True
    if fmt.value == "tsv":
        sys.stdout.write(format_tsv(records))
        return True
    return False


def _is_stdout(path: Any) -> bool:
    """``path`` is ``-`` or the file or pipe stdout writes to (``/dev/stdout``, ``/dev/fd/1``,
    the file stdout is redirected to). A terminal or ``/dev/null`` does not count: two writes
    there harm nothing."""
    import os
    import stat

    if str(path) == "-":
        return True
    try:
        target, out = os.stat(path), os.fstat(1)
    except (OSError, ValueError):
        return False
    same = (target.st_dev, target.st_ino) == (out.st_dev, out.st_ino)
    return same and not stat.S_ISCHR(out.st_mode)


def check_stdout(fmt: Any, json_path: Any) -> None:
    """Refuse two things writing to stdout at once (--json - with --format tsv/json): the JSON
    report would be followed by another document on the same stream."""
    from dyncli.errors import UsageError

    if json_path is not None and fmt.value != "table" and _is_stdout(json_path):
        raise UsageError(
            f"--json {json_path} and --format {fmt.value} both write to stdout: pick one"
        )


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _undecodable(text: str, template: str) -> str:
    """``text`` with each undecodable byte of a file name (a lone surrogate U+DC80-U+DCFF, as
    Python decodes such names) written out through ``template`` % byte, so stdout can take it."""
    return "".join(template % (ord(c) - 0xDC00) if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def escape_field(text: str) -> str:
    """A TSV field that cannot break a line: ``\\``, tab, newline and carriage return become
    ``\\\\``, ``\\t``, ``\\n`` and ``\\r``; an undecodable file-name byte becomes ``\\xNN``."""
    return _undecodable(text.translate(_ESCAPES), "\\x%02x")


def transcript_line(path: str, text: str, fmt: str) -> str:
    """One line of ``dyncli transcribe`` output: 'tsv' (escaped) or 'jsonl'."""
    if fmt == "jsonl":
        line = json.dumps({"audio": path, "text": text}, ensure_ascii=False)
        return _undecodable(line, "\\udc%02x")
    return f"{escape_field(path)}\t{escape_field(text)}"


def warn_skipped(message: str) -> None:
    """One stderr line for an entry --skip-bad left out."""
    note(f"skipped: {message}")
