"""Shared option types: the same flag means the same thing, with the same help, in every command.

One name and one syntax per concept:

* ``LOW:HIGH`` is always a closed range (``--speed 0.9:1.1``, ``--skip-threshold-range``);
  ``LOW:HIGH:COUNT`` is COUNT evenly spaced values over that range (``--thresholds``).
* The blank-skip settings are ``--skip-layer`` and ``--skip-neighbours`` wherever they apply.
* Defaults differ only where the job differs, and the help says why: commands that time
  (``evaluate``, ``profile``) default to 1 thread on the CPU, so RTF figures are reproducible
  and comparable; commands that do a job (``train``, ``convert``, ``transcribe``) use every
  core, and a GPU when there is one.

Renamed flags keep their old spelling for one release (see ``dyncli.cli.command.RENAMED``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

CheckpointArg = Annotated[
    Path,
    typer.Argument(
        help="A dyncli checkpoint (.ckpt), or a model directory an installed plugin reads "
        "(dyncli-hf: Hugging Face CTC models).",
        show_default=False,
    ),
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
OutputOpt = Annotated[
    Path,
    typer.Option(
        "--output",
        "-o",
        help="Where to write the checkpoint (export: the exported file); written atomically on "
        "success.",
    ),
]
JsonOpt = Annotated[
    Path | None,
    typer.Option(
        "--json",
        help="Also write the report as JSON to this path ('-' for stdout).",
        show_default=False,
    ),
]


class OutputFormat(StrEnum):
    table = "table"
    tsv = "tsv"
    json = "json"


FormatOpt = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        case_sensitive=False,
        help="What stdout gets: 'table' (rich; full width, never cut, when piped), 'tsv' (one "
        "header line, then one line per row with every figure at full precision, a tab, "
        "newline or backslash in a label written as \\t, \\n or \\\\: for shell "
        "scripts and spreadsheets) or 'json' (the --json report).",
    ),
]


class TranscriptFormat(StrEnum):
    tsv = "tsv"
    jsonl = "jsonl"


TranscriptFormatOpt = Annotated[
    TranscriptFormat,
    typer.Option(
        "--format",
        case_sensitive=False,
        help="'tsv': one 'path<TAB>text' line per file, with backslash, tab, newline and "
        "carriage return in either field written as \\\\, \\t, \\n and \\r; 'jsonl': one JSON "
        'object {"audio": path, "text": transcript} per line.',
    ),
]

ALL_CORES = "all cores"


def default_job_threads() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


JobThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch. Default: every core (this command does a job; it does not "
        "time one).",
        show_default=False,
    ),
]
TimingThreadsOpt = Annotated[
    int,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch. Default 1: one thread gives reproducible RTF figures that "
        "compare across machines; the count is recorded in the report.",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'. Default auto: this "
        "command does a job, so it uses a GPU when there is one.",
    ),
]
TimingDeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA if present, else CPU). Default cpu: a "
        "timing is taken where you ask, not wherever the hardware happens to allow.",
    ),
]
SkipBadOpt = Annotated[
    bool,
    typer.Option(
        "--skip-bad",
        help="Skip unreadable audio (NaN/inf samples included), missing files, empty "
        "transcripts and bad manifest lines (non-string text, extra TSV columns, utterance ids "
        "given twice; counted and reported) instead of stopping at the first one.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (data order, augmentation).")]
RepeatsOpt = Annotated[
    int,
    typer.Option(
        "--repeats",
        min=1,
        max=1000,
        help="Timed passes over the data (median reported, with min and max).",
    ),
]

# Dynamic depth: the stored operating point is the default everywhere.
PolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--policy",
        help="Skip policy ({skip_policies}). Default: the checkpoint's stored operating point's "
        "policy (blank-skip when none is stored).",
        show_default=False,
    ),
]
ProfilePolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--policy",
        help="Skip policy ({skip_policies}), several as a comma list, or 'all' (every policy "
        "the checkpoint can run): one table, the static row first, then the rows by executed "
        "FLOPs. Default: the checkpoint's stored operating point's policy (blank-skip when none "
        "is stored).",
        show_default=False,
    ),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        help="The policy's threshold. Default: the stored operating point's.",
        show_default=False,
    ),
]


class Runtime(StrEnum):
    torch = "torch"
    onnxruntime = "onnxruntime"


RuntimeOpt = Annotated[
    Runtime | None,
    typer.Option(
        "--runtime",
        help="torch: dyncli's own eager path. onnxruntime: the run exported on the fly ('dyncli "
        "export': front end and policy inside one graph) and run by onnxruntime on the CPU, one "
        "utterance at a time; needs the export extra (pip install 'dyncli\\[export]'). profile "
        "then shows onnxruntime's rows beside dyncli eager's, timed in the same rounds. "
        "Default: torch, or onnxruntime for a .onnx file.",
        show_default=False,
    ),
]
ModelArg = Annotated[
    Path | None,
    typer.Argument(
        help="A dyncli checkpoint, or a .onnx file from 'dyncli export' (run by onnxruntime, "
        "with the policy inside it). Default: the bundled demo model.",
        show_default=False,
    ),
]
TranscribeModelArg = Annotated[
    Path,
    typer.Argument(
        help="A dyncli checkpoint (.ckpt), a model directory an installed plugin reads "
        "(dyncli-hf: Hugging Face CTC models), or a .onnx file from 'dyncli export' (run by "
        "onnxruntime, with the policy inside it).",
        show_default=False,
    ),
]
FullDepthOpt = Annotated[
    bool,
    typer.Option(
        "--full-depth",
        help="Run every layer on every frame, ignoring the stored operating point.",
    ),
]
SkipLayerOpt = Annotated[
    int | None,
    typer.Option(
        "--skip-layer",
        min=1,
        help="blank-skip: the exit layer (1-based) whose blank posterior decides which frames "
        "skip the layers after it. Default: the stored operating point's, else the "
        "skip-aware training layer, else the exit nearest mid-depth.",
        show_default=False,
    ),
]
SkipNeighboursOpt = Annotated[
    int | None,
    typer.Option(
        "--skip-neighbours",
        min=0,
        help="blank-skip: also keep this many frames on each side of every kept frame. "
        "Default: the stored operating point's, else 1.",
        show_default=False,
    ),
]

# Training (train, convert): one definition each; convert's defaults are fine-tuning defaults.
ExitsOpt = Annotated[
    str | None,
    typer.Option(
        "--exits",
        help="Comma-separated layers (1-based) that get an intermediate CTC head, e.g. 4,8.",
        show_default=False,
    ),
]
FreezeBackboneOpt = Annotated[
    bool,
    typer.Option(
        "--freeze-backbone/--fine-tune",
        help="Train only the exit heads (every backbone weight, the final head included, and so "
        "full depth's outputs stay as they are), or fine-tune everything with the summed losses.",
    ),
]
ExitWeightOpt = Annotated[
    float,
    typer.Option("--exit-weight", min=0.0, help="Weight of each intermediate CTC loss in the sum."),
]
FinalWeightOpt = Annotated[
    float, typer.Option("--final-weight", min=0.0, help="Weight of the final CTC loss.")
]
EpochsOpt = Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")]
MaxStepsOpt = Annotated[
    int | None,
    typer.Option("--max-steps", min=1, help="Stop after this many steps.", show_default=False),
]
LrOpt = Annotated[
    float, typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW, linear warm-up).")
]
WarmupStepsOpt = Annotated[
    int, typer.Option("--warmup-steps", min=1, help="Steps of linear learning-rate warm-up.")
]
RunDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--run-dir",
        help="Where the run keeps its in-progress state (last resumable state and best epoch "
        "so far). Default: OUTPUT.run beside the output. It must be new, empty or one dyncli "
        "made (marker file .dyncli-run), and one run at a time uses it (locked). The output is "
        "written once, when the run ends; dyncli then deletes the files it wrote there (and the "
        "directory, if it made it), nothing else.",
        show_default=False,
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the unfinished run in the run directory from its last saved state "
        "(same options required); it ends where an uninterrupted run would.",
    ),
]
SaveEveryOpt = Annotated[
    int,
    typer.Option(
        "--save-every",
        min=1,
        help="Steps between resumable states in the run directory (one is also saved at the "
        "end of every epoch).",
    ),
]
LogEveryOpt = Annotated[
    int,
    typer.Option(
        "--log-every",
        min=1,
        help="Off a terminal, print the step, loss (the global batch's, over all processes) "
        "and learning rate every N steps.",
    ),
]
WerBudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--wer-budget",
        min=0.0,
        help="After training, sweep --policy on the dev set and store, as the checkpoint's "
        "operating point, the threshold with the fewest executed FLOPs whose dev WER increase "
        "over full depth (absolute, 0.01 = 1 point) is within this budget at the upper end of "
        "its 95% paired bootstrap interval. A budget smaller than the dev set can resolve is "
        "warned about, naming the smallest it can; only thresholds with the same dev errors "
        "as full depth qualify then.",
        show_default=False,
    ),
]
BudgetPolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--policy",
        help="Skip policy the --wer-budget operating point is chosen for ({skip_policies}). "
        "Default: the one the training prepared the model for (drop after layer drop, else "
        "blank-skip).",
        show_default=False,
    ),
]
AugmentOpt = Annotated[
    bool,
    typer.Option(
        "--augment/--no-augment",
        help="All training augmentation (speed, VTLP, noise, gain, SpecAugment) on or off.",
    ),
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


@dataclass(frozen=True)
class RangeDomain:
    """Where a LOW:HIGH option's ends may lie: above ``above`` (exclusive), at most ``at_most``;
    ``example`` is a value the option accepts (a test parses each one)."""

    example: str
    above: float | None = None
    at_most: float | None = None

    def describe(self) -> str:
        low = f"{self.above:g} < LOW" if self.above is not None else "LOW"
        high = f"HIGH <= {self.at_most:g}" if self.at_most is not None else "HIGH"
        return f"{low} <= {high}"


# Every LOW:HIGH option, by flag.
RANGE_DOMAINS: dict[str, RangeDomain] = {
    "--speed": RangeDomain("0.9:1.1", above=0.0),
    "--vtlp": RangeDomain("0.9:1.1", above=0.0),
    "--noise-snr": RangeDomain("10:40"),
    "--skip-threshold-range": RangeDomain("0.5:0.99", above=0.0, at_most=1.0),
}


def parse_range(text: str, flag: str) -> tuple[float, float]:
    """'LOW:HIGH' -> (LOW, HIGH): a closed range of finite numbers, LOW <= HIGH, inside the
    flag's :data:`RANGE_DOMAINS` entry."""
    from dyncli.errors import UsageError

    domain = RANGE_DOMAINS.get(flag, RangeDomain("0:1"))
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise UsageError(
            f"{flag} expects a range LOW:HIGH (e.g. {domain.example}), got {text!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UsageError(f"{flag}: LOW and HIGH must be finite numbers, got {text!r}")
    if lo > hi:
        raise UsageError(f"{flag}: LOW must not exceed HIGH (got {text!r})")
    if (domain.above is not None and lo <= domain.above) or (
        domain.at_most is not None and hi > domain.at_most
    ):
        raise UsageError(f"{flag} must satisfy {domain.describe()}, got {text!r}")
    return lo, hi


def check_choice(flag: str, value: str, choices: Sequence[str]) -> None:
    """Refuse a ``value`` of ``flag`` that is not one of ``choices``."""
    from dyncli.errors import UsageError

    if value not in choices:
        raise UsageError(f"unknown {flag} {value!r}; choose one of: {', '.join(choices)}")


def refuse_inapplicable(
    ctx: typer.Context, chosen: str, applies: Mapping[str, Collection[str]], by: str = "--method"
) -> None:
    """Refuse each option the user gave that does not apply to ``by chosen`` (e.g. ``--method
    gates``). ``applies`` maps a parameter name to the choices it applies to. An option counts
    as given when it did not come from its default; a boolean flag only when it is on."""
    from dyncli.cli.command import flag_name
    from dyncli.errors import UsageError

    params = {p.name: p for p in ctx.command.params}
    for name, choices in applies.items():
        if chosen in choices or not was_given(ctx, name):
            continue
        if ctx.params.get(name) is False:
            continue
        raise UsageError(
            f"{flag_name(params[name])} does not apply to {by} {chosen} (only to "
            f"{by} {', '.join(choices)})"
        )


def was_given(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave parameter ``name`` (on the command line or in the environment)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def check_loss_weights(weights: Mapping[str, tuple[float, str]]) -> None:
    """Refuse loss weights that are all 0 (nothing would be trained); warn once for each 0.

    ``weights`` maps a flag to its value and what its loss term trains.
    """
    from dyncli.errors import UsageError

    if all(w == 0 for w, _ in weights.values()):
        flags = " and ".join(weights)
        raise UsageError(
            f"{flags} {'is' if len(weights) == 1 else 'are all'} 0: no loss term is left, so "
            "nothing would be trained; give a positive weight"
        )
    for flag, (w, what) in weights.items():
        if w == 0:
            from dyncli.cli.output import warn

            warn(f"{flag} 0 switches off the loss that trains {what}")


MAX_THRESHOLDS = 1000  # --thresholds: more rows than any table or timing run can use


def parse_thresholds(text: str | None) -> list[float] | None:
    """'0.5,0.7,0.9' (a list) or '0.5:0.99:10' (LOW:HIGH:COUNT: COUNT evenly spaced values over
    the range LOW:HIGH, both ends included). Refuses non-finite values, a value given twice
    (after the 6-decimal rounding every threshold gets) and more than ``MAX_THRESHOLDS``."""
    import math

    from dyncli.dynamic.operating_point import canonical_threshold
    from dyncli.errors import UsageError

    if text is None or not text.strip():
        return None
    text = text.strip()
    syntax = (
        f"--thresholds expects a list 0.5,0.7,0.9 or LOW:HIGH:COUNT (e.g. 0.5:0.99:10), "
        f"got {text!r}"
    )
    if ":" in text:
        parts = text.split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise UsageError(syntax) from None
        if count < 1:
            raise UsageError(f"--thresholds COUNT must be at least 1, got {count}")
        if count > MAX_THRESHOLDS:
            raise UsageError(f"--thresholds COUNT must be at most {MAX_THRESHOLDS}, got {count}")
        raw = [start, stop]
        step = (stop - start) / (count - 1) if count > 1 else 0.0
        values = [start + i * step for i in range(count)]
    else:
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise UsageError(syntax) from None
        raw = values
        if not values:
            raise UsageError(f"--thresholds: no thresholds in {text!r}")
        if len(values) > MAX_THRESHOLDS:
            raise UsageError(
                f"--thresholds: at most {MAX_THRESHOLDS} thresholds, got {len(values)}"
            )
    bad = [v for v in raw if not math.isfinite(v)]
    if bad:
        raise UsageError(f"--thresholds: {bad[0]} is not a finite number (in {text!r})")
    out = [canonical_threshold(v) for v in values]
    seen: set[float] = set()
    for v in out:
        if v in seen:
            raise UsageError(
                f"--thresholds gives {v:g} twice (thresholds are rounded to 6 decimals); "
                "give each value once"
            )
        seen.add(v)
    return out


def fine_tune_config(
    base: Any,
    *,
    epochs: int,
    max_steps: int | None,
    lr: float,
    warmup_steps: int,
    seed: int,
    device: str,
    skip_bad: bool,
    save_every: int,
    augment: bool,
) -> Any:
    """A recipe's default ``TrainConfig`` with the shared training options applied
    (``convert``, ``distill`` and ``prune`` take the same ones)."""
    import dataclasses

    from dyncli.training.config import check_config

    config = dataclasses.replace(
        base,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        warmup_steps=warmup_steps,
        seed=seed,
        device=device,
        skip_bad=skip_bad,
        save_every=save_every,
        augment=dataclasses.replace(base.augment, enabled=augment),
    )
    check_config(config)  # up front, before any checkpoint or data is read
    return config
