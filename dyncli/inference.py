"""Batched greedy transcription of in-memory waveforms."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dyncli.data.dataset import bucket_batches, pad_waves
from dyncli.decoding import greedy_ctc
from dyncli.models.base import CTCEncoder
from dyncli.text import Tokenizer


def pick_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from dyncli.errors import UsageError

        raise UsageError(f"--device {device}: no CUDA device is available; use --device cpu")
    return torch.device(device)


@torch.inference_mode()
def transcribe_waves(
    model: CTCEncoder,
    tokenizer: Tokenizer,
    waves: Sequence[torch.Tensor],
    batch_size: int = 16,
    device: torch.device | None = None,
) -> list[str]:
    """Greedy CTC transcripts of 1-D waveforms (at the model's rate), in input order."""
    device = device or next(model.parameters()).device
    lengths = [int(w.shape[0]) for w in waves]
    batches = bucket_batches(
        lengths, max_batch_frames=10**12, max_batch_size=batch_size, shuffle=False
    )
    out: list[str] = [""] * len(waves)
    for batch in batches:
        wave, lens = pad_waves([waves[i] for i in batch])
        log_probs, out_lens = model(wave.to(device), lens.to(device))
        for i, ids in zip(batch, greedy_ctc(log_probs, out_lens), strict=True):
            out[i] = tokenizer.decode(ids)
    return out
