"""Progress displays of the commands: a rich bar on a terminal, plain log lines in CI logs and
pipes. They print through the one output sink, :mod:`dyncli.cli.output`."""

from __future__ import annotations

import os
import sys
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

from dyncli.cli.output import console, interactive, print_line


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
            print_line(f"step {step}/{self.total} loss {loss:.3f} lr {lr:.2e}")

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
            print_line(text)

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
