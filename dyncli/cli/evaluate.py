"""``dyncli evaluate``: WER, CER and real-time factor of a checkpoint on a data set."""

from __future__ import annotations

from typing import Annotated

import typer

from dyncli.cli.options import (
    DataOpt,
    DeviceOpt,
    JsonOpt,
    OptionalCheckpointArg,
    SkipBadOpt,
    ThreadsOpt,
)

NAME = "evaluate"


def run(
    checkpoint: OptionalCheckpointArg = None,
    data: DataOpt = None,
    threads: ThreadsOpt = 1,
    repeats: Annotated[int, typer.Option(min=1, help="Timed passes (median reported).")] = 3,
    device: DeviceOpt = "cpu",
    json_path: JsonOpt = None,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Greedy WER/CER and end-to-end RTF (median of repeats, after warm-up).

    With no CHECKPOINT or --data, uses the bundled demo model and evaluation set.
    RTF = processing seconds / audio seconds (features + encoder + decoding, batch size 1).
    """
    from rich.table import Table

    from dyncli import assets
    from dyncli.cli.render import console, pct, write_json
    from dyncli.evaluation import evaluate

    ckpt = checkpoint or assets.require(assets.DEMO_STATIC, "demo model")
    manifest = data or assets.require(assets.EVAL_MANIFEST, "evaluation set")
    report = evaluate(
        checkpoint=ckpt,
        data=manifest,
        threads=threads,
        repeats=repeats,
        device=device,
        skip_bad=skip_bad,
    )
    if json_path is not None:
        write_json(json_path, report.to_json())
        if str(json_path) == "-":
            return
    env = report.environment
    table = Table(title=f"dyncli evaluate: {report.model['path']}")
    for col in ("utterances", "audio", "WER", "CER", "RTF (median)", "RTF min-max", "RTFx"):
        table.add_column(col, justify="right")
    table.add_row(
        str(report.data["utterances"]),
        f"{report.data['audio_seconds']:.1f} s",
        pct(report.wer),
        pct(report.cer),
        f"{report.rtf:.4f}",
        f"{report.rtf_min:.4f}-{report.rtf_max:.4f}",
        f"{1 / report.rtf:.1f}",
    )
    console.print(table)
    console.print(
        f"data: {report.data['path']} ({report.words} words); model: {report.model['backbone']}, "
        f"{report.model['layers']} layers, {report.model['method']}",
        highlight=False,
    )
    console.print(
        f"timing: {env['device_name']} ({env['cpu']}), {env['threads']} thread(s), torch "
        f"{env['torch']}, {report.repeats} timed passes after a warm-up; RTF = processing s / "
        "audio s, end to end",
        highlight=False,
    )
    for ex in report.examples[:3]:
        console.print(f"  ref: {ex['ref']}\n  hyp: {ex['hyp']}", highlight=False, markup=False)
    if report.skipped:
        console.print(f"skipped {len(report.skipped)} bad entries (--skip-bad)")
