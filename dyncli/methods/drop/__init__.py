"""Layer dropping, the method's home: the ``drop`` policy runs a fixed sub-network of evenly
spaced layers (:mod:`~dyncli.methods.drop.policy`); ``convert --method layerdrop`` trains a model
for it with layers dropped at random, and ``distill --method dld`` (distillation-based layer
dropping, arXiv 2601.16117) distils the full-depth teacher into the sampled sub-networks
(:mod:`~dyncli.methods.drop.training`). Importing this module does not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dyncli.errors import UsageError
from dyncli.registry import MethodFlag, MethodSpec, SkipPolicySpec, hookimpl

NAME = "drop"


@dataclass
class DropConfig:
    """Run a sub-network of ``threshold`` layers (a layer count, not a probability).

    The kept layers are evenly spaced over the depth, the first and the last always among them
    (indices round(i * (L - 1) / (N - 1)) for i = 0..N-1; N = 1 keeps the last layer, which
    feeds the head). Evenly spaced is what layer-drop training prepares a model for (every
    layer was trained to work after any earlier one being absent; Fan et al. 2019 found
    "every other layer" the best fixed pruning of such models); the first layer is the only
    one that has seen the subsampling's raw output, and the last the only one whose output
    the final head was trained on. The model needs no exits.
    """

    threshold: float = 6

    def validate(self) -> None:
        whole = math.isfinite(self.threshold) and self.threshold == int(self.threshold)
        if not whole or self.threshold < 1:
            raise UsageError(
                f"drop threshold {self.threshold:g} is not a layer count: give whole numbers "
                ">= 1 (the layers to run)"
            )


@dataclass
class LayerDropOptions:
    """``convert --method layerdrop`` and ``distill --method dld`` settings of their own."""

    drop_rate: float = 0.5

    def validate(self) -> None:
        if not (math.isfinite(self.drop_rate) and 0 <= self.drop_rate < 1):
            raise UsageError(f"--drop-rate must lie in [0, 1), got {self.drop_rate}")


DROP_RATE = MethodFlag(
    "drop_rate",
    "--drop-rate",
    min=0.0,
    max=0.99,
    help="Layer drop (convert --method layerdrop, distill --method dld): the probability that a "
    "layer is dropped (bypassed, not computed) in a training step.",
)


def _build(config: DropConfig) -> Any:
    from dyncli.methods.drop.policy import DropLayers

    return DropLayers(config)


def _drop_counts(model: Any) -> tuple[float, ...]:
    """Full depth, 3/4 and 1/2 of it (12, 9, 6 for the demo model): runs on any depth."""
    depth = int(model.num_layers)
    return tuple(sorted({depth, max(1, round(0.75 * depth)), max(1, round(0.5 * depth))}))


def _train_layerdrop(context: Any) -> Any:
    from dyncli.methods.drop.training import layerdrop

    return layerdrop(context)


def _check_layerdrop(model: Any, options: Any, exits: Any) -> None:
    if exits.skip_layer is not None or exits.freeze_backbone:
        raise UsageError(
            "--method layerdrop trains the whole model with layers dropped: drop "
            "--skip-layer and --freeze-backbone"
        )


def _train_dld(context: Any) -> Any:
    from dyncli.methods.drop.training import dld

    return dld(context)


@hookimpl
def register_skip_policies(register: Callable[[Any], None]) -> None:
    register(
        SkipPolicySpec(
            name=NAME,
            config_cls=DropConfig,
            build=_build,
            description="run THRESHOLD evenly spaced layers (first and last kept) on every frame",
            default_thresholds=(12, 9, 6),
            conservative_thresholds=(11, 10),
            needs_exits=False,
            thresholds_for=_drop_counts,
        )
    )


@hookimpl
def register_methods(register: Callable[[Any], None]) -> None:
    register(
        MethodSpec(
            name="layerdrop",
            command="convert",
            description="train the model with layers dropped at random (--drop-rate), for the "
            "drop policy; --exits optional.",
            train=_train_layerdrop,
            options_cls=LayerDropOptions,
            flags=(DROP_RATE,),
            uses=("exits", "exit_weight", "skip_neighbours"),
            check=_check_layerdrop,
        )
    )
    register(
        MethodSpec(
            name="dld",
            command="distill",
            description="distillation-based layer dropping, a sampled sub-network per step "
            "learns the teacher's posteriors (arXiv 2601.16117).",
            train=_train_dld,
            options_cls=LayerDropOptions,
            flags=(DROP_RATE,),
            uses=("temperature", "kd_weight"),
        )
    )
