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
) -> None:
    """Transcribe audio files with greedy CTC decoding: one 'path<TAB>text' line per file."""
    from dyncli.evaluation import transcribe

    for path, text in transcribe(
        checkpoint=checkpoint, audio=audio, threads=threads, device=device
    ):
        typer.echo(f"{path}\t{text}")
