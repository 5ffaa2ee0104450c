"""``dyncli transcribe``: print transcripts of audio files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dyncli.cli.options import CheckpointArg, DeviceOpt, ThreadsOpt

NAME = "transcribe"


def run(
    checkpoint: CheckpointArg,
    audio: Annotated[list[Path], typer.Argument(help="Audio files (any rate; mono or stereo).")],
    threads: ThreadsOpt = 1,
    device: DeviceOpt = "cpu",
    policy: Annotated[
        str | None, typer.Option(help="Skip policy (default: the stored operating point).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Policy threshold (default: the stored one).")
    ] = None,
    full_depth: Annotated[
        bool, typer.Option("--full-depth", help="Run every layer (ignore the operating point).")
    ] = False,
) -> None:
    """Transcribe audio files with greedy CTC decoding: one 'path<TAB>text' line per file.

    A dynamic checkpoint runs at its stored operating point (see 'dyncli convert
    --wer-budget') unless --full-depth or --policy/--threshold say otherwise.
    """
    from dyncli.evaluation import transcribe

    for path, text in transcribe(
        checkpoint=checkpoint,
        audio=audio,
        threads=threads,
        device=device,
        policy=policy,
        threshold=threshold,
        full_depth=full_depth,
    ):
        typer.echo(f"{path}\t{text}")
