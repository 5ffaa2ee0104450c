"""The training commands as recipes on one engine: set up, build the module, run, publish.

``train`` (this module), ``convert`` (:mod:`dyncli.convert`) and ``distill``
(:mod:`dyncli.distill`) differ only in the model they start from, the path the student runs and
the objectives; the loop, resume, DDP and output handling are :class:`Trainer`'s.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dyncli.checkpoint import Checkpoint
from dyncli.data.text import Tokenizer, build_tokenizer
from dyncli.errors import UsageError
from dyncli.inference import pick_device
from dyncli.models.base import CTCEncoder
from dyncli.models.config import config_to_dict, sample_rate_of
from dyncli.plugins import get_backbone
from dyncli.training import distributed
from dyncli.training.config import (
    ExitTraining,
    Reporter,
    SilentReporter,
    TrainConfig,
    TrainResult,
    check_config,
    check_exits,
    early_exit_method,
)
from dyncli.training.data import TrainData, load_data, provenance
from dyncli.training.distributed import World
from dyncli.training.module import Teacher, TrainingModule
from dyncli.training.objectives import (
    ExitCTC,
    FinalCTC,
    FullDepth,
    Objective,
    SkipAware,
    StudentPath,
)
from dyncli.training.rundir import claim_run_dir
from dyncli.training.trainer import Trainer, default_run_dir, publish


@dataclass
class RunOptions:
    """Where a run keeps its in-progress state and whether it continues an earlier one."""

    run_dir: Path | None = None  # default: OUTPUT.run beside the output
    resume: bool = False

    def directory(self, output: str | Path) -> Path:
        return Path(self.run_dir) if self.run_dir is not None else default_run_dir(output)

    def claim(self, output: str | Path, world: World) -> Path:
        """Create and lock the run directory on rank 0 (see :mod:`dyncli.training.rundir`)."""
        directory = self.directory(output)
        if world.main:
            claim_run_dir(directory, output)
        distributed.barrier(world)
        return directory


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def start(
    cfg: TrainConfig, run: RunOptions | None = None, output: str | Path | None = None
) -> tuple[torch.device, World]:
    """The device and the process group (a world of one outside torchrun); with ``run`` and
    ``output``, the run directory is claimed (created, marked and locked) before any work."""
    check_config(cfg)
    requested = distributed.device_for(cfg.device, World())
    device = pick_device(requested)
    world = distributed.setup(device)
    if run is not None and output is not None:
        run.claim(output, world)
    return device, world


def ctc_objectives(exits: ExitTraining) -> list[tuple[Objective, float]]:
    return [(FinalCTC(), exits.final_weight), (ExitCTC(), exits.exit_weight)]


def exit_path(exits: ExitTraining, seed: int, world: World) -> StudentPath:
    if exits.skip_layer is None:
        return FullDepth()
    return SkipAware(
        exits.skip_layer,
        exits.skip_thresholds,
        exits.skip_neighbours,
        exits.skip_prob,
        torch.Generator().manual_seed(seed + 104729 + 7919 * world.rank),
    )


def run_engine(
    *,
    model: CTCEncoder,
    tokenizer: Tokenizer,
    backbone: str,
    model_config: Any,
    data: TrainData,
    output: str | Path,
    config: TrainConfig,
    method: dict[str, Any] | None,
    provenance: dict[str, Any],
    objectives: Sequence[tuple[Objective, float]],
    path: StudentPath,
    reporter: Reporter,
    device: torch.device,
    world: World,
    run: RunOptions,
    teacher: CTCEncoder | None = None,
    freeze_backbone: bool = False,
    fingerprint: dict[str, Any] | None = None,
    lr_scales: Sequence[tuple[torch.nn.Module, float]] = (),
) -> TrainResult:
    """Train ``model`` with ``objectives`` on ``path``; the best epoch stays in the run dir."""
    module = TrainingModule(
        model.to(device),
        objectives,
        path=path,
        teacher=Teacher(teacher.to(device), cache=not config.augment.enabled)
        if teacher is not None
        else None,
        freeze_backbone=freeze_backbone,
        lr_scales=lr_scales,
    )
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in module.trainable_parameters())
    if world.main:
        reporter.message(
            f"model: {backbone}, {model.num_layers} layers, {n_params / 1e6:.2f} M parameters "
            f"({n_train / 1e6:.3f} M trained), vocab {tokenizer.vocab_size} ({tokenizer.kind})"
            + (f", exits after layers {model.exits}" if model.exits else "")
            + f"; device {device}, threads {torch.get_num_threads()}"
            + (f", {world.size} processes" if world.distributed else "")
        )

    def make_checkpoint(m: CTCEncoder, metrics: dict[str, Any]) -> Checkpoint:
        return Checkpoint(
            model=m,
            tokenizer=tokenizer,
            backbone=backbone,
            config=model_config,
            method=method,
            provenance=provenance,
            metrics=metrics,
        )

    trainer = Trainer(
        module=module,
        tokenizer=tokenizer,
        data=data,
        config=config,
        device=device,
        world=world,
        run_dir=run.directory(output),
        make_checkpoint=make_checkpoint,
        reporter=reporter,
        resume=run.resume,
        fingerprint={
            "config": asdict(config),
            "model_config": config_to_dict(model_config),
            "method": method,
            "train": data.train_fingerprint,
            "dev": data.dev_fingerprint,
            **(fingerprint or {}),
        },
    )
    if run.resume and world.main:
        reporter.message(f"resuming from {trainer.state_path}")
    return trainer.fit()


def train(
    *,
    train_manifest: str | Path,
    dev_manifest: str | Path,
    output: str | Path,
    backbone: str = "conformer",
    model_config: Any = None,
    config: TrainConfig | None = None,
    exits: ExitTraining | None = None,
    reporter: Reporter,
    run: RunOptions | None = None,
) -> TrainResult:
    """Train a CTC model from scratch (with intermediate exit heads when ``exits`` names any);
    write the checkpoint with the best dev WER to ``output`` when the run ends."""
    cfg = config or TrainConfig()
    run = run or RunOptions()
    device, world = start(cfg, run, output)
    reporter = reporter if world.main else SilentReporter()
    spec = get_backbone(backbone)
    model_config = model_config or spec.presets.get("demo") or next(iter(spec.presets.values()))
    exit_cfg = exits or ExitTraining()
    if exit_cfg.freeze_backbone:
        raise UsageError("--freeze-backbone needs a trained backbone: use 'dyncli convert'")
    seed_everything(cfg.seed)
    data = load_data(train_manifest, dev_manifest, sample_rate_of(model_config), cfg, reporter)
    tokenizer = build_tokenizer(cfg.tokenizer, [u.text for u in data.train], cfg.vocab_size)
    model = spec.build(model_config, tokenizer.vocab_size)
    if exit_cfg.exits:
        model.attach_exits(check_exits(exit_cfg.exits, model.num_layers))
    method = early_exit_method(exit_cfg, training="from-scratch") if exit_cfg.exits else None
    result = run_engine(
        model=model,
        tokenizer=tokenizer,
        backbone=backbone,
        model_config=model_config,
        data=data,
        output=output,
        config=cfg,
        method=method,
        provenance=provenance(train_manifest, dev_manifest, data, cfg),
        objectives=ctc_objectives(exit_cfg),
        path=exit_path(exit_cfg, cfg.seed, world),
        reporter=reporter,
        device=device,
        world=world,
        run=run,
    )
    publish(world, run.directory(output), output)
    result.output = Path(output)
    return result
