"""``dyncli prune``: iterative layer pruning of a static checkpoint (the static baseline)."""

from __future__ import annotations

from typing import Annotated

import typer

from dyncli.cli.options import (
    AugmentOpt,
    CheckpointArg,
    DevDataOpt,
    DeviceOpt,
    EpochsOpt,
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
    fine_tune_config,
)

NAME = "prune"


def run(
    checkpoint: CheckpointArg,
    output: OutputOpt,
    train: TrainDataOpt,
    dev: DevDataOpt,
    keep: Annotated[
        int,
        typer.Option("--keep", min=1, help="Layers to keep: prune until this many remain."),
    ],
    epochs: EpochsOpt = 1,
    max_steps: MaxStepsOpt = None,
    lr: LrOpt = 3e-4,
    warmup_steps: WarmupStepsOpt = 30,
    augment: AugmentOpt = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: JobThreadsOpt = None,
    skip_bad: SkipBadOpt = False,
    run_dir: RunDirOpt = None,
    resume: ResumeOpt = False,
    save_every: SaveEveryOpt = 100,
    log_every: LogEveryOpt = 50,
) -> None:
    """Iterative layer pruning: remove the layer whose removal costs the least dev WER,
    fine-tune briefly, repeat until --keep layers remain.

    The training options apply to each round's fine-tuning (--epochs and --max-steps per
    round). The result is a static checkpoint with --keep layers that every command accepts;
    inspect shows which layers of the original it kept. Written once, when the last round ends.
    """

    from dyncli.cli.job import training_job
    from dyncli.cli.output import pct
    from dyncli.cli.paths import check_training_paths
    from dyncli.recipes.common import RunOptions
    from dyncli.recipes.prune import prune, prune_defaults

    check_training_paths(
        CHECKPOINT=checkpoint, output=output, run_dir=run_dir, train=train, dev=dev
    )
    base = prune_defaults()
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
        result = prune(
            checkpoint=checkpoint,
            output=output,
            keep=keep,
            train_manifest=train,
            dev_manifest=dev,
            config=config,
            reporter=job.reporter,
            run=RunOptions(run_dir=run_dir, resume=resume),
        )
    if not job.main:
        return
    last = result.rounds[-1] if result.rounds else None
    job.reporter.message(
        f"kept layers {[i + 1 for i in result.kept]} of the original"
        + (f"; dev WER {pct(last.dev_wer_after)}" if last else "")
        + f"; saved {result.output}"
    )
