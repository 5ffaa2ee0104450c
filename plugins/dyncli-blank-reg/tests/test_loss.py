"""Tests for the soft-restriction blank-regularized CTC loss."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

try:
    from dyncli_blank_reg.loss import penalized_ctc_loss
except ImportError:  # not installed: run from the plugin checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dyncli_blank_reg.loss import penalized_ctc_loss


def _torch_ctc(
    lp: torch.Tensor, targets: list[list[int]], lengths: torch.Tensor, blank: int
) -> torch.Tensor:
    flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long)
    target_lengths = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
    loss = torch.nn.functional.ctc_loss(
        lp.transpose(0, 1),
        flat,
        lengths,
        target_lengths,
        blank=blank,
        reduction="sum",
        zero_infinity=True,
    )
    return loss / lp.shape[0]


def _random_case(blank: int, seed: int = 0) -> tuple[torch.Tensor, list[list[int]], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch, frames, vocab = 5, 12, 6
    logits = torch.randn(batch, frames, vocab, generator=gen, dtype=torch.float64).float()
    labels = [v for v in range(vocab) if v != blank]
    targets = [
        [labels[2], labels[2]],  # repeated label
        [],  # empty target
        [labels[0], labels[1], labels[0], labels[3]],
        [labels[4], labels[4], labels[4]],
        [labels[1], labels[3], labels[3], labels[2], labels[0]],
    ]
    lengths = torch.tensor([12, 7, 9, 10, 11], dtype=torch.long)  # padded, unequal
    return logits, targets, lengths


@pytest.mark.parametrize("blank", [0, 5])
def test_penalty_zero_matches_torch_ctc(blank: int) -> None:
    logits, targets, lengths = _random_case(blank)

    x1 = logits.clone().requires_grad_(True)
    ours = penalized_ctc_loss(torch.log_softmax(x1, dim=-1), targets, lengths, blank, 0.0)
    ours.backward()

    x2 = logits.clone().requires_grad_(True)
    ref = _torch_ctc(torch.log_softmax(x2, dim=-1), targets, lengths, blank)
    ref.backward()

    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0.0)
    assert x1.grad is not None and x2.grad is not None
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0.0, atol=1e-5)


def test_penalty_increases_loss_monotonically() -> None:
    logits, targets, lengths = _random_case(blank=0, seed=1)
    lp = torch.log_softmax(logits, dim=-1)
    losses = [
        penalized_ctc_loss(lp, targets, lengths, 0, p).item() for p in (0.0, 0.5, 1.0, 2.0, 5.0)
    ]
    for lo, hi in itertools.pairwise(losses):
        assert hi > lo  # every case here has alignments that use a non-blank self-loop


def test_penalty_no_effect_without_self_loop_alignments() -> None:
    # T == L with distinct labels: the only alignment is l1 l2 l3, no self-loop anywhere.
    lp = torch.log_softmax(torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(2)), -1)
    lengths = torch.tensor([3])
    base = penalized_ctc_loss(lp, [[1, 2, 3]], lengths, 0, 0.0)
    pen = penalized_ctc_loss(lp, [[1, 2, 3]], lengths, 0, 3.0)
    torch.testing.assert_close(pen, base)
    # One extra frame allows a self-loop alignment, so the penalty now strictly increases it.
    lp4 = torch.log_softmax(torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(3)), -1)
    lengths4 = torch.tensor([4])
    assert penalized_ctc_loss(lp4, [[1, 2, 3]], lengths4, 0, 3.0) > penalized_ctc_loss(
        lp4, [[1, 2, 3]], lengths4, 0, 0.0
    )


def _brute_force(lp: torch.Tensor, target: list[int], blank: int, penalty: float) -> float:
    frames, vocab = lp.shape
    total = 0.0
    for path in itertools.product(range(vocab), repeat=frames):
        collapsed = [s for i, s in enumerate(path) if s != blank and (i == 0 or path[i - 1] != s)]
        if collapsed != target:
            continue
        loops = sum(1 for i in range(1, frames) if path[i] == path[i - 1] != blank)
        score = sum(lp[i, s].item() for i, s in enumerate(path)) - penalty * loops
        total += math.exp(score)
    return -math.log(total)


@pytest.mark.parametrize("blank", [0, 2])
@pytest.mark.parametrize("target", [[1], [1, 1], [1, 2], [2, 1]])
@pytest.mark.parametrize("penalty", [0.0, 0.7, 2.5])
def test_brute_force(blank: int, target: list[int], penalty: float) -> None:
    # Map the label ids so they never hit the blank.
    labels = [v for v in range(3) if v != blank]
    tgt = [labels[i - 1] for i in target]
    gen = torch.Generator().manual_seed(4)
    lp = torch.log_softmax(torch.randn(1, 4, 3, generator=gen, dtype=torch.float64), -1).float()
    loss = penalized_ctc_loss(lp, [tgt], torch.tensor([4]), blank, penalty)
    expected = _brute_force(lp[0].double(), tgt, blank, penalty)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_infeasible_utterance_contributes_zero() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 6, 4, generator=gen).requires_grad_(True)
    lengths = torch.tensor([6, 3])
    targets = [[1, 2], [1, 1, 2]]  # second needs 4 frames (repeat needs a blank), has 3
    loss = penalized_ctc_loss(torch.log_softmax(logits, -1), targets, lengths, 0, 1.5)
    alone = penalized_ctc_loss(
        torch.log_softmax(logits[:1].detach(), -1), targets[:1], lengths[:1], 0, 1.5
    )
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, alone / 2)
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert torch.count_nonzero(logits.grad[1]) == 0

    only_bad = logits.detach()[1:].clone().requires_grad_(True)
    zero = penalized_ctc_loss(torch.log_softmax(only_bad, -1), targets[1:], lengths[1:], 0, 1.5)
    assert zero.item() == 0.0
    zero.backward()
    assert only_bad.grad is not None and torch.isfinite(only_bad.grad).all()


def _blank_fraction_after_training(penalty: float) -> float:
    gen = torch.Generator().manual_seed(6)
    frames, vocab, blank = 20, 5, 0
    logits = (0.1 * torch.randn(1, frames, vocab, generator=gen)).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    targets, lengths = [[1, 2, 3]], torch.tensor([frames])
    for _ in range(80):
        opt.zero_grad()
        penalized_ctc_loss(
            torch.log_softmax(logits, -1), targets, lengths, blank, penalty
        ).backward()
        opt.step()
    return (logits.detach().argmax(-1) == blank).float().mean().item()


def test_penalty_promotes_blank_frames() -> None:
    plain = _blank_fraction_after_training(0.0)
    regularised = _blank_fraction_after_training(2.0)
    assert regularised > plain
