"""CTC training: static baselines and early-exit models (``dyncli train``, ``dyncli convert``)."""

from __future__ import annotations

import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch

from dyncli import __version__
from dyncli.checkpoint import Checkpoint, save_checkpoint
from dyncli.data.dataset import Utterance, bucket_batches, load_utterances, pad_waves
from dyncli.data.manifest import read_manifest
from dyncli.decoding import greedy_ctc
from dyncli.errors import JobFailed, UsageError
from dyncli.features import (
    AugmentConfig,
    lengths_to_mask,
    perturb_waves,
    spec_augment,
    warp_factors,
)
from dyncli.inference import pick_device
from dyncli.metrics import ErrorRates, error_rates
from dyncli.models.base import CTCEncoder
from dyncli.plugins import get_backbone
from dyncli.text import Tokenizer, build_tokenizer


@dataclass
class TrainConfig:
    epochs: int = 30
    max_steps: int | None = None
    batch_seconds: float = 48.0  # padded audio seconds per batch
    max_batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 400
    min_lr_ratio: float = 0.02
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    patience: int | None = None  # stop after this many epochs without dev improvement
    seed: int = 0
    device: str = "auto"
    tokenizer: str = "sentencepiece"
    vocab_size: int = 32
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    skip_bad: bool = False


class Reporter(Protocol):
    def start(self, total_steps: int) -> None: ...

    def step(self, step: int, loss: float, lr: float) -> None: ...

    def epoch(self, summary: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...


@dataclass
class TrainResult:
    output: Path
    best_epoch: int
    best_dev_wer: float
    best_dev_cer: float
    history: list[dict[str, Any]]
    skipped: list[str]
    seconds: float
    best_dev_exit_wer: dict[str, float] = field(default_factory=dict)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _lr_lambda(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine

    return f


def ctc_loss(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    targets: list[list[int]],
) -> torch.Tensor:
    """Sum of per-utterance CTC losses / batch size, on the true (unpadded) frame counts."""
    flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long)
    target_lengths = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
    loss = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1),
        flat.to(log_probs.device),
        lengths,
        target_lengths.to(log_probs.device),
        blank=0,
        reduction="sum",
        zero_infinity=True,
    )
    return loss / len(targets)


@dataclass
class ExitTraining:
    """What is trained at the intermediate exits (``--exits``) and how the losses combine.

    loss = ``final_weight`` * CTC(final head) + ``exit_weight`` * sum over exits CTC(exit head).
    With ``freeze_backbone`` only the exit heads learn: the backbone runs in eval mode (dropout
    off, BatchNorm statistics fixed) and only up to the deepest exit.
    """

    exits: list[int] = field(default_factory=list)
    exit_weight: float = 1.0
    final_weight: float = 1.0
    freeze_backbone: bool = False
    # Skip-aware training: on a share ``skip_prob`` of steps, run blank-skip at the exit after
    # ``skip_layer`` with a threshold drawn from ``skip_thresholds`` and ``skip_neighbours``,
    # so the layers after it learn to work on the compacted sequence inference gives them.
    skip_layer: int | None = None
    skip_thresholds: tuple[float, float] = (0.5, 0.99)
    skip_neighbours: int = 1
    skip_prob: float = 0.5


def check_exits(exits: list[int], num_layers: int) -> list[int]:
    """Validate 1-based exit layers: unique, ascending, each below the final layer."""
    if len(set(exits)) != len(exits):
        raise UsageError(f"--exits lists a layer twice: {exits}")
    bad = [k for k in exits if not 1 <= k < num_layers]
    if bad:
        raise UsageError(
            f"--exits {bad}: exit layers are 1-based and must lie in 1..{num_layers - 1} "
            f"(the model has {num_layers} layers; layer {num_layers} already has the final head)"
        )
    return sorted(exits)


