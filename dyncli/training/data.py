"""Training data: manifests read once, batches bucketed by length and sharded over ranks."""

from __future__ import annotations

import platform
import random
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from dyncli import __version__
from dyncli.data.dataset import Utterance, bucket_batches, load_utterances
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


def epoch_batches(
    lengths: list[int],
    batch_samples: int,
    max_batch_size: int,
    rng: random.Random,
    world_size: int,
) -> list[list[int]]:
    """One epoch of global batches: length-bucketed, shuffled with ``rng``.

    Every rank draws the same global batches from the same ``rng`` state and takes its share
    with :func:`shard`, so every rank gets the same number of batches. A global batch with fewer
    utterances than ranks cannot be shared and is left out on every rank (at most a few short
    tail batches per epoch, and none with one process).
    """
    batches = bucket_batches(lengths, batch_samples, max_batch_size, True, rng)
    return [b for b in batches if len(b) >= world_size]


def shard(batch: list[int], lengths: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's part of a global batch: every ``world_size``-th utterance by length, so
    the ranks get similar padded lengths (and thus similar step times)."""
    ordered = sorted(batch, key=lambda i: (lengths[i], i))
    return ordered[rank::world_size]
