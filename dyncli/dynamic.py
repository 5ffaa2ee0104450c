"""Dynamic-depth inference: skip policies whose skipped work is never computed.

A policy's ``encode(model, x, lengths)`` takes the embedded input (B, T, D) (after the front
end and subsampling, which always run) and returns a :class:`DynamicOutput`: CTC log-probs
(B, T, V) for every frame, how many layers each frame went through, and the trace of what was
executed (which layers and heads ran on how many frames of each utterance), from which
``dyncli.measure.flops`` counts the FLOPs of the path actually taken.

* ``blank-skip``: layers 1..K run on every frame; frames whose blank posterior at the exit after
  layer K is >= threshold (and are not within ``neighbours`` of a kept frame) are gathered out
  of the sequence, the remaining layers run on the kept frames only (per-utterance compaction,
  re-padded in a batch), and the results are scattered back; skipped frames emit the exit
  head's posteriors.
* ``early-exit``: per utterance, the first exit whose confidence passes the threshold ends the
  forward pass; utterances that exit leave the batch, so deeper layers run only for the rest.

``lengths`` may be given on another device than ``x`` (e.g. built on the host): every entry
point moves them to ``x``'s device first, and every tensor built here takes its device from
its inputs.

``sweep`` returns the outputs of many thresholds sharing what the maths allows: the layers
before the trigger once per utterance (blank-skip), or one pass through every exit
(early-exit). Tests pin that sweep results equal separate ``encode`` runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from dyncli.errors import UsageError
from dyncli.features import lengths_to_mask
from dyncli.models.base import CTCEncoder
from dyncli.plugins import get_skip_policy
from dyncli.policy_config import BlankSkipConfig, DropConfig, EarlyExitConfig, GatesConfig
from dyncli.text import BLANK_ID

# One executed step: ("layer", 0-based index, frames per utterance) for a whole layer,
# ("block:NAME", 0-based index, frames per utterance) for one block of a layer (``norm``: its
# closing norm; a layer's blocks and norm add up to the layer), ("exit", 1-based layer, frames
# per utterance), ("head", num_layers, frames per utterance) or ("gates", 0-based index or -1
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


def _pad_mask(lengths: torch.Tensor, t: int) -> torch.Tensor | None:
    return lengths_to_mask(lengths, t) if lengths.shape[0] > 1 else None


def _valid(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return ~lengths_to_mask(lengths, t)


def _lens(lengths: torch.Tensor) -> list[int]:
    return [int(n) for n in lengths.tolist()]


class StaticPolicy:
    """Full depth: every layer on every frame (the reference the others are compared with)."""

    name = "static"

    def check(self, model: CTCEncoder) -> None:
        return None

    def encode(self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor) -> DynamicOutput:
        n = _lens(lengths)  # read before the move: host-side lengths cost no device sync
        lengths = lengths.to(x.device)
        pad_mask = _pad_mask(lengths, x.shape[1])
        trace: list[TraceStep] = []
        for i in range(model.num_layers):
            x = model.run_layer(i, x, pad_mask)
            trace.append(("layer", i, n))
        trace.append(("head", model.num_layers, n))
        layers = _valid(lengths, x.shape[1]).long() * model.num_layers
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
    valid = _valid(lengths.to(exit_lp.device), exit_lp.shape[1])
    keep = (exit_lp[..., blank].exp() < threshold) & valid
    if neighbours > 0:  # (no host-side "anything kept?" check: it would sync a GPU)
        grown = torch.nn.functional.max_pool1d(
            keep.to(exit_lp.dtype).unsqueeze(1), 2 * neighbours + 1, stride=1, padding=neighbours
        )
        keep = (grown.squeeze(1) > 0) & valid
    return keep


def compact(
    x: torch.Tensor, keep: torch.Tensor, n: int | None = None, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather each utterance's kept frames to the front, re-padded to the longest.

    ``x`` (B, T, D), ``keep`` (B, T) -> ``xs`` (B, n, D) with n = max kept, ``order`` (B, n)
    source frame of each column, ``filled`` (B, n) True on real (kept) columns, and the
    attention padding mask (True on padding; an utterance with no kept frame keeps one column
    unmasked so attention stays finite; its outputs are never used).
    """
    b, t, d = x.shape
    counts = keep.sum(dim=1)
    n = int(counts.max()) if n is None else n  # given by a caller that already read it
    if width is not None:  # a length bucket: more columns, all of them padding (masked)
        n = min(max(n, width), t)
    # Kept frames first, in time order, then the rest; the first n columns hold them.
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :n]
    xs = x.gather(1, order.unsqueeze(-1).expand(-1, -1, d))
    filled = torch.arange(n, device=x.device)[None, :] < counts[:, None]
    attn_pad = ~filled
    attn_pad[counts == 0, 0] = False
    return xs, order, filled, attn_pad


