"""Which utterances go together: batches bucketed by length, one epoch's global batches, and
each rank's share of a global batch."""

from __future__ import annotations

import random
from collections.abc import Sequence


def bucket_batches(
    lengths: Sequence[int],
    max_batch_frames: int,
    max_batch_size: int,
    shuffle: bool,
    rng: random.Random | None = None,
) -> list[list[int]]:
    """Group indices of similar length into batches.

    Indices are sorted by length (with random tie-breaking when ``shuffle``); a batch closes when
    adding one more utterance would make ``batch_size * longest`` exceed ``max_batch_frames`` or
    the batch would exceed ``max_batch_size``. With ``shuffle`` the batch order is random.
    """
    rng = rng or random.Random(0)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    order.sort(key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[i]  # ascending order: the newcomer is the longest
        if current and (
            len(current) + 1 > max_batch_size or (len(current) + 1) * longest > max_batch_frames
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


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
