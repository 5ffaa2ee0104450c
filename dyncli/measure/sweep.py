"""Accuracy and executed work of every configuration, from one shared pass per utterance.

The front end, subsampling and the layers before a policy's decision run once per utterance for
every threshold (``SkipPolicy.sweep``; tests pin that this equals separate runs). FLOPs are
counted by fvcore on the path each utterance executed (its trace): one multiply-add = one FLOP.
Each row carries its WER with an interval and its WER difference against its model's full
depth, paired over utterances (:mod:`dyncli.measure.stats`); the per-utterance error counts
ride along under private keys (:func:`public` drops them) for the comparisons the gate makes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dyncli.checkpoint import Checkpoint
from dyncli.data.dataset import Utterance, pad_waves
from dyncli.data.text import Tokenizer
from dyncli.decoding import greedy_ctc
from dyncli.dynamic import DynamicOutput, build_policy
from dyncli.measure.stats import paired_wer_delta, wer_interval
from dyncli.methods.static import StaticPolicy
from dyncli.metrics import error_rates
from dyncli.models.base import CTCEncoder


@dataclass
class SweepStats:
    """Accuracy and executed-work totals of one configuration over a data set."""

    hyps: list[str]
    flops: int = 0
    encoder_flops: int = 0
    frames: int = 0
    frame_layers: int = 0
    skipped_frames: int = 0


def _step_flops(table: Any, kind: str, index: int, frames: int) -> int:
    """FLOPs of one traced step (a layer, one block of a layer, an exit head or the final head)
    on ``frames``."""
    if kind == "layer":
        return int(table.layer(index, frames))
    if kind.startswith("block:"):
        return int(table.block(index, kind.removeprefix("block:"), frames))
    if kind == "predictor":  # a gate predictor: once per utterance, whatever its length
        return int(table.predictor(index))
    if kind == "exit":
        return int(table.exit_head(index, frames))
    return int(table.head(frames))


def _encoder_flops(table: Any, trace: Sequence[tuple[str, int, list[int]]]) -> int:
    """Per utterance, unpadded: every step at each utterance's own frame count."""
    return sum(_step_flops(table, kind, index, n) for kind, index, frames in trace for n in frames)


def _accumulate(
    stats: SweepStats,
    out: DynamicOutput,
    tokenizer: Tokenizer,
    table: Any,
    front: int,
    depth: int,
    blank: int,
) -> None:
    stats.hyps.append(tokenizer.decode(greedy_ctc(out.log_probs, out.lengths, blank)[0]))
    enc = _encoder_flops(table, out.trace)
    stats.encoder_flops += enc
    stats.flops += front + enc
    n = int(out.lengths[0])
    layers = out.frame_layers[0, :n]
    stats.frames += n
    stats.frame_layers += int(layers.sum())
    stats.skipped_frames += int((layers < depth).sum())


