"""``dyncli train``: train a static CTC baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dyncli.cli.options import (
    AugmentOpt,
    DevDataOpt,
    DeviceOpt,
    EpochsOpt,
    ExitsOpt,
    ExitWeightOpt,
    FinalWeightOpt,
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
    check_choice,
    check_loss_weights,
    parse_exits,
    parse_range,
    refuse_inapplicable,
    was_given,
)
from dyncli.errors import UsageError

NAME = "train"


def run(
    ctx: typer.Context,
    train: TrainDataOpt,
    dev: DevDataOpt,
    output: OutputOpt,
    backbone: Annotated[str, typer.Option(help="Registered backbone.")] = "conformer",
    preset: Annotated[str, typer.Option(help="Backbone preset (e.g. demo, small, tiny).")] = "demo",
    layers: Annotated[int | None, typer.Option(min=1, help="Override: encoder layers.")] = None,
    d_model: Annotated[int | None, typer.Option(min=8, help="Override: model width.")] = None,
    ffn_dim: Annotated[int | None, typer.Option(min=8, help="Override: FFN width.")] = None,
    heads: Annotated[int | None, typer.Option(min=1, help="Override: attention heads.")] = None,
    dropout: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=0.9,
            help="Override: dropout probability in attention, feed-forward and convolution "
            "modules (the preset's otherwise).",
            show_default=False,
        ),
    ] = None,
    epochs: EpochsOpt = 30,
    max_steps: MaxStepsOpt = None,
    batch_seconds: Annotated[
        float, typer.Option(min=1.0, help="Padded audio seconds per batch.")
    ] = 48.0,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Most utterances per batch (with --batch-seconds).")
    ] = 32,
    lr: LrOpt = 1e-3,
    warmup_steps: WarmupStepsOpt = 400,
    weight_decay: Annotated[
        float,
        typer.Option(min=0.0, help="AdamW weight decay (decoupled), on every trained parameter."),
    ] = 0.01,
    patience: Annotated[
        int | None, typer.Option(min=1, help="Stop after N epochs without dev improvement.")
    ] = None,
    tokenizer: Annotated[str, typer.Option(help="'sentencepiece' or 'char'.")] = "sentencepiece",
    vocab_size: Annotated[int, typer.Option(min=4, help="Sentencepiece vocabulary size.")] = 32,
    augment: AugmentOpt = True,
    spec_augment: Annotated[
        bool,
        typer.Option(
            "--spec-augment/--no-spec-augment",
            help="SpecAugment (frequency and time masks on the log-mel features) on or off.",
        ),
    ] = True,
    speed: Annotated[str, typer.Option(help="Speed perturbation range LOW:HIGH.")] = "0.85:1.15",
    vtlp: Annotated[
        str, typer.Option(help="Vocal-tract-length warp range LOW:HIGH.")
    ] = "0.88:1.12",
    noise_snr: Annotated[
        str, typer.Option(help="Additive-noise SNR range LOW:HIGH in dB.")
    ] = "10:40",
    augment_ramp: Annotated[
        int,
        typer.Option(
            min=0,
            help="Steps over which the share of augmented utterances rises from 0 to 1 "
            "(lets a deep model leave the all-blank CTC plateau first).",
        ),
    ] = 1500,
    exits: ExitsOpt = None,
    exit_weight: ExitWeightOpt = 1.0,
    final_weight: FinalWeightOpt = 1.0,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: JobThreadsOpt = None,
    skip_bad: SkipBadOpt = False,
    run_dir: RunDirOpt = None,
    resume: ResumeOpt = False,
    save_every: SaveEveryOpt = 100,
    log_every: LogEveryOpt = 50,
) -> None:
    """Train a CTC model from scratch; the checkpoint with the best dev WER is kept at --output.

    With --exits, intermediate CTC heads are trained jointly (an early-exit model from scratch;
    compare with 'dyncli convert', which fine-tunes heads onto a trained static model).
    """
    import dataclasses

    from dyncli.cli.job import best_epoch_line, training_job
    from dyncli.cli.paths import check_training_paths
    from dyncli.recipes.train import train as train_model
    from dyncli.registry.manager import get_backbone
    from dyncli.training import ExitTraining, TrainConfig
    from dyncli.training.augment import AugmentConfig
    from dyncli.training.config import check_config

    check_training_paths(output=output, run_dir=run_dir, train=train, dev=dev)
    spec = get_backbone(backbone)
    if preset not in spec.presets:
        raise UsageError(
            f"unknown preset {preset!r} for {backbone}; choose from {', '.join(spec.presets)}"
        )
    overrides = {
        "num_layers": layers,
        "d_model": d_model,
        "ffn_dim": ffn_dim,
        "num_heads": heads,
        "dropout": dropout,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(spec.presets[preset])}
    flags = {"num_layers": "--layers", "d_model": "--d-model", "ffn_dim": "--ffn-dim"}
    for key in sorted(set(given) - fields):
        flag = flags.get(key, "--" + key.replace("num_", "").replace("_", "-"))
        raise UsageError(f"{flag} does not apply to the {backbone} backbone (use --preset)")
    model_config = dataclasses.replace(spec.presets[preset], **given)
    check_choice("--tokenizer", tokenizer, ("sentencepiece", "char"))
    refuse_inapplicable(ctx, tokenizer, {"vocab_size": ("sentencepiece",)}, by="--tokenizer")
    exit_layers = parse_exits(exits)
    if not exit_layers and was_given(ctx, "exit_weight"):
        raise UsageError("--exit-weight weights the exit heads' losses: give --exits too")
    check_loss_weights(
        {"--final-weight": (final_weight, "the final CTC head")}
        | ({"--exit-weight": (exit_weight, "the exit heads")} if exit_layers else {})
    )
    aug = AugmentConfig(
        speed=parse_range(speed, "--speed"),
        vtlp=parse_range(vtlp, "--vtlp"),
        snr_db=parse_range(noise_snr, "--noise-snr"),
        enabled=augment,
        ramp_steps=augment_ramp,
    )
    if not spec_augment:
        aug = aug.without_specaugment()
    config = TrainConfig(
        epochs=epochs,
        max_steps=max_steps,
        batch_seconds=batch_seconds,
        max_batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        patience=patience,
        seed=seed,
        device=device,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        augment=aug,
        skip_bad=skip_bad,
        save_every=save_every,
    )
    check_config(config)
    from dyncli.recipes.common import RunOptions

    with training_job(threads, log_every) as job:
        result = train_model(
            train_manifest=train,
            dev_manifest=dev,
            output=output,
            backbone=backbone,
            model_config=model_config,
            config=config,
            exits=ExitTraining(
                exits=exit_layers, exit_weight=exit_weight, final_weight=final_weight
            ),
            reporter=job.reporter,
            run=RunOptions(run_dir=run_dir, resume=resume),
        )
    if not job.main:
        return
    job.reporter.message(
        best_epoch_line(result, Path(result.output), cer=True)
        + (f"; skipped {len(result.skipped)} bad entries" if result.skipped else "")
    )
