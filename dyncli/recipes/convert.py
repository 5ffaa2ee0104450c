"""``dyncli convert``: turn a static checkpoint into a dynamic one and train what was attached.

Method ``early-exit``: an intermediate CTC head after each layer in ``exits`` (1-based), trained
with ``final_weight * CTC(final) + exit_weight * sum CTC(exit)``, the backbone frozen or
fine-tuned. The heads serve both skip policies: ``blank-skip`` reads the blank posterior of one
exit; ``early-exit`` stops at the first confident exit.

Method ``layerdrop``: plain layer-drop training (CTC only, exits optional): each step runs a
sub-network with every layer kept with probability 1 - ``drop_rate`` (dropped layers are not
computed), so that at inference the ``drop`` policy can run fewer layers. It is the baseline
``dyncli distill --method dld`` is compared against.

Method ``gates`` (I3D, arXiv 2303.07624): a gate predictor (``local`` per layer or ``global``
for the whole plan) and a binary gate on every attention and feed-forward block, trained with
straight-through Gumbel gates and a cost term that drives the expected fraction of executed
modules toward ``target`` (:mod:`dyncli.methods.gates`). The whole model is fine-tuned with the
gates in the loop; the result runs the ``gates`` policy, and its checkpoint records the
predictor, the target and each block's gate-open rate on the dev set.

With ``wer_budget`` the converted model is swept on the dev set and the operating point (policy
and threshold) with the fewest executed FLOPs whose dev WER increase over full depth is within
``wer_budget`` (absolute) at the upper end of its 95% paired bootstrap interval is stored in the
checkpoint, with that interval and the dev set's size
(:func:`dyncli.dynamic.operating_point.choose_operating_point`; a budget the dev set cannot
resolve is said, with the one it can); ``transcribe``, ``evaluate`` and ``profile`` use it by
default.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dyncli.checkpoint import Checkpoint, file_sha256, load_checkpoint
from dyncli.dynamic.operating_point import (
    check_budget,
    check_policy_fits,
)
from dyncli.errors import UsageError
from dyncli.models.base import CTCEncoder
from dyncli.recipes.common import (
    SEED_GATES,
    SEED_LAYER_DROP,
    RecipeResult,
    RunOptions,
    ctc_objectives,
    exit_path,
    run_engine,
    seed_everything,
    seeded,
    start,
)
from dyncli.training.augment import AugmentConfig
from dyncli.training.config import (
    ExitTraining,
    Reporter,
    SilentReporter,
    TrainConfig,
    check_exits,
    early_exit_method,
)
from dyncli.training.data import load_data, provenance
from dyncli.training.objectives import GateCost, GatedPath, LayerDrop, Objective, StudentPath
from dyncli.training.trainer import publish

METHODS = ("early-exit", "layerdrop", "gates")


@dataclass
class GateTraining:
    """``convert --method gates`` settings (see :mod:`dyncli.methods.gates`)."""

    predictor: str = "local"
    target: float = 0.5  # expected fraction of attention / feed-forward modules executed
    weight: float = 10.0  # lambda, the cost term's weight
    temperature: float = 1.0  # of the Gumbel sample
    hidden: int = 32  # the predictor MLP's hidden width
    lr_scale: float = 10.0  # the predictor's learning rate over the model's

    def validate(self) -> None:
        from dyncli.methods.gates.predictor import PREDICTORS

        if self.predictor not in PREDICTORS:
            raise UsageError(
                f"unknown --predictor {self.predictor!r}; choose one of: {', '.join(PREDICTORS)}"
            )
        if not 0 < self.target <= 1:
            raise UsageError(
                f"--target-modules must lie in (0, 1] (the fraction of attention and "
                f"feed-forward modules to run), got {self.target}"
            )
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise UsageError(f"--gate-weight must be >= 0 and finite, got {self.weight}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UsageError(f"--gate-temperature must be > 0 and finite, got {self.temperature}")
        if not (math.isfinite(self.lr_scale) and self.lr_scale > 0):
            raise UsageError(f"--gate-lr-scale must be > 0 and finite, got {self.lr_scale}")


def layerdrop_method(exits: list[int], drop_rate: float) -> dict[str, Any]:
    """The checkpoint ``method`` record of a layer-drop model (``--method layerdrop``)."""
    return {
        "name": "layerdrop",
        "exits": list(exits),
        "training": "fine-tune",
        "drop_rate": drop_rate,
        "default_policy": "drop",
        "operating_point": None,
    }


def as_trained(model: CTCEncoder, exits: list[int], gates: GateTraining | None) -> CTCEncoder:
    """A copy of ``model`` with the heads (and gates) training will attach, for checks made
    before any work; the random number generator is left as it was."""
    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(model)
        probe.attach_exits(exits)
        if gates is not None:
            from dyncli.methods.gates.predictor import attach_gates

            attach_gates(probe, gates.predictor, gates.hidden)
    return probe


def convert_defaults() -> TrainConfig:
    """Fine-tuning defaults: short, lower peak LR, augmentation at full strength from step 0."""
    return TrainConfig(epochs=4, lr=5e-4, warmup_steps=100, augment=AugmentConfig(ramp_steps=0))


@dataclass
class ConvertResult(RecipeResult):
    """What ``convert`` returns (see :class:`~dyncli.recipes.common.RecipeResult`)."""


def convert(
    *,
    checkpoint: str | Path,
    output: str | Path,
    train_manifest: str | Path,
    dev_manifest: str | Path,
    method: str = "early-exit",
    exits: ExitTraining,
    config: TrainConfig | None = None,
    wer_budget: float | None = None,
    policy: str | None = None,
    drop_rate: float = 0.5,
    gates: GateTraining | None = None,
    reporter: Reporter,
    run: RunOptions | None = None,
) -> ConvertResult:
    """Attach ``exits`` to the static model at ``checkpoint``, train them, write ``output``."""
    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r}; choose one of: {', '.join(METHODS)}")
    if method == "early-exit" and not exits.exits:
        raise UsageError("--exits is required: the layers (1-based) that get a CTC head, e.g. 4,8")
    check_budget(wer_budget, policy)
    if Path(output).resolve() == Path(checkpoint).resolve():
        raise UsageError("-o must differ from the input checkpoint (the static model is kept)")
    cfg = config or convert_defaults()
    run = run or RunOptions()
    default_policy = {"layerdrop": "drop", "gates": "gates"}.get(method, "blank-skip")
    gate_cfg = gates or GateTraining()
    gate_cfg.validate()
    if method == "gates":
        if exits.exits or exits.skip_layer is not None or exits.freeze_backbone:
            raise UsageError(
                "--method gates fine-tunes the whole model with gates in the loop: drop "
                "--exits, --skip-layer and --freeze-backbone"
            )
    if method == "layerdrop":
        if not 0 <= drop_rate < 1:
            raise UsageError(f"--drop-rate must lie in [0, 1), got {drop_rate}")
        if exits.skip_layer is not None or exits.freeze_backbone:
            raise UsageError(
                "--method layerdrop trains the whole model with layers dropped: drop "
                "--skip-layer and --freeze-backbone"
            )
    static = load_checkpoint(checkpoint)
    if static.method is not None:
        raise UsageError(
            f"{checkpoint}: already a dynamic checkpoint (method "
            f"{static.method.get('name')!r}, exits {static.method.get('exits')}); "
            "convert the static model it came from"
        )
    model = static.model
    exit_cfg = ExitTraining(
        exits=check_exits(exits.exits, model.num_layers),
        exit_weight=exits.exit_weight,
        final_weight=exits.final_weight,
        freeze_backbone=exits.freeze_backbone,
        skip_layer=exits.skip_layer,
        skip_thresholds=exits.skip_thresholds,
        skip_neighbours=exits.skip_neighbours,
        skip_prob=exits.skip_prob,
    )
    if exit_cfg.skip_layer is not None:
        if exit_cfg.freeze_backbone:
            raise UsageError(
                "--skip-layer trains the layers after the exit: drop --freeze-backbone"
            )
        if exit_cfg.skip_layer not in exit_cfg.exits:
            raise UsageError(
                f"--skip-layer {exit_cfg.skip_layer}: that layer needs an exit (--exits)"
            )
        lo, hi = exit_cfg.skip_thresholds
        if not 0 < lo <= hi <= 1:
            raise UsageError(
                f"--skip-threshold-range must satisfy 0 < LOW <= HIGH <= 1, got {lo}:{hi}"
            )

    def point_settings(name: str) -> dict[str, Any]:
        """blank-skip runs at the trigger layer and neighbours the model was trained with."""
        if name != "blank-skip":
            return {}
        return {"layer": exit_cfg.skip_layer, "neighbours": exit_cfg.skip_neighbours}

    if wer_budget is not None:  # can the trained model run the policy? Fail now, not after
        name = policy or default_policy
        check_policy_fits(
            as_trained(model, exit_cfg.exits, gate_cfg if method == "gates" else None),
            name,
            policy is not None,
            point_settings(name),
        )
    device, world = start(cfg, run, output)
    reporter = reporter if world.main else SilentReporter()
    seed_everything(cfg.seed)
    data = load_data(train_manifest, dev_manifest, model.sample_rate, cfg, reporter)
    model.attach_exits(exit_cfg.exits)
    objectives: list[tuple[Objective, float]] = ctc_objectives(exit_cfg)
    lr_scales: list[tuple[torch.nn.Module, float]] = []
    if method == "layerdrop":
        method_record = layerdrop_method(exit_cfg.exits, drop_rate)
        path: StudentPath = LayerDrop(drop_rate, seeded(cfg.seed, SEED_LAYER_DROP))
    elif method == "gates":
        from dyncli.methods.gates.predictor import attach_gates, gates_method

        predictor = attach_gates(model, gate_cfg.predictor, gate_cfg.hidden)
        lr_scales = [(predictor, gate_cfg.lr_scale)]
        method_record = gates_method(
            gate_cfg.predictor,
            gate_cfg.target,
            gate_cfg.weight,
            gate_cfg.temperature,
            gate_cfg.hidden,
        )
        method_record["gates"]["lr_scale"] = gate_cfg.lr_scale
        path = GatedPath(gate_cfg.temperature, seeded(cfg.seed, SEED_GATES, world.rank))
        objectives.append((GateCost(gate_cfg.target), gate_cfg.weight))
    else:
        method_record = early_exit_method(exit_cfg, training="fine-tune")
        path = exit_path(exit_cfg, cfg.seed, world.rank)
    method_record["source"] = {"path": str(checkpoint), "metrics": static.metrics}
    prov = provenance(train_manifest, dev_manifest, data, cfg)
    prov["converted_from"] = str(checkpoint)
    prov["converted_from_sha256"] = file_sha256(checkpoint)
    result = run_engine(
        model=model,
        tokenizer=static.tokenizer,
        backbone=static.backbone,
        model_config=static.config,
        data=data,
        output=output,
        config=cfg,
        method=method_record,
        provenance=prov,
        objectives=objectives,
        path=path,
        reporter=reporter,
        device=device,
        world=world,
        run=run,
        freeze_backbone=exit_cfg.freeze_backbone,
        lr_scales=lr_scales,
    )
    out = ConvertResult(train=result, output=Path(output), method=method_record)

    def finish(converted: Checkpoint) -> Checkpoint:
        """A gated model records its gate-open rates on dev; with --wer-budget the operating
        point is chosen on dev and stored."""
        if method == "gates":
            from dyncli.methods.gates.policy import open_rates

            assert converted.method is not None
            model = converted.model
            waves = [u.wave for u in data.dev]
            record = converted.method["gates"]
            record["open_rate"] = open_rates(model, waves, threshold=0.5)
            record["open_rate_on"] = "the --dev set of the training run, threshold 0.5"
            out.method = converted.method
        return store_point(converted) if wer_budget is not None else converted

    def store_point(converted: Checkpoint) -> Checkpoint:
        assert wer_budget is not None
        name = policy or default_policy
        return out.store_operating_point(
            converted, data.dev, name, wer_budget, settings=point_settings(name)
        )

    publish(
        world,
        run.directory(output),
        output,
        transform=finish if (wer_budget is not None or method == "gates") and world.main else None,
    )
    result.output = Path(output)
    return out
