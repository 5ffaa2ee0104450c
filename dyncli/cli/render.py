"""Rendering helpers: rich on a terminal, plain lines in CI logs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Off a terminal (CI logs, pipes) rich would wrap at 80 columns and cut table cells.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)


def interactive() -> bool:
    return sys.stdout.isatty() and not os.environ.get("CI")


class TrainReporter:
    """Progress for ``dyncli train``: a rich bar on a terminal, a log line every N steps in CI."""

    def __init__(self, log_every: int = 50) -> None:
        self.log_every = log_every
        self.progress: Progress | None = None
        self.task: Any = None
        self.total = 0

    def start(self, total_steps: int) -> None:
        self.total = total_steps
        if interactive():
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"),
                TextColumn("loss {task.fields[loss]:.2f}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self.task = self.progress.add_task("train", total=total_steps, loss=float("nan"))
            self.progress.start()

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=loss)
        elif step % self.log_every == 0 or step == self.total:
            print(f"step {step}/{self.total} loss {loss:.3f} lr {lr:.2e}", flush=True)

    def epoch(self, summary: dict[str, Any]) -> None:
        line = (
            f"epoch {summary['epoch']} step {summary['step']}: train loss "
            f"{summary['train_loss']:.3f}, dev WER {100 * summary['dev_wer']:.2f}%, "
            f"dev CER {100 * summary['dev_cer']:.2f}%"
            + "".join(
                f", exit {k} WER {100 * v:.2f}%"
                for k, v in (summary.get("dev_exit_wer") or {}).items()
            )
            + (" (best, saved)" if summary.get("best") else "")
            + f" [{summary['seconds']:.0f}s]"
        )
        self.message(line)

    def message(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


LONG_AUDIO_SECONDS = 60.0  # decoding more audio than this is worth a progress display
MANY_ITEMS = 100  # as is reading this many files


def progress_wanted(audio_seconds: float, items: int, stream: IO[str] | None = None) -> bool:
    """Show progress: the work is long (``LONG_AUDIO_SECONDS`` of audio or ``MANY_ITEMS`` files)
    and ``stream`` (stderr by default) is a terminal outside CI. Never when piped."""
    out = sys.stderr if stream is None else stream
    tty = getattr(out, "isatty", None)
    if not (callable(tty) and tty()) or os.environ.get("CI"):
        return False
    return audio_seconds >= LONG_AUDIO_SECONDS or items >= MANY_ITEMS


class WorkProgress:
    """A :class:`dyncli.progress.Progress` shown as a rich bar on stderr, for long work only
    (see :func:`progress_wanted`); it never writes to stdout, and the bar is cleared at the end.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.shown = False
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._timed = False

    def begin(self, audio_seconds: float, items: int) -> None:
        self.shown = progress_wanted(audio_seconds, items, self.stream)

    def stage(self, label: str, total: float, timed: bool = False) -> None:
        self.end()
        if not self.shown:
            return
        # A timed stage has no refresh thread (it would take CPU from the measurement): it is
        # redrawn only when advanced, between measurements.
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            console=Console(file=self.stream),
            auto_refresh=not timed,
            transient=True,
            redirect_stdout=False,
        )
        self._timed = timed
        self._task = self._bar.add_task(label, total=total, note="")
        self._bar.start()

    def advance(self, amount: float = 1.0, note: str = "") -> None:
        if self._bar is None or self._task is None:
            return
        self._bar.update(self._task, advance=amount, note=note)
        if self._timed:
            self._bar.refresh()

    def end(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar, self._task = None, None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically, or to stdout when ``path`` is '-'."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    from dyncli.fileio import atomic_write_text

    atomic_write_text(path, text)


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def report_choice(reporter: Any, choice: Any, policy: str) -> None:
    """The --wer-budget dev sweep and the operating point it chose (or the closest miss), each
    threshold's dev WER against full depth with its 95% interval; a budget the dev set cannot
    resolve is said on stderr."""
    if choice is None:
        return
    import typer

    from dyncli.dynamic.operating_point import interval_text

    static, words = choice.static, int(choice.static["words"])
    on = f"points on {words} dev words"
    reporter.message(
        f"dev sweep ({policy}; full depth {pct(static['wer'])} WER on {words} words, "
        f"{choice.utterances} utterances; dWER with its 95% paired bootstrap interval):"
    )
    for row in choice.rows:
        reporter.message(
            f"  threshold {row['threshold']:g}: WER {pct(row['wer'])}, dWER "
            f"{interval_text(row['dwer'], row['dwer_low'], row['dwer_high'])} points, "
            f"{row['flops_ratio']:.2f}x the FLOPs"
        )
    if choice.warning:
        typer.echo(f"warning: {choice.warning}", err=True)
    point = choice.point
    if point is not None:
        delta = interval_text(point["dev_dwer"], point["dev_dwer_low"], point["dev_dwer_high"])
        reporter.message(
            f"operating point ({point['policy']}, chosen on dev): threshold "
            f"{point['threshold']:g}, dev WER {pct(point['dev_wer'])} vs "
            f"{pct(point['static_dev_wer'])} full depth, {delta} {on}, "
            f"{point['flops_ratio']:.2f}x the FLOPs; rule: {choice.rule}"
        )
    elif choice.closest is not None:
        c = choice.closest
        reporter.message(
            f"no threshold met the rule on dev ({choice.rule}); no operating point stored. "
            f"Closest: {c['policy']} @ {c['threshold']:g}, dev WER {pct(c['wer'])} vs "
            f"{pct(static['wer'])} full depth, "
            f"{interval_text(c['dwer'], c['dwer_low'], c['dwer_high'])} {on}: upper bound "
            f"{100 * (choice.excess or 0):.2f} points over the budget"
        )
