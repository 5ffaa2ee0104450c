"""The CTC blank id belongs to the model: a model whose blank sits at another id behaves exactly
like the same model with its output rows permuted (decoding, blank-skip, early exit, factorized
heads, CTC loss, factorized KD, checkpoints)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from dyncli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from dyncli.data.text import CharTokenizer
from dyncli.decoding import greedy_ctc
from dyncli.errors import CheckpointError
from dyncli.methods.blank_skip import BlankSkipConfig
from dyncli.methods.blank_skip.policy import BlankSkip
from dyncli.methods.early_exit import EarlyExitConfig
from dyncli.methods.early_exit.policy import EarlyExit
from dyncli.models.config import CONFORMER_PRESETS
from dyncli.models.conformer import build_conformer_ctc
from dyncli.training import ExitTraining, early_exit_method
from dyncli.training.kd import factorized_kd
from dyncli.training.objectives import ctc_loss

CFG = CONFORMER_PRESETS["tiny"]
V, K = 9, 4  # vocabulary; the other model's blank id


def perm() -> torch.Tensor:
    p = torch.arange(V)
    p[0], p[K] = K, 0
    return p


def pair(form: str = "softmax"):
    """Model A (blank 0) and model B: A with output rows 0 and K swapped and blank_id K."""
    torch.manual_seed(3)
    a = build_conformer_ctc(CFG, V).eval()
    a.attach_exits([1, 2])
    with torch.no_grad():
        a.exit_heads["1"].bias[0] += 4.0  # P(blank) 0.6-0.95: blank-skip skips some frames
        a.head.bias[0] += 1.0
    a.exit_head_form = form
    b = copy.deepcopy(a)
    with torch.no_grad():
        for head in (b.head, *b.exit_heads.values()):
            head.weight.copy_(head.weight[perm()])
            head.bias.copy_(head.bias[perm()])
    b.blank_id = K
    return a, b


@pytest.mark.parametrize("form", ["softmax", "factorized"])
@torch.inference_mode()
def test_a_moved_blank_changes_nothing_but_the_ids(form: str) -> None:
    a, b = pair(form)
    x = torch.randn(2, 30, CFG.d_model)
    lengths = torch.tensor([30, 22])
    p = perm()
    for layer in (1, 2):
        torch.testing.assert_close(
            b.exit_log_probs(layer, x), a.exit_log_probs(layer, x)[..., p], atol=1e-5, rtol=1e-5
        )
    # A threshold between the blank posteriors, so that some frames skip and some do not.
    threshold = float(a.exit_log_probs(1, x)[0, :, 0].exp().median())
    config = BlankSkipConfig(threshold=threshold, layer=1, neighbours=0)
    skip_a = BlankSkip(config).encode(a, x, lengths)
    skip_b = BlankSkip(config).encode(b, x, lengths)
    assert skip_a.frame_layers.tolist() == skip_b.frame_layers.tolist()
    assert 0 < int((skip_a.frame_layers == 1).sum()) < int(lengths.sum())  # some skipped
    torch.testing.assert_close(skip_b.log_probs, skip_a.log_probs[..., p], atol=1e-5, rtol=1e-5)
    ids_a = greedy_ctc(skip_a.log_probs, lengths, blank=0)
    ids_b = greedy_ctc(skip_b.log_probs, lengths, blank=K)
    assert ids_b == [[int(p[i]) for i in ids] for ids in ids_a]
    for criterion, threshold in (("posterior", 0.3), ("entropy", 0.9)):
        policy = EarlyExit(EarlyExitConfig(threshold=threshold, criterion=criterion))
        ea, eb = policy.encode(a, x, lengths), policy.encode(b, x, lengths)
        assert ea.frame_layers.tolist() == eb.frame_layers.tolist()


def test_ctc_loss_and_factorized_kd_read_the_blank() -> None:
    torch.manual_seed(0)
    lp_a = torch.randn(2, 12, V).log_softmax(-1)
    teacher_a = torch.randn(2, 12, V).log_softmax(-1)
    p = perm()
    lp_b, teacher_b = lp_a[..., p], teacher_a[..., p]
    lengths = torch.tensor([12, 9])
    targets_a = [[1, 2, 3], [5, 6]]
    targets_b = [[int(p[i]) for i in t] for t in targets_a]
    torch.testing.assert_close(
        ctc_loss(lp_b, lengths, targets_b, blank=K), ctc_loss(lp_a, lengths, targets_a, blank=0)
    )
    ka = factorized_kd(teacher_a, lp_a, lengths, blank=0)
    kb = factorized_kd(teacher_b, lp_b, lengths, blank=K)
    torch.testing.assert_close(kb.blank, ka.blank)
    torch.testing.assert_close(kb.nonblank, ka.nonblank)
    wrong = factorized_kd(teacher_b, lp_b, lengths, blank=0)  # the blank read at the wrong id
    assert not torch.allclose(wrong.blank, ka.blank)


def test_checkpoint_keeps_the_blank_id(tmp_path: Path) -> None:
    _, b = pair()
    tok = CharTokenizer.train(["one two"])
    path = tmp_path / "b.ckpt"
    method = early_exit_method(ExitTraining(exits=[1, 2]), training="fine-tune")
    save_checkpoint(
        path, Checkpoint(model=b, tokenizer=tok, backbone="conformer", config=CFG, method=method)
    )
    assert load_checkpoint(path).model.blank_id == K
    payload = torch.load(path, weights_only=True)
    payload["blank_id"] = V  # outside the vocabulary
    bad = tmp_path / "bad.ckpt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="blank id 9 outside the vocabulary"):
        load_checkpoint(bad)
    del payload["blank_id"]  # a format-1 checkpoint written before the key existed
    old = tmp_path / "old.ckpt"
    torch.save(payload, old)
    assert load_checkpoint(old).model.blank_id == 0
