"""Knowledge-distillation losses on CTC posteriors.

Pure tensor functions. Inputs are log-probabilities ``(B, T, V)`` (already log-softmaxed) and
``lengths`` ``(B,)``, the true frame counts; frames ``t >= lengths[b]`` are padding and contribute
nothing. Every loss is a sum over valid frames divided by the batch size ``B``: the same scale as
the CTC loss (per-utterance sum / ``B``).

The teacher is passed already detached by the caller; nothing here detaches it. Teacher
probabilities of exactly 0 (``-inf`` log-probs) and all-blank teacher frames give finite values
and finite gradients.

Factorized distillation (arXiv 2401.02046) writes each frame's distribution ``p`` as a
Bernoulli "blank or not", ``P(blank)``, and a distribution ``q`` over the non-blank tokens,
``p[v] = (1 - P(blank)) q[v]`` for ``v != blank``. The chain rule of KL divergence gives, per
frame::

    KL(p_t || p_s) = KL(Bern(P_t(blank)) || Bern(P_s(blank))) + P_t(non-blank) KL(q_t || q_s)

so the two terms of :func:`factorized_kd` add up to :func:`posterior_kd`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dyncli.data.text import BLANK_ID
from dyncli.decoding import greedy_ctc


def tempered(log_probs: Tensor, temperature: float) -> Tensor:
    """``log_softmax(log_probs / temperature)`` over the vocabulary; identity at temperature 1."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if temperature == 1.0:
        return log_probs
    return torch.log_softmax(log_probs / temperature, dim=-1)


def _kl(teacher_lp: Tensor, student_lp: Tensor, dim: int = -1) -> Tensor:
    """``sum_v p_t[v] (log p_t[v] - log p_s[v])`` over ``dim``; terms with ``p_t[v] == 0`` are 0.

    The guard keeps ``0 * (-inf - x)`` out of both the forward and the backward pass.
    """
    p = teacher_lp.exp()
    diff = torch.where(p > 0, teacher_lp - student_lp, torch.zeros_like(student_lp))
    return (p * diff).sum(dim)


