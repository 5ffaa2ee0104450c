"""Training objectives: (student pass, teacher) -> named loss terms.

A step runs in two halves. The *path* decides how the student runs this step (full depth,
blank-skip in the loop, or a sub-network with layers dropped) and yields a
:class:`StudentPass`: CTC log-probs at every exit that ran and at the final head. Each
*objective* then maps the step to named loss terms; the training module weights and adds them.
Every term is logged under its name. A method's own paths and objectives live in its home
under :mod:`dyncli.methods` (e.g. I3D's gate cost in :mod:`dyncli.methods.gates.training`);
these are the shared ones.

=================  ==========================================================================
objective          terms
=================  ==========================================================================
``ctc``            CTC of the final head on the reference transcript
``exit_ctc``       sum over exits of CTC on the reference transcript
``factorized_kd``  teacher's final posteriors into each exit, factorized into a blank /
                   non-blank Bernoulli KL and a non-blank token KL weighted by the teacher's
                   non-blank mass (arXiv 2401.02046)
``posterior_kd``   full-vocabulary KL from the teacher's final posteriors into the student's
                   final head (DLD, arXiv 2601.16117, on a sampled sub-network)
``exit_kd``        CTC of each exit on the teacher's greedy transcript as pseudo-label
                   (arXiv 2309.09546); with ``kl`` also the posterior KL into each exit
=================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from dyncli.data.text import BLANK_ID
from dyncli.models.base import CTCEncoder
from dyncli.models.components import lengths_to_mask


@dataclass
class Batch:
    """One rank's share of a global batch, ready for the training module's ``forward``."""

    ids: list[int]  # indices into the training set (keys of the teacher's cache)
    wave: torch.Tensor  # (B, N) on the training device
    lengths: torch.Tensor  # (B,) samples
    targets: list[list[int]]
    warp: torch.Tensor | None = None  # (B,) vocal-tract-length warp factors
    spec: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # SpecAugment
    augmented: bool = False
    # (this rank's utterances * world size) / global batch utterances: DDP averages gradients
    # over ranks, so this makes the average equal the single-process gradient of the batch.
    scale: float = 1.0


@dataclass
class StudentPass:
    exits: dict[int, torch.Tensor]  # 1-based layer -> CTC log-probs (B, T, V)
    final: torch.Tensor | None  # final head's log-probs, None when it did not run
    lengths: torch.Tensor  # (B,) frames
    path: str = "full"
    gate_probs: torch.Tensor | None = None  # (B, L, blocks) gate-open probabilities (gates)


@dataclass
class Step:
    batch: Batch
    student: StudentPass
    teacher_fn: Callable[[], torch.Tensor] | None = None
    blank: int = BLANK_ID  # the model's CTC blank id
    _teacher: torch.Tensor | None = field(default=None, repr=False)

    def teacher(self) -> torch.Tensor:
        """The teacher's final-head log-probs (B, T, V), computed once per step."""
        if self.teacher_fn is None:
            raise RuntimeError("this objective needs a teacher")
        if self._teacher is None:
            self._teacher = self.teacher_fn()
        return self._teacher


class Objective(Protocol):
    name: str
    needs_teacher: bool

    def __call__(self, step: Step) -> dict[str, torch.Tensor]: ...


def ctc_loss(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    targets: list[list[int]],
    blank: int = BLANK_ID,
) -> torch.Tensor:
    """Sum of per-utterance CTC losses / batch size, on the true (unpadded) frame counts."""
    flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long)
    target_lengths = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
    loss = torch.nn.functional.ctc_loss(
        log_probs.float().transpose(0, 1),
        flat.to(log_probs.device),
        lengths,
        target_lengths.to(log_probs.device),
        blank=blank,
        reduction="sum",
        zero_infinity=True,
    )
    return loss / len(targets)


class FinalCTC:
    name = "ctc"
    needs_teacher = False

    def __call__(self, step: Step) -> dict[str, torch.Tensor]:
        s = step.student
        if s.final is None:
            return {}
        return {"ctc": ctc_loss(s.final, s.lengths, step.batch.targets, step.blank)}


class ExitCTC:
    name = "exit_ctc"
    needs_teacher = False

    def __call__(self, step: Step) -> dict[str, torch.Tensor]:
        s = step.student
        if not s.exits:
            return {}
        losses = [
            ctc_loss(lp, s.lengths, step.batch.targets, step.blank) for lp in s.exits.values()
        ]
        return {"exit_ctc": torch.stack(losses).sum()}


class FactorizedKD:
    """Factorized CTC distillation of the teacher's final posteriors into every exit."""

    name = "factorized_kd"
    needs_teacher = True

    def __init__(self, temperature: float = 1.0, nonblank_weight: float = 1.0) -> None:
        self.temperature = temperature
        self.nonblank_weight = nonblank_weight

    def __call__(self, step: Step) -> dict[str, torch.Tensor]:
        from dyncli.training.kd import factorized_kd

        s = step.student
        if not s.exits:
            return {}
        teacher = step.teacher()
        blank, nonblank = [], []
        for lp in s.exits.values():
            terms = factorized_kd(
                teacher, lp, s.lengths, temperature=self.temperature, blank=step.blank
            )
            blank.append(terms.blank)
            nonblank.append(terms.nonblank)
        return {
            "fkd_blank": torch.stack(blank).sum(),
            "fkd_nonblank": self.nonblank_weight * torch.stack(nonblank).sum(),
        }


