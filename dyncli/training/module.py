"""The training module: ``forward(batch)`` returns the loss, so DDP synchronises through it.

It owns the student (the model being trained), the frozen teacher when one distils into it,
the path the student runs each step and the weighted objectives. Reporting and the optimizer
live in :mod:`dyncli.training.trainer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dyncli.errors import UsageError
from dyncli.models.base import CTCEncoder
from dyncli.training.objectives import Batch, FullDepth, Objective, Step, StudentPath


class Teacher(torch.nn.Module):
    """A frozen model whose final-head posteriors the student learns from.

    It runs in eval mode under ``torch.inference_mode`` on the same (perturbed) waveforms as the
    student, without SpecAugment's masks. With ``cache`` (frozen teacher, input not augmented)
    each utterance's posteriors are computed once and kept on the training device.
    """

    def __init__(self, model: CTCEncoder, cache: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cache = cache
        self._store: dict[int, torch.Tensor] = {}

    def train(self, mode: bool = True) -> Teacher:
        self.training = False
        self.model.eval()  # a teacher never trains: no dropout, fixed BatchNorm statistics
        return self

    def log_probs(self, batch: Batch, frames: int) -> torch.Tensor:
        """(B, ``frames``, V) log-probs for the batch, padded like the student's output."""
        if self.cache and not batch.augmented and all(i in self._store for i in batch.ids):
            return _pad([self._store[i] for i in batch.ids], frames)
        with torch.inference_mode():
            feats, lens = self.model.frontend(batch.wave, batch.lengths, warp=batch.warp)
            x, out_lens = self.model.encode_features(feats, lens)
            lp = self.model.log_probs(x)
        if lp.shape[1] != frames:
            raise UsageError(
                f"the teacher gives {lp.shape[1]} frames where the student gives {frames}: "
                "their frame rates differ"
            )
        # A normal float32 tensor: inference tensors cannot be saved for backward, and under
        # bfloat16 autocast the KL terms want full precision.
        lp = lp.float().clone()
        if self.cache and not batch.augmented:
            for i, row, n in zip(batch.ids, lp, out_lens.tolist(), strict=True):
                self._store[i] = row[:n]
        return lp


def _pad(rows: Sequence[torch.Tensor], frames: int) -> torch.Tensor:
    v = rows[0].shape[-1]
    out = rows[0].new_zeros(len(rows), frames, v)
    for b, row in enumerate(rows):
        out[b, : row.shape[0]] = row
    return out


class TrainingModule(torch.nn.Module):
    """Student, teacher, path and weighted objectives; ``forward(batch) -> (loss, terms)``."""

    def __init__(
        self,
        model: CTCEncoder,
        objectives: Sequence[tuple[Objective, float]],
        path: StudentPath | None = None,
        teacher: Teacher | None = None,
        freeze_backbone: bool = False,
        lr_scales: Sequence[tuple[torch.nn.Module, float]] = (),
    ) -> None:
        super().__init__()
        self.model = model
        self.lr_scales = list(lr_scales)
        self.teacher = teacher
        self.objectives = [(o, float(w)) for o, w in objectives if w != 0]
        self.path: StudentPath = path or FullDepth()
        self.freeze_backbone = freeze_backbone
        if any(o.needs_teacher for o, _ in self.objectives) and teacher is None:
            raise ValueError("a distillation objective needs a teacher")
        if freeze_backbone:
            for p in model.parameters():
                p.requires_grad_(False)
            for p in model.exit_heads.parameters():
                p.requires_grad_(True)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: the trainable parameters at ``lr``, except those of modules given
        a learning-rate scale (a gate predictor learns from scratch inside a fine-tuned model,
        so it gets a larger rate than the weights it gates)."""
        scaled: dict[int, float] = {}
        for module, scale in self.lr_scales:
            for p in module.parameters():
                scaled[id(p)] = scale
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for p in self.trainable_parameters():
            groups.setdefault(scaled.get(id(p), 1.0), []).append(p)
        return [{"params": ps, "lr": lr * scale} for scale, ps in sorted(groups.items())]

    def train(self, mode: bool = True) -> TrainingModule:
        self.training = mode
        if self.freeze_backbone:
            self.model.eval()  # dropout off, BatchNorm statistics of the trained backbone kept
            self.model.exit_heads.train(mode)
        else:
            self.model.train(mode)
        if self.teacher is not None:
            self.teacher.train(False)
        return self

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = self.model
        frozen = self.freeze_backbone
        with torch.set_grad_enabled(not frozen and torch.is_grad_enabled()):
            feats, frames = model.frontend(batch.wave, batch.lengths, warp=batch.warp)
            if batch.spec is not None:
                feats = batch.spec(feats, frames)
            x, lengths = model.embed(feats, frames.to(feats.device))
        student = self.path.run(model, x, lengths, frozen)
        teacher = self.teacher
        frames_out = x.shape[1]
        step = Step(
            batch,
            student,
            (lambda: teacher.log_probs(batch, frames_out)) if teacher is not None else None,
            blank=model.blank_id,
        )
        terms: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for objective, weight in self.objectives:
            for name, value in objective(step).items():
                terms[name] = value.detach()
                total = weight * value if total is None else total + weight * value
        if total is None:  # nothing to learn from this step (cannot happen with ctc)
            total = sum((p.sum() * 0.0 for p in self.trainable_parameters()), torch.zeros(()))
        return total * batch.scale, terms
