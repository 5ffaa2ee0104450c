"""Soft-restriction blank-regularized CTC loss, in pure PyTorch.

Implements the *soft restriction* of "Blank-regularized CTC for Frame Skipping in Neural
Transducer" (Yang et al., 2023, arXiv:2305.11558): CTC whose topology puts a log-weight of
``-penalty`` on every self-loop arc of a non-blank symbol (staying on the same non-blank label
for one more frame). All other arcs (blank self-loops, label-to-blank, blank-to-label and
label-to-next-label) keep weight 0, so the model is pushed to emit each token on a single frame
and blank everywhere else, which lets a transducer skip the blank frames.

The loss is a log-space forward (alpha) recursion over the extended label sequence
``(blank, l1, blank, l2, ..., blank)``, vectorised over batch and states with one Python loop
over time; gradients come from autograd. With ``penalty == 0`` it is exactly standard CTC
(``torch.nn.functional.ctc_loss`` with ``reduction="sum", zero_infinity=True``, divided by the
batch size).
"""

from __future__ import annotations

import torch

# Large negative *finite* stand-in for log(0): logsumexp over all-`_NEG` entries stays finite and
# has finite gradients, where all -inf entries would produce NaN gradients.
_NEG = -1.0e30


def penalized_ctc_loss(
    log_probs: torch.Tensor,
    targets: list[list[int]],
    lengths: torch.Tensor,
    blank: int,
    penalty: float,
) -> torch.Tensor:
    """CTC loss with a ``-penalty`` log-weight on every non-blank self-loop.

    Args:
        log_probs: (B, T, V) log-softmax outputs, batch-first, possibly padded beyond ``lengths``.
        targets: per-utterance label ids (no blanks; may be empty).
        lengths: (B,) number of valid frames per utterance (long tensor, same device).
        blank: id of the blank symbol.
        penalty: non-negative penalty per non-blank self-loop transition; 0 gives plain CTC.

    Returns:
        Scalar: sum over utterances of the negative log-likelihood, divided by B. Infeasible
        utterances (too few frames for their target) contribute 0 with zero gradient.
    """
    lp = log_probs.float()
    batch, max_frames, _ = lp.shape
    device = lp.device
    if batch == 0:
        return lp.sum() * 0.0

    target_lens = torch.tensor([len(seq) for seq in targets], dtype=torch.long, device=device)
    max_len = max((len(seq) for seq in targets), default=0)
    num_states = 2 * max_len + 1

    # Extended label sequence per utterance: blank at even states, labels at odd ones; states
    # beyond an utterance's own 2L+1 are padding (blank) and never read at the end.
    ext_list = [[blank] * num_states for _ in targets]
    for row, seq in zip(ext_list, targets, strict=True):
        row[1 : 2 * len(seq) : 2] = seq
    ext = torch.tensor(ext_list, dtype=torch.long, device=device)  # (B, S)

    state_idx = torch.arange(num_states, device=device)
    is_label = (state_idx % 2 == 1).unsqueeze(0)  # (1, S)
    # Skip s-2 -> s allowed into a label state whose label differs from the previous label.
    prev2 = torch.cat([torch.full_like(ext[:, :2], blank), ext[:, :-2]], dim=1)
    skip_ok = is_label & (state_idx >= 2).unsqueeze(0) & (ext != prev2)  # (B, S)
    self_weight = torch.where(
        is_label,
        torch.tensor(-float(penalty), device=device),
        torch.tensor(0.0, device=device),
    )  # (1, S)

    # Emission log-probs of each state's symbol at each frame: (B, T, S).
    emit = torch.gather(lp, 2, ext.unsqueeze(1).expand(batch, max_frames, num_states))
    emit = emit.clamp(min=_NEG)

    # Virtual start: "state 0 before frame 0" with log-weight 0. Blank self-loop (weight 0) leads
    # into state 0 and the s-1 arc into state 1 at t=0, exactly CTC's initial states.
    alpha = lp.new_full((batch, num_states), _NEG)
    alpha[:, 0] = 0.0
    # Additive arc weights: 0 where the s-2 skip is allowed, _NEG (~ log 0) where it is not.
    skip_weight = torch.where(skip_ok, 0.0, _NEG).to(lp.dtype)
    active = lengths.unsqueeze(1) > torch.arange(max_frames, device=device).unsqueeze(0)  # (B, T)

    steps = min(max_frames, int(lengths.max().item())) if lengths.numel() > 0 else 0
    for t in range(steps):
        padded = torch.nn.functional.pad(alpha, (2, 0), value=_NEG)  # (B, S + 2)
        stay = alpha + self_weight
        move = padded[:, 1:-1]
        skip = padded[:, :-2] + skip_weight
        new = torch.logsumexp(torch.stack([stay, move, skip], dim=0), dim=0) + emit[:, t]
        # Freeze finished utterances so `alpha` ends at each utterance's own last frame.
        alpha = torch.where(active[:, t : t + 1], new, alpha)

    last = (2 * target_lens).unsqueeze(1)  # (B, 1)
    penult = (2 * target_lens - 1).clamp(min=0).unsqueeze(1)
    a_last = alpha.gather(1, last).squeeze(1)
    a_penult = alpha.gather(1, penult).squeeze(1)
    a_penult = torch.where(target_lens > 0, a_penult, torch.full_like(a_penult, _NEG))
    log_lik = torch.logsumexp(torch.stack([a_last, a_penult], dim=0), dim=0)

    feasible = log_lik > _NEG / 2
    nll = torch.where(feasible, -log_lik, torch.zeros_like(log_lik))
    return nll.sum() / batch
