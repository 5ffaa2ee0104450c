"""Layer drop: a fixed sub-network of N evenly spaced layers (trained by layer-drop or DLD)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dyncli.dynamic.trace import (
    DynamicOutput,
    TraceStep,
    host_lengths,
    padding_mask,
    valid_frames,
)
from dyncli.errors import UsageError
from dyncli.methods.drop import DropConfig
from dyncli.models.base import CTCEncoder


def kept_layers(num_layers: int, count: int) -> list[int]:
    """The 0-based layers a ``count``-layer sub-network runs: evenly spaced, first and last
    kept (see :class:`dyncli.methods.drop.DropConfig`)."""
    if count >= num_layers:
        return list(range(num_layers))
    if count == 1:
        return [num_layers - 1]
    return sorted({round(i * (num_layers - 1) / (count - 1)) for i in range(count)})


class DropLayers:
    """A fixed sub-network of N layers for every utterance; see
    :class:`dyncli.methods.drop.DropConfig`. Dropped layers are never computed."""

    name = "drop"

    def __init__(self, config: DropConfig) -> None:
        config.validate()
        self.config = config

    def check(self, model: CTCEncoder) -> None:
        n = int(self.config.threshold)
        if n > model.num_layers:
            raise UsageError(
                f"drop: {n} layers asked but the model has {model.num_layers}; give layer "
                f"counts 1..{model.num_layers} (--thresholds)"
            )

    def encode(self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor) -> DynamicOutput:
        self.check(model)
        n = host_lengths(lengths)
        lengths = lengths.to(x.device)
        pad_mask = padding_mask(lengths, x.shape[1])
        kept = kept_layers(model.num_layers, int(self.config.threshold))
        x = model.run_layers(x, pad_mask, kept)
        trace: list[TraceStep] = [("layer", i, n) for i in kept]
        trace.append(("head", model.num_layers, n))
        layers = valid_frames(lengths, x.shape[1]).long() * len(kept)
        return DynamicOutput(model.log_probs(x), lengths, layers, trace)

    def export_forward(
        self, model: CTCEncoder, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy as an exportable graph, batch 1: (1, T, D) encoder input -> (1, T, V)
        log-probs and (1, T) layers each frame ran, the same as :meth:`encode`: the kept layers
        only (the others are not in the graph)."""
        self.check(model)
        kept = kept_layers(model.num_layers, int(self.config.threshold))
        log_probs = model.log_probs(model.run_layers(x, None, kept))
        return log_probs, torch.full_like(log_probs[..., 0], len(kept), dtype=torch.int64)

    def sweep(
        self,
        model: CTCEncoder,
        x: torch.Tensor,
        lengths: torch.Tensor,
        thresholds: Sequence[float],
    ) -> list[DynamicOutput]:
        """Each layer count is its own sub-network: one run each."""
        outs = []
        for th in thresholds:
            policy = DropLayers(DropConfig(threshold=th))
            outs.append(policy.encode(model, x, lengths))
        return outs
