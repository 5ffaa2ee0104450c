"""``dyncli transcribe``: print transcripts of audio files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dyncli.cli.options import (
    DeviceOpt,
    FullDepthOpt,
    JobThreadsOpt,
    PolicyOpt,
    RuntimeOpt,
    SkipBadOpt,
    SkipLayerOpt,
    SkipNeighboursOpt,
    ThresholdOpt,
    TranscribeModelArg,
    TranscriptFormat,
    TranscriptFormatOpt,
    default_job_threads,
)

NAME = "transcribe"


def run(
    checkpoint: TranscribeModelArg,
    audio: Annotated[list[Path], typer.Argument(help="Audio files (any rate; mono or stereo).")],
    threads: JobThreadsOpt = None,
    device: DeviceOpt = "auto",
    policy: PolicyOpt = None,
    threshold: ThresholdOpt = None,
    skip_layer: SkipLayerOpt = None,
    skip_neighbours: SkipNeighboursOpt = None,
    full_depth: FullDepthOpt = False,
    runtime: RuntimeOpt = None,
    skip_bad: SkipBadOpt = False,
    output_format: TranscriptFormatOpt = TranscriptFormat.tsv,
) -> None:
    """Transcribe audio files with greedy CTC decoding: one 'path<TAB>text' line per file.

    A dynamic checkpoint runs at its stored operating point (see 'dyncli convert
    --wer-budget') unless --full-depth or --policy/--threshold say otherwise; what ran is
    said on stderr, so stdout stays one line per file. A .onnx file from 'dyncli export' (or
    --runtime onnxruntime) runs in onnxruntime with the policy inside the graph. In the
    default tsv output a backslash, tab, newline or carriage return in a path or transcript is
    written as \\\\, \\t, \\n or \\r (an undecodable file-name byte as \\xNN); --format
    jsonl writes JSON objects instead.
    Under torchrun only rank 0 works and prints; the other ranks exit at once.
    """
    from dyncli.cli.output import note, print_record, transcript_line, warn_skipped
    from dyncli.cli.progress import WorkProgress
    from dyncli.measure.evaluate import transcribe
    from dyncli.training.distributed import is_main_process

    if not is_main_process():
        return
    progress = WorkProgress()
    try:
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
            on_skip=warn_skipped,
            progress=progress,
            runtime=None if runtime is None else runtime.value,
        )
    finally:
        progress.end()
    note(f"ran: {choice.describe()}")
    for path, text in results:
        print_record(transcript_line(str(path), text, output_format.value))
