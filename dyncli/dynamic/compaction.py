"""Gathering kept frames out of a padded batch and scattering results back (blank-skip's
compaction, shared by its policy and its skip-aware training path)."""

from __future__ import annotations

import torch


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
