"""What a training run is told: its schedule, what is trained at the exits, and who hears of it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dyncli.errors import UsageError
from dyncli.training.augment import AugmentConfig


@dataclass
class TrainConfig:
    epochs: int = 30
    max_steps: int | None = None
    batch_seconds: float = 48.0  # padded audio seconds per (global) batch
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
    save_every: int = 100  # steps between resumable states (and at every epoch end)
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on the CPU


class Reporter(Protocol):
    def start(self, total_steps: int) -> None: ...

    def step(self, step: int, loss: float, lr: float) -> None: ...

    def epoch(self, summary: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...


class SilentReporter:
    """The reporter of every rank but 0: it says nothing."""

    def start(self, total_steps: int) -> None:
        pass

    def step(self, step: int, loss: float, lr: float) -> None:
        pass

    def epoch(self, summary: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass


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
    resumed_from_step: int | None = None


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


def check_config(cfg: TrainConfig) -> None:
    """Refuse a schedule that cannot train: counts below 1, a learning rate that is not a
    positive finite number, a negative or non-finite weight decay or batch length."""
    if cfg.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise UsageError("--max-steps must be at least 1")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UsageError(f"--lr must be a positive finite number, got {cfg.lr}")
    if cfg.warmup_steps < 1:
        raise UsageError(f"--warmup-steps must be at least 1, got {cfg.warmup_steps}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise UsageError(f"--weight-decay must be >= 0 and finite, got {cfg.weight_decay}")
    if not (math.isfinite(cfg.batch_seconds) and cfg.batch_seconds > 0):
        raise UsageError(f"--batch-seconds must be positive and finite, got {cfg.batch_seconds}")
    if cfg.save_every < 1:
        raise UsageError("--save-every must be at least 1")


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
