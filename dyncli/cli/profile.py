"""``dyncli profile``: WER/CER, executed FLOPs and RTF across skip thresholds, with CI gates."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dyncli.cli.options import (
    DataOpt,
    DeviceOpt,
    JsonOpt,
    OptionalDynamicCheckpointArg,
    SkipBadOpt,
    ThreadsOpt,
    parse_thresholds,
)
from dyncli.plugins import skip_policies

NAME = "profile"


def _policy_help() -> str:
    specs = skip_policies()
    names = "; ".join(f"{n}: {s.description}" for n, s in sorted(specs.items()))
    return (
        f"Skip policy ({names}). Default: the checkpoint's stored operating point, else blank-skip."
    )


PolicyOpt = Annotated[str | None, typer.Option("--policy", help=_policy_help(), show_default=False)]


def run(
    checkpoint: OptionalDynamicCheckpointArg = None,
    data: DataOpt = None,
    policy: PolicyOpt = None,
    thresholds: Annotated[
        str | None,
        typer.Option(
            "--thresholds",
            help="Thresholds to sweep: a list 0.5,0.7,0.9 or START:STOP:COUNT (0.5:0.99:10). "
            "Default: the policy's sweep (plus the stored operating point).",
            show_default=False,
        ),
    ] = None,
    layer: Annotated[
        int | None,
        typer.Option(min=1, help="blank-skip: the exit layer whose blank posterior decides."),
    ] = None,
    neighbours: Annotated[
        int | None,
        typer.Option(min=0, help="blank-skip: keep this many frames each side of a kept frame."),
    ] = None,
    threads: ThreadsOpt = 1,
    repeats: Annotated[int, typer.Option(min=1, help="Timed rounds (median reported).")] = 3,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            help="Time padded batches of this many utterances (sorted by length), as a server "
            "would; FLOPs then count the padded work. Default 1 (streaming, one at a time).",
        ),
    ] = 1,
    device: DeviceOpt = "cpu",
    json_path: JsonOpt = None,
    skip_bad: SkipBadOpt = False,
    max_wer: Annotated[
        float | None, typer.Option("--max-wer", min=0.0, help="Gate: WER at most (0.05 = 5%).")
    ] = None,
    max_wer_increase: Annotated[
        float | None,
        typer.Option(
            "--max-wer-increase",
            min=0.0,
            help="Gate: WER minus the static row's WER at most (absolute, 0.01 = 1 point).",
        ),
    ] = None,
    max_rtf: Annotated[
        float | None, typer.Option("--max-rtf", min=0.0, help="Gate: end-to-end RTF at most.")
    ] = None,
    min_speedup: Annotated[
        float | None,
        typer.Option("--min-speedup", min=0.0, help="Gate: speedup vs static at least."),
    ] = None,
    at: Annotated[
        float | None,
        typer.Option(
            "--at",
            help="Gate the row at this threshold (added to the sweep if missing) instead of "
            "the fastest row that meets every bar.",
        ),
    ] = None,
) -> None:
    """Sweep a skip policy: WER/CER, RTF, speedup, FLOPs and depth per threshold vs static.

    With no CHECKPOINT or --data, profiles the bundled dynamic model on the bundled
    held-out-speaker set. RTF = processing seconds / audio seconds, end to end (features +
    encoder + decoding, batch size 1); static and dynamic are timed interleaved in one run.
    FLOPs: fvcore, one multiply-add = one FLOP, on the path each utterance executed.
    Exit codes: 0 gate passed (or no gate), 1 a gate bar failed (one line per bar on stderr),
    2 usage or input error.
    """
    from dyncli import assets
    from dyncli.cli.render import err_console, interactive, write_json
    from dyncli.profiling import GateConfig, profile

    ckpt = checkpoint or assets.require(assets.DEMO_DYNAMIC, "bundled dynamic model")
    manifest = data or assets.require(assets.EVAL_MANIFEST, "evaluation set")
    gate = GateConfig(
        max_wer=max_wer,
        max_wer_increase=max_wer_increase,
        max_rtf=max_rtf,
        min_speedup=min_speedup,
        at=at,
    )

    def progress(message: str) -> None:
        if interactive():
            err_console.print(f"[dim]{message}[/dim]")

    report = profile(
        checkpoint=ckpt,
        data=manifest,
        policy=policy,
        thresholds=parse_thresholds(thresholds),
        overrides={"layer": layer, "neighbours": neighbours},
        threads=threads,
        repeats=repeats,
        device=device,
        skip_bad=skip_bad,
        gate=gate,
        batch_size=batch_size,
        progress=progress,
    )
    if json_path is not None:
        write_json(json_path, report.to_json())
    if json_path is None or str(json_path) != "-":
        render(report)
    if not report.gate["passed"]:
        for line in report.gate["violations"]:
            typer.echo(f"gate failed: {line}", err=True)
        raise typer.Exit(1)


def render(report: Any) -> None:
    from rich.table import Table

    from dyncli.cli.render import console, pct

    op = report.gate["operating_point"]
    static = report.static
    table = Table(
        title=f"dyncli profile: {report.model['path']} ({report.policy['name']})",
        caption="bold green = Pareto-optimal (WER vs RTF); > = operating point; "
        "* = checkpoint's stored operating point",
    )
    for col in (
        "",
        "threshold",
        "WER",
        "dWER",
        "CER",
        "RTF",
        "RTF min-max",
        "speedup",
        "enc. speedup",
        "FLOPs",
        "GFLOP/audio s",
        "avg layers",
        "skipped",
    ):
        table.add_column(col, justify="right")
    for row in [static, *report.rows]:
        is_static = row["policy"] == "static"
        mark = ""
        if not is_static and op is not None and row["threshold"] == op["threshold"]:
            mark = ">"
        if row.get("stored_operating_point"):
            mark += "*"
        table.add_row(
            mark,
            "static" if is_static else f"{row['threshold']:.4g}",
            pct(row["wer"]),
            "" if is_static else f"{100 * (row['wer'] - static['wer']):+.2f}",
            pct(row["cer"]),
            f"{row['rtf']:.4f}",
            f"{row['rtf_min']:.4f}-{row['rtf_max']:.4f}",
            f"{row['speedup']:.2f}x",
            f"{row['encoder_speedup']:.2f}x",
            f"{row['flops_ratio']:.2f}",
            f"{row['gflops_per_audio_second']:.3f}",
            f"{row['avg_layers']:.2f}",
            pct(row["skipped_frame_fraction"]),
            style="bold green" if row["pareto"] else None,
        )
    console.print(table)
    env = report.environment
    cfg = ", ".join(f"{k}={v}" for k, v in report.policy["config"].items())
    console.print(
        f"data: {report.data['path']} ({report.data['utterances']} utterances, "
        f"{report.data['audio_seconds']:.1f} s); model: {report.model['backbone']}, "
        f"{report.model['layers']} layers, exits {report.model['exits']}"
        + (f"; policy {cfg}" if cfg else ""),
        highlight=False,
    )
    console.print(
        f"timing: {env['device_name']} ({env['cpu']}), {env['threads']} thread(s), torch "
        f"{env['torch']}; batch size {report.timing['batch_size']}; "
        f"{report.timing['repeats']} interleaved rounds after warm-up; "
        "RTF = processing s / audio s end to end (RTFx = 1/RTF); FLOPs: fvcore, "
        "1 multiply-add = 1 FLOP; dWER in points",
        highlight=False,
    )
    gate = report.gate
    stored = [r for r in report.rows if r.get("stored_operating_point")]
    if stored:
        r = stored[0]
        console.print(
            f"stored operating point ({r['policy']} @ {r['threshold']:.4g}): WER {pct(r['wer'])} "
            f"({100 * (r['wer'] - static['wer']):+.2f} points vs full depth), "
            f"{r['speedup']:.2f}x end to end, {r['skipped_frame_fraction']:.0%} of frames skipped",
            highlight=False,
        )
    bars = [k for k, v in gate["bars"].items() if v is not None and k != "at"]
    if op is not None and not bars and gate["bars"]["at"] is None:
        console.print(
            "no gate bars given (--max-wer, --max-wer-increase, --max-rtf, --min-speedup); "
            f"fastest row: {op['policy']} @ {op['threshold']:.4g}",
            highlight=False,
        )
    elif op is not None:
        verdict = "passed" if gate["passed"] else "FAILED"
        console.print(
            f"gate {verdict}: operating point {op['policy']} @ {op['threshold']:.4g} "
            f"({gate['selection']}): WER {pct(op['wer'])}, RTF {op['rtf']:.4f} "
            f"(RTFx {op['rtfx']:.0f}), {op['speedup']:.2f}x end to end, "
            f"{op['encoder_speedup']:.2f}x encoder (FLOPs predict "
            f"{op['predicted_encoder_speedup'] or 0:.2f}x)",
            highlight=False,
        )
    t = report.timing
    console.print(
        f"profiled in {report.seconds:.1f} s (accuracy + FLOPs "
        f"{t['accuracy_and_flops_seconds']:.1f} s, timing {t['timing_seconds']:.1f} s)",
        highlight=False,
    )
