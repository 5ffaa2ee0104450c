"""What every training command (``train``, ``convert``, ``distill``, ``prune``) does around its
recipe: set the threads, report on rank 0 only (silent on the others), close the progress
display however the run ends, and say where the best epoch went."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dyncli.training.config import Reporter, TrainResult


@dataclass
class Job:
    reporter: Reporter
    main: bool  # rank 0 (or the only process): the one that reports and writes


@contextmanager
def training_job(threads: int | None, log_every: int) -> Iterator[Job]:
    """``--threads`` applied (default: every core this process may use) and the reporter the
    recipe writes to: a :class:`~dyncli.cli.progress.TrainReporter` on rank 0, silent elsewhere."""
    import torch

    from dyncli.cli.options import default_job_threads
    from dyncli.cli.progress import TrainReporter
    from dyncli.training.config import SilentReporter
    from dyncli.training.distributed import is_main_process

    torch.set_num_threads(threads or default_job_threads())
    main = is_main_process()
    reporter: Reporter = TrainReporter(log_every) if main else SilentReporter()
    try:
        yield Job(reporter, main)
    finally:
        if isinstance(reporter, TrainReporter):
            reporter.close()


def best_epoch_line(result: TrainResult, output: Path, cer: bool = False) -> str:
    """``best epoch N: dev WER x[, CER y][, exit k: z]; saved OUT (M min)``."""
    from dyncli.cli.output import pct

    return (
        f"best epoch {result.best_epoch}: dev WER {pct(result.best_dev_wer)}"
        + (f", CER {pct(result.best_dev_cer)}" if cer else "")
        + "".join(f", exit {k}: {pct(v)}" for k, v in result.best_dev_exit_wer.items())
        + f"; saved {output} ({result.seconds / 60:.1f} min)"
    )


def report_choice(reporter: Any, choice: Any, policy: str) -> None:
    """The --wer-budget dev sweep and the operating point it chose (or the closest miss), each
    threshold's dev WER against full depth with its 95% interval; a budget the dev set cannot
    resolve is said on stderr."""
    if choice is None:
        return
    from dyncli.cli.output import pct, warn
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
        warn(choice.warning)
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
