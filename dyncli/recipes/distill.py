"""``dyncli distill``: knowledge distillation from a full-depth teacher into the shallow paths.

The method is a registered :class:`~dyncli.registry.specs.MethodSpec` of command ``distill``,
a path and weighted objectives on the training engine. Built in: ``factorized-kd``
(:mod:`dyncli.methods.blank_skip.training`), ``exit-kd``
(:mod:`dyncli.methods.early_exit.training`) and ``dld`` (:mod:`dyncli.methods.drop.training`).

A model trained skip-aware (``convert --skip-layer K``) keeps blank-skip in the loop on the same
share of steps for ``factorized-kd`` and ``exit-kd``.

With ``freeze_backbone`` (``factorized-kd`` and ``exit-kd``) only the exit heads learn: every
backbone weight, the final head included, stays as it was, so full depth keeps its outputs
exactly (the final CTC term then trains nothing and is left out). This is the way to sharpen the
exits of a model converted with ``convert --freeze-backbone`` without touching what it was.

The teacher: ``--teacher CKPT`` (same tokenizer and frame rate, else refused), or by default the
static checkpoint this model was converted from when its provenance names one that still exists
with the same sha256, or else the model's own full-depth path at the start of distillation (a
frozen copy; the student then learns to keep what it could already do at full depth).

For ``factorized-kd`` the teacher's CTC spikes must sit on the student's frames: blank-skip keeps
the frames the exit calls non-blank, and the layers after it place the student's own spikes.
Distilling another model's final layer (the static model the dynamic one was converted from)
teaches the exit that model's timing; on the digits recipe that collapsed blank-skip (held-out
WER 14.6% at full depth, 36% at threshold 0.99), while the model's own full depth as teacher
kept it (``benchmarks/results/compare_methods.md``). The paper distils the model's own final
layer into its intermediate one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dyncli.checkpoint import Checkpoint, file_sha256, load_checkpoint
from dyncli.dynamic.operating_point import check_budget, check_policy_fits, default_policy
from dyncli.errors import UsageError
from dyncli.models.base import CTCEncoder
from dyncli.recipes.common import (
    MethodContext,
    RecipeResult,
    RunOptions,
    finish_with_operating_point,
    prepare_run,
)
from dyncli.registry.manager import get_method
from dyncli.training.augment import AugmentConfig
from dyncli.training.config import Reporter, TrainConfig
from dyncli.training.objectives import FinalCTC


@dataclass
class DistillOptions:
    """What every ``distill`` method shares (its own settings are the method's options)."""

    method: str = "factorized-kd"
    temperature: float = 1.0
    kd_weight: float = 1.0
    exit_weight: float = 1.0
    final_weight: float = 1.0
    freeze_backbone: bool = False  # only the exit heads learn

    def check(self) -> None:
        for flag, value in (
            ("--temperature", self.temperature),
            ("--kd-weight", self.kd_weight),
            ("--exit-weight", self.exit_weight),
            ("--final-weight", self.final_weight),
        ):
            if not math.isfinite(value):
                raise UsageError(f"{flag} must be a finite number, got {value}")
            if value < 0:
                raise UsageError(f"{flag} must be >= 0, got {value}")
        if self.temperature <= 0:
            raise UsageError(f"--temperature must be positive, got {self.temperature}")
        spec = get_method(self.method, "distill")
        if self.freeze_backbone and not spec.uses_option("freeze_backbone"):
            raise UsageError(
                f"--freeze-backbone does not apply to --method {self.method} (it trains the "
                "layers themselves)"
            )


def distill_defaults() -> TrainConfig:
    """Fine-tuning defaults, as for convert: short, low peak LR, augmentation from step 0."""
    return TrainConfig(epochs=4, lr=3e-4, warmup_steps=100, augment=AugmentConfig(ramp_steps=0))


@dataclass
class TeacherChoice:
    model: CTCEncoder
    record: dict[str, Any]


@dataclass
class DistillResult(RecipeResult):
    """What ``distill`` returns: a :class:`~dyncli.recipes.common.RecipeResult` and the
    teacher's record."""

    teacher: dict[str, Any] = field(default_factory=dict)


def frame_rate(model: CTCEncoder) -> float:
    """Encoder frames per second, measured on one second of silence."""
    with torch.inference_mode():
        n = model.sample_rate
        feats, frames = model.features(torch.zeros(1, n), torch.tensor([n]))
        x, _ = model.embed(feats, frames)
    return float(x.shape[1])


def check_teacher(student: Checkpoint, teacher: Checkpoint, where: str) -> None:
    """Refuse a teacher whose tokenizer, blank id or frame rate differs, saying what differs."""
    s_tok, t_tok = student.tokenizer, teacher.tokenizer
    if s_tok.to_state() != t_tok.to_state():
        raise UsageError(
            f"{where}: the teacher's tokenizer differs from the student's ({t_tok.kind}, "
            f"{t_tok.vocab_size} symbols vs {s_tok.kind}, {s_tok.vocab_size} symbols)"
        )
    if student.model.blank_id != teacher.model.blank_id:
        raise UsageError(
            f"{where}: the teacher's CTC blank is id {teacher.model.blank_id}, the student's "
            f"id {student.model.blank_id}"
        )
    s_rate, t_rate = frame_rate(student.model), frame_rate(teacher.model)
    if s_rate != t_rate or student.model.sample_rate != teacher.model.sample_rate:
        raise UsageError(
            f"{where}: the teacher's frame rate differs from the student's ({t_rate:g} vs "
            f"{s_rate:g} frames/s at {teacher.model.sample_rate} vs "
            f"{student.model.sample_rate} Hz)"
        )


def choose_teacher(student: Checkpoint, teacher: str | Path | None) -> TeacherChoice:
    if teacher is not None:
        t = load_checkpoint(teacher)
        check_teacher(student, t, f"--teacher {teacher}")
        record = {"kind": "checkpoint", "path": str(teacher), "sha256": file_sha256(teacher)}
        return TeacherChoice(t.model, record)
    source = student.provenance.get("converted_from")
    sha = student.provenance.get("converted_from_sha256")
    if source and sha and Path(source).is_file() and file_sha256(source) == sha:
        t = load_checkpoint(source)
        check_teacher(student, t, f"converted-from checkpoint {source}")
        return TeacherChoice(t.model, {"kind": "checkpoint", "path": source, "sha256": sha})
    frozen = copy.deepcopy(student.model)
    frozen.exit_heads = torch.nn.ModuleDict()  # the final head is the teacher's only output
    return TeacherChoice(
        frozen,
        {
            "kind": "self",
            "path": str(student.path),
            "sha256": file_sha256(student.path) if student.path else None,
            "why": "no --teacher, and no converted-from checkpoint with a matching sha256",
        },
    )


def distill(
    *,
    checkpoint: str | Path,
    output: str | Path,
    train_manifest: str | Path,
    dev_manifest: str | Path,
    options: DistillOptions,
    method_options: dict[str, Any] | None = None,
    teacher: str | Path | None = None,
    config: TrainConfig | None = None,
    wer_budget: float | None = None,
    policy: str | None = None,
    reporter: Reporter,
    run: RunOptions | None = None,
) -> DistillResult:
    """Distil a teacher into the model at ``checkpoint`` with ``options.method`` (its own
    options in ``method_options``, field -> value); write ``output`` when the run ends."""
    options.check()
    spec = get_method(options.method, "distill")
    own = spec.make_options(method_options or {})
    cfg = config or distill_defaults()
    run = run or RunOptions()
    if Path(output).resolve() == Path(checkpoint).resolve():
        raise UsageError("-o must differ from the input checkpoint (the input is kept)")
    check_budget(wer_budget, policy)
    student = load_checkpoint(checkpoint)
    if spec.needs_exits and not student.model.exits:
        raise UsageError(
            f"{checkpoint}: --method {options.method} distils into the intermediate heads and "
            "this model has none; run 'dyncli convert --exits ...' first"
        )
    if options.freeze_backbone and student.method and student.method.skip_aware_training:
        raise UsageError(
            f"{checkpoint}: this model was trained skip-aware (blank-skip in the loop), so the "
            "layers after the trigger must keep learning: drop --freeze-backbone"
        )
    if spec.check is not None:
        spec.check(student.model, own, options)

    def plan_on(model: CTCEncoder, seed: int, rank: int) -> Any:
        return spec.train(MethodContext(model, own, options, student.method, seed, rank))

    if wer_budget is not None:  # the model's structure does not change: fail now, not after
        with torch.random.fork_rng(devices=[]):
            probe = copy.deepcopy(student.model)
            probe_record = {**(student.method or {}), **plan_on(probe, cfg.seed, 0).record}
        name = policy or default_policy(probe_record)
        check_policy_fits(probe, name, policy is not None)
    chosen = choose_teacher(student, teacher)
    kind = chosen.record["kind"]
    self_note = ", the student's own full-depth path, frozen" if kind == "self" else ""
    job = prepare_run(
        cfg,
        run,
        output,
        reporter,
        train_manifest,
        dev_manifest,
        student.model.sample_rate,
        announce=f"teacher: {chosen.record['path']} ({kind}{self_note})",
    )
    model = student.model
    plan = plan_on(model, cfg.seed, job.world.rank)
    method = dict(student.method or {"name": "static", "exits": []})
    method["distillation"] = {
        "method": options.method,
        "teacher": chosen.record,
        "options": {**asdict(options), **(asdict(own) if own is not None else {})},
        "source": {"path": str(checkpoint), "sha256": file_sha256(checkpoint)},
    }
    method["operating_point"] = None  # the old one was chosen for other weights
    method.update(plan.record)
    for key in ("converted_from", "converted_from_sha256"):
        if key in student.provenance:
            job.provenance[key] = student.provenance[key]
    job.provenance["distilled_from"] = str(checkpoint)
    if options.freeze_backbone:
        # Nothing the final CTC term reaches can learn: leave it out rather than compute it.
        plan.objectives = [(o, w) for o, w in plan.objectives if not isinstance(o, FinalCTC)]
    result = job.train(
        student,
        model,
        method,
        plan,
        teacher=chosen.model,
        freeze_backbone=options.freeze_backbone,
    )
    out = DistillResult(train=result, output=Path(output), method=method, teacher=chosen.record)
    finish_with_operating_point(job, out, plan, wer_budget, policy)
    return out