def scatter(
    out: torch.Tensor, values: torch.Tensor, order: torch.Tensor, filled: torch.Tensor
) -> torch.Tensor:
    """``out`` (B, T, V) with the kept frames replaced by ``values`` (B, n, V) (differentiable)."""
    b, n = order.shape
    rows = torch.arange(b, device=out.device)[:, None].expand(b, n)
    out = out.clone()
    out[rows[filled], order[filled]] = values[filled]
    return out


class BlankSkip:
    """CTC blank-triggered layer skipping; see :class:`dyncli.policy_config.BlankSkipConfig`."""

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
        n = _lens(lengths)
        lengths = lengths.to(x.device)
        pad_mask = _pad_mask(lengths, x.shape[1])
        trace: list[TraceStep] = []
        for i in range(k):
            x = model.run_layer(i, x, pad_mask)
            trace.append(("layer", i, n))
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
        frame_layers = _valid(lengths, t).long() * k
        frame_layers[keep] = big_l
        steps: list[tuple[str, int, Any]] = list(trace)
        n = int(counts.max()) if b else 0  # the one host read: the compacted width
        if n == 0:
            return DynamicOutput(out, lengths, frame_layers, steps)
        # A backbone whose attention biases by relative position (WavLM) gets each kept frame's
        # position in the full sequence, so removing frames does not shift the others.
        relative = getattr(model, "relative_positions", False)
        bucket = self.config.bucket
        width = min(-(-n // bucket) * bucket, t) if bucket else None
        if b == 1 and width is None:
            idx = keep[0].nonzero().squeeze(1)
            xs = x[:, idx]
            where = {"positions": idx[None, :]} if relative else {}
            for i in range(k, big_l):
                xs = model.run_layer(i, xs, None, **where)
                steps.append(("layer", i, [n]))
            out[0, idx] = model.log_probs(xs)[0]
        else:
            xs, order, filled, attn_pad = compact(x, keep, n, width)
            where = {"positions": order} if relative else {}
            # With a bucket every row runs ``width`` columns, padding included: that is the work
            # counted. Without, each utterance's kept frames (read on the host only by the
            # FLOP count).
            ran: Any = counts if width is None else [width] * b
            for i in range(k, big_l):
                xs = model.run_layer(i, xs, attn_pad, **where)
                steps.append(("layer", i, ran))
            out = scatter(out, model.log_probs(xs), order, filled)
        steps.append(("head", big_l, counts))
        return DynamicOutput(out, lengths, frame_layers, steps)

    def encode(self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor) -> DynamicOutput:
        xk, exit_lp, trace = self.prefix(model, x, lengths)
        return self.suffix(model, xk, exit_lp, lengths, self.config.threshold, trace)

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
    valid = _valid(lengths.to(log_probs.device), log_probs.shape[1]).to(log_probs.dtype)
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
    """Utterance-level early exit; see :class:`dyncli.policy_config.EarlyExitConfig`."""

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
        valid = _valid(lengths, t).long()
        active = torch.arange(b, device=x.device)
        cur_lens = lengths
        pad_mask = _pad_mask(lengths, t)
        trace: list[TraceStep] = []
        for i in range(big_l):
            x = model.run_layer(i, x, pad_mask)
            trace.append(("layer", i, _lens(cur_lens)))
            layer = i + 1
            if layer not in exits:
                continue
            lp = model.exit_log_probs(layer, x)
            trace.append(("exit", layer, _lens(cur_lens)))
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
            pad_mask = _pad_mask(cur_lens, t_cur)
        out[active, : x.shape[1]] = model.log_probs(x)
        frame_layers[active] = valid[active] * big_l
        trace.append(("head", big_l, _lens(cur_lens)))
        return DynamicOutput(out, lengths, frame_layers, trace)

    def _encode_one(
        self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor
    ) -> DynamicOutput:
        """:meth:`encode` of one utterance: the same decisions and outputs, without the output
        buffer, the bookkeeping of who is still running and the index writes a batch needs.
        Batch 1 is where a deployment meets early exit and where each exit's fixed cost shows
        (those writes were ~3% of a 12-layer pass of the bundled model)."""
        n = _lens(lengths)  # read before the move: host-side lengths cost no device sync
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
                return DynamicOutput(lp, lengths, _valid(lengths, t).long() * layer, trace)
        trace.append(("head", model.num_layers, n))
        layers = _valid(lengths, t).long() * model.num_layers
        return DynamicOutput(model.log_probs(x), lengths, layers, trace)

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
        exits = set(model.exits)
        lengths = lengths.to(x.device)
        pad_mask = _pad_mask(lengths, t)
        valid = _valid(lengths, t).long()
        heads: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (layer, log-probs, conf)
        for i in range(big_l):
            x = model.run_layer(i, x, pad_mask)
            if i + 1 in exits:
                lp = model.exit_log_probs(i + 1, x)
                conf = exit_confidence(lp, lengths, self.config.criterion, model.blank_id)
                heads.append((i + 1, lp, conf))
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
    n = _lens(lengths)
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


def kept_layers(num_layers: int, count: int) -> list[int]:
    """The 0-based layers a ``count``-layer sub-network runs: evenly spaced, first and last
    kept (see :class:`dyncli.policy_config.DropConfig`)."""
    if count >= num_layers:
        return list(range(num_layers))
    if count == 1:
        return [num_layers - 1]
    return sorted({round(i * (num_layers - 1) / (count - 1)) for i in range(count)})


class DropLayers:
    """A fixed sub-network of N layers for every utterance; see
    :class:`dyncli.policy_config.DropConfig`. Dropped layers are never computed."""

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
        n = _lens(lengths)
        lengths = lengths.to(x.device)
        pad_mask = _pad_mask(lengths, x.shape[1])
        kept = kept_layers(model.num_layers, int(self.config.threshold))
        trace: list[TraceStep] = []
        for i in kept:
            x = model.run_layer(i, x, pad_mask)
            trace.append(("layer", i, n))
        trace.append(("head", model.num_layers, n))
        layers = _valid(lengths, x.shape[1]).long() * len(kept)
        return DynamicOutput(model.log_probs(x), lengths, layers, trace)

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


class GatePolicy:
    """I3D gates at inference; see :class:`dyncli.policy_config.GatesConfig` and
    :mod:`dyncli.gates`. A closed block is never computed; in a batch only the utterances whose
    gate is open run it."""

    name = "gates"

    def __init__(self, config: GatesConfig) -> None:
        config.validate()
        self.config = config

    def check(self, model: CTCEncoder) -> None:
        from dyncli.gates import predictor_of

        if predictor_of(model) is None:
            raise UsageError(
                "the gates policy needs a gate predictor; this model has none "
                "(make one with 'dyncli convert --method gates')"
            )

    def run(
        self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[DynamicOutput, Any]:
        """The gated pass and its decisions (a :class:`dyncli.gates.GateDecision`)."""
        from dyncli.gates import GateDecision, predictor_of

        gp = predictor_of(model)
        if gp is None:
            self.check(model)
        assert gp is not None
        n = _lens(lengths)
        lengths = lengths.to(x.device)
        pad_mask = _pad_mask(lengths, x.shape[1])
        threshold = self.config.threshold
        plan = gp.plan(x, pad_mask)
        trace: list[TraceStep] = [("gates", -1, [1] * len(n))] if plan is not None else []
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
                trace.append(("gates", i, [1] * len(n)))
            gates = _host_gates(is_open, gp.blocks, x.device)
            x = model.run_layer(i, x, pad_mask, gates=gates)  # type: ignore[call-arg]
            trace.extend(_gated_trace(model, i, is_open, gp.blocks, n))
            opened.append(is_open)
        trace.append(("head", model.num_layers, n))
        layers = _valid(lengths, x.shape[1]).long() * model.num_layers
        out = DynamicOutput(model.log_probs(x), lengths, layers, trace)
        probs = torch.sigmoid(plan if plan is not None else torch.stack(logits, 1))
        return out, GateDecision(gp.blocks, torch.stack(opened, 1), probs)

    def encode(self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor) -> DynamicOutput:
        return self.run(model, x, lengths)[0]

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


def build_policy(name: str, threshold: float, **overrides: Any) -> SkipPolicy:
    """A registered policy at ``threshold`` (``overrides`` set other config fields)."""
    spec = get_skip_policy(name)
    policy: SkipPolicy = spec.build(spec.make_config(threshold, **overrides))
    return policy


def run_policy(
    model: CTCEncoder, policy: SkipPolicy, wave: torch.Tensor, lengths: torch.Tensor
) -> DynamicOutput:
    """Waveforms (B, N) -> dynamic-depth output (front end and subsampling always run)."""
    feats, frames = model.features(wave, lengths)
    x, out_lengths = model.embed(feats, frames)
    return policy.encode(model, x, out_lengths)


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
    from dyncli.operating_point import THRESHOLD_DIGITS, canonical_threshold

    entropy = criterion == "entropy"
    last = max(model.exits, default=0)
    dev = next(model.parameters()).device
    points: list[float] = []
    for wave in waves:
        lengths = torch.tensor([wave.shape[0]], device=dev)
        feats, frames = model.features(wave[None].to(dev), lengths)
        x, n = model.embed(feats, frames)
        pad_mask = _pad_mask(n, x.shape[1])
        best = math.inf if entropy else -math.inf
        for i in range(last):
            x = model.run_layer(i, x, pad_mask)
            if i + 1 in model.exits:
                lp = model.exit_log_probs(i + 1, x)
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
