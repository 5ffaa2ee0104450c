"""Knowledge-distillation losses on CTC posteriors (dyncli.training.kd)."""

from __future__ import annotations

import math

import pytest
import torch

from dyncli.training import kd


def _random_lp(b: int = 3, t: int = 7, v: int = 6, scale: float = 2.0) -> torch.Tensor:
    return torch.log_softmax(torch.randn(b, t, v) * scale, dim=-1)


def _lengths() -> torch.Tensor:
    return torch.tensor([7, 4, 1])


def test_zero_when_student_equals_teacher() -> None:
    torch.manual_seed(0)
    lp = _random_lp()
    terms = kd.factorized_kd(lp, lp.clone(), _lengths())
    assert terms.blank.abs().item() < 1e-6
    assert terms.nonblank.abs().item() < 1e-6
    assert kd.posterior_kd(lp, lp.clone(), _lengths()).abs().item() < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("blank", [0, 3])
def test_factorized_terms_sum_to_full_kl(temperature: float, blank: int) -> None:
    torch.manual_seed(1)
    teacher, student = _random_lp(), _random_lp()
    terms = kd.factorized_kd(teacher, student, _lengths(), temperature=temperature, blank=blank)
    full = kd.posterior_kd(teacher, student, _lengths(), temperature=temperature)
    assert terms.blank.item() > 0 and terms.nonblank.item() > 0
    torch.testing.assert_close(terms.blank + terms.nonblank, full, rtol=1e-5, atol=1e-7)


def test_padding_contributes_nothing() -> None:
    torch.manual_seed(2)
    teacher, student = _random_lp(), _random_lp()
    lengths = _lengths()
    before = kd.factorized_kd(teacher, student, lengths)
    full_before = kd.posterior_kd(teacher, student, lengths, temperature=2.0)
    t2, s2 = teacher.clone(), student.clone()
    for b, n in enumerate(lengths.tolist()):
        t2[b, n:] = torch.randn_like(t2[b, n:]) * 100
        s2[b, n:] = float("nan") if b == 2 else -float("inf")
    s2.requires_grad_(True)
    after = kd.factorized_kd(t2, s2, lengths, temperature=2.0)
    (after.blank + after.nonblank).backward()
    assert s2.grad is not None and torch.isfinite(s2.grad).all()
    assert torch.all(s2.grad[1, 4:] == 0)
    after = kd.factorized_kd(t2, s2, lengths)
    torch.testing.assert_close(after.blank, before.blank)
    torch.testing.assert_close(after.nonblank, before.nonblank)
    torch.testing.assert_close(kd.posterior_kd(t2, s2, lengths, temperature=2.0), full_before)
    # Reduction: sum over valid frames / B.
    per_frame = kd.frame_kl(teacher, student)
    expected = sum(per_frame[b, :n].sum() for b, n in enumerate(lengths.tolist())) / 3
    torch.testing.assert_close(kd.posterior_kd(teacher, student, lengths), expected)


def test_bernoulli_kl_by_hand() -> None:
    teacher = torch.tensor([[[0.7, 0.2, 0.1]]]).log()
    student = torch.tensor([[[0.4, 0.3, 0.3]]]).log()
    expected = 0.7 * math.log(0.7 / 0.4) + 0.3 * math.log(0.3 / 0.6)
    got = kd.bernoulli_kl(teacher, student)
    assert got.shape == (1, 1)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # q_t = (2/3, 1/3), q_s = (1/2, 1/2).
    q_expected = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert kd.nonblank_kl(teacher, student).item() == pytest.approx(q_expected, rel=1e-5)
    log_blank, log_nonblank, log_q = kd.factorize(teacher)
    assert log_blank.exp().item() == pytest.approx(0.7, rel=1e-6)
    assert log_nonblank.exp().item() == pytest.approx(0.3, rel=1e-5)
    torch.testing.assert_close(log_q.exp(), torch.tensor([[[2 / 3, 1 / 3]]]))