def train(
    *,
    train_manifest: str | Path,
    dev_manifest: str | Path,
    output: str | Path,
    backbone: str = "conformer",
    model_config: Any = None,
    config: TrainConfig | None = None,
    exits: ExitTraining | None = None,
    reporter: Reporter,
) -> TrainResult:
    """Train a CTC model from scratch (with intermediate exit heads when ``exits`` names any);
    keep the checkpoint with the best dev WER at ``output``."""
    cfg = config or TrainConfig()
    _check_config(cfg)
    spec = get_backbone(backbone)
    model_config = model_config or spec.presets["demo"]
    sample_rate = int(model_config.frontend.sample_rate)
    _seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    started = time.perf_counter()
    data = _load_data(train_manifest, dev_manifest, sample_rate, cfg, reporter)
    tokenizer = build_tokenizer(cfg.tokenizer, [u.text for u in data.train], cfg.vocab_size)
    model = spec.build(model_config, tokenizer.vocab_size)
    exit_cfg = exits or ExitTraining()
    if exit_cfg.freeze_backbone:
        raise UsageError("--freeze-backbone needs a trained backbone: use 'dyncli convert'")
    if exit_cfg.exits:
        model.attach_exits(check_exits(exit_cfg.exits, model.num_layers))
    method = early_exit_method(exit_cfg, training="from-scratch") if exit_cfg.exits else None
    return fit(
        model=model.to(device),
        tokenizer=tokenizer,
        backbone=backbone,
        model_config=model_config,
        data=data,
        output=output,
        config=cfg,
        exits=exit_cfg,
        method=method,
        provenance=_provenance(train_manifest, dev_manifest, data, cfg),
        reporter=reporter,
        device=device,
        started=started,
    )


def early_exit_method(exits: ExitTraining, training: str) -> dict[str, Any]:
    """The checkpoint ``method`` record of an early-exit model."""
    skip_aware = None
    if exits.skip_layer is not None:
        skip_aware = {
            "layer": exits.skip_layer,
            "thresholds": list(exits.skip_thresholds),
            "neighbours": exits.skip_neighbours,
            "share_of_steps": exits.skip_prob,
        }
    return {
        "skip_aware_training": skip_aware,
        "name": "early-exit",
        "exits": list(exits.exits),
        "training": training,
        "exit_weight": exits.exit_weight,
        "final_weight": exits.final_weight,
        "freeze_backbone": exits.freeze_backbone,
        "operating_point": None,
    }