@torch.inference_mode()
def accuracy_sweep(
    model: CTCEncoder,
    tokenizer: Tokenizer,
    waves: Sequence[torch.Tensor],
    policy: str,
    thresholds: Sequence[float],
    overrides: dict[str, Any],
    table: Any = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[SweepStats, list[SweepStats]]:
    """Static and per-threshold transcripts and executed work, one utterance at a time.

    Shared per utterance: front end and subsampling (all rows), and the layers before the
    policy's decision (all thresholds, via ``sweep``).
    """
    from dyncli.measure.flops import FlopTable

    table = table or FlopTable(model)
    runner = build_policy(policy, thresholds[0], **overrides) if thresholds else None
    if runner is not None:
        runner.check(model)
    static = SweepStats(hyps=[])
    rows = [SweepStats(hyps=[]) for _ in thresholds]
    depth = model.num_layers
    dev = next(model.parameters()).device
    for i, wave in enumerate(waves):
        lengths = torch.tensor([wave.shape[0]], device=dev)
        feats, frames = model.features(wave[None], lengths)
        x, n = model.embed(feats, frames)
        front = table.frontend(int(wave.shape[0]))
        blank = model.blank_id
        _accumulate(
            static, StaticPolicy().encode(model, x, n), tokenizer, table, front, depth, blank
        )
        outs = runner.sweep(model, x, n, thresholds) if runner is not None else []
        for stats, out in zip(rows, outs, strict=True):
            _accumulate(stats, out, tokenizer, table, front, depth, blank)
        if progress is not None:
            progress(i + 1)
    return static, rows


def sweep_rows(
    ckpt: Checkpoint,
    utts: Sequence[Utterance],
    waves: Sequence[torch.Tensor],
    policy: str,
    thresholds: Sequence[float],
    overrides: dict[str, Any],
    table: Any = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The static row and one row per threshold: accuracy and executed work (no timing)."""
    static_stats, row_stats = accuracy_sweep(
        ckpt.model, ckpt.tokenizer, waves, policy, thresholds, overrides, table
    )
    refs = [u.text for u in utts]
    audio = sum(u.samples for u in utts) / ckpt.model.sample_rate
    depth = ckpt.model.num_layers
    static = _row("static", None, static_stats, refs, static_stats, audio, depth)
    full_errors = static[PRIVATE_ERRORS]  # scored once, the reference of every row
    rows = [
        _row(policy, th, st, refs, static_stats, audio, depth, full_errors)
        for th, st in zip(thresholds, row_stats, strict=True)
    ]
    return static, rows


def _row(
    name: str,
    threshold: float | None,
    stats: SweepStats,
    refs: list[str],
    static: SweepStats,
    audio_seconds: float,
    depth: int,
    full_errors: list[int] | None = None,
) -> dict[str, Any]:
    """One row; ``full_errors``: full depth's per-utterance errors (None: this is full
    depth)."""
    from dyncli.metrics import utterance_word_errors

    rates = error_rates(refs, stats.hyps)
    errors, words = utterance_word_errors(refs, stats.hyps)
    if full_errors is None:
        full_errors = errors
    wer = wer_interval(errors, words)
    return {
        "policy": name,
        "threshold": threshold,
        "wer": rates.wer,
        "wer_low": wer.low,
        "wer_high": wer.high,
        "cer": rates.cer,
        "words": rates.words,
        **wer_delta(full_errors, errors, words),
        "flops_ratio": stats.flops / static.flops if static.flops else 1.0,
        "encoder_flops_ratio": stats.encoder_flops / static.encoder_flops
        if static.encoder_flops
        else 1.0,
        "predicted_encoder_speedup": static.encoder_flops / stats.encoder_flops
        if stats.encoder_flops
        else None,
        "gflops_per_audio_second": stats.flops / 1e9 / audio_seconds,
        "encoder_gflops_per_audio_second": stats.encoder_flops / 1e9 / audio_seconds,
        "avg_layers": stats.frame_layers / stats.frames if stats.frames else float(depth),
        "skipped_frame_fraction": stats.skipped_frames / stats.frames if stats.frames else 0.0,
        PRIVATE_ERRORS: errors,
        PRIVATE_WORDS: words,
        PRIVATE_HYPS: list(stats.hyps),
    }


PRIVATE_ERRORS = "_errors"  # per-utterance word errors: for paired comparisons, never output
PRIVATE_WORDS = "_words"
PRIVATE_HYPS = "_hyps"  # per-utterance transcripts: onnxruntime rows are compared with them

FLOP_KEYS = (
    "flops_ratio",
    "encoder_flops_ratio",
    "predicted_encoder_speedup",
    "gflops_per_audio_second",
    "encoder_gflops_per_audio_second",
)


def onnx_row(
    graph: Any,
    utts: Sequence[Utterance],
    waves: Sequence[torch.Tensor],
    twin: dict[str, Any],
    depth: int,
    full_errors: list[int] | None = None,
) -> dict[str, Any]:
    """The row of an exported graph (:class:`dyncli.export.runtime.OnnxModel`) run on every
    utterance: accuracy from its own transcripts, depth from its ``frame_layers`` output, and
    the executed FLOPs of ``twin``, dyncli's row of the same configuration of the same
    checkpoint (the graph runs the same layers on the same frames; ``avg_layers`` shows it).
    ``full_errors``: the errors of the graph's full depth (None: this graph is full depth)."""
    stats = SweepStats(hyps=[])
    for wave in waves:
        out = graph.run(wave.detach().cpu().numpy())
        stats.hyps.append(graph.decode(out.log_probs))
        frames = int(out.log_probs.shape[0])
        layers = out.frame_layers
        stats.frames += frames
        if layers is None:
            stats.frame_layers += frames * depth
        else:
            stats.frame_layers += int(layers.sum())
            stats.skipped_frames += int((layers < depth).sum())
    refs = [u.text for u in utts]
    audio = sum(u.samples for u in utts) / graph.sample_rate
    threshold = twin["threshold"]
    row = _row(twin["policy"], threshold, stats, refs, stats, audio, depth, full_errors)
    row.update({key: twin[key] for key in FLOP_KEYS})
    row["runtime"] = "onnxruntime"
    row["transcripts_differ_from_torch"] = sum(
        a != b for a, b in zip(stats.hyps, twin[PRIVATE_HYPS], strict=True)
    )
    return row


def public(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` without its private per-utterance lists (what JSON, TSV and plots get)."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def wer_delta(
    reference_errors: Sequence[int],
    errors: Sequence[int],
    words: Sequence[int],
    prefix: str = "dwer",
) -> dict[str, Any]:
    """WER minus the reference's on the same utterances, with the paired bootstrap interval
    (:func:`dyncli.measure.stats.paired_wer_delta`), as flat ``PREFIX_*`` keys."""
    d = paired_wer_delta(reference_errors, errors, words)
    return {
        prefix: d.delta,
        f"{prefix}_low": d.low,
        f"{prefix}_high": d.high,
        f"{prefix}_prob_improvement": d.prob_improvement,
        f"{prefix}_differing": d.differing,
        f"{prefix}_resolution": d.resolution,
    }


def make_batches(
    waves: Sequence[torch.Tensor], batch_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Padded (B, N) batches and lengths (B,); with B > 1, utterances sorted by length first
    (as a server would bucket them) so padding stays small."""
    order = _batch_order(waves, batch_size)
    out = []
    for start in range(0, len(order), batch_size):
        wave, lens = pad_waves([waves[i] for i in order[start : start + batch_size]])
        out.append((wave.to(device), lens.to(device)))
    return out


@torch.inference_mode()
def batched_flops(
    model: CTCEncoder,
    table: Any,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    policy: Any,
) -> tuple[int, int]:
    """(total, encoder) FLOPs a pass over padded ``batches`` executes, padding included: each
    traced step runs on (rows x longest of them); the front end on (B x longest wave)."""
    total = encoder = 0
    for wave, lens in batches:
        feats, frames = model.features(wave, lens)
        x, n = model.embed(feats, frames)
        out = policy.encode(model, x, n)
        enc = sum(
            len(rows) * _step_flops(table, kind, index, max(rows))
            for kind, index, rows in out.trace
            if rows
        )
        encoder += enc
        total += enc + wave.shape[0] * table.frontend(int(wave.shape[1]))
    return total, encoder


def _batch_order(waves: Sequence[torch.Tensor], batch_size: int) -> list[int]:
    order = list(range(len(waves)))
    if batch_size > 1:
        order.sort(key=lambda i: int(waves[i].shape[0]))
    return order
