"""``dyncli profile``: WER/CER, executed FLOPs and RTF across skip thresholds, with CI gates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dyncli.cli.options import (
    DataOpt,
    FormatOpt,
    JsonOpt,
    OptionalDynamicCheckpointArg,
    OutputFormat,
    ProfilePolicyOpt,
    RuntimeOpt,
    SkipBadOpt,
    SkipLayerOpt,
    SkipNeighboursOpt,
    TimingDeviceOpt,
    TimingThreadsOpt,
    parse_thresholds,
)

NAME = "profile"


def run(
    checkpoint: OptionalDynamicCheckpointArg = None,
    data: DataOpt = None,
    policy: ProfilePolicyOpt = None,
    thresholds: Annotated[
        str | None,
        typer.Option(
            "--thresholds",
            help="Thresholds to sweep: a list 0.5,0.7,0.9, or LOW:HIGH:COUNT for COUNT evenly "
            "spaced values over LOW:HIGH (0.5:0.99:10). Default: the policy's sweep (plus the "
            "stored operating point).",
            show_default=False,
        ),
    ] = None,
    skip_layer: SkipLayerOpt = None,
    skip_neighbours: SkipNeighboursOpt = None,
    runtime: RuntimeOpt = None,
    threads: TimingThreadsOpt = 1,
    repeats: Annotated[
        str,
        typer.Option(
            "--repeats",
            help="Timed rounds (passes over the data): N (1-1000), or auto: time until every "
            "speedup's 95% interval is within --precision, or --time-budget runs out.",
        ),
    ] = "auto",
    precision: Annotated[
        float,
        typer.Option(
            "--precision",
            help="With --repeats auto: stop when every speedup interval's half-width is at "
            "most this fraction of the speedup (0.03 = +-3%).",
        ),
    ] = 0.03,
    time_budget: Annotated[
        float,
        typer.Option(
            "--time-budget",
            help="With --repeats auto: seconds of timing at most (warm-up not counted).",
        ),
    ] = 120.0,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="Also time full depth against itself in the same rounds: its speedup "
            "interval is the run's noise floor, printed; when it excludes 1.00 the environment "
            "is unreliable and the gate cannot pass.",
        ),
    ] = False,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="A static checkpoint (the model deployed today) scored and timed in the same "
            "run: every row is also compared with it (WER difference with its interval, "
            "speedup), and --max-wer-increase and --min-speedup are judged against it instead "
            "of CHECKPOINT's full depth.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            help="Utterances per timed batch. Default 1: whole utterances, one at a time. N > 1: "
            "padded batches of N utterances sorted by length, as a server would batch them; "
            "FLOPs then count the padded work.",
        ),
    ] = 1,
    device: TimingDeviceOpt = "cpu",
    output_format: FormatOpt = OutputFormat.table,
    json_path: JsonOpt = None,
    skip_bad: SkipBadOpt = False,
    max_wer: Annotated[
        float | None,
        typer.Option(
            "--max-wer",
            min=0.0,
            help="Gate: WER at most (0.05 = 5%), judged on its 95% interval over utterances.",
        ),
    ] = None,
    max_wer_increase: Annotated[
        float | None,
        typer.Option(
            "--max-wer-increase",
            min=0.0,
            help="Gate: WER minus full depth's (or --baseline's) at most (absolute, 0.01 = 1 "
            "point): PASS when the paired interval's upper bound is within it, FAIL when its "
            "lower bound is above it.",
        ),
    ] = None,
    max_rtf: Annotated[
        float | None,
        typer.Option(
            "--max-rtf",
            min=0.0,
            help="Gate: end-to-end RTF at most, judged on its 95% interval.",
        ),
    ] = None,
    min_speedup: Annotated[
        float | None,
        typer.Option(
            "--min-speedup",
            min=0.0,
            help="Gate: end-to-end speedup vs full depth (or --baseline) at least: PASS when "
            "the interval's lower bound reaches it, FAIL when its upper bound is below it.",
        ),
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            help="Other checkpoints, comma-separated or the flag repeated (a pruned model, "
            "another distilled variant), timed in the same rounds against the same static row: "
            "their full depth and the --policy policies each can run, rows labelled by model. "
            "A .onnx file exported from CHECKPOINT ('dyncli export') is one onnxruntime row: "
            "the configuration inside it, its FLOPs those of the same run in dyncli.",
            show_default=False,
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Also draw WER against speedup and against executed FLOPs to this file, in "
            "the format its extension names (.png, .pdf, .svg, ...): one marker per method, the "
            "Pareto front joined, static and the stored operating point labelled. Needs the "
            "plot extra (pip install 'dyncli\\[plot]').",
            show_default=False,
        ),
    ] = None,
    on_inconclusive: Annotated[
        str | None,
        typer.Option(
            "--on-inconclusive",
            help="fail or pass: the exit code an INCONCLUSIVE gate gives (1 or 0) for "
            "pipelines that need two outcomes; the report still says INCONCLUSIVE. Default: "
            "exit 3.",
            show_default=False,
        ),
    ] = None,
    at: Annotated[
        float | None,
        typer.Option(
            "--at",
            help="Gate the row at this threshold (added to the sweep if missing) instead of "
            "the fastest row that meets every bar.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Sweep skip policies: WER/CER, RTF, speedup, FLOPs and depth per threshold vs static.

    With no CHECKPOINT or --data, profiles the bundled dynamic model on the bundled
    held-out-speaker set. RTF = processing seconds / audio seconds, end to end (features +
    encoder + decoding, batch size 1); static and dynamic are timed interleaved in one run.
    FLOPs: fvcore, one multiply-add = one FLOP, on the path each utterance executed.
    Every figure comes with its 95% interval: WER differences by the paired bootstrap over
    utterances, speedups by the paired bootstrap over utterances timed back to back.
    With --runtime onnxruntime, full depth and each threshold are exported and run by
    onnxruntime (batch 1, CPU): those rows are measured against onnxruntime's full depth and
    judged by the gate; dyncli eager's rows are timed beside them in the same rounds.
    Exit codes: 0 gate PASS (or no gate), 1 FAIL (a bar's whole interval misses it; one line
    per bar on stderr), 2 usage or input error, 3 INCONCLUSIVE (a bar lies inside an interval:
    this run cannot tell; see --on-inconclusive).
    """
    from dyncli import assets
    from dyncli.cli.output import (
        check_stdout,
        emit_machine,
        err_console,
        interactive,
        note,
        warn,
        write_json,
    )
    from dyncli.cli.paths import check_paths
    from dyncli.measure.gate import ReleaseBars
    from dyncli.measure.profile import profile

    check_stdout(output_format, json_path)
    # --models a --models b,c: every one (click alone would keep the last flag's value only)
    other = [m.strip() for given in models or [] for m in given.split(",") if m.strip()]
    ckpt = checkpoint or assets.require(assets.DEMO_DYNAMIC, "bundled dynamic model")
    manifest = data or assets.require(assets.EVAL_MANIFEST, "evaluation set")
    rounds = parse_repeats(repeats)
    check_paths(
        inputs={
            "CHECKPOINT": ckpt,
            "--data": manifest,
            "--models": other,
            "--baseline": baseline,
        },
        outputs={"--json": json_path, "--plot": plot},
        streams=["--json"],
        manifests=["--data"],
    )
    if plot is not None:
        from dyncli.measure.plot import plot_format

        plot_format(plot)  # matplotlib there, an extension it writes: before any work
    gate = ReleaseBars(
        max_wer=max_wer,
        max_wer_increase=max_wer_increase,
        max_rtf=max_rtf,
        min_speedup=min_speedup,
        at=at,
        on_inconclusive=on_inconclusive,
    )
    gate.validate()  # before any work

    def progress(message: str) -> None:
        if interactive():
            err_console.print(f"[dim]{message}[/dim]")

    report = profile(
        checkpoint=ckpt,
        data=manifest,
        policy=policy,
        thresholds=parse_thresholds(thresholds),
        overrides={"layer": skip_layer, "neighbours": skip_neighbours},
        threads=threads,
        repeats=rounds,
        precision=precision,
        time_budget=time_budget,
        calibrate=calibrate,
        baseline=baseline,
        warn=warn,
        device=device,
        skip_bad=skip_bad,
        gate=gate,
        batch_size=batch_size,
        progress=progress,
        models=other,
        runtime=None if runtime is None else runtime.value,
    )
    if json_path is not None:
        write_json(json_path, report.to_json())
    if plot is not None:
        from dyncli.measure.plot import plot_report

        plot_report(report, plot)
    records = [row.to_json() for row in (report.static, *report.rows)]
    if not emit_machine(output_format, report.to_json(), records) and (
        json_path is None or str(json_path) != "-"
    ):
        render(report)
    gate_result = report.gate
    for line in gate_result["violations"]:
        note(f"gate failed: {line}")
    for line in gate_result["inconclusive"]:
        note(f"gate inconclusive: {line}")
    if gate_result["exit_code"]:
        raise typer.Exit(gate_result["exit_code"])


