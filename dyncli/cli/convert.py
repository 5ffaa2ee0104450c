"""``dyncli convert``: attach early-exit CTC heads to a static checkpoint and train them."""

from __future__ import annotations

from typing import Annotated

import typer

from dyncli.cli.options import (
    CheckpointArg,
    DevDataOpt,
    DeviceOpt,
    ExitsOpt,
    ExitWeightOpt,
    FinalWeightOpt,
    OutputOpt,
    SeedOpt,
    SkipBadOpt,
    ThreadsOpt,
    TrainDataOpt,
    parse_exits,
)

NAME = "convert"


def run(
    checkpoint: CheckpointArg,
    output: OutputOpt,
    train: TrainDataOpt,
    dev: DevDataOpt,
    exits: ExitsOpt = None,
    method: Annotated[
        str, typer.Option(help="Dynamic method to attach (implemented: early-exit).")
    ] = "early-exit",
    freeze_backbone: Annotated[
        bool,
        typer.Option(
            "--freeze-backbone/--fine-tune",
            help="Train only the new heads (backbone weights and outputs unchanged), or "
            "fine-tune everything with the summed losses.",
        ),
    ] = False,
    exit_weight: ExitWeightOpt = 1.0,
    final_weight: FinalWeightOpt = 1.0,
    skip_aware: Annotated[
        int | None,
        typer.Option(
            "--skip-aware",
            min=1,
            help="Skip-aware training: on half the steps run blank-skip at the exit after this "
            "layer (threshold drawn from --skip-thresholds), so later layers learn to work on "
            "the compacted sequences inference gives them.",
            show_default=False,
        ),
    ] = None,
    skip_thresholds: Annotated[
        str, typer.Option(help="Skip-aware training: threshold range LOW:HIGH.")
    ] = "0.5:0.99",
    skip_neighbours: Annotated[
        int, typer.Option(min=0, help="Skip-aware training: neighbours kept each side.")
    ] = 1,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 4,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many steps.")
    ] = None,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW).")] = 5e-4,
    warmup_steps: Annotated[int, typer.Option(min=1, help="Linear warm-up steps.")] = 100,
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help="Augmentation on or off.")
    ] = True,
    wer_budget: Annotated[
        float | None,
        typer.Option(
            "--wer-budget",
            min=0.0,
            help="After training, sweep --policy on the dev set and store, as the checkpoint's "
            "operating point, the threshold with the fewest executed FLOPs whose dev WER is "
            "at most this much (absolute, 0.01 = 1 point) above full depth.",
        ),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="Skip policy the --wer-budget operating point is chosen for.")
    ] = "blank-skip",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 2,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Turn a static checkpoint into a dynamic one: attach CTC heads after --exits, train them.

    Loss = final-weight * CTC(final) + exit-weight * sum of CTC(exit); CTC lengths are each
    utterance's true frame count. The best epoch (mean dev WER over all heads) is saved with
    its method, exits and, with --wer-budget, the recommended operating point.
    """
    import dataclasses

    import torch

    from dyncli.cli.render import TrainReporter, pct
    from dyncli.cli.train import _range
    from dyncli.convert import convert, convert_defaults
    from dyncli.training import ExitTraining

    torch.set_num_threads(threads)
    base = convert_defaults()
    config = dataclasses.replace(
        base,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        warmup_steps=warmup_steps,
        seed=seed,
        device=device,
        skip_bad=skip_bad,
        augment=dataclasses.replace(base.augment, enabled=augment),
    )
    reporter = TrainReporter()
    try:
        result = convert(
            checkpoint=checkpoint,
            output=output,
            train_manifest=train,
            dev_manifest=dev,
            method=method,
            exits=ExitTraining(
                exits=parse_exits(exits),
                exit_weight=exit_weight,
                final_weight=final_weight,
                freeze_backbone=freeze_backbone,
                skip_layer=skip_aware,
                skip_thresholds=_range(skip_thresholds, "--skip-thresholds"),
                skip_neighbours=skip_neighbours,
            ),
            config=config,
            wer_budget=wer_budget,
            policy=policy,
            reporter=reporter,
        )
    finally:
        reporter.close()
    t = result.train
    reporter.message(
        f"best epoch {t.best_epoch}: dev WER {pct(t.best_dev_wer)}"
        + "".join(f", exit {k}: {pct(v)}" for k, v in t.best_dev_exit_wer.items())
        + f"; saved {result.output} ({t.seconds / 60:.1f} min)"
    )
    point = result.operating_point
    if point is not None:
        reporter.message(
            f"operating point ({point['policy']}, chosen on dev): threshold "
            f"{point['threshold']:g}, dev WER {pct(point['dev_wer'])} vs "
            f"{pct(point['static_dev_wer'])} full depth, {point['flops_ratio']:.2f}x the FLOPs"
        )
    elif wer_budget is not None:
        reporter.message("no threshold met --wer-budget on dev; no operating point stored")
