"""Shared option types: the same flag means the same thing in every command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

CheckpointArg = Annotated[
    Path, typer.Argument(help="A dyncli checkpoint (.ckpt).", show_default=False)
]
OptionalCheckpointArg = Annotated[
    Path | None,
    typer.Argument(
        help="A dyncli checkpoint. Default: the bundled demo model.", show_default=False
    ),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="Evaluation data: .jsonl (NeMo), .tsv (path<TAB>text), a Kaldi data dir or a "
        "LibriSpeech-style folder. Default: the bundled evaluation set.",
        show_default=False,
    ),
]
TrainDataOpt = Annotated[
    Path, typer.Option("--train", help="Training manifest (any supported format).")
]
DevDataOpt = Annotated[
    Path,
    typer.Option("--dev", help="Dev manifest: picks the best checkpoint (by WER)."),
]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Where to write the checkpoint.")]
JsonOpt = Annotated[
    Path | None,
    typer.Option("--json", help="Also write the report as JSON to this path ('-' for stdout)."),
]
ThreadsOpt = Annotated[
    int,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch (set explicitly so timings are reproducible).",
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="'auto' (CUDA if present, else CPU), 'cpu' or 'cuda'.")
]
SkipBadOpt = Annotated[
    bool,
    typer.Option(
        "--skip-bad",
        help="Skip unreadable audio, missing files and empty transcripts (counted and reported) "
        "instead of stopping at the first one.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (data order, augmentation).")]