class PosteriorKD:
    """KL from the teacher's final posteriors into the student's final head."""

    name = "posterior_kd"
    needs_teacher = True

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def __call__(self, step: Step) -> dict[str, torch.Tensor]:
        from dyncli.training.kd import posterior_kd

        s = step.student
        if s.final is None:
            return {}
        return {
            "kd": posterior_kd(step.teacher(), s.final, s.lengths, temperature=self.temperature)
        }


class ExitKD:
    """The teacher's greedy transcript as a CTC pseudo-label for every exit (with ``kl``, also
    the posterior KL into each exit)."""

    name = "exit_kd"
    needs_teacher = True

    def __init__(self, kl: bool = False, temperature: float = 1.0) -> None:
        self.kl = kl
        self.temperature = temperature

    def __call__(self, step: Step) -> dict[str, torch.Tensor]:
        from dyncli.training.kd import greedy_labels, posterior_kd

        s = step.student
        if not s.exits:
            return {}
        teacher = step.teacher()
        labels = pseudo_labels(greedy_labels(teacher, s.lengths, step.blank), step.batch.targets)
        out = {
            "exit_kd": torch.stack(
                [ctc_loss(lp, s.lengths, labels, step.blank) for lp in s.exits.values()]
            ).sum()
        }
        if self.kl:
            out["exit_kl"] = torch.stack(
                [
                    posterior_kd(teacher, lp, s.lengths, temperature=self.temperature)
                    for lp in s.exits.values()
                ]
            ).sum()
        return out


def pseudo_labels(greedy: list[list[int]], references: list[list[int]]) -> list[list[int]]:
    """The teacher's greedy transcripts; where one is empty (the teacher emitted nothing), the
    reference stands in, so no utterance trains its exits towards silence."""
    return [g if g else ref for g, ref in zip(greedy, references, strict=True)]


# --- paths: how the student runs one step ------------------------------------------------------


class FullDepth:
    """Every layer on every frame; with a frozen backbone, only up to the deepest exit."""

    name = "full"

    def run(
        self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor, frozen: bool
    ) -> StudentPass:
        depth = max(model.exits) if frozen and model.exits else model.num_layers
        pad_mask = lengths_to_mask(lengths, x.shape[1])
        out: dict[int, torch.Tensor] = {}
        x = model.run_layers(x, pad_mask, range(depth), exits=out, grad=not frozen)
        final = None if frozen else model.log_probs(x)
        return StudentPass(out, final, lengths, self.name)


class SkipAware:
    """On a share ``prob`` of steps, blank-skip runs in the loop exactly as at inference (the
    policy's own prefix and suffix): frames the trigger exit calls blank at a threshold drawn
    from ``thresholds`` leave the sequence for the later layers and emit that exit's posteriors
    (the decision itself is not differentiated). Such a step trains the trigger exit and the
    merged final output; the other steps run at full depth."""

    name = "skip-aware"

    def __init__(
        self,
        layer: int,
        thresholds: tuple[float, float],
        neighbours: int,
        prob: float,
        generator: torch.Generator,
    ) -> None:
        self.layer = layer
        self.thresholds = thresholds
        self.neighbours = neighbours
        self.prob = prob
        self.generator = generator
        self.full = FullDepth()

    def run(
        self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor, frozen: bool
    ) -> StudentPass:
        from dyncli.methods.blank_skip import BlankSkipConfig
        from dyncli.methods.blank_skip.policy import BlankSkip

        draw = torch.rand(2, generator=self.generator).tolist()
        if frozen or draw[0] >= self.prob:
            return self.full.run(model, x, lengths, frozen)
        lo, hi = self.thresholds
        threshold = lo + (hi - lo) * draw[1]
        policy = BlankSkip(
            BlankSkipConfig(threshold=threshold, layer=self.layer, neighbours=self.neighbours)
        )
        xk, exit_lp, trace = policy.prefix(model, x, lengths)
        out = policy.suffix(model, xk, exit_lp, lengths, threshold, trace)
        ran_final = any(kind == "head" for kind, _, _ in out.raw_trace)
        final = out.log_probs if ran_final else None
        return StudentPass({self.layer: exit_lp}, final, lengths, self.name)


class LayerDrop:
    """Each step runs a sub-network: every layer is kept with probability ``1 - rate`` and a
    dropped layer is bypassed entirely (never computed).

    Its final LayerNorm is bypassed with it. Every Conformer block ends in its own LayerNorm,
    so the input a dropped block would have received is already the normalised output of the
    last kept block; applying the dropped block's LayerNorm would compute part of a layer that
    inference with ``--policy drop`` does not run, and train a path it never takes.
    """

    name = "layerdrop"

    def __init__(self, rate: float, generator: torch.Generator) -> None:
        self.rate = rate
        self.generator = generator

    def sample(self, num_layers: int) -> list[int]:
        """The 0-based layers this step runs (at least one)."""
        keep = (torch.rand(num_layers, generator=self.generator) >= self.rate).tolist()
        kept = [i for i, k in enumerate(keep) if k]
        if not kept:  # an empty network has nothing to train; keep the last layer
            kept = [num_layers - 1]
        return kept

    def run(
        self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor, frozen: bool
    ) -> StudentPass:
        kept = self.sample(model.num_layers) if self.rate > 0 else None
        pad_mask = lengths_to_mask(lengths, x.shape[1])
        out: dict[int, torch.Tensor] = {}
        x = model.run_layers(x, pad_mask, kept, exits=out, grad=not frozen)
        return StudentPass(out, model.log_probs(x), lengths, self.name)


class StudentPath(Protocol):
    name: str

    def run(
        self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor, frozen: bool
    ) -> StudentPass: ...
