"""``dyncli transcribe``: print transcripts of audio files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dyncli.cli.options import (
    CheckpointArg,
    DeviceOpt,
    FullDepthOpt,
    JobThreadsOpt,
    PolicyOpt,
    SkipBadOpt,
    SkipLayerOpt,
    SkipNeighboursOpt,
    ThresholdOpt,
    default_job_threads,
)

NAME = "transcribe"


def run(
    checkpoint: CheckpointArg,
    audio: Annotated[list[Path], typer.Argument(help="Audio files (any rate; mono or stereo).")],
    threads: JobThreadsOpt = None,
    device: DeviceOpt = "auto",
    policy: PolicyOpt = None,
    threshold: ThresholdOpt = None,
    skip_layer: SkipLayerOpt = None,
    skip_neighbours: SkipNeighboursOpt = None,
    full_depth: FullDepthOpt = False,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Transcribe audio files with greedy CTC decoding: one 'path<TAB>text' line per file.

    A dynamic checkpoint runs at its stored operating point (see 'dyncli convert
    --wer-budget') unless --full-depth or --policy/--threshold say otherwise; what ran is
    said on stderr, so stdout stays one line per file.
    """
    from dyncli.evaluation import transcribe

    def skipped(message: str) -> None:
        typer.echo(f"skipped: {message}", err=True)

    results, choice = transcribe(
        checkpoint=checkpoint,
        audio=audio,
        threads=threads or default_job_threads(),
        device=device,
        policy=policy,
        threshold=threshold,
        overrides={"layer": skip_layer, "neighbours": skip_neighbours},
        full_depth=full_depth,
        skip_bad=skip_bad,
        on_skip=skipped,
    )
    typer.echo(f"ran: {choice.describe()}", err=True)
    for path, text in results:
        typer.echo(f"{path}\t{text}")
