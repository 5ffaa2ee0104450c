"""``dyncli convert``: turn a static checkpoint into a dynamic one and train what was attached.

The method is a registered :class:`~dyncli.registry.specs.MethodSpec` of command ``convert``
(built in: ``early-exit`` in :mod:`dyncli.methods.early_exit`, ``layerdrop`` in
:mod:`dyncli.methods.drop`, ``gates`` in :mod:`dyncli.methods.gates`; a plugin may add more).
Exit heads are attached after each layer in ``exits`` (1-based) and trained with
``final_weight * CTC(final) + exit_weight * sum CTC(exit)`` by every method that uses them;
the method's ``train`` gives the path, the objectives and the checkpoint record.

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
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dyncli.checkpoint import file_sha256, load_checkpoint
from dyncli.dynamic.operating_point import check_budget, check_policy_fits, default_policy
from dyncli.errors import UsageError
from dyncli.recipes.common import (
    MethodContext,
    MethodPlan,
    RecipeResult,
    RunOptions,
    finish_with_operating_point,
    prepare_run,
)
from dyncli.registry.manager import get_method
from dyncli.training.augment import AugmentConfig
from dyncli.training.config import ExitTraining, Reporter, TrainConfig, check_exits


def convert_defaults() -> TrainConfig:
    """Fine-tuning defaults: short, lower peak LR, augmentation at full strength from step 0."""
    return TrainConfig(epochs=4, lr=5e-4, warmup_steps=100, augment=AugmentConfig(ramp_steps=0))


@dataclass
class ConvertResult(RecipeResult):
    """What ``convert`` returns (see :class:`~dyncli.recipes.common.RecipeResult`)."""


def check_exit_training(exits: ExitTraining) -> None:
    """Refuse skip-aware settings that cannot train (``--skip-layer`` and its range)."""
    if exits.skip_layer is None:
        return
    if exits.freeze_backbone:
        raise UsageError("--skip-layer trains the layers after the exit: drop --freeze-backbone")
    if exits.skip_layer not in exits.exits:
        raise UsageError(f"--skip-layer {exits.skip_layer}: that layer needs an exit (--exits)")
    lo, hi = exits.skip_thresholds
    if not 0 < lo <= hi <= 1:
        raise UsageError(f"--skip-threshold-range must satisfy 0 < LOW <= HIGH <= 1, got {lo}:{hi}")


def convert(
    *,
    checkpoint: str | Path,
    output: str | Path,
    train_manifest: str | Path,
    dev_manifest: str | Path,
    method: str = "early-exit",
    exits: ExitTraining,
    method_options: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
    wer_budget: float | None = None,
    policy: str | None = None,
    reporter: Reporter,
    run: RunOptions | None = None,
) -> ConvertResult:
    """Attach ``exits`` to the static model at ``checkpoint``, train it with ``method`` (its
    options in ``method_options``, field -> value), write ``output``."""
    spec = get_method(method, "convert")
    options = spec.make_options(method_options or {})
    check_budget(wer_budget, policy)
    if Path(output).resolve() == Path(checkpoint).resolve():
        raise UsageError("-o must differ from the input checkpoint (the static model is kept)")
    cfg = config or convert_defaults()
    run = run or RunOptions()
    static = load_checkpoint(checkpoint)
    if static.method is not None:
        raise UsageError(
            f"{checkpoint}: already a dynamic checkpoint (method "
            f"{static.method.get('name')!r}, exits {static.method.get('exits')}); "
            "convert the static model it came from"
        )
    model = static.model
    exit_cfg = dataclasses.replace(exits, exits=check_exits(exits.exits, model.num_layers))
    if spec.check is not None:
        spec.check(model, options, exit_cfg)
    check_exit_training(exit_cfg)

    def plan_on(m: Any, seed: int, rank: int) -> MethodPlan:
        m.attach_exits(exit_cfg.exits)
        return spec.train(MethodContext(m, options, exit_cfg, None, seed, rank))

    if wer_budget is not None:  # can the trained model run the policy? Fail now, not after
        with torch.random.fork_rng(devices=[]):
            probe = copy.deepcopy(model)
            probe_plan = plan_on(probe, cfg.seed, 0)
        name = policy or default_policy(probe_plan.record)
        check_policy_fits(probe, name, policy is not None, probe_plan.point_settings.get(name, {}))
    job = prepare_run(cfg, run, output, reporter, train_manifest, dev_manifest, model.sample_rate)
    plan = plan_on(model, cfg.seed, job.world.rank)
    record = plan.record
    record["source"] = {"path": str(checkpoint), "metrics": static.metrics}
    job.provenance["converted_from"] = str(checkpoint)
    job.provenance["converted_from_sha256"] = file_sha256(checkpoint)
    result = job.train(
        static,
        model,
        record,
        plan,
        freeze_backbone=exit_cfg.freeze_backbone,
    )
    out = ConvertResult(train=result, output=Path(output), method=record)
    finish_with_operating_point(job, out, plan, wer_budget, policy)
    return out
