"""What every skip policy shares: its output, its protocol, the executed trace, and the masks.

A policy's ``encode(model, x, lengths)`` takes the embedded input (B, T, D) (after the front
end and subsampling, which always run) and returns a :class:`DynamicOutput`: CTC log-probs
(B, T, V) for every frame, how many layers each frame went through, and the trace of what was
executed (which layers and heads ran on how many frames of each utterance), from which
``dyncli.measure.flops`` counts the FLOPs of the path actually taken.

``lengths`` may be given on another device than ``x`` (e.g. built on the host): every entry
point moves them to ``x``'s device first, and every tensor built here takes its device from
its inputs.

``sweep`` returns the outputs of many thresholds sharing what the maths allows. Tests pin that
sweep results equal separate ``encode`` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from dyncli.models.base import CTCEncoder
from dyncli.models.components import lengths_to_mask

# One executed step: ("layer", 0-based index, frames per utterance) for a whole layer,
# ("block:NAME", 0-based index, frames per utterance) for one block of a layer (``norm``: its
# closing norm; a layer's blocks and norm add up to the layer), ("exit", 1-based layer, frames
# per utterance), ("head", num_layers, frames per utterance) or ("predictor", 0-based index or -1
# for a global plan, 1 per utterance) for a gate predictor.
TraceStep = tuple[str, int, list[int]]


@dataclass
class DynamicOutput:
    """A policy's output. ``raw_trace`` may hold per-utterance frame counts as a device tensor
    (B,): reading them on the host would stall a GPU in the middle of a pass, so they are read
    only when someone asks for :attr:`trace` (FLOP counting does, timing never does)."""

    log_probs: torch.Tensor  # (B, T, V)
    lengths: torch.Tensor  # (B,) true encoder frames
    frame_layers: torch.Tensor  # (B, T) encoder layers each frame went through (0 on padding)
    raw_trace: list[tuple[str, int, Any]] = field(default_factory=list)

    @property
    def trace(self) -> list[TraceStep]:
        """The executed steps with host-side frame counts (device counts read here, once)."""
        return [
            (kind, index, frames.tolist() if isinstance(frames, torch.Tensor) else frames)
            for kind, index, frames in self.raw_trace
        ]


class SkipPolicy(Protocol):
    name: str

    def check(self, model: CTCEncoder) -> None: ...

    def encode(
        self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor
    ) -> DynamicOutput: ...

    def sweep(
        self,
        model: CTCEncoder,
        x: torch.Tensor,
        lengths: torch.Tensor,
        thresholds: Sequence[float],
    ) -> list[DynamicOutput]:
        """One output per threshold, sharing what the thresholds have in common."""
        ...


def padding_mask(lengths: torch.Tensor, t: int) -> torch.Tensor | None:
    """(B, T) True on padding, or None for one utterance (nothing to mask)."""
    return lengths_to_mask(lengths, t) if lengths.shape[0] > 1 else None


def valid_frames(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B, T) True on each utterance's true frames."""
    return ~lengths_to_mask(lengths, t)


def host_lengths(lengths: torch.Tensor) -> list[int]:
    """Per-utterance frame counts as host integers (the trace's frame counts)."""
    return [int(n) for n in lengths.tolist()]
