"""``dyncli convert``: attach early-exit CTC heads to a static checkpoint and train them."""

from __future__ import annotations

from typing import Annotated

import typer

from dyncli.cli.options import (
    AugmentOpt,
    BudgetPolicyOpt,
    CheckpointArg,
    DevDataOpt,
    DeviceOpt,
    DropRateOpt,
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
    check_choice,
    check_loss_weights,
    fine_tune_config,
    parse_exits,
    parse_range,
    refuse_inapplicable,
    was_given,
)
from dyncli.errors import UsageError

NAME = "convert"

# Each method-specific option and the methods it applies to (the others apply to every method).
APPLIES: dict[str, tuple[str, ...]] = {
    "exits": ("early-exit", "layerdrop"),
    "exit_weight": ("early-exit", "layerdrop"),
    "freeze_backbone": ("early-exit",),
    "skip_layer": ("early-exit",),
    "skip_threshold_range": ("early-exit",),
    "skip_neighbours": ("early-exit", "layerdrop"),
    "drop_rate": ("layerdrop",),
    "predictor": ("gates",),
    "target_modules": ("gates",),
    "gate_weight": ("gates",),
    "gate_temperature": ("gates",),
    "gate_lr_scale": ("gates",),
}


def run(
    ctx: typer.Context,
    checkpoint: CheckpointArg,
    output: OutputOpt,
    train: TrainDataOpt,
    dev: DevDataOpt,
    exits: ExitsOpt = None,
    method: Annotated[
        str,
        typer.Option(
            help="early-exit: attach CTC heads after --exits and train them (they serve "
            "blank-skip and early exit). layerdrop: train the model with layers dropped at "
            "random (--drop-rate), for the drop policy; --exits optional. gates: I3D, a gate "
            "on every attention and feed-forward block from a gate predictor (--predictor), "
            "trained toward --target-modules, for the gates policy."
        ),
    ] = "early-exit",
    drop_rate: DropRateOpt = 0.5,
    predictor: Annotated[
        str,
        typer.Option(
            help="gates: local (a small MLP per layer reads that layer's input, averaged over "
            "time) or global (one MLP reads the encoder input and sets every gate before the "
            "first layer runs)."
        ),
    ] = "local",
    target_modules: Annotated[
        float,
        typer.Option(
            "--target-modules",
            help="gates: the fraction of attention and feed-forward modules to execute on "
            "average, which the cost term drives the gates toward.",
        ),
    ] = 0.5,
    gate_weight: Annotated[
        float,
        typer.Option(
            "--gate-weight",
            help="gates: lambda, the weight of the cost term (mean gate-open probability - "
            "target)^2 added to CTC.",
        ),
    ] = 10.0,
    gate_temperature: Annotated[
        float,
        typer.Option(
            "--gate-temperature",
            help="gates: temperature of the straight-through Gumbel samples in training.",
        ),
    ] = 1.0,
    gate_lr_scale: Annotated[
        float,
        typer.Option(
            "--gate-lr-scale",
            help="gates: the gate predictor's learning rate as a multiple of --lr (it learns "
            "from scratch inside a fine-tuned model).",
        ),
    ] = 10.0,
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
    """Turn a static checkpoint into a dynamic one: attach CTC heads after --exits, train them.

    Loss = final-weight * CTC(final) + exit-weight * sum of CTC(exit); CTC lengths are each
    utterance's true frame count. The best epoch (mean dev WER over all heads) is saved with
    its method, exits and, with --wer-budget, the recommended operating point. Defaults are
    fine-tuning defaults (short, lower learning rate, augmentation from step 0), where 'dyncli
    train' trains from scratch.

    --wer-budget stores the threshold with the fewest executed FLOPs whose dev WER increase over
    full depth is within the budget at the upper end of its 95% paired bootstrap interval, with
    that interval and the dev set's size. A budget smaller than the dev set can resolve is said
    in a warning naming the smallest it can; the rule is kept, so then in practice only
    thresholds with the same dev errors as full depth (interval [0, 0]) qualify.
    """

    from dyncli.cli.job import best_epoch_line, training_job
    from dyncli.cli.paths import check_training_paths
    from dyncli.cli.render import report_choice
    from dyncli.dynamic.operating_point import default_policy
    from dyncli.recipes.convert import METHODS, GateTraining, convert, convert_defaults
    from dyncli.training import ExitTraining

    check_training_paths(
        CHECKPOINT=checkpoint, output=output, run_dir=run_dir, train=train, dev=dev
    )
    skip_range = parse_range(skip_threshold_range, "--skip-threshold-range")
    check_choice("--method", method, METHODS)
    refuse_inapplicable(ctx, method, APPLIES)
    if skip_layer is None and was_given(ctx, "skip_threshold_range"):
        raise UsageError("--skip-threshold-range applies to skip-aware training: give --skip-layer")
    exit_layers = parse_exits(exits)
    weights = {
        "--final-weight": (final_weight, "the final CTC head"),
        "--exit-weight": (exit_weight, "the exit heads"),
        "--gate-weight": (gate_weight, "the gates toward --target-modules"),
    }
    if freeze_backbone:  # only the exit heads learn
        weights.pop("--final-weight")
    if method != "gates":
        weights.pop("--gate-weight")
    if not exit_layers:
        weights.pop("--exit-weight")
    check_loss_weights(weights)
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
    from dyncli.recipes.common import RunOptions

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
            config=config,
            wer_budget=wer_budget,
            policy=policy,
            drop_rate=drop_rate,
            gates=GateTraining(
                predictor=predictor,
                target=target_modules,
                weight=gate_weight,
                temperature=gate_temperature,
                lr_scale=gate_lr_scale,
            ),
            reporter=job.reporter,
            run=RunOptions(run_dir=run_dir, resume=resume),
        )
    if not job.main:
        return
    reporter = job.reporter
    reporter.message(best_epoch_line(result.train, result.output))
    gates = (result.method or {}).get("gates") or {}
    rates = gates.get("open_rate") or {}
    if rates:
        values = [r for per_layer in rates.values() for r in per_layer]
        reporter.message(
            f"gates open on dev (threshold 0.5): {100 * sum(values) / len(values):.0f}% of "
            f"attention and feed-forward modules (target {100 * gates['target_modules']:.0f}%)"
        )
    report_choice(reporter, result.choice, policy or default_policy(result.method))
