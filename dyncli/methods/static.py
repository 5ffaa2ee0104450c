"""Full depth: the reference every dynamic path is compared with."""

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
from dyncli.models.base import CTCEncoder


class StaticPolicy:
    """Full depth: every layer on every frame (the reference the others are compared with)."""

    name = "static"

    def check(self, model: CTCEncoder) -> None:
        return None

    def encode(self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor) -> DynamicOutput:
        n = host_lengths(lengths)  # read before the move: host-side lengths cost no device sync
        lengths = lengths.to(x.device)
        pad_mask = padding_mask(lengths, x.shape[1])
        x = model.run_layers(x, pad_mask)
        trace: list[TraceStep] = [("layer", i, n) for i in range(model.num_layers)]
        trace.append(("head", model.num_layers, n))
        layers = valid_frames(lengths, x.shape[1]).long() * model.num_layers
        return DynamicOutput(model.log_probs(x), lengths, layers, trace)

    def sweep(
        self,
        model: CTCEncoder,
        x: torch.Tensor,
        lengths: torch.Tensor,
        thresholds: Sequence[float],
    ) -> list[DynamicOutput]:
        """Full depth has no threshold: one run serves them all."""
        out = self.encode(model, x, lengths)
        return [out for _ in thresholds]
