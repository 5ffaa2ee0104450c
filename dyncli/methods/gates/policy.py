"""I3D gates at inference: a closed block is never computed; in a batch only the utterances
whose gate is open run it. Also each block's gate-open rate on a set (what ``inspect`` shows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dyncli.dynamic.trace import (
    DynamicOutput,
    TraceStep,
    host_lengths,
    padding_mask,
    valid_frames,
)
from dyncli.errors import UsageError
from dyncli.methods.gates import GatesConfig
from dyncli.methods.gates.predictor import GateDecision, predictor_of
from dyncli.models.base import CTCEncoder


class GatePolicy:
    """I3D gates at inference; see :class:`dyncli.methods.gates.GatesConfig` and
    :mod:`dyncli.methods.gates`. A closed block is never computed; in a batch only the
    utterances whose gate is open run it."""

    name = "gates"

    def __init__(self, config: GatesConfig) -> None:
        config.validate()
        self.config = config

    def check(self, model: CTCEncoder) -> None:
        if predictor_of(model) is None:
            raise UsageError(
                "the gates policy needs a gate predictor; this model has none "
                "(make one with 'dyncli convert --method gates')"
            )

    def run(
        self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[DynamicOutput, Any]:
        """The gated pass and its decisions (a
        :class:`dyncli.methods.gates.predictor.GateDecision`)."""
        gp = predictor_of(model)
        if gp is None:
            self.check(model)
        assert gp is not None
        n = host_lengths(lengths)
        lengths = lengths.to(x.device)
        pad_mask = padding_mask(lengths, x.shape[1])
        threshold = self.config.threshold
        plan = gp.plan(x, pad_mask)
        trace: list[TraceStep] = [("predictor", -1, [1] * len(n))] if plan is not None else []
        # Decisions go to the host once (the whole plan, or once per layer), so that a block
        # closed for every utterance is a plain bool: no per-gate device ops, and the layer
        # runs as the trace of its open blocks.
        plan_open = None if plan is None else (torch.sigmoid(plan) >= threshold).cpu()
        opened, logits = [], []
        for i in range(model.num_layers):
            if plan_open is not None:
                is_open = plan_open[:, i]
            else:
                z = gp.layer_logits(i, x, pad_mask, None)
                logits.append(z)
                is_open = (torch.sigmoid(z) >= threshold).cpu()  # (B, blocks)
                trace.append(("predictor", i, [1] * len(n)))
            gates = _host_gates(is_open, gp.blocks, x.device)
            x = model.run_layer(i, x, pad_mask, gates=gates)
            trace.extend(_gated_trace(model, i, is_open, gp.blocks, n))
            opened.append(is_open)
        trace.append(("head", model.num_layers, n))
        layers = valid_frames(lengths, x.shape[1]).long() * model.num_layers
        out = DynamicOutput(model.log_probs(x), lengths, layers, trace)
        probs = torch.sigmoid(plan if plan is not None else torch.stack(logits, 1))
        return out, GateDecision(gp.blocks, torch.stack(opened, 1), probs)

    def encode(self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor) -> DynamicOutput:
        return self.run(model, x, lengths)[0]

    def export_forward(
        self, model: CTCEncoder, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy as an exportable graph, batch 1: (1, T, D) encoder input -> (1, T, V)
        log-probs and (1, T) layers each frame ran (every layer: a closed block is skipped
        inside its layer), the same as :meth:`encode`. Each gated block is a ``torch.cond`` on
        its decision (:func:`dyncli.models.base.apply_gate`): a closed block is not computed."""
        gp = predictor_of(model)
        if gp is None:
            self.check(model)
        assert gp is not None
        threshold = self.config.threshold
        plan = gp.plan(x, None)
        for i in range(model.num_layers):
            is_open = torch.sigmoid(gp.layer_logits(i, x, None, plan)) >= threshold  # (1, blocks)
            gates: dict[str, torch.Tensor | bool] = {
                name: is_open[:, j] for j, name in enumerate(gp.blocks)
            }
            x = model.run_layer(i, x, None, gates=gates)
        log_probs = model.log_probs(x)
        layers = torch.full_like(log_probs[..., 0], model.num_layers, dtype=torch.int64)
        return log_probs, layers

    def sweep(
        self,
        model: CTCEncoder,
        x: torch.Tensor,
        lengths: torch.Tensor,
        thresholds: Sequence[float],
    ) -> list[DynamicOutput]:
        """Each threshold changes what every later layer sees: one run each."""
        return [
            GatePolicy(GatesConfig(threshold=th)).encode(model, x, lengths) for th in thresholds
        ]


def _host_gates(
    is_open: torch.Tensor, blocks: Sequence[str], device: torch.device
) -> dict[str, torch.Tensor | bool]:
    """Per block: a bool when every utterance decides alike, else the (B,) decisions on
    ``device`` (only the utterances whose gate is open then run the block)."""
    gates: dict[str, torch.Tensor | bool] = {}
    for j, name in enumerate(blocks):
        column = is_open[:, j]
        if bool(column.all()):
            gates[name] = True
        elif not bool(column.any()):
            gates[name] = False
        else:
            gates[name] = column.to(device)
    return gates


def _gated_trace(
    model: CTCEncoder,
    index: int,
    is_open: torch.Tensor,
    blocks: Sequence[str],
    frames: list[int],
) -> list[TraceStep]:
    """Trace steps of one gated layer: the whole layer when every block ran for every
    utterance, else each block on the utterances that ran it (and the closing norm)."""
    if bool(is_open.all()):
        return [("layer", index, frames)]
    rows = is_open.tolist()
    steps: list[TraceStep] = []
    closing = model.closing_block(index)
    for name in (*model.blocks(index), *((closing,) if closing else ())):
        if name in blocks:
            j = blocks.index(name)
            ran = [m for m, row in zip(frames, rows, strict=True) if row[j]]
        else:
            ran = frames
        if ran:
            steps.append((f"block:{name}", index, ran))
    return steps


@torch.inference_mode()
def open_rates(
    model: CTCEncoder,
    waves: Sequence[torch.Tensor],
    threshold: float = 0.5,
) -> dict[str, list[float]]:
    """Per gateable block, each layer's gate-open rate over ``waves`` (one utterance at a
    time) at ``threshold``: what ``inspect`` shows for the data a model was tuned on."""
    gp = predictor_of(model)
    if gp is None:
        raise UsageError("this model has no gate predictor")
    policy = GatePolicy(GatesConfig(threshold=threshold))
    totals = torch.zeros(model.num_layers, len(gp.blocks))
    dev = next(model.parameters()).device
    for wave in waves:
        lengths = torch.tensor([wave.shape[-1]], device=dev)
        feats, frames = model.features(wave.reshape(1, -1).to(dev), lengths)
        x, n = model.embed(feats, frames)
        _, decision = policy.run(model, x, n)
        totals += decision.open[0].float().cpu()
    rates = totals / max(len(waves), 1)
    return {name: [round(float(r), 4) for r in rates[:, j]] for j, name in enumerate(gp.blocks)}