def parse_repeats(value: str) -> int | None:
    """``auto`` (None) or a round count 1-1000."""
    from dyncli.errors import UsageError

    text = value.strip().lower()
    if text == "auto":
        return None
    try:
        rounds = int(text)
    except ValueError:
        raise UsageError(f"--repeats must be auto or a whole number, got {value!r}") from None
    if not 1 <= rounds <= 1000:
        raise UsageError(f"--repeats must be between 1 and 1000 (or auto), got {rounds}")
    return rounds


COLUMNS = (
    "",
    "threshold",
    "WER",
    "dWER",
    "vs full depth [95%]",
    "CER",
    "RTF",
    "speedup [95%]",
    "enc. speedup",
    "FLOPs",
    "GFLOP/audio s",
    "avg layers",
    "skipped",
    "Pareto",
)


def dwer_interval(row: dict[str, Any]) -> str:
    """``+0.4 [-0.6, +1.4]``: a row's WER against its model's full depth, in points."""
    if row.get("dwer") is None:
        return ""
    return f"{100 * row['dwer']:+.1f} [{100 * row['dwer_low']:+.1f}, {100 * row['dwer_high']:+.1f}]"


def speedup_interval(row: dict[str, Any]) -> str:
    """``1.52x [1.48, 1.56]``: end-to-end speedup against full depth with its interval."""
    if row.get("speedup_low") is None:
        return f"{row['speedup']:.2f}x"
    return f"{row['speedup']:.2f}x [{row['speedup_low']:.2f}, {row['speedup_high']:.2f}]"