def _log_sum_exp(x: Tensor) -> Tensor:
    """``log sum_v exp(x[..., v])``, finite (``>= log(tiny)``) with finite gradients when every
    entry is ``-inf``, where ``torch.logsumexp`` gives ``-inf`` and a NaN gradient."""
    m = x.amax(dim=-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    total = (x - m).exp().sum(dim=-1).clamp_min(torch.finfo(x.dtype).tiny)
    return total.log() + m.squeeze(-1)


def factorize(log_probs: Tensor, blank: int = BLANK_ID) -> tuple[Tensor, Tensor, Tensor]:
    """Split each frame into blank / non-blank and the distribution over non-blank tokens.

    Returns ``(log P(blank), log P(non-blank), log q)`` with shapes ``(B, T)``, ``(B, T)``,
    ``(B, T, V - 1)``:

    * ``log P(non-blank) = log(1 - P(blank)) = logsumexp_{v != blank} log p[v]`` (computed from
      the non-blank entries, so it is accurate when ``P(blank)`` is close to 1). It is clamped
      below at ``log(finfo.tiny)``, so a frame with ``P(blank) = 1`` gives a finite value;
    * ``log q[v] = log p[v] - log P(non-blank)`` for ``v != blank``, in vocabulary order with the
      blank removed. For an all-blank frame every ``q[v]`` is 0 (``-inf``), never NaN.
    """
    log_blank = log_probs[..., blank]
    others = torch.cat([log_probs[..., :blank], log_probs[..., blank + 1 :]], dim=-1)
    log_nonblank = _log_sum_exp(others)
    return log_blank, log_nonblank, others - log_nonblank.unsqueeze(-1)


def bernoulli_kl(teacher_lp: Tensor, student_lp: Tensor, blank: int = BLANK_ID) -> Tensor:
    """Per-frame ``KL(Bern(b_t) || Bern(b_s))`` ``(B, T)``, ``b = P(blank)``::

    b_t log(b_t / b_s) + (1 - b_t) log((1 - b_t) / (1 - b_s))
    """
    tb, tnb, _ = factorize(teacher_lp, blank)
    sb, snb, _ = factorize(student_lp, blank)
    return _kl(torch.stack([tb, tnb], dim=-1), torch.stack([sb, snb], dim=-1))


def nonblank_kl(teacher_lp: Tensor, student_lp: Tensor, blank: int = BLANK_ID) -> Tensor:
    """Per-frame ``KL(q_t || q_s) = sum_{v != blank} q_t[v] log(q_t[v] / q_s[v])`` ``(B, T)``.

    Not weighted by the teacher's non-blank mass (:func:`factorized_kd` does that).
    """
    _, _, tq = factorize(teacher_lp, blank)
    _, _, sq = factorize(student_lp, blank)
    return _kl(tq, sq)


def frame_kl(teacher_lp: Tensor, student_lp: Tensor) -> Tensor:
    """Per-frame full-vocabulary ``KL(p_t || p_s) = sum_v p_t[v] log(p_t[v] / p_s[v])``."""
    return _kl(teacher_lp, student_lp)


def _valid(log_probs: Tensor, lengths: Tensor) -> Tensor:
    """``(B, T)`` mask, True on frames ``t < lengths[b]``."""
    frames = torch.arange(log_probs.shape[1], device=log_probs.device)
    return frames.unsqueeze(0) < lengths.to(log_probs.device).unsqueeze(1)


def _prepare(
    teacher_lp: Tensor, student_lp: Tensor, lengths: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Mask and temper both sides. Padding frames are overwritten with the same constant in both,
    so whatever they held (even NaN) reaches neither the loss nor the student's gradient."""
    valid = _valid(student_lp, lengths)
    keep = valid.unsqueeze(-1)
    teacher = torch.where(keep, teacher_lp, torch.zeros_like(teacher_lp))
    student = torch.where(keep, student_lp, torch.zeros_like(student_lp))
    return tempered(teacher, temperature), tempered(student, temperature), valid


def _reduce(per_frame: Tensor, valid: Tensor) -> Tensor:
    """Sum over valid frames divided by the batch size."""
    return torch.where(valid, per_frame, torch.zeros_like(per_frame)).sum() / per_frame.shape[0]


@dataclass
class FactorizedTerms:
    """The two scalar terms of :func:`factorized_kd`; their sum is the full-vocabulary KL."""

    blank: Tensor
    nonblank: Tensor


def factorized_kd(
    teacher_lp: Tensor,
    student_lp: Tensor,
    lengths: Tensor,
    *,
    temperature: float = 1.0,
    blank: int = BLANK_ID,
) -> FactorizedTerms:
    """Factorized CTC distillation (arXiv 2401.02046), after tempering both sides with ``tau``::

    blank    = tau^2 / B * sum_{b, t < len_b} KL(Bern(P_t(blank)) || Bern(P_s(blank)))
    nonblank = tau^2 / B * sum_{b, t < len_b} P_t(non-blank) KL(q_t || q_s)

    ``tau^2`` is Hinton's convention: it keeps the gradient scale independent of the
    temperature. By the chain rule of KL, ``blank + nonblank`` equals :func:`posterior_kd` (the
    full-vocabulary KL) at temperature 1, and at any temperature since both use the same
    tempered distributions.
    """
    teacher, student, valid = _prepare(teacher_lp, student_lp, lengths, temperature)
    scale = temperature**2
    weight = factorize(teacher, blank)[1].exp()
    return FactorizedTerms(
        blank=_reduce(bernoulli_kl(teacher, student, blank), valid) * scale,
        nonblank=_reduce(weight * nonblank_kl(teacher, student, blank), valid) * scale,
    )


def posterior_kd(
    teacher_lp: Tensor, student_lp: Tensor, lengths: Tensor, *, temperature: float = 1.0
) -> Tensor:
    """Frame-level posterior distillation with temperature ``tau``::

    tau^2 / B * sum_{b, t < len_b} KL(softmax(z_t / tau) || softmax(z_s / tau))

    where ``z`` are the given log-probs; ``tau^2`` is Hinton's gradient-scale convention.
    """
    teacher, student, valid = _prepare(teacher_lp, student_lp, lengths, temperature)
    return _reduce(frame_kl(teacher, student), valid) * temperature**2


def greedy_labels(log_probs: Tensor, lengths: Tensor, blank: int = BLANK_ID) -> list[list[int]]:
    """CTC greedy path per utterance: argmax per valid frame, merge repeats, drop blanks.

    Uses :func:`dyncli.decoding.greedy_ctc` with the model's ``blank``.
    """
    return greedy_ctc(log_probs, lengths, blank)
