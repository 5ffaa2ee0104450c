"""CTC blank-triggered layer skipping (arXiv 2401.02046), the method's home.

Frames whose intermediate-CTC blank posterior is high skip the last encoder layers
(:mod:`~dyncli.methods.blank_skip.policy`); ``distill --method factorized-kd`` sharpens the
intermediate heads for it with a factorized (blank / non-blank) distillation from the full-depth
model (:mod:`~dyncli.methods.blank_skip.training`). This module registers both; importing it
does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dyncli.errors import UsageError
from dyncli.registry import MethodFlag, MethodSpec, SkipPolicySpec, hookimpl

NAME = "blank-skip"


@dataclass
class BlankSkipConfig:
    """CTC blank-triggered layer skipping (arXiv 2401.02046).

    Layers 1..``layer`` always run. The exit head after ``layer`` gives each frame's blank
    posterior; frames with P(blank) >= ``threshold`` skip layers ``layer``+1..L and emit that
    head's posteriors. The ``neighbours`` frames on each side of every kept frame are kept too
    ("spike extension": label spikes and the convolution module keep their context).
    ``layer=None`` means the checkpoint's operating point, else the exit nearest mid-depth.
    """

    threshold: float = 0.9
    layer: int | None = None
    neighbours: int = 1
    # Pad the compacted width up to a multiple of this many frames (0: exact). Equal outputs
    # (the padding is masked), a small set of shapes: what CUDA graphs captured per length
    # bucket need. Off by default: on the CPU the padding is pure cost.
    bucket: int = 0

    def validate(self) -> None:
        if self.bucket < 0:
            raise UsageError(f"blank-skip bucket must be >= 0, got {self.bucket}")
        if not 0.0 < self.threshold <= 1.0:
            raise UsageError(
                f"blank-skip threshold {self.threshold} is out of range: it is a blank "
                "probability, 0 < threshold <= 1"
            )
        if self.neighbours < 0:
            raise UsageError(f"--skip-neighbours must be >= 0, got {self.neighbours}")


@dataclass
class FactorizedKDOptions:
    """``distill --method factorized-kd`` settings of its own."""

    factorized_head: bool = False


def _build(config: BlankSkipConfig) -> Any:
    from dyncli.methods.blank_skip.policy import BlankSkip

    return BlankSkip(config)


def _trigger(model: Any, record: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """The trigger layer, where neither the stored point nor the user gave one."""
    if settings.get("layer") is not None:
        return settings
    from dyncli.methods.blank_skip.policy import default_trigger

    return {**settings, "layer": default_trigger(model, record)}


def _train_factorized_kd(context: Any) -> Any:
    from dyncli.methods.blank_skip.training import factorized_kd

    return factorized_kd(context)


@hookimpl
def register_skip_policies(register: Callable[[Any], None]) -> None:
    register(
        SkipPolicySpec(
            name=NAME,
            config_cls=BlankSkipConfig,
            build=_build,
            description="frames with P(blank) >= threshold at an exit skip the layers after it",
            default_thresholds=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99),
            conservative_thresholds=(0.995, 0.999),
            point_settings=("layer", "neighbours"),
            setting_flags=(("layer", "--skip-layer"), ("neighbours", "--skip-neighbours")),
            model_defaults=_trigger,
            default_for_exits=True,
        )
    )


@hookimpl
def register_methods(register: Callable[[Any], None]) -> None:
    register(
        MethodSpec(
            name="factorized-kd",
            command="distill",
            description="the teacher's final posteriors into every exit, factorized into "
            "blank / non-blank (arXiv 2401.02046).",
            train=_train_factorized_kd,
            options_cls=FactorizedKDOptions,
            flags=(
                MethodFlag(
                    "factorized_head",
                    "--factorized-head",
                    help="factorized-kd: read each exit head in factorized form (its blank "
                    "logit a Bernoulli logit of its own, the rest a softmax over non-blank "
                    "tokens).",
                ),
            ),
            uses=("temperature", "kd_weight", "exit_weight", "freeze_backbone"),
            needs_exits=True,
        )
    )
