"""``dyncli evaluate``: WER, CER and real-time factor of a checkpoint on a data set."""

from __future__ import annotations

from typing import Any

from dyncli.cli.options import (
    DataOpt,
    FormatOpt,
    FullDepthOpt,
    JsonOpt,
    ModelArg,
    OutputFormat,
    PolicyOpt,
    RepeatsOpt,
    RuntimeOpt,
    SkipBadOpt,
    SkipLayerOpt,
    SkipNeighboursOpt,
    ThresholdOpt,
    TimingDeviceOpt,
    TimingThreadsOpt,
)

NAME = "evaluate"


def run(
    checkpoint: ModelArg = None,
    data: DataOpt = None,
    policy: PolicyOpt = None,
    threshold: ThresholdOpt = None,
    skip_layer: SkipLayerOpt = None,
    skip_neighbours: SkipNeighboursOpt = None,
    full_depth: FullDepthOpt = False,
    runtime: RuntimeOpt = None,
    threads: TimingThreadsOpt = 1,
    repeats: RepeatsOpt = 3,
    device: TimingDeviceOpt = "cpu",
    output_format: FormatOpt = OutputFormat.table,
    json_path: JsonOpt = None,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Greedy WER/CER and end-to-end RTF (median of repeats, after warm-up).

    With no CHECKPOINT or --data, uses the bundled demo model and evaluation set. A dynamic
    checkpoint runs as 'dyncli transcribe' runs it: at its stored operating point unless
    --full-depth or --policy/--threshold say otherwise; the report says which ran. A .onnx
    file (or --runtime onnxruntime) runs in onnxruntime, batch 1, on the CPU.
    RTF = processing seconds / audio seconds (features + encoder + decoding, batch size 1).
    """
    from rich.markup import escape
    from rich.table import Table

    from dyncli import assets
    from dyncli.cli.output import (
        check_stdout,
        emit_machine,
        pct,
        print_line,
        print_table,
        warn_skipped,
        write_json,
    )
    from dyncli.cli.paths import check_paths
    from dyncli.cli.progress import WorkProgress
    from dyncli.measure.evaluate import evaluate

    check_stdout(output_format, json_path)
    ckpt = checkpoint or assets.require(assets.DEMO_STATIC, "demo model")
    manifest = data or assets.require(assets.EVAL_MANIFEST, "evaluation set")
    check_paths(
        inputs={"CHECKPOINT": ckpt, "--data": manifest},
        outputs={"--json": json_path},
        streams=["--json"],
        manifests=["--data"],
    )
    progress = WorkProgress()
    try:
        report = evaluate(
            checkpoint=ckpt,
            data=manifest,
            threads=threads,
            repeats=repeats,
            device=device,
            skip_bad=skip_bad,
            policy=policy,
            threshold=threshold,
            overrides={"layer": skip_layer, "neighbours": skip_neighbours},
            full_depth=full_depth,
            on_skip=warn_skipped,
            progress=progress,
            runtime=None if runtime is None else runtime.value,
        )
    finally:
        progress.end()
    if json_path is not None:
        write_json(json_path, report.to_json())
    if emit_machine(output_format, report.to_json(), [record(report)]):
        return
    if json_path is not None and str(json_path) == "-":
        return
    env = report.environment
    # escape(): a '[/b]' in a path is text, not rich markup (it raised MarkupError)
    table = Table(title=escape(f"dyncli evaluate: {report.model['path']}"))
    for col in ("ran", "utterances", "audio", "WER", "CER", "RTF (median)", "RTF min-max", "RTFx"):
        table.add_column(col, justify="right")
    run_cell = (
        "full depth"
        if report.run.full_depth
        else (f"{report.run.policy} @ {report.run.threshold:g}")
    )
    table.add_row(
        escape(run_cell),
        str(report.data["utterances"]),
        f"{report.data['audio_seconds']:.1f} s",
        pct(report.wer),
        pct(report.cer),
        f"{report.rtf:.4f}",
        f"{report.rtf_min:.4f}-{report.rtf_max:.4f}",
        f"{1 / report.rtf:.1f}",
    )
    print_table(table)
    print_line(f"ran: {report.run.describe()}")
    layers = report.model.get("layers")
    print_line(
        f"data: {report.data['path']} ({report.words} words); model: {report.model['backbone']}, "
        + (f"{layers} layers, " if layers is not None else "")
        + f"{report.model['method']}"
    )
    runtime_name = report.model.get("runtime", "torch")
    engine = (
        f"onnxruntime {env['onnxruntime']}"
        if runtime_name == "onnxruntime" and env.get("onnxruntime")
        else f"torch {env['torch']}"
    )
    print_line(
        f"timing: {env['device_name']} ({env['cpu']}), {env['threads']} thread(s), {engine}, "
        f"{report.repeats} timed passes after a warm-up; RTF = processing s / audio s, end to end"
    )
    for ex in report.examples[:3]:
        print_line(f"  ref: {ex['ref']}")
        print_line(f"  hyp: {ex['hyp']}")
    if report.skipped:
        print_line(f"skipped {len(report.skipped)} bad entries (--skip-bad)")


def record(report: Any) -> dict[str, Any]:
    """The report as one flat TSV row: every figure of the JSON 'result', and what ran."""
    data = report.data
    return {
        "model": report.model["path"],
        "data": data["path"],
        "utterances": data["utterances"],
        "audio_seconds": data["audio_seconds"],
        "policy": report.run.policy,
        "threshold": report.run.threshold,
        "run_source": report.run.source,
        "runtime": report.model.get("runtime", "torch"),
        **{k: v for k, v in report.to_json()["result"].items() if k != "rtf_definition"},
        "threads": report.environment["threads"],
        "device": report.environment["device"],
        "skipped": len(report.skipped),
    }
