"""``dyncli convert``: turn a static checkpoint into a dynamic one with a registered method."""

from __future__ import annotations

from typing import Annotated

import typer

from dyncli.cli.options import (
    AugmentOpt,
    BudgetPolicyOpt,
    CheckpointArg,
    DevDataOpt,
    DeviceOpt,
    EpochsOpt,
    ExitsOpt,
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
    parse_exits,
    parse_range,
    was_given,
)
from dyncli.errors import UsageError

NAME = "convert"

# The options every method may read; each method's spec says which it does (``uses``).
SHARED = (
    "exits",
    "exit_weight",
    "freeze_backbone",
    "skip_layer",
    "skip_threshold_range",
    "skip_neighbours",
)


def run(
    ctx: typer.Context,
    checkpoint: CheckpointArg,
    output: OutputOpt,
    train: TrainDataOpt,
    dev: DevDataOpt,
    exits: ExitsOpt = None,
    method: Annotated[
        str,
        typer.Option(help="The method to train (each adds its own options). {methods}"),
    ] = "early-exit",
    freeze_backbone: FreezeBackboneOpt = False,
    exit_weight: ExitWeightOpt = 1.0,
    final_weight: FinalWeightOpt = 1.0,
    skip_layer: Annotated[
        int | None,
        typer.Option(
            "--skip-layer",
            min=1,
            help="blank-skip: the exit layer (1-based) whose blank posterior decides. Turns on "
            "skip-aware training: on half the steps blank-skip runs at this exit (threshold "
            "drawn from --skip-threshold-range), so the later layers learn to work on the "
            "compacted sequences inference gives them. --wer-budget then picks the operating "
            "point at this layer. It needs an exit there (--exits).",
            show_default=False,
        ),
    ] = None,
    skip_threshold_range: Annotated[
        str,
        typer.Option(
            "--skip-threshold-range",
            help="Skip-aware training: the range LOW:HIGH each step's threshold is drawn from "
            "(uniformly).",
        ),
    ] = "0.5:0.99",
    skip_neighbours: Annotated[
        int,
        typer.Option(
            "--skip-neighbours",
            min=0,
            help="blank-skip: also keep this many frames on each side of every kept frame "
            "(skip-aware training and the stored operating point).",
        ),
    ] = 1,
    epochs: EpochsOpt = 4,
    max_steps: MaxStepsOpt = None,
    lr: LrOpt = 5e-4,
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
    """Turn a static checkpoint into a dynamic one: attach what --method adds, train it.

    With exit heads (--exits), loss = final-weight * CTC(final) + exit-weight * sum of
    CTC(exit), plus the method's own terms; CTC lengths are each utterance's true frame count.
    The best epoch (mean dev WER over all heads) is saved with its method, exits and, with
    --wer-budget, the recommended operating point. Defaults are fine-tuning defaults (short,
    lower learning rate, augmentation from step 0), where 'dyncli train' trains from scratch.

    --wer-budget stores the threshold with the fewest executed FLOPs whose dev WER increase over
    full depth is within the budget at the upper end of its 95% paired bootstrap interval, with
    that interval and the dev set's size. A budget smaller than the dev set can resolve is said
    in a warning naming the smallest it can; the rule is kept, so then in practice only
    thresholds with the same dev errors as full depth (interval [0, 0]) qualify.
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
    from dyncli.recipes.convert import convert, convert_defaults
    from dyncli.registry.manager import get_method
    from dyncli.training import ExitTraining

    check_training_paths(
        CHECKPOINT=checkpoint, output=output, run_dir=run_dir, train=train, dev=dev
    )
    skip_range = parse_range(skip_threshold_range, "--skip-threshold-range")
    spec = get_method(method, NAME)
    refuse_inapplicable_options(ctx, NAME, spec, SHARED, None)
    values = method_values(ctx, spec)
    options = spec.make_options(values)
    if skip_layer is None and was_given(ctx, "skip_threshold_range"):
        raise UsageError("--skip-threshold-range applies to skip-aware training: give --skip-layer")
    exit_layers = parse_exits(exits)
    weights = {
        "--final-weight": (final_weight, "the final CTC head"),
        "--exit-weight": (exit_weight, "the exit heads"),
    }
    if freeze_backbone:  # only the exit heads learn
        weights.pop("--final-weight")
    if not exit_layers:
        weights.pop("--exit-weight")
    check_loss_weights(loss_weights(spec, options, weights))
    base = convert_defaults()
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
        result = convert(
            checkpoint=checkpoint,
            output=output,
            train_manifest=train,
            dev_manifest=dev,
            method=method,
            exits=ExitTraining(
                exits=exit_layers,
                exit_weight=exit_weight,
                final_weight=final_weight,
                freeze_backbone=freeze_backbone,
                skip_layer=skip_layer,
                skip_thresholds=skip_range,
                skip_neighbours=skip_neighbours,
            ),
            method_options=values,
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
