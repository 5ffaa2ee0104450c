"""CTC blank-triggered layer skipping.

Layers 1..K run on every frame; frames whose blank posterior at the exit after layer K is >=
threshold (and are not within ``neighbours`` of a kept frame) are gathered out of the sequence,
the remaining layers run on the kept frames only (per-utterance compaction, re-padded in a
batch), and the results are scattered back; skipped frames emit the exit head's posteriors.
``sweep`` runs the layers before the trigger once per utterance for all thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dyncli.data.text import BLANK_ID
from dyncli.dynamic.compaction import compact, scatter
from dyncli.dynamic.trace import (
    DynamicOutput,
    TraceStep,
    host_lengths,
    padding_mask,
    valid_frames,
)
from dyncli.errors import UsageError
from dyncli.methods.blank_skip import BlankSkipConfig
from dyncli.models.base import CTCEncoder


def default_trigger(model: CTCEncoder, ckpt_method: dict[str, Any] | None = None) -> int:
    """The blank-skip trigger layer: the stored operating point's, else the layer the model was
    trained to skip at (``convert --skip-aware``), else the exit nearest L/2."""
    method = ckpt_method or {}
    point = method.get("operating_point") or {}
    candidates = [
        point.get("layer") if point.get("policy") == "blank-skip" else None,
        (method.get("skip_aware_training") or {}).get("layer"),
    ]
    for layer in candidates:
        if isinstance(layer, int) and layer in model.exits:
            return layer
    if not model.exits:
        raise UsageError("this model has no intermediate CTC head; run 'dyncli convert' first")
    return min(model.exits, key=lambda k: (abs(k - model.num_layers / 2), k))


def keep_mask(
    exit_lp: torch.Tensor,
    lengths: torch.Tensor,
    threshold: float,
    neighbours: int,
    blank: int = BLANK_ID,
) -> torch.Tensor:
    """(B, T) True on the frames that run the remaining layers: P(blank) < ``threshold``,
    grown by ``neighbours`` frames on each side, never on padding."""
    valid = valid_frames(lengths.to(exit_lp.device), exit_lp.shape[1])
    keep = (exit_lp[..., blank].exp() < threshold) & valid
    if neighbours > 0:  # (no host-side "anything kept?" check: it would sync a GPU)
        grown = torch.nn.functional.max_pool1d(
            keep.to(exit_lp.dtype).unsqueeze(1), 2 * neighbours + 1, stride=1, padding=neighbours
        )
        keep = (grown.squeeze(1) > 0) & valid
    return keep


class BlankSkip:
    """CTC blank-triggered layer skipping
    (see :class:`~dyncli.methods.blank_skip.BlankSkipConfig`)."""

    name = "blank-skip"

    def __init__(self, config: BlankSkipConfig) -> None:
        config.validate()
        self.config = config

    def trigger(self, model: CTCEncoder) -> int:
        return self.config.layer if self.config.layer is not None else default_trigger(model)

    def check(self, model: CTCEncoder) -> None:
        layer = self.trigger(model)
        if layer not in model.exits:
            raise UsageError(
                f"blank-skip layer {layer} has no CTC head; this model has exits after layers "
                f"{model.exits or 'none'}"
            )

    def prefix(
        self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[TraceStep]]:
        """Layers 1..K on every frame and the exit head after K: (x_K, exit log-probs, trace)."""
        k = self.trigger(model)
        n = host_lengths(lengths)
        lengths = lengths.to(x.device)
        pad_mask = padding_mask(lengths, x.shape[1])
        x = model.run_layers(x, pad_mask, range(k))
        trace: list[TraceStep] = [("layer", i, n) for i in range(k)]
        trace.append(("exit", k, n))
        return x, model.exit_log_probs(k, x), trace

    def keep_mask(
        self, exit_lp: torch.Tensor, lengths: torch.Tensor, threshold: float, blank: int
    ) -> torch.Tensor:
        return keep_mask(exit_lp, lengths, threshold, self.config.neighbours, blank)

    def suffix(
        self,
        model: CTCEncoder,
        x: torch.Tensor,
        exit_lp: torch.Tensor,
        lengths: torch.Tensor,
        threshold: float,
        trace: list[TraceStep],
    ) -> DynamicOutput:
        """Layers K+1..L on the kept frames only (gathered out, re-padded, scattered back)."""
        k = self.trigger(model)
        big_l = model.num_layers
        b, t, d = x.shape
        lengths = lengths.to(x.device)
        keep = self.keep_mask(exit_lp, lengths, threshold, model.blank_id)
        counts = keep.sum(dim=1)
        out = exit_lp.clone()
        frame_layers = valid_frames(lengths, t).long() * k
        frame_layers[keep] = big_l
        steps: list[tuple[str, int, Any]] = list(trace)
        n = int(counts.max()) if b else 0  # the one host read: the compacted width
        if n == 0:
            return DynamicOutput(out, lengths, frame_layers, steps)
        # A backbone whose attention biases by relative position (WavLM) gets each kept frame's
        # position in the full sequence, so removing frames does not shift the others.
        relative = model.relative_positions
        bucket = self.config.bucket
        width = min(-(-n // bucket) * bucket, t) if bucket else None
        if b == 1 and width is None:
            idx = keep[0].nonzero().squeeze(1)
            xs = x[:, idx]
            xs = model.run_layers(xs, None, range(k, big_l), idx[None, :] if relative else None)
            steps.extend(("layer", i, [n]) for i in range(k, big_l))
            out[0, idx] = model.log_probs(xs)[0]
        else:
            xs, order, filled, attn_pad = compact(x, keep, n, width)
            # With a bucket every row runs ``width`` columns, padding included: that is the work
            # counted. Without, each utterance's kept frames (read on the host only by the
            # FLOP count).
            ran: Any = counts if width is None else [width] * b
            xs = model.run_layers(xs, attn_pad, range(k, big_l), order if relative else None)
            steps.extend(("layer", i, ran) for i in range(k, big_l))
            out = scatter(out, model.log_probs(xs), order, filled)
        steps.append(("head", big_l, counts))
        return DynamicOutput(out, lengths, frame_layers, steps)

    def encode(self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor) -> DynamicOutput:
        xk, exit_lp, trace = self.prefix(model, x, lengths)
        return self.suffix(model, xk, exit_lp, lengths, self.config.threshold, trace)

    def export_forward(
        self, model: CTCEncoder, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy as an exportable graph, batch 1: (1, T, D) encoder input -> (1, T, V)
        log-probs and (1, T) layers each frame ran, the same as :meth:`encode`. The frames to keep
        are a data-dependent count, so the suffix runs inside ``torch.cond`` (no frame kept: the
        exit's log-probs as they are), on the kept frames gathered with ``nonzero`` /
        ``index_select`` and scattered back with ``index_copy``; branch outputs are flat (the
        exporter needs dense strides). The neighbours are grown with a ones-kernel convolution
        (``max_pool1d`` fixes the length in an exported graph); on a 0/1 mask it is the same."""
        k, big_l = self.trigger(model), model.num_layers
        threshold, reach = self.config.threshold, self.config.neighbours
        x = model.run_layers(x, None, range(k))
        exit_lp = model.exit_log_probs(k, x)
        keep = exit_lp[0, :, model.blank_id].exp() < threshold  # (T,)
        if reach > 0:
            ones = torch.ones(1, 1, 2 * reach + 1, dtype=exit_lp.dtype, device=exit_lp.device)
            grown = torch.nn.functional.conv1d(
                keep.to(exit_lp.dtype)[None, None], ones, padding=reach
            )
            keep = grown[0, 0] > 0

        def run(x: torch.Tensor, lp: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            idx = keep.nonzero().squeeze(1)
            torch._check(idx.shape[0] >= 1)
            positions = idx[None, :] if model.relative_positions else None
            xs = model.run_layers(x.index_select(1, idx), None, range(k, big_l), positions)
            return lp.index_copy(1, idx, model.log_probs(xs)).reshape(-1)

        def skip(x: torch.Tensor, lp: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            return lp.reshape(-1).clone()

        flat = torch.cond(keep.any(), run, skip, (x, exit_lp, keep))
        layers = torch.where(keep, big_l, k)[None]  # (1, T)
        return flat.reshape(exit_lp.shape), layers

    def sweep(
        self,
        model: CTCEncoder,
        x: torch.Tensor,
        lengths: torch.Tensor,
        thresholds: Sequence[float],
    ) -> list[DynamicOutput]:
        """One output per threshold; layers 1..K and the exit head run once for all of them."""
        xk, exit_lp, trace = self.prefix(model, x, lengths)
        return [self.suffix(model, xk, exit_lp, lengths, th, trace) for th in thresholds]
