"""Training data: manifests read once, with their provenance (the batches are drawn by
:mod:`dyncli.data.sampler`)."""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from dyncli import __version__
from dyncli.data.dataset import Utterance, load_utterances
from dyncli.data.manifest import read_manifest
from dyncli.training.config import Reporter, TrainConfig


@dataclass
class TrainData:
    train: list[Utterance]
    dev: list[Utterance]
    skipped: list[str]
    train_fingerprint: str
    dev_fingerprint: str


def load_data(
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


def provenance(
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
