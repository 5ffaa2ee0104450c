"""Rendering helpers: rich on a terminal, plain lines in CI logs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
    """The --wer-budget dev sweep and the operating point it chose (or the closest miss)."""
    if choice is None:
        return
    static, words = choice.static, int(choice.static["words"])
    reporter.message(f"dev sweep ({policy}; full depth {pct(static['wer'])} WER on {words} words):")
    for row in choice.rows:
        delta = round((row["wer"] - static["wer"]) * words)
        reporter.message(
            f"  threshold {row['threshold']:g}: WER {pct(row['wer'])} ({delta:+d} words), "
            f"{row['flops_ratio']:.2f}x the FLOPs"
        )
    point = choice.point
    if point is not None:
        reporter.message(
            f"operating point ({point['policy']}, chosen on dev): threshold "
            f"{point['threshold']:g}, dev WER {pct(point['dev_wer'])} vs "
            f"{pct(point['static_dev_wer'])} full depth, {point['flops_ratio']:.2f}x the FLOPs; "
            f"allowed increase: {choice.rule}"
        )
    elif choice.closest is not None:
        c = choice.closest
        words = (c["wer"] - choice.static["wer"]) * choice.static["words"]
        reporter.message(
            f"no threshold met the tolerance on dev ({choice.rule}); no operating point stored. "
            f"Closest: {c['policy']} @ {c['threshold']:g}, dev WER {pct(c['wer'])} vs "
            f"{pct(choice.static['wer'])} full depth ({words:+.0f} words), "
            f"{100 * (choice.excess or 0):.2f} points over the tolerance"
        )
