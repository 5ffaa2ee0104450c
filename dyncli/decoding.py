"""CTC decoding."""

from __future__ import annotations

import torch

from dyncli.data.text import BLANK_ID


def greedy_ctc(
    log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = BLANK_ID
) -> list[list[int]]:
    """Best path per utterance: argmax per frame, merge repeats, drop blanks.

    ``log_probs`` (B, T, V), ``lengths`` (B,) -> one list of label ids per utterance.
    ``blank`` is the model's CTC blank id (``CTCEncoder.blank_id``).
    """
    best = log_probs.argmax(dim=-1)
    out: list[list[int]] = []
    for b in range(best.shape[0]):
        path = best[b, : int(lengths[b])]
        if path.numel() == 0:
            out.append([])
            continue
        keep = torch.ones_like(path, dtype=torch.bool)
        keep[1:] = path[1:] != path[:-1]
        path = path[keep]
        out.append(path[path != blank].tolist())
    return out
