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
OptionalDynamicCheckpointArg = Annotated[
    Path | None,
    typer.Argument(
        help="A dynamic dyncli checkpoint. Default: the bundled dynamic demo model.",
        show_default=False,
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
ExitsOpt = Annotated[
    str | None,
    typer.Option(
        "--exits",
        help="Comma-separated layers (1-based) that get an intermediate CTC head, e.g. 4,8.",
        show_default=False,
    ),
]
ExitWeightOpt = Annotated[
    float,
    typer.Option("--exit-weight", min=0.0, help="Weight of each intermediate CTC loss in the sum."),
]
FinalWeightOpt = Annotated[
    float, typer.Option("--final-weight", min=0.0, help="Weight of the final CTC loss.")
]


def parse_exits(text: str | None) -> list[int]:
    """'4,8' -> [4, 8]; refuses anything that is not a list of positive integers."""
    from dyncli.errors import UsageError

    if text is None or not text.strip():
        return []
    try:
        exits = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(
            f"--exits expects comma-separated layer numbers (e.g. 4,8), got {text!r}"
        ) from None
    return exits


def parse_thresholds(text: str | None) -> list[float] | None:
    """'0.5,0.7,0.9' (a list) or '0.5:0.99:10' (START:STOP:COUNT, both ends included)."""
    from dyncli.errors import UsageError

    if text is None or not text.strip():
        return None
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise UsageError(
                f"--thresholds range must be START:STOP:COUNT (e.g. 0.5:0.99:10), got {text!r}"
            ) from None
        if count < 1:
            raise UsageError(f"--thresholds COUNT must be at least 1, got {count}")
        if count == 1:
            return [start]
        step = (stop - start) / (count - 1)
        return [round(start + i * step, 6) for i in range(count)]
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(
            f"--thresholds expects numbers like 0.5,0.7,0.9 or a range 0.5:0.99:10, got {text!r}"
        ) from None