def _check_config(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise UsageError("--max-steps must be at least 1")
    if cfg.lr <= 0:
        raise UsageError("--lr must be positive")


@dataclass
class TrainData:
    train: list[Utterance]
    dev: list[Utterance]
    skipped: list[str]
    train_fingerprint: str
    dev_fingerprint: str


def _load_data(
    train_manifest: str | Path,
    dev_manifest: str | Path,
    sample_rate: int,
    cfg: TrainConfig,
    reporter: Reporter,
) -> TrainData:
    train_m = read_manifest(train_manifest, skip_bad=cfg.skip_bad)
    dev_m = read_manifest(dev_manifest, skip_bad=cfg.skip_bad)
    reporter.message(
        f"train: {len(train_m.items)} utterances ({train_m.format}); "
        f"dev: {len(dev_m.items)} ({dev_m.format})"
    )
    train_utts, skipped = load_utterances(train_m, sample_rate, cfg.skip_bad)
    dev_utts, dev_skipped = load_utterances(dev_m, sample_rate, cfg.skip_bad)
    skipped += dev_skipped
    if skipped:
        reporter.message(f"skipped {len(skipped)} bad entries (--skip-bad)")
    return TrainData(train_utts, dev_utts, skipped, train_m.fingerprint(), dev_m.fingerprint())


def _provenance(
    train_manifest: str | Path, dev_manifest: str | Path, data: TrainData, cfg: TrainConfig
) -> dict[str, Any]:
    return {
        "train_manifest": str(train_manifest),
        "train_fingerprint": data.train_fingerprint,
        "train_utterances": len(data.train),
        "dev_manifest": str(dev_manifest),
        "dev_fingerprint": data.dev_fingerprint,
        "train_config": asdict(cfg),  # made plain by save_checkpoint
        "command": " ".join(sys.argv),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dyncli_version": __version__,
        "torch_version": torch.__version__,
        "host": platform.node(),
    }


def fit(
    *,
    model: CTCEncoder,
    tokenizer: Tokenizer,
    backbone: str,
    model_config: Any,
    data: TrainData,
    output: str | Path,
    config: TrainConfig,
    exits: ExitTraining,
    method: dict[str, Any] | None,
    provenance: dict[str, Any],
    reporter: Reporter,
    device: torch.device,
    started: float,
) -> TrainResult:
    """The training loop shared by ``train`` and ``convert``; saves the best dev checkpoint.

    "Best" is the lowest dev WER (then CER) of the final head, or, with exits, the lowest mean
    over all heads (final and exits), so every exit is judged, not only the last one.
    """
    cfg = config
    targets = [tokenizer.encode(u.text) for u in data.train]
    n_params = sum(p.numel() for p in model.parameters())
    trainable = _trainable_parameters(model, exits)
    n_train = sum(p.numel() for p in trainable)
    reporter.message(
        f"model: {backbone}, {model.num_layers} layers, {n_params / 1e6:.2f} M parameters "
        f"({n_train / 1e6:.3f} M trained), vocab {tokenizer.vocab_size} ({tokenizer.kind})"
        + (f", exits after layers {exits.exits}" if exits.exits else "")
        + f"; device {device}, threads {torch.get_num_threads()}"
    )
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    lengths = [u.samples for u in data.train]
    batch_samples = int(cfg.batch_seconds * model.sample_rate)
    steps_per_epoch = len(bucket_batches(lengths, batch_samples, cfg.max_batch_size, False))
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total))

    reporter.start(total)
    step = 0
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = []
    stale = 0
    for epoch in range(1, cfg.epochs + 1):
        _set_train_mode(model, exits)
        epoch_loss, epoch_batches = 0.0, 0
        for batch in bucket_batches(lengths, batch_samples, cfg.max_batch_size, True, rng):
            loss = _train_step(
                model,
                [data.train[i] for i in batch],
                [targets[i] for i in batch],
                cfg,
                gen,
                device,
                step,
                exits,
            )
            if not math.isfinite(loss.item()):
                raise JobFailed(
                    f"training diverged at step {step + 1} (loss {loss.item()}); "
                    "lower --lr or raise --warmup-steps"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            epoch_loss += loss.item()
            epoch_batches += 1
            reporter.step(step, loss.item(), float(scheduler.get_last_lr()[0]))
            if step >= total:
                break
        scores = dev_scores(model, tokenizer, data.dev, device)
        final = scores[model.num_layers]
        summary: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "train_loss": epoch_loss / max(1, epoch_batches),
            "dev_wer": final.wer,
            "dev_cer": final.cer,
            "seconds": time.perf_counter() - started,
        }
        if exits.exits:
            summary["dev_exit_wer"] = {str(k): scores[k].wer for k in exits.exits}
        key = (
            statistics.fmean(r.wer for r in scores.values()),
            statistics.fmean(r.cer for r in scores.values()),
        )
        summary["select"] = key[0]
        improved = best is None or key < best["key"]
        summary["best"] = improved
        history.append(summary)
        if improved:
            best = {**summary, "key": key}
            stale = 0
            metrics: dict[str, Any] = {
                "dev_wer": final.wer,
                "dev_cer": final.cer,
                "epoch": epoch,
                "step": step,
            }
            if exits.exits:
                metrics["dev_exit_wer"] = summary["dev_exit_wer"]
            save_checkpoint(
                output,
                Checkpoint(
                    model=model,
                    tokenizer=tokenizer,
                    backbone=backbone,
                    config=model_config,
                    method=method,
                    provenance=provenance,
                    metrics=metrics,
                ),
            )
        else:
            stale += 1
        reporter.epoch(summary)
        if step >= total or (cfg.patience is not None and stale >= cfg.patience):
            break
    assert best is not None
    return TrainResult(
        output=Path(output),
        best_epoch=int(best["epoch"]),
        best_dev_wer=float(best["dev_wer"]),
        best_dev_cer=float(best["dev_cer"]),
        history=history,
        skipped=data.skipped,
        seconds=time.perf_counter() - started,
        best_dev_exit_wer=dict(best.get("dev_exit_wer") or {}),
    )


def _trainable_parameters(model: CTCEncoder, exits: ExitTraining) -> list[torch.nn.Parameter]:
    if exits.freeze_backbone:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.exit_heads.parameters():
            p.requires_grad_(True)
        return list(model.exit_heads.parameters())
    return [p for p in model.parameters() if p.requires_grad]


def _set_train_mode(model: CTCEncoder, exits: ExitTraining) -> None:
    if exits.freeze_backbone:
        model.eval()  # dropout off, BatchNorm statistics of the trained backbone kept
        model.exit_heads.train()
    else:
        model.train()


