"""CTC training of a static baseline (``dyncli train``)."""

from __future__ import annotations

import math
import platform
import random
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
from dyncli.errors import JobFailed, UsageError
from dyncli.features import (
    AugmentConfig,
    lengths_to_mask,
    perturb_waves,
    spec_augment,
    warp_factors,
)
from dyncli.inference import pick_device, transcribe_waves
from dyncli.metrics import error_rates
from dyncli.models.base import CTCEncoder
from dyncli.plugins import get_backbone
from dyncli.text import build_tokenizer


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


def train(
    *,
    train_manifest: str | Path,
    dev_manifest: str | Path,
    output: str | Path,
    backbone: str = "conformer",
    model_config: Any = None,
    config: TrainConfig | None = None,
    reporter: Reporter,
) -> TrainResult:
    """Train a static CTC model; keep the checkpoint with the best dev WER at ``output``."""
    cfg = config or TrainConfig()
    if cfg.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise UsageError("--max-steps must be at least 1")
    if cfg.lr <= 0:
        raise UsageError("--lr must be positive")
    spec = get_backbone(backbone)
    model_config = model_config or spec.presets["demo"]
    sample_rate = int(model_config.frontend.sample_rate)
    _seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    started = time.perf_counter()

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

    tokenizer = build_tokenizer(cfg.tokenizer, [u.text for u in train_utts], cfg.vocab_size)
    targets = [tokenizer.encode(u.text) for u in train_utts]
    model = spec.build(model_config, tokenizer.vocab_size).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    reporter.message(
        f"model: {backbone}, {model.num_layers} layers, {n_params / 1e6:.2f} M parameters, "
        f"vocab {tokenizer.vocab_size} ({tokenizer.kind}); device {device}, "
        f"threads {torch.get_num_threads()}"
    )

    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    lengths = [u.samples for u in train_utts]
    batch_samples = int(cfg.batch_seconds * sample_rate)
    steps_per_epoch = len(bucket_batches(lengths, batch_samples, cfg.max_batch_size, False))
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total))
    provenance = {
        "train_manifest": str(train_manifest),
        "train_fingerprint": train_m.fingerprint(),
        "train_utterances": len(train_utts),
        "dev_manifest": str(dev_manifest),
        "dev_fingerprint": dev_m.fingerprint(),
        "train_config": asdict(cfg),  # made plain by save_checkpoint
        "command": " ".join(sys.argv),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dyncli_version": __version__,
        "torch_version": torch.__version__,
        "host": platform.node(),
    }

    reporter.start(total)
    step = 0
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = []
    stale = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        epoch_loss, epoch_batches = 0.0, 0
        for batch in bucket_batches(lengths, batch_samples, cfg.max_batch_size, True, rng):
            loss = _train_step(
                model,
                [train_utts[i] for i in batch],
                [targets[i] for i in batch],
                cfg,
                gen,
                device,
                step,
            )
            if not math.isfinite(loss.item()):
                raise JobFailed(
                    f"training diverged at step {step + 1} (loss {loss.item()}); "
                    "lower --lr or raise --warmup-steps"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            epoch_loss += loss.item()
            epoch_batches += 1
            reporter.step(step, loss.item(), float(scheduler.get_last_lr()[0]))
            if step >= total:
                break
        rates = _dev_scores(model, tokenizer, dev_utts, device)
        summary = {
            "epoch": epoch,
            "step": step,
            "train_loss": epoch_loss / max(1, epoch_batches),
            "dev_wer": rates.wer,
            "dev_cer": rates.cer,
            "seconds": time.perf_counter() - started,
        }
        improved = best is None or (rates.wer, rates.cer) < (best["dev_wer"], best["dev_cer"])
        summary["best"] = improved
        history.append(summary)
        if improved:
            best = summary
            stale = 0
            ckpt = Checkpoint(
                model=model,
                tokenizer=tokenizer,
                backbone=backbone,
                config=model_config,
                provenance=provenance,
                metrics={"dev_wer": rates.wer, "dev_cer": rates.cer, "epoch": epoch, "step": step},
            )
            save_checkpoint(output, ckpt)
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
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )


def _train_step(
    model: CTCEncoder,
    utts: list[Utterance],
    targets: list[list[int]],
    cfg: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
    step: int = 0,
) -> torch.Tensor:
    aug = cfg.augment
    prob = aug.probability(step)
    waves = [u.wave for u in utts]
    if aug.enabled:
        waves = perturb_waves(waves, aug, gen, prob)
    wave, lens = pad_waves(waves)
    wave, lens = wave.to(device), lens.to(device)
    warp = warp_factors(len(utts), aug, gen, prob).to(device) if aug.enabled else None
    feats, frames = model.frontend(wave, lens, warp=warp)
    if aug.enabled and (aug.freq_masks or aug.time_masks):
        feats = spec_augment(feats.cpu(), frames.cpu(), aug, gen, prob).to(device)
    x, out_lens = model.embed(feats, frames)
    pad_mask = lengths_to_mask(out_lens, x.shape[1])
    for i in range(model.num_layers):
        x = model.run_layer(i, x, pad_mask)
    return ctc_loss(model.log_probs(x), out_lens, targets)


def _dev_scores(
    model: CTCEncoder, tokenizer: Any, utts: list[Utterance], device: torch.device
) -> Any:
    model.eval()
    hyps = transcribe_waves(model, tokenizer, [u.wave for u in utts], device=device)
    model.train()
    return error_rates([u.text for u in utts], hyps)
