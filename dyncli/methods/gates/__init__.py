"""I3D (arXiv 2303.07624): input-dependent dynamic depth with gate predictors per attention /
feed-forward module, the method's home.

:mod:`~dyncli.methods.gates.predictor`: the predictors and training-time gates;
:mod:`~dyncli.methods.gates.training`: ``convert --method gates``, its path and cost term;
:mod:`~dyncli.methods.gates.policy`: the inference policy. Importing this module does not
import torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dyncli.errors import UsageError
from dyncli.registry import MethodFlag, MethodSpec, SkipPolicySpec, hookimpl

NAME = "gates"
PREDICTORS = ("local", "global")


@dataclass
class GatesConfig:
    """I3D gates (arXiv 2303.07624): a block runs when its gate's open probability, from the
    model's gate predictor, is >= ``threshold`` (per utterance). Lower thresholds open more
    blocks; 0 runs every block. Needs a model made by ``convert --method gates``."""

    threshold: float = 0.5

    def validate(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise UsageError(
                f"gates threshold {self.threshold} is out of range: it is a gate-open "
                "probability, 0 <= threshold <= 1"
            )


@dataclass
class GateTraining:
    """``convert --method gates`` settings."""

    predictor: str = "local"
    target: float = 0.5  # expected fraction of attention / feed-forward modules executed
    weight: float = 10.0  # lambda, the cost term's weight
    temperature: float = 1.0  # of the Gumbel sample
    hidden: int = 32  # the predictor MLP's hidden width
    lr_scale: float = 10.0  # the predictor's learning rate over the model's

    def validate(self) -> None:
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


def _build(config: GatesConfig) -> Any:
    from dyncli.methods.gates.policy import GatePolicy

    return GatePolicy(config)


def _train(context: Any) -> Any:
    from dyncli.methods.gates.training import gates

    return gates(context)


def _check(model: Any, options: Any, exits: Any) -> None:
    if exits.exits or exits.skip_layer is not None or exits.freeze_backbone:
        raise UsageError(
            "--method gates fine-tunes the whole model with gates in the loop: drop "
            "--exits, --skip-layer and --freeze-backbone"
        )


def _summary(record: Mapping[str, Any]) -> list[str]:
    """The gate-open rate measured on dev after training."""
    gates = record.get(NAME) or {}
    rates = gates.get("open_rate") or {}
    values = [r for per_layer in rates.values() for r in per_layer]
    if not values:
        return []
    return [
        f"gates open on dev (threshold 0.5): {100 * sum(values) / len(values):.0f}% of "
        f"attention and feed-forward modules (target {100 * gates['target_modules']:.0f}%)"
    ]


def _describe(method: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The gate predictor and, per gated block, the average gate-open rate on the data the
    model was tuned on (with the rate of each layer)."""
    record = method.get(NAME)
    if not record:
        return []
    rows = [
        (
            NAME,
            f"predictor {record.get('predictor')}, target {record.get('target_modules')} of "
            f"attention and feed-forward modules",
        )
    ]
    rates: dict[str, list[float]] = record.get("open_rate") or {}
    for name, per_layer in rates.items():
        mean = sum(per_layer) / max(len(per_layer), 1)
        layers = " ".join(f"{r:.2f}" for r in per_layer)
        rows.append((f"gate open: {name}", f"{mean:.0%} (by layer: {layers})"))
    if rates:
        rows.append(("gate rates on", str(record.get("open_rate_on", "-"))))
    return rows


def _restore(model: Any, method: Mapping[str, Any]) -> None:
    """Re-attach the gate predictor the record describes (before the weights load)."""
    record = method.get(NAME)
    if record is None:
        return
    from dyncli.methods.gates.predictor import attach_gates

    predictor, hidden = record["predictor"], record.get("hidden", 32)
    if not isinstance(predictor, str):
        raise TypeError(f"predictor {predictor!r} is not a predictor name")
    if not (isinstance(hidden, int) and not isinstance(hidden, bool) and hidden > 0):
        raise ValueError(f"hidden {hidden!r} is not a positive integer")
    attach_gates(model, predictor, hidden)


def _dev_policy(model: Any) -> Any:
    """A gated model is scored on dev as it runs: the gates policy at threshold 0.5."""
    from dyncli.methods.gates.policy import GatePolicy
    from dyncli.methods.gates.predictor import predictor_of

    return GatePolicy(GatesConfig(threshold=0.5)) if predictor_of(model) else None


@hookimpl
def register_skip_policies(register: Callable[[Any], None]) -> None:
    register(
        SkipPolicySpec(
            name=NAME,
            config_cls=GatesConfig,
            build=_build,
            description="I3D: run an attention / feed-forward block when its gate-open "
            "probability >= threshold",
            default_thresholds=(0.1, 0.3, 0.5, 0.7, 0.9),
            conservative_thresholds=(0.05, 0.02),
            needs_exits=False,
        )
    )


@hookimpl
def register_methods(register: Callable[[Any], None]) -> None:
    register(
        MethodSpec(
            name=NAME,
            command="convert",
            description="I3D, a gate on every attention and feed-forward block from a gate "
            "predictor (--predictor), trained toward --target-modules, for the gates policy.",
            train=_train,
            options_cls=GateTraining,
            flags=(
                MethodFlag(
                    "predictor",
                    "--predictor",
                    help="gates: local (a small MLP per layer reads that layer's input, averaged "
                    "over time) or global (one MLP reads the encoder input and sets every gate "
                    "before the first layer runs).",
                ),
                MethodFlag(
                    "target",
                    "--target-modules",
                    help="gates: the fraction of attention and feed-forward modules to execute on "
                    "average, which the cost term drives the gates toward.",
                ),
                MethodFlag(
                    "weight",
                    "--gate-weight",
                    help="gates: lambda, the weight of the cost term (mean gate-open probability - "
                    "target)^2 added to CTC.",
                    weighs="the gates toward --target-modules",
                ),
                MethodFlag(
                    "temperature",
                    "--gate-temperature",
                    help="gates: temperature of the straight-through Gumbel samples in training.",
                ),
                MethodFlag(
                    "lr_scale",
                    "--gate-lr-scale",
                    help="gates: the gate predictor's learning rate as a multiple of --lr (it "
                    "learns from scratch inside a fine-tuned model).",
                ),
            ),
            check=_check,
            summary=_summary,
            restore=_restore,
            describe=_describe,
            dev_policy=_dev_policy,
        )
    )
