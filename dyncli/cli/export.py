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
            "(torch.export / AOTInductor) is not supported yet.",
        ),
    ] = ExportFormat.onnx,
    policy: PolicyOpt = None,
    threshold: ThresholdOpt = None,
    full_depth: FullDepthOpt = False,
) -> None:
    """Export a checkpoint as one graph from the waveform to CTC log-probs, front end included.

    Batch 1: the graph takes 'wave' (1, N) float32 samples at the model's sample rate (any N;
    a wave shorter than the front end's minimum is zero-padded as dyncli pads it) and returns
    'log_probs' (1, T, V). Its metadata holds the sample rate, the blank id, each output id's
    text ('tokens', JSON) and the decoding rule, the policy inside the graph and dyncli's
    version, so a deployment decodes it with onnxruntime alone (examples/deploy/).

    This release exports full depth: --full-depth, or a static checkpoint. A skip policy inside
    the graph (the stored operating point, or --policy and --threshold) is refused until it
    lands. Needs the 'export' extra (onnx, onnxscript; onnxruntime to run the file).
    """
    from dyncli.checkpoint import load_checkpoint
    from dyncli.cli.output import note
    from dyncli.cli.paths import check_paths
    from dyncli.errors import UsageError
    from dyncli.export.onnx import export_onnx, require_onnx

    check_paths(inputs={"CHECKPOINT": checkpoint}, outputs={"--output": output})
    if export_format is ExportFormat.pt2:
        raise UsageError("--format pt2 is not supported yet: give --format onnx")
    if full_depth and (policy is not None or threshold is not None):
        given = " and ".join(f for f, v in (("--policy", policy), ("--threshold", threshold)) if v)
        raise UsageError(f"--full-depth exports every layer: drop {given}")
    require_onnx()
    ckpt = load_checkpoint(checkpoint)
    stored = ckpt.method.operating_point if ckpt.method is not None else None
    wants_policy = policy is not None or threshold is not None or (stored and not full_depth)
    if wants_policy:
        what = f"--policy {policy}" if policy else "its stored operating point"
        raise UsageError(
            f"{checkpoint}: exporting a skip policy ({what}) inside the graph is not supported "
            "yet; give --full-depth to export the static path"
        )
    result = export_onnx(ckpt, output, full_depth=True)
    note(
        f"exported {checkpoint} ({result.policy}, {result.nodes} nodes, "
        f"{result.bytes / 1e6:.1f} MB) to {result.path}"
    )
