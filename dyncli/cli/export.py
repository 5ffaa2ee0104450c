"""``dyncli export``: a deployable ONNX file from a checkpoint."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from dyncli.cli.options import (
    CheckpointArg,
    FullDepthOpt,
    OutputOpt,
    PolicyOpt,
    SkipLayerOpt,
    SkipNeighboursOpt,
    ThresholdOpt,
)

NAME = "export"


class ExportFormat(StrEnum):
    onnx = "onnx"
    pt2 = "pt2"


def run(
    checkpoint: CheckpointArg,
    output: OutputOpt,
    export_format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="onnx: one ONNX graph (opset 18) for onnxruntime and other runtimes. pt2 "
            "(torch.export / AOTInductor) is refused: torch 2.11 loads a .pt2's weights by "
            "unpickling them, which can run code from the file.",
        ),
    ] = ExportFormat.onnx,
    policy: PolicyOpt = None,
    threshold: ThresholdOpt = None,
    skip_layer: SkipLayerOpt = None,
    skip_neighbours: SkipNeighboursOpt = None,
    full_depth: FullDepthOpt = False,
) -> None:
    """Export a checkpoint as one graph from the waveform to CTC log-probs, front end included.

    Batch 1: the graph takes 'wave' (1, N) float32 samples at the model's sample rate (any N;
    a wave shorter than the front end's minimum is zero-padded as dyncli pads it) and returns
    'log_probs' (1, T, V) and 'frame_layers' (1, T), the layers each frame ran. Its metadata
    holds the sample rate, the blank id, each output id's text ('tokens', JSON) and the
    decoding rule, the policy inside the graph with its threshold and settings, and dyncli's
    version, so a deployment decodes it with onnxruntime alone (examples/deploy/).

    Without flags it exports what the checkpoint runs: its stored operating point, or full
    depth for a static model; --policy and --threshold choose another point, --full-depth the
    static path. Every built-in policy goes inside the graph: blank-skip (If / NonZero /
    Gather / ScatterND), early exit (one If per exit), gates (one If per gated block) and drop
    (the kept layers only); a plugin's policy without an exportable forward is refused with
    one line. Needs the 'export' extra (onnx, onnxscript; onnxruntime to run the file).
    """
    from dyncli.checkpoint import load_checkpoint
    from dyncli.cli.output import note
    from dyncli.cli.paths import check_paths
    from dyncli.dynamic.operating_point import resolve_run
    from dyncli.errors import UsageError
    from dyncli.export.onnx import export_onnx, exportable, require_onnx

    check_paths(inputs={"CHECKPOINT": checkpoint}, outputs={"--output": output})
    if export_format is ExportFormat.pt2:
        raise UsageError(
            "--format pt2 is not supported: torch 2.11's .pt2 loader unpickles weights "
            "(weights_only=False), so loading such a file can run code from it; give --format onnx"
        )
    chosen = (
        ("--policy", policy),
        ("--threshold", threshold),
        ("--skip-layer", skip_layer),
        ("--skip-neighbours", skip_neighbours),
    )
    if full_depth and any(v is not None for _, v in chosen):
        given = " and ".join(f for f, v in chosen if v is not None)
        raise UsageError(f"--full-depth exports every layer: drop {given}")
    require_onnx()
    ckpt = load_checkpoint(checkpoint)
    runner, choice = resolve_run(
        ckpt,
        policy=policy,
        threshold=threshold,
        overrides={"layer": skip_layer, "neighbours": skip_neighbours},
        full_depth=full_depth,
        where=str(checkpoint),
    )
    if choice.full_depth:
        result = export_onnx(ckpt, output)
    else:
        if not exportable(runner):
            raise UsageError(
                f"{checkpoint}: the {choice.policy} policy ({choice.source}) cannot be exported "
                "yet (it has no exportable forward); give another --policy, or --full-depth"
            )
        result = export_onnx(
            ckpt, output, policy=runner, policy_name=choice.policy, threshold=choice.threshold
        )
    note(
        f"exported {checkpoint} ({result.policy}, {result.nodes} nodes, "
        f"{result.bytes / 1e6:.1f} MB) to {result.path}"
    )
