"""``dyncli distill``: knowledge distillation from a full-depth teacher into the shallow paths.

Methods (each a path and weighted objectives on the training engine):

* ``factorized-kd`` (arXiv 2401.02046): the teacher's final posteriors are distilled into every
  intermediate head, each CTC distribution factorized into a blank / non-blank Bernoulli and a
  distribution over the non-blank tokens; loss = CTC(final) + exit-weight * sum CTC(exit) +
  kd-weight * sum over exits [KL_Bernoulli + P_teacher(non-blank) * KL_non-blank]. With
  ``factorized_head`` the exit heads are parameterized in factorized form (their blank logit
  is a Bernoulli logit of its own), as the paper does to sharpen blank decisions for skipping.
* ``dld`` (distillation-based layer dropping, arXiv 2601.16117): each step runs a sub-network
  (each layer kept with probability 1 - ``drop_rate``; dropped layers are not computed) and
  distils the full-depth teacher's posteriors into it: CTC(final) + kd-weight * KL(final).
* ``exit-kd`` (arXiv 2309.09546): the teacher's greedy transcript is a CTC pseudo-label for
  every exit: (1 - alpha) * CTC(exit, reference) + alpha * CTC(exit, teacher's transcript) per
  exit, plus CTC(final); ``kd_kl`` also adds kd-weight * KL(teacher || exit).

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
from dyncli.dynamic.operating_point import (
    check_budget,
    check_policy_fits,
    default_policy,
)
from dyncli.errors import UsageError
from dyncli.models.base import CTCEncoder
from dyncli.recipes.common import (
    SEED_LAYER_DROP,
    RecipeResult,
    RunOptions,
    run_engine,
    seed_everything,
    seeded,
    skip_aware_path,
    start,
)
from dyncli.training.augment import AugmentConfig
from dyncli.training.config import Reporter, SilentReporter, TrainConfig
from dyncli.training.data import load_data, provenance
from dyncli.training.objectives import (
    ExitCTC,
    ExitKD,
    FactorizedKD,
    FinalCTC,
    FullDepth,
    LayerDrop,
    Objective,
    PosteriorKD,
    StudentPath,
)
from dyncli.training.trainer import publish

METHODS = ("factorized-kd", "dld", "exit-kd")


@dataclass
class DistillOptions:
    method: str = "factorized-kd"
    temperature: float = 1.0
    kd_weight: float = 1.0
    exit_weight: float = 1.0
    final_weight: float = 1.0
    factorized_head: bool = False  # factorized-kd
    drop_rate: float = 0.5  # dld
    alpha: float = 0.3  # exit-kd: weight of the teacher's pseudo-label loss
    kd_kl: bool = False  # exit-kd
    freeze_backbone: bool = False  # factorized-kd, exit-kd: only the exit heads learn

    def check(self) -> None:
        if self.method not in METHODS:
            raise UsageError(
                f"unknown --method {self.method!r}; choose one of: {', '.join(METHODS)}"
            )
        for flag, value in (
            ("--temperature", self.temperature),
            ("--kd-weight", self.kd_weight),
            ("--exit-weight", self.exit_weight),
            ("--final-weight", self.final_weight),
            ("--drop-rate", self.drop_rate),
            ("--alpha", self.alpha),
        ):
            if not math.isfinite(value):
                raise UsageError(f"{flag} must be a finite number, got {value}")
            if value < 0:
                raise UsageError(f"{flag} must be >= 0, got {value}")
        if self.temperature <= 0:
            raise UsageError(f"--temperature must be positive, got {self.temperature}")
        if not 0 <= self.drop_rate < 1:
            raise UsageError(f"--drop-rate must lie in [0, 1), got {self.drop_rate}")
        if not 0 <= self.alpha <= 1:
            raise UsageError(f"--alpha must lie in [0, 1], got {self.alpha}")
        if self.factorized_head and self.method != "factorized-kd":
            raise UsageError("--factorized-head applies to --method factorized-kd only")
        if self.kd_kl and self.method != "exit-kd":
            raise UsageError("--kd-kl applies to --method exit-kd only")
        if self.freeze_backbone and self.method == "dld":
            raise UsageError(
                "--freeze-backbone applies to --method factorized-kd and exit-kd only "
                "(dld trains the layers themselves)"
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


def stored_exit_path(method: dict[str, Any] | None, seed: int, rank: int = 0) -> StudentPath:
    """The path a model with exits keeps training on: blank-skip in the loop as its record
    says it was trained (so the layers after the trigger stay adapted to compacted
    sequences), else full depth."""
    skip = (method or {}).get("skip_aware_training")
    if not skip:
        return FullDepth()
    lo, hi = skip["thresholds"]
    thresholds = (float(lo), float(hi))
    return skip_aware_path(
        int(skip["layer"]),
        thresholds,
        int(skip["neighbours"]),
        float(skip["share_of_steps"]),
        seed,
        rank,
    )


def plan(
    opts: DistillOptions, seed: int, method: dict[str, Any] | None = None, rank: int = 0
) -> tuple[StudentPath, list[tuple[Objective, float]]]:
    """The path and weighted objectives of each method."""
    if opts.method == "factorized-kd":
        return stored_exit_path(method, seed, rank), [
            (FinalCTC(), opts.final_weight),
            (ExitCTC(), opts.exit_weight),
            (FactorizedKD(temperature=opts.temperature), opts.kd_weight),
        ]
    if opts.method == "dld":
        return LayerDrop(opts.drop_rate, seeded(seed, SEED_LAYER_DROP)), [
            (FinalCTC(), opts.final_weight),
            (PosteriorKD(temperature=opts.temperature), opts.kd_weight),
        ]
    objectives: list[tuple[Objective, float]] = [
        (FinalCTC(), opts.final_weight),
        (ExitCTC(), (1 - opts.alpha) * opts.exit_weight),
        (ExitKD(kl=False), opts.alpha * opts.exit_weight),
    ]
    if opts.kd_kl:
        objectives.append((ExitKD(kl=True, temperature=opts.temperature), opts.kd_weight))
    return stored_exit_path(method, seed, rank), objectives


def distill(
    *,
    checkpoint: str | Path,
    output: str | Path,
    train_manifest: str | Path,
    dev_manifest: str | Path,
    options: DistillOptions,
    teacher: str | Path | None = None,
    config: TrainConfig | None = None,
    wer_budget: float | None = None,
    policy: str | None = None,
    reporter: Reporter,
    run: RunOptions | None = None,
) -> DistillResult:
    """Distil a teacher into the model at ``checkpoint``; write ``output`` when the run ends."""
    options.check()
    cfg = config or distill_defaults()
    run = run or RunOptions()
    if Path(output).resolve() == Path(checkpoint).resolve():
        raise UsageError("-o must differ from the input checkpoint (the input is kept)")
    check_budget(wer_budget, policy)
    student = load_checkpoint(checkpoint)
    if options.method in ("factorized-kd", "exit-kd") and not student.model.exits:
        raise UsageError(
            f"{checkpoint}: --method {options.method} distils into the intermediate heads and "
            "this model has none; run 'dyncli convert --exits ...' first"
        )
    if options.freeze_backbone and (student.method or {}).get("skip_aware_training"):
        raise UsageError(
            f"{checkpoint}: this model was trained skip-aware (blank-skip in the loop), so the "
            "layers after the trigger must keep learning: drop --freeze-backbone"
        )
    if wer_budget is not None:  # the model's structure does not change: fail now, not after
        name = policy or ("drop" if options.method == "dld" else default_policy(student.method))
        check_policy_fits(student.model, name, policy is not None)
    chosen = choose_teacher(student, teacher)
    device, world = start(cfg, run, output)
    reporter = reporter if world.main else SilentReporter()
    reporter.message(
        f"teacher: {chosen.record['path']} ({chosen.record['kind']}"
        + (", the student's own full-depth path, frozen" if chosen.record["kind"] == "self" else "")
        + ")"
    )
    seed_everything(cfg.seed)
    data = load_data(train_manifest, dev_manifest, student.model.sample_rate, cfg, reporter)
    model = student.model
    if options.factorized_head:
        model.exit_head_form = "factorized"
    method = dict(student.method or {"name": "static", "exits": []})
    method["distillation"] = {
        "method": options.method,
        "teacher": chosen.record,
        "options": asdict(options),
        "source": {"path": str(checkpoint), "sha256": file_sha256(checkpoint)},
    }
    if options.factorized_head:
        method["exit_head"] = "factorized"
    method["operating_point"] = None  # the old one was chosen for other weights
    if options.method == "dld":
        method["default_policy"] = "drop"
        method["drop_rate"] = options.drop_rate
    prov = provenance(train_manifest, dev_manifest, data, cfg)
    for key in ("converted_from", "converted_from_sha256"):
        if key in student.provenance:
            prov[key] = student.provenance[key]
    prov["distilled_from"] = str(checkpoint)
    path, objectives = plan(options, cfg.seed, student.method, world.rank)
    if options.freeze_backbone:
        # Nothing the final CTC term reaches can learn: leave it out rather than compute it.
        objectives = [(o, w) for o, w in objectives if not isinstance(o, FinalCTC)]
    result = run_engine(
        model=model,
        tokenizer=student.tokenizer,
        backbone=student.backbone,
        model_config=student.config,
        data=data,
        output=output,
        config=cfg,
        method=method,
        provenance=prov,
        objectives=objectives,
        path=path,
        reporter=reporter,
        device=device,
        world=world,
        run=run,
        teacher=chosen.model,
        freeze_backbone=options.freeze_backbone,
    )
    out = DistillResult(train=result, output=Path(output), method=method, teacher=chosen.record)

    def store_point(ckpt: Checkpoint) -> Checkpoint:
        assert wer_budget is not None
        name = policy or default_policy(ckpt.method)
        return out.store_operating_point(ckpt, data.dev, name, wer_budget)

    publish(
        world,
        run.directory(output),
        output,
        transform=store_point if wer_budget is not None and world.main else None,
    )
    result.output = Path(output)
    return out
