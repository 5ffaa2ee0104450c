"""Utterance-level early exit: per utterance, the first exit whose confidence passes the
threshold ends the forward pass; utterances that exit leave the batch, so deeper layers run
only for the rest. ``sweep`` makes one pass through every exit for all thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dyncli.data.text import BLANK_ID
from dyncli.dynamic.trace import (
    DynamicOutput,
    TraceStep,
    host_lengths,
    padding_mask,
    valid_frames,
)
from dyncli.errors import UsageError
from dyncli.methods.early_exit import EarlyExitConfig
from dyncli.models.base import CTCEncoder


def exit_confidence(
    log_probs: torch.Tensor, lengths: torch.Tensor, criterion: str, blank: int = BLANK_ID
) -> torch.Tensor:
    """Per-utterance confidence (B,) of CTC log-probs (B, T, V) over the true frames.

    ``entropy``: mean over frames of H(p_t) / log V (lower is more confident).
    ``posterior``: mean of max_v p_t(v) over frames whose argmax is not blank (higher is more
    confident); all frames when the greedy path emits nothing.
    """
    if log_probs.shape[0] == 1 and int(lengths[0]) == log_probs.shape[1]:
        return _confidence_one(log_probs[0], criterion, blank)
    valid = valid_frames(lengths.to(log_probs.device), log_probs.shape[1]).to(log_probs.dtype)
    frames = valid.sum(dim=1).clamp(min=1)
    if criterion == "entropy":
        probs = log_probs.exp()
        ent = -(probs * log_probs).sum(dim=-1) / math.log(log_probs.shape[-1])
        return (ent * valid).sum(dim=1) / frames
    best, arg = log_probs.max(dim=-1)
    peak = best.exp()
    emits = (arg != blank).to(log_probs.dtype) * valid
    n_emit = emits.sum(dim=1)
    token_mean = (peak * emits).sum(dim=1) / n_emit.clamp(min=1)
    all_mean = (peak * valid).sum(dim=1) / frames
    return torch.where(n_emit > 0, token_mean, all_mean)


def _confidence_one(log_probs: torch.Tensor, criterion: str, blank: int) -> torch.Tensor:
    """:func:`exit_confidence` of one unpadded utterance (T, V), as a (1,) tensor: the same
    figure in about half the ops (no padding masks), since batch 1 is where an exit's cost
    shows (about 45 us of a 650 us layer on the bundled model)."""
    if criterion == "entropy":
        ent = -(log_probs.exp() * log_probs).sum(dim=-1).mean() / math.log(log_probs.shape[-1])
        return ent.reshape(1)
    best, arg = log_probs.max(dim=-1)
    peak = best.exp()
    emits = arg != blank
    n_emit = int(emits.sum())  # the one host read (a boolean index would cost two, and more)
    if n_emit:
        return ((peak * emits).sum() / n_emit).reshape(1)
    return peak.mean().reshape(1)


class EarlyExit:
    """Utterance-level early exit; see :class:`dyncli.methods.early_exit.EarlyExitConfig`."""

    def __init__(self, config: EarlyExitConfig) -> None:
        config.validate()
        self.config = config
        self.name = f"early-exit-{config.criterion}"

    def check(self, model: CTCEncoder) -> None:
        if not model.exits:
            raise UsageError(
                "early exit needs intermediate CTC heads; this model has none "
                "(run 'dyncli convert --exits ...' first)"
            )

    def passes(self, confidence: torch.Tensor, threshold: float) -> torch.Tensor:
        if self.config.criterion == "entropy":
            return confidence <= threshold
        return confidence >= threshold

    def encode(self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor) -> DynamicOutput:
        b, t, _ = x.shape
        if b == 1:
            return self._encode_one(model, x, lengths)
        big_l = model.num_layers
        exits = set(model.exits)
        lengths = lengths.to(x.device)
        out = x.new_zeros(b, t, model.head.out_features)
        frame_layers = torch.zeros(b, t, dtype=torch.long, device=x.device)
        valid = valid_frames(lengths, t).long()
        active = torch.arange(b, device=x.device)
        cur_lens = lengths
        pad_mask = padding_mask(lengths, t)
        trace: list[TraceStep] = []
        for i in range(big_l):
            x = model.run_layer(i, x, pad_mask)
            trace.append(("layer", i, host_lengths(cur_lens)))
            layer = i + 1
            if layer not in exits:
                continue
            lp = model.exit_log_probs(layer, x)
            trace.append(("exit", layer, host_lengths(cur_lens)))
            done = self.passes(
                exit_confidence(lp, cur_lens, self.config.criterion, model.blank_id),
                self.config.threshold,
            )
            if not bool(done.any()):
                continue
            rows = active[done]
            out[rows, : x.shape[1]] = lp[done]
            frame_layers[rows] = valid[rows] * layer
            stay = ~done
            if not bool(stay.any()):
                return DynamicOutput(out, lengths, frame_layers, trace)
            active, x, cur_lens = active[stay], x[stay], cur_lens[stay]
            # The utterances that go on are re-padded to the longest of them only.
            t_cur = int(cur_lens.max())
            x = x[:, :t_cur]
            pad_mask = padding_mask(cur_lens, t_cur)
        out[active, : x.shape[1]] = model.log_probs(x)
        frame_layers[active] = valid[active] * big_l
        trace.append(("head", big_l, host_lengths(cur_lens)))
        return DynamicOutput(out, lengths, frame_layers, trace)

    def _encode_one(
        self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor
    ) -> DynamicOutput:
        """:meth:`encode` of one utterance: the same decisions and outputs, without the output
        buffer, the bookkeeping of who is still running and the index writes a batch needs.
        Batch 1 is where a deployment meets early exit and where each exit's fixed cost shows
        (those writes were ~3% of a 12-layer pass of the bundled model)."""
        n = host_lengths(lengths)  # read before the move: host-side lengths cost no device sync
        lengths = lengths.to(x.device)
        t = x.shape[1]
        exits = set(model.exits)
        trace: list[TraceStep] = []
        for i in range(model.num_layers):
            x = model.run_layer(i, x, None)
            trace.append(("layer", i, n))
            layer = i + 1
            if layer not in exits:
                continue
            lp = model.exit_log_probs(layer, x)
            trace.append(("exit", layer, n))
            conf = exit_confidence(lp, lengths, self.config.criterion, model.blank_id)
            if bool(self.passes(conf, self.config.threshold)):
                return DynamicOutput(lp, lengths, valid_frames(lengths, t).long() * layer, trace)
        trace.append(("head", model.num_layers, n))
        layers = valid_frames(lengths, t).long() * model.num_layers
        return DynamicOutput(model.log_probs(x), lengths, layers, trace)

    def export_forward(
        self, model: CTCEncoder, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy as an exportable graph, batch 1: (1, T, D) encoder input -> (1, T, V)
        log-probs and (1, T) layers each frame ran, the same as :meth:`encode`. Each exit's decision
        is a ``torch.cond`` nested in the previous one's "go on" branch (the layers after an exit
        are computed only when it does not pass); the confidence is computed without host reads, and
        branch outputs are flat (the exporter needs dense strides)."""
        exits = sorted(model.exits)
        big_l, vocab = model.num_layers, model.head.out_features
        threshold, criterion, blank = self.config.threshold, self.config.criterion, model.blank_id

        def confidence(lp: torch.Tensor) -> torch.Tensor:
            if criterion == "entropy":
                return -(lp.exp() * lp).sum(dim=-1).mean() / math.log(lp.shape[-1])
            best, arg = lp.max(dim=-1)
            peak = best.exp()
            emits = (arg != blank).to(lp.dtype)
            n_emit = emits.sum()
            return torch.where(n_emit > 0, (peak * emits).sum() / n_emit.clamp(min=1), peak.mean())

        def depth(x: torch.Tensor, layers: int) -> torch.Tensor:
            return torch.full((1,), layers, dtype=torch.int64, device=x.device)

        def from_layer(
            start: int, x: torch.Tensor, remaining: list[int]
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not remaining:
                out = model.log_probs(model.run_layers(x, None, range(start, big_l)))
                return out.reshape(-1), depth(x, big_l)
            k = remaining[0]
            x = model.run_layers(x, None, range(start, k))
            lp = model.exit_log_probs(k, x)

            def leave(x: torch.Tensor, lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return lp.reshape(-1).clone(), depth(x, k)

            def go_on(x: torch.Tensor, lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return from_layer(k, x, remaining[1:])

            ok = self.passes(confidence(lp), threshold)
            out, layers = torch.cond(ok, leave, go_on, (x, lp))
            return out, layers

        flat, layers = from_layer(0, x, exits)
        t = x.shape[1]
        return flat.reshape(1, t, vocab), layers.expand(t)[None]

    def sweep(
        self,
        model: CTCEncoder,
        x: torch.Tensor,
        lengths: torch.Tensor,
        thresholds: Sequence[float],
    ) -> list[DynamicOutput]:
        """One pass through every exit serves all thresholds."""
        b, t, _ = x.shape
        big_l = model.num_layers
        lengths = lengths.to(x.device)
        pad_mask = padding_mask(lengths, t)
        valid = valid_frames(lengths, t).long()
        at_exits: dict[int, torch.Tensor] = {}
        x = model.run_layers(x, pad_mask, exits=at_exits)
        heads = [  # (layer, log-probs, confidence)
            (k, lp, exit_confidence(lp, lengths, self.config.criterion, model.blank_id))
            for k, lp in sorted(at_exits.items())
        ]
        final = model.log_probs(x)
        outputs = []
        for th in thresholds:
            out = final.clone()
            frame_layers = valid * big_l
            chosen = torch.full((b,), big_l, dtype=torch.long, device=x.device)
            undecided = torch.ones(b, dtype=torch.bool, device=x.device)
            for layer, lp, conf in heads:
                take = undecided & self.passes(conf, th)
                out[take] = lp[take]
                frame_layers[take] = valid[take] * layer
                chosen[take] = layer
                undecided &= ~take
            outputs.append(
                DynamicOutput(out, lengths, frame_layers, _early_trace(chosen, lengths, model))
            )
        return outputs


def _early_trace(chosen: torch.Tensor, lengths: torch.Tensor, model: CTCEncoder) -> list[TraceStep]:
    """The trace an ``EarlyExit.encode`` run with these exit choices would record."""
    trace: list[TraceStep] = []
    stop = chosen.tolist()
    n = host_lengths(lengths)
    exits = set(model.exits)
    for i in range(model.num_layers):
        layer = i + 1
        alive = [m for m, s in zip(n, stop, strict=True) if s >= layer]
        if not alive:
            break
        trace.append(("layer", i, alive))
        if layer in exits:
            trace.append(("exit", layer, alive))
    finals = [m for m, s in zip(n, stop, strict=True) if s == model.num_layers]
    if finals:
        trace.append(("head", model.num_layers, finals))
    return trace


@torch.inference_mode()
def early_exit_thresholds_from_data(
    model: CTCEncoder, waves: Sequence[torch.Tensor], criterion: str, count: int = 7
) -> tuple[float, ...]:
    """A default early-exit sweep for ``model`` on ``waves`` (N,), label-free: no transcripts.

    Per utterance, the criterion changes its exit at the confidences of exits more confident
    than every earlier exit (its breakpoints). The sweep puts up to ``count`` thresholds on the
    breakpoints of all utterances at evenly spaced quantiles (least to most aggressive), each
    rounded to 6 decimals on its exiting side, and keeps a threshold only if it makes one more
    utterance exit earlier than the previous one: every row differs. Ascending.
    """
    from dyncli.dynamic.operating_point import THRESHOLD_DIGITS, canonical_threshold

    entropy = criterion == "entropy"
    last = max(model.exits, default=0)
    dev = next(model.parameters()).device
    points: list[float] = []
    for wave in waves:
        lengths = torch.tensor([wave.shape[0]], device=dev)
        feats, frames = model.features(wave[None].to(dev), lengths)
        x, n = model.embed(feats, frames)
        pad_mask = padding_mask(n, x.shape[1])
        best = math.inf if entropy else -math.inf
        at_exits: dict[int, torch.Tensor] = {}
        model.run_layers(x, pad_mask, range(last), exits=at_exits)
        for _, lp in sorted(at_exits.items()):
            conf = float(exit_confidence(lp, n, criterion, model.blank_id)[0])
            if (conf < best) if entropy else (conf > best):
                best = conf
                points.append(conf)
    if not points:
        return ()
    scores = torch.tensor(sorted(points, reverse=not entropy), dtype=torch.float32)

    def crossed(threshold: float) -> int:  # breakpoints this threshold exits at (float32)
        return int(((scores <= threshold) if entropy else (scores >= threshold)).sum())

    step = 10.0**-THRESHOLD_DIGITS
    picked: list[float] = []
    done = 0
    for k in range(count):
        value = float(scores[round(k * (len(scores) - 1) / max(count - 1, 1))])
        th = (math.ceil if entropy else math.floor)(value / step) * step
        th = min(max(canonical_threshold(th), 0.0), 1.0)
        while not (value <= th if entropy else value >= th) and 0.0 < th < 1.0:
            th = canonical_threshold(th + (step if entropy else -step))  # float error above
        if crossed(th) > done:
            done = crossed(th)
            picked.append(th)
    return tuple(sorted(picked))
