"""What the training recipes share: run options, device and process start, seeding, the exit
training path and objectives, and :func:`run_engine` (build the module, run the
:class:`~dyncli.training.trainer.Trainer`).

``train`` (:mod:`dyncli.recipes.train`), ``convert`` (:mod:`dyncli.recipes.convert`) and
``distill`` (:mod:`dyncli.recipes.distill`) differ only in the model they start from, the path
the student runs and the objectives; the loop, resume, DDP and output handling are the
trainer's.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dyncli.checkpoint import Checkpoint
from dyncli.data.dataset import Utterance
from dyncli.data.text import Tokenizer
from dyncli.dynamic.operating_point import PointChoice, choose_operating_point, default_policy
from dyncli.dynamic.records import MethodRecord, OperatingPoint
from dyncli.inference import pick_device
from dyncli.models.base import CTCEncoder
from dyncli.models.config import config_to_dict
from dyncli.training import distributed
from dyncli.training.config import (
    ExitTraining,
    Reporter,
    SilentReporter,
    TrainConfig,
    TrainResult,
    check_config,
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


@dataclass
class MethodContext:
    """What a trained method's ``train`` (:class:`~dyncli.registry.specs.MethodSpec`) is given.

    ``model`` is the model to train, exit heads already attached (``convert``: the static
    model; ``distill``: the student); ``options`` the method's own options (its
    ``options_cls``, or None); ``shared`` the command's shared settings
    (:class:`~dyncli.training.config.ExitTraining` for ``convert``,
    :class:`~dyncli.recipes.distill.DistillOptions` for ``distill``); ``record`` the input
    checkpoint's method record (None for a static model); ``seed`` and ``rank`` seed the
    method's random streams (:func:`seeded`).
    """

    model: CTCEncoder
    options: Any
    shared: Any
    record: MethodRecord | None
    seed: int
    rank: int = 0


@dataclass
class MethodPlan:
    """What a trained method returns: how the student runs each step (``path``), the weighted
    ``objectives``, and the ``record`` stored in the checkpoint (``convert``: the whole method
    record; ``distill``: the keys it sets in the student's record).

    ``lr_scales`` gives modules a learning rate of their own (a multiple of ``--lr``);
    ``point_settings`` the settings of a ``--wer-budget`` operating point, per policy name (the
    trigger layer the model was trained to skip at, ...); ``finish(checkpoint, dev)``, when
    given, runs on the trained checkpoint before the operating point is chosen (records
    statistics measured on the dev set into ``checkpoint.method``).
    """

    path: StudentPath
    objectives: list[tuple[Objective, float]]
    record: dict[str, Any]
    lr_scales: list[tuple[torch.nn.Module, float]] = field(default_factory=list)
    point_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    finish: Callable[[Checkpoint, Sequence[Utterance]], None] | None = None


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


# Offsets added to --seed, one per stream of random draws, so that no two streams coincide.
SEED_SKIP_AWARE = 104729  # which steps run blank-skip in the loop (SkipAware)
SEED_LAYER_DROP = 15485863  # which layers a LayerDrop / DLD step runs
SEED_GATES = 32452843  # the Gumbel noise of I3D gates in training
SEED_RANK_STRIDE = 7919  # between DDP ranks, for the streams that differ per rank


def seeded(seed: int, offset: int, rank: int = 0) -> torch.Generator:
    """The generator of one stream: ``seed + offset + SEED_RANK_STRIDE * rank``."""
    return torch.Generator().manual_seed(seed + offset + SEED_RANK_STRIDE * rank)


def skip_aware_path(
    layer: int,
    thresholds: tuple[float, float],
    neighbours: int,
    share: float,
    seed: int,
    rank: int = 0,
) -> SkipAware:
    """Blank-skip in the loop at ``layer`` on a ``share`` of steps (``convert --skip-layer``,
    and ``distill`` of a model trained so)."""
    return SkipAware(layer, thresholds, neighbours, share, seeded(seed, SEED_SKIP_AWARE, rank))


def stored_exit_path(method: MethodRecord | None, seed: int, rank: int = 0) -> StudentPath:
    """The path a model with exits keeps training on (``distill``): blank-skip in the loop as
    its record says it was trained (so the layers after the trigger stay adapted to compacted
    sequences), else full depth."""
    skip = method.skip_aware_training if method is not None else None
    if not skip:
        return FullDepth()
    lo, hi = skip["thresholds"]
    return skip_aware_path(
        int(skip["layer"]),
        (float(lo), float(hi)),
        int(skip["neighbours"]),
        float(skip["share_of_steps"]),
        seed,
        rank,
    )


def exit_path(exits: ExitTraining, seed: int, rank: int = 0) -> StudentPath:
    """The path exit training runs: full depth, or blank-skip in the loop with ``skip_layer``."""
    if exits.skip_layer is None:
        return FullDepth()
    return skip_aware_path(
        exits.skip_layer, exits.skip_thresholds, exits.skip_neighbours, exits.skip_prob, seed, rank
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
            method=None if method is None else MethodRecord.from_payload(method),
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


@dataclass
class RecipeResult:
    """What a recipe that makes a dynamic model returns: the training run, where the checkpoint
    went, the method record it carries, and, with ``--wer-budget``, the operating point chosen
    on dev (with the rows it was chosen from)."""

    train: TrainResult
    output: Path
    method: MethodRecord | dict[str, Any]
    operating_point: dict[str, Any] | None = None
    sweep: list[dict[str, Any]] = field(default_factory=list)
    choice: PointChoice | None = None

    def store_operating_point(
        self,
        ckpt: Checkpoint,
        dev: Sequence[Utterance],
        policy: str,
        wer_budget: float,
        settings: dict[str, Any] | None = None,
    ) -> Checkpoint:
        """Sweep ``ckpt`` on ``dev``, store the chosen point in its method record (the
        ``--wer-budget`` rule of :func:`~dyncli.dynamic.operating_point.choose_operating_point`)
        and here; ``ckpt`` comes back, ready to publish."""
        choice = choose_operating_point(
            ckpt, dev, policy=policy, wer_budget=wer_budget, settings=settings
        )
        assert ckpt.method is not None
        ckpt.method.operating_point = (
            None if choice.point is None else OperatingPoint.from_payload(choice.point)
        )
        self.operating_point, self.sweep, self.choice = choice.point, choice.rows, choice
        self.method = ckpt.method
        return ckpt


@dataclass
class PreparedRun:
    """A training run set up by :func:`prepare_run`: the device and process group claimed, the
    random number generators seeded, the data loaded and its provenance recorded."""

    config: TrainConfig
    run: RunOptions
    output: Path
    device: torch.device
    world: World
    reporter: Reporter
    data: TrainData
    provenance: dict[str, Any]

    def train(
        self,
        source: Checkpoint,
        model: CTCEncoder,
        record: dict[str, Any] | None,
        plan: MethodPlan,
        *,
        teacher: CTCEncoder | None = None,
        freeze_backbone: bool = False,
    ) -> TrainResult:
        """Train ``model`` (made from ``source``: its tokenizer, backbone and config) on the
        plan's path with its objectives; the best epoch stays in the run directory."""
        return run_engine(
            model=model,
            tokenizer=source.tokenizer,
            backbone=source.backbone,
            model_config=source.config,
            data=self.data,
            output=self.output,
            config=self.config,
            method=record,
            provenance=self.provenance,
            objectives=plan.objectives,
            path=plan.path,
            reporter=self.reporter,
            device=self.device,
            world=self.world,
            run=self.run,
            teacher=teacher,
            freeze_backbone=freeze_backbone,
            lr_scales=plan.lr_scales,
        )


def prepare_run(
    config: TrainConfig,
    run: RunOptions,
    output: str | Path,
    reporter: Reporter,
    train_manifest: str | Path,
    dev_manifest: str | Path,
    sample_rate: int,
    announce: str | None = None,
) -> PreparedRun:
    """Set up a training run: the device and process group, the run directory claimed before
    any work, the reporter (silent off the main rank), the seed, then ``announce`` (one line)
    and the data at ``sample_rate``."""
    device, world = start(config, run, output)
    reporter = reporter if world.main else SilentReporter()
    if announce:
        reporter.message(announce)
    seed_everything(config.seed)
    data = load_data(train_manifest, dev_manifest, sample_rate, config, reporter)
    prov = provenance(train_manifest, dev_manifest, data, config)
    return PreparedRun(config, run, Path(output), device, world, reporter, data, prov)


def finish_with_operating_point(
    job: PreparedRun,
    out: RecipeResult,
    plan: MethodPlan,
    wer_budget: float | None,
    policy: str | None,
) -> None:
    """Publish the best epoch to ``job.output``: first the plan's ``finish`` (statistics on
    dev) and, with ``wer_budget``, the operating point chosen on dev for ``policy`` (default:
    the one the record names), both stored in the checkpoint and in ``out``."""

    def finish(ckpt: Checkpoint) -> Checkpoint:
        if plan.finish is not None:
            plan.finish(ckpt, job.data.dev)
        if wer_budget is not None:
            name = policy or default_policy(ckpt.method)
            settings = plan.point_settings.get(name)
            out.store_operating_point(ckpt, job.data.dev, name, wer_budget, settings=settings)
        out.method = ckpt.method or out.method
        return ckpt

    wanted = (wer_budget is not None or plan.finish is not None) and job.world.main
    publish(
        job.world, job.run.directory(job.output), job.output, transform=finish if wanted else None
    )
    out.train.output = job.output
