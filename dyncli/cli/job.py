"""What every training command (``train``, ``convert``, ``distill``, ``prune``) does around its
recipe: set the threads, report on rank 0 only (silent on the others), close the progress
display however the run ends, and say where the best epoch went."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dyncli.training.config import Reporter, TrainResult


@dataclass
class Job:
    reporter: Reporter
    main: bool  # rank 0 (or the only process): the one that reports and writes


@contextmanager
def training_job(threads: int | None, log_every: int) -> Iterator[Job]:
    """``--threads`` applied (default: every core this process may use) and the reporter the
    recipe writes to: a :class:`~dyncli.cli.render.TrainReporter` on rank 0, silent elsewhere."""
    import torch

    from dyncli.cli.options import default_job_threads
    from dyncli.cli.render import TrainReporter
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
    from dyncli.cli.render import pct

    return (
        f"best epoch {result.best_epoch}: dev WER {pct(result.best_dev_wer)}"
        + (f", CER {pct(result.best_dev_cer)}" if cer else "")
        + "".join(f", exit {k}: {pct(v)}" for k, v in result.best_dev_exit_wer.items())
        + f"; saved {output} ({result.seconds / 60:.1f} min)"
    )