def render(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from dyncli.cli.output import pct, print_line, print_table
    from dyncli.measure.gate import row_label

    op = report.gate["operating_point"]
    # With no bar and no --at nothing chose a row: the fastest is named below, not marked.
    gated = any(v is not None for v in report.gate["bars"].values())
    static = report.static.to_json()
    rows = [row.to_json() for row in report.rows]
    table = Table(
        # escape(): a '[/b]' in a path or label is text, not rich markup (it raised MarkupError)
        title=escape(f"dyncli profile: {report.model['path']} ({report.policy['name']})"),
        caption="> = operating point; * = checkpoint's stored operating point; Pareto = no "
        "other row has both lower WER and lower RTF (bold green on a terminal); vs full depth: "
        "WER points against the row's own model at full depth, with the 95% paired bootstrap "
        "interval over utterances",
    )
    multi = "," in report.policy["name"]
    models = static.get("model") is not None
    runtimes = any(r.get("runtime", "torch") != "torch" for r in [static, *rows])
    extra = (
        (("model",) if models else ())
        + (("runtime",) if runtimes else ())
        + (("policy",) if multi or models or runtimes else ())
    )
    for col in COLUMNS[:1] + extra + COLUMNS[1:]:
        table.add_column(col, justify="left" if col in ("policy", "model") else "right")
    for row in [static, *rows]:
        is_static = row is static
        full = row["threshold"] is None
        mark = ""
        if (
            not is_static
            and gated
            and op is not None
            and (row.get("model"), row["policy"], row["threshold"])
            == (op.get("model"), op["policy"], op["threshold"])
        ):
            mark = ">"
        if row.get("stored_operating_point"):
            mark += "*"
        table.add_row(
            mark,
            *((escape(row["model"]),) if models else ()),
            *((row.get("runtime", "torch"),) if runtimes else ()),
            *((escape(row["policy"]),) if multi or models or runtimes else ()),
            "static" if full else f"{row['threshold']:.6g}",
            pct(row["wer"]),
            "" if is_static else f"{100 * (row['wer'] - static['wer']):+.2f}",
            "" if full else dwer_interval(row),
            pct(row["cer"]),
            f"{row['rtf']:.4f}",
            speedup_interval(row),
            "-" if row["encoder_speedup"] is None else f"{row['encoder_speedup']:.2f}x",
            f"{row['flops_ratio']:.2f}",
            f"{row['gflops_per_audio_second']:.3f}",
            f"{row['avg_layers']:.2f}",
            pct(row["skipped_frame_fraction"]),
            "yes" if row["pareto"] else "",
            style="bold green" if row["pareto"] else None,
        )
    print_table(table)
    if runtimes:
        differing = [r for r in rows if r.get("transcripts_differ_from_torch")]
        counted = [r for r in rows if r.get("transcripts_differ_from_torch") is not None]
        print_line(
            "onnxruntime rows: the exported graph (front end and policy inside) run by "
            f"onnxruntime {report.environment.get('onnxruntime')}; enc. speedup '-': the graph "
            "is one call; "
            + (
                f"transcripts equal to dyncli eager's on every utterance in all {len(counted)} "
                "onnxruntime configurations"
                if not differing
                else "transcripts differing from dyncli eager's: "
                + ", ".join(
                    f"{row_label(r)} {r['transcripts_differ_from_torch']}" for r in differing
                )
            )
        )
    env = report.environment
    t = report.timing
    cfg = ", ".join(
        f"{k}={v}" for k, v in report.policy["config"].items() if not isinstance(v, dict)
    )
    print_line(
        f"data: {report.data['path']} ({report.data['utterances']} utterances, "
        f"{report.data['audio_seconds']:.1f} s); model: {report.model['backbone']}, "
        f"{report.model['layers']} layers, exits {report.model['exits']}"
        + (f"; policy {cfg}" if cfg else "")
    )
    print_line(
        f"timing: {env['device_name']} ({env['cpu']}), {env['threads']} thread(s), torch "
        f"{env['torch']}; batch size {report.timing['batch_size']}; "
        f"{t['pairs']} timed pairs ({t['rounds']} rounds, each configuration back to back per "
        f"{t['unit']}, random order then its reverse); {t['stopped']}; "
        "RTF = processing s / audio s end to end (RTFx = 1/RTF); FLOPs: fvcore, "
        "1 multiply-add = 1 FLOP; dWER in points; intervals are 95%"
    )
    floor = t.get("noise_floor")
    if floor is not None and floor.get("low") is not None:
        state = "reliable" if floor["reliable"] else "UNRELIABLE: excludes 1.00, no gate can pass"
        print_line(
            f"noise floor (--calibrate, full depth against itself): {floor['speedup']:.3f}x "
            f"[{floor['low']:.3f}, {floor['high']:.3f}], +-{100 * floor['half_width']:.1f}%: "
            f"{state}"
        )
    noisy = [r for r in [static, *rows] if r.get("timing_iqr_median") is not None]
    flagged = [r for r in noisy if r.get("timing_warning")]
    if flagged:
        worst = max(flagged, key=lambda r: r["timing_iqr_median"])
        print_line(
            f"timing warning: round-to-round IQR above 10% of the median for {len(flagged)} of "
            f"{len(noisy)} configurations (worst {worst['timing_iqr_median']:.0%}, "
            f"{row_label(worst)}): {worst['timing_warning'].split(': ', 1)[-1]}; the paired "
            "intervals already carry this noise"
        )
    gate = report.gate
    stored = [r for r in rows if r.get("stored_operating_point")]
    if stored:
        r = stored[0]
        print_line(
            f"stored operating point ({row_label(r)}): WER {pct(r['wer'])} "
            f"({100 * (r['wer'] - static['wer']):+.2f} points vs full depth), "
            f"{speedup_interval(r)} end to end, {r['skipped_frame_fraction']:.0%} of frames skipped"
        )
    bars = [k for k, v in gate["bars"].items() if v is not None and k != "at"]
    if op is not None and not bars and gate["bars"]["at"] is None:
        print_line(
            "no gate bars given (--max-wer, --max-wer-increase, --max-rtf, --min-speedup); "
            f"fastest row: {row_label(op)}"
        )
    elif op is not None:
        print_line(
            f"gate {gate['verdict']}: operating point {row_label(op)} "
            f"({gate['selection']}): WER {pct(op['wer'])}, RTF {op['rtf']:.4f} "
            f"(RTFx {op['rtfx']:.0f}), {speedup_interval(op)} end to end"
            + (
                f", {op['encoder_speedup']:.2f}x encoder"
                if op.get("encoder_speedup") is not None
                else ""
            )
            + f" (FLOPs predict {op['predicted_encoder_speedup'] or 0:.2f}x encoder)"
        )
    print_line(
        f"profiled in {report.seconds:.1f} s (accuracy + FLOPs "
        f"{t['accuracy_and_flops_seconds']:.1f} s, timing {t['timing_seconds']:.1f} s)"
    )