def test_temperature_scaling() -> None:
    torch.manual_seed(3)
    teacher, student = _random_lp(), _random_lp()
    lengths = _lengths()
    torch.testing.assert_close(kd.tempered(teacher, 1.0), teacher)
    tt, ts = kd.tempered(teacher, 2.0), kd.tempered(student, 2.0)
    torch.testing.assert_close(tt.exp().sum(-1), torch.ones(3, 7))
    manual = kd.posterior_kd(tt, ts, lengths)
    got = kd.posterior_kd(teacher, student, lengths, temperature=2.0)
    torch.testing.assert_close(got, 4 * manual)
    assert not torch.allclose(got, kd.posterior_kd(teacher, student, lengths))


def _degenerate_teacher() -> torch.Tensor:
    probs = torch.tensor(
        [
            [0.5, 0.0, 0.3, 0.2],  # one probability exactly 0
            [1.0, 0.0, 0.0, 0.0],  # all blank: P(non-blank) = 0
            [0.0, 0.0, 1.0, 0.0],  # P(blank) = 0
        ]
    )
    return probs.log().unsqueeze(0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_finite_with_zero_teacher_probabilities(temperature: float) -> None:
    torch.manual_seed(4)
    teacher = _degenerate_teacher()
    assert torch.isinf(teacher).any()
    student = torch.randn(1, 3, 4, requires_grad=True)
    student_lp = torch.log_softmax(student, dim=-1)
    lengths = torch.tensor([3])
    terms = kd.factorized_kd(teacher, student_lp, lengths, temperature=temperature)
    full = kd.posterior_kd(teacher, student_lp, lengths, temperature=temperature)
    for value in (terms.blank, terms.nonblank, full):
        assert torch.isfinite(value)
    torch.testing.assert_close(terms.blank + terms.nonblank, full, rtol=1e-5, atol=1e-6)
    (terms.blank + terms.nonblank + full).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    for part in kd.factorize(teacher):
        assert not torch.isnan(part).any()
    assert torch.isfinite(kd.nonblank_kl(teacher, student_lp)).all()


def test_all_blank_student_gradients_finite() -> None:
    student = torch.tensor([[[0.0, -float("inf"), -float("inf")]]], requires_grad=True)
    teacher = torch.tensor([[[0.9, 0.05, 0.05]]]).log()
    _, log_nonblank, log_q = kd.factorize(student)
    assert torch.isfinite(log_nonblank).all() and not torch.isnan(log_q).any()
    (log_nonblank.sum() + kd.bernoulli_kl(student, teacher).sum()).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_greedy_labels() -> None:
    path = [0, 3, 3, 0, 3, 2, 2, 0]
    lp = torch.full((2, 8, 5), -5.0)
    for t, v in enumerate(path):
        lp[0, t, v] = 0.0
        lp[1, t, v] = 0.0
    labels = kd.greedy_labels(lp, torch.tensor([8, 5]))
    assert labels == [[3, 3, 2], [3, 3]]
    assert kd.greedy_labels(lp, torch.tensor([0, 1])) == [[], []]
    # Another blank id: 3 is now the blank, 0 a label.
    assert kd.greedy_labels(lp, torch.tensor([8, 8]), blank=3) == [[0, 0, 2, 0]] * 2


def test_gradients_reach_student_only() -> None:
    torch.manual_seed(5)
    teacher_logits = torch.randn(2, 5, 4, requires_grad=True)
    student_logits = torch.randn(2, 5, 4, requires_grad=True)
    teacher_lp = torch.log_softmax(teacher_logits, dim=-1).detach()
    student_lp = torch.log_softmax(student_logits, dim=-1)
    lengths = torch.tensor([5, 3])
    terms = kd.factorized_kd(teacher_lp, student_lp, lengths, temperature=2.0)
    (terms.blank + terms.nonblank + kd.posterior_kd(teacher_lp, student_lp, lengths)).backward()
    assert teacher_logits.grad is None
    assert student_logits.grad is not None
    assert student_logits.grad[0].abs().sum() > 0
    assert torch.all(student_logits.grad[1, 3:] == 0)