def _train_step(
    model: CTCEncoder,
    utts: list[Utterance],
    targets: list[list[int]],
    cfg: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
    step: int = 0,
    exits: ExitTraining | None = None,
) -> torch.Tensor:
    exits = exits or ExitTraining()
    aug = cfg.augment
    prob = aug.probability(step)
    waves = [u.wave for u in utts]
    if aug.enabled:
        waves = perturb_waves(waves, aug, gen, prob)
    wave, lens = pad_waves(waves)
    wave, lens = wave.to(device), lens.to(device)
    warp = warp_factors(len(utts), aug, gen, prob).to(device) if aug.enabled else None
    frozen = exits.freeze_backbone
    with torch.set_grad_enabled(not frozen):
        feats, frames = model.frontend(wave, lens, warp=warp)
        if aug.enabled and (aug.freq_masks or aug.time_masks):
            feats = spec_augment(feats.cpu(), frames.cpu(), aug, gen, prob).to(device)
        x, out_lens = model.embed(feats, frames)
    pad_mask = lengths_to_mask(out_lens, x.shape[1])
    exit_set = set(exits.exits)
    depth = max(exit_set) if frozen else model.num_layers
    losses: list[torch.Tensor] = []
    if exits.skip_layer is not None and not frozen:
        draw = torch.rand(2, generator=gen).tolist()
        if draw[0] < exits.skip_prob:
            lo, hi = exits.skip_thresholds
            return _skip_aware_loss(
                model, x, out_lens, pad_mask, targets, exits, lo + (hi - lo) * draw[1]
            )
    for i in range(depth):
        with torch.set_grad_enabled(not frozen):
            x = model.run_layer(i, x, pad_mask)
        if i + 1 in exit_set:
            exit_lp = model.exit_log_probs(i + 1, x)
            losses.append(exits.exit_weight * ctc_loss(exit_lp, out_lens, targets))
    if not frozen:
        losses.append(exits.final_weight * ctc_loss(model.log_probs(x), out_lens, targets))
    return torch.stack(losses).sum()


def _skip_aware_loss(
    model: CTCEncoder,
    x: torch.Tensor,
    lengths: torch.Tensor,
    pad_mask: torch.Tensor,
    targets: list[list[int]],
    exits: ExitTraining,
    threshold: float,
) -> torch.Tensor:
    """The exit and final CTC losses with blank-skip in the loop, exactly as inference runs it:
    frames the exit after ``skip_layer`` calls blank leave the sequence for the later layers and
    emit that exit's posteriors (the decision itself is not differentiated)."""
    from dyncli.dynamic import compact, keep_mask, scatter

    assert exits.skip_layer is not None
    k = exits.skip_layer
    losses: list[torch.Tensor] = []
    for i in range(k):
        x = model.run_layer(i, x, pad_mask)
        if i + 1 in exits.exits:
            lp = model.exit_log_probs(i + 1, x)
            losses.append(exits.exit_weight * ctc_loss(lp, lengths, targets))
    trigger = model.exit_log_probs(k, x)
    keep = keep_mask(trigger.detach(), lengths, threshold, exits.skip_neighbours)
    if not bool(keep.any()):
        return torch.stack(losses).sum()
    xs, order, filled, attn_pad = compact(x, keep)
    for i in range(k, model.num_layers):
        xs = model.run_layer(i, xs, attn_pad)
        if i + 1 in exits.exits and i + 1 < model.num_layers:
            merged = scatter(trigger, model.exit_log_probs(i + 1, xs), order, filled)
            losses.append(exits.exit_weight * ctc_loss(merged, lengths, targets))
    merged = scatter(trigger, model.log_probs(xs), order, filled)
    losses.append(exits.final_weight * ctc_loss(merged, lengths, targets))
    return torch.stack(losses).sum()


@torch.inference_mode()
def dev_scores(
    model: CTCEncoder,
    tokenizer: Tokenizer,
    utts: list[Utterance],
    device: torch.device,
    batch_size: int = 16,
) -> dict[int, ErrorRates]:
    """Greedy WER/CER of every head (exits and final, keyed by 1-based layer), one pass each."""
    was_training = model.training
    model.eval()
    lengths = [u.samples for u in utts]
    batches = bucket_batches(lengths, 10**12, batch_size, shuffle=False)
    hyps: dict[int, list[str]] = {k: [""] * len(utts) for k in [*model.exits, model.num_layers]}
    for batch in batches:
        wave, lens = pad_waves([utts[i].wave for i in batch])
        outs, out_lens = model.forward_exits(wave.to(device), lens.to(device))
        for layer, lp in outs.items():
            for i, ids in zip(batch, greedy_ctc(lp, out_lens), strict=True):
                hyps[layer][i] = tokenizer.decode(ids)
    model.train(was_training)
    refs = [u.text for u in utts]
    return {layer: error_rates(refs, h) for layer, h in hyps.items()}
