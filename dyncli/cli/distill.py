"""``dyncli distill``: distil a full-depth teacher into a dynamic model's shallow paths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dyncli.cli.options import (
    AugmentOpt,
    BudgetPolicyOpt,
    CheckpointArg,
    DevDataOpt,
    DeviceOpt,
    EpochsOpt,
    ExitWeightOpt,
    FinalWeightOpt,
    FreezeBackboneOpt,
    JobThreadsOpt,
    LogEveryOpt,
    LrOpt,
    MaxStepsOpt,
    OutputOpt,
    ResumeOpt,
    RunDirOpt,
    SaveEveryOpt,
    SeedOpt,
    SkipBadOpt,
    TrainDataOpt,
    WarmupStepsOpt,
    WerBudgetOpt,
    check_loss_weights,
    fine_tune_config,
)

NAME = "distill"

# The options every method may read; each method's spec says which it does (``uses``).
SHARED = ("temperature", "kd_weight", "exit_weight", "freeze_backbone")


def run(
    ctx: typer.Context,
    checkpoint: CheckpointArg,
    output: OutputOpt,
    train: TrainDataOpt,
    dev: DevDataOpt,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="The method to train (each adds its own options). {methods}",
        ),
    ] = "factorized-kd",
    teacher: Annotated[
        Path | None,
        typer.Option(
            "--teacher",
            help="Teacher checkpoint (same tokenizer and frame rate). Default: the static "
            "checkpoint this model was converted from, if it still exists with the same "
            "sha256; else the model's own full-depth path, frozen at the start.",
            show_default=False,
        ),
    ] = None,
    temperature: Annotated[
        float,
        typer.Option(
            "--temperature", min=0.01, help="Softmax temperature of the KL terms (T^2-scaled)."
        ),
    ] = 1.0,
    kd_weight: Annotated[
        float, typer.Option("--kd-weight", min=0.0, help="Weight of the distillation terms.")
    ] = 1.0,
    freeze_backbone: FreezeBackboneOpt = False,
    exit_weight: ExitWeightOpt = 1.0,
    final_weight: FinalWeightOpt = 1.0,
    epochs: EpochsOpt = 4,
    max_steps: MaxStepsOpt = None,
    lr: LrOpt = 3e-4,
    warmup_steps: WarmupStepsOpt = 100,
    augment: AugmentOpt = True,
    wer_budget: WerBudgetOpt = None,
    policy: BudgetPolicyOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: JobThreadsOpt = None,
    skip_bad: SkipBadOpt = False,
    run_dir: RunDirOpt = None,
    resume: ResumeOpt = False,
    save_every: SaveEveryOpt = 100,
    log_every: LogEveryOpt = 50,
) -> None:
    """Distil a full-depth teacher into a model's shallow paths (exits or sub-networks).

    The checkpoint records the method, the teacher (path and sha256) and every option; with
    --wer-budget it also stores a new operating point chosen on dev, as 'dyncli convert' does
    (the cheapest threshold whose dev WER increase is within the budget at the upper end of its
    95% interval; a budget the dev set cannot resolve is warned about).
    Defaults are fine-tuning defaults (short, low learning rate, augmentation from step 0).
    """

    from dyncli.cli.job import best_epoch_line, report_choice, training_job
    from dyncli.cli.method_options import (
        loss_weights,
        method_values,
        refuse_inapplicable_options,
    )
    from dyncli.cli.paths import check_training_paths
    from dyncli.dynamic.operating_point import default_policy
    from dyncli.recipes.common import RunOptions
    from dyncli.recipes.distill import DistillOptions, distill, distill_defaults
    from dyncli.registry.manager import get_method

    check_training_paths(
        CHECKPOINT=checkpoint, teacher=teacher, output=output, run_dir=run_dir, train=train, dev=dev
    )
    spec = get_method(method, NAME)
    values = method_values(ctx, spec)
    own = spec.make_options(values)
    refuse_inapplicable_options(ctx, NAME, spec, SHARED, own)
    options = DistillOptions(
        method=method,
        temperature=temperature,
        kd_weight=kd_weight,
        exit_weight=exit_weight,
        final_weight=final_weight,
        freeze_backbone=freeze_backbone,
    )
    options.check()
    terms = {
        "final_weight": ("--final-weight", final_weight, "the final CTC head"),
        "exit_weight": ("--exit-weight", exit_weight, "the exit heads on the reference"),
        "kd_weight": ("--kd-weight", kd_weight, "the student toward the teacher"),
    }
    shared = {
        flag: (value, what)
        for name, (flag, value, what) in terms.items()
        if name == "final_weight" or spec.uses_option(name, own)
    }
    check_loss_weights(loss_weights(spec, own, shared))
    base = distill_defaults()
    config = fine_tune_config(
        base,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        warmup_steps=warmup_steps,
        seed=seed,
        device=device,
        skip_bad=skip_bad,
        save_every=save_every,
        augment=augment,
    )
    with training_job(threads, log_every) as job:
        result = distill(
            checkpoint=checkpoint,
            output=output,
            train_manifest=train,
            dev_manifest=dev,
            options=options,
            method_options=values,
            teacher=teacher,
            config=config,
            wer_budget=wer_budget,
            policy=policy,
            reporter=job.reporter,
            run=RunOptions(run_dir=run_dir, resume=resume),
        )
    if not job.main:
        return
    reporter = job.reporter
    reporter.message(best_epoch_line(result.train, result.output))
    for line in spec.summary(result.method or {}) if spec.summary is not None else []:
        reporter.message(line)
    report_choice(reporter, result.choice, policy or default_policy(result.method))
