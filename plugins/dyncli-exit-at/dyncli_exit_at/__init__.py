"""An example third-party skip policy, registered through dyncli's plugin hooks.

``exit-at``: every utterance stops at the exit after layer N (the threshold is the 1-based exit
layer) and decodes that exit head's posteriors. It is the static counterpart of early exit (the
same depth for every input), a baseline for `early-exit-entropy` and `early-exit-posterior`.
Layers after N are never computed; the trace says what ran, so `dyncli profile` counts FLOPs
and times it like any built-in policy::

    pip install -e plugins/dyncli-exit-at
    dyncli profile DYNAMIC.ckpt --policy exit-at --thresholds 3,6,9
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dyncli import hookimpl
from dyncli.errors import UsageError
from dyncli.registry import SkipPolicySpec


@dataclass
class ExitAtConfig:
    """Stop every utterance at the exit after layer ``threshold`` (1-based)."""

    threshold: float = 3

    def validate(self) -> None:
        if self.threshold < 1 or self.threshold != int(self.threshold):
            raise UsageError(
                f"exit-at threshold {self.threshold:g} is not a layer: give the 1-based layer "
                "of an exit"
            )


class ExitAt:
    name = "exit-at"

    def __init__(self, config: ExitAtConfig) -> None:
        config.validate()
        self.layer = int(config.threshold)

    def check(self, model: Any) -> None:
        if self.layer not in model.exits:
            raise UsageError(
                f"exit-at {self.layer}: no exit there; this model has exits after layers "
                f"{model.exits or 'none'}"
            )

    def encode(self, model: Any, x: Any, lengths: Any) -> Any:
        from dyncli.dynamic import DynamicOutput

        self.check(model)
        frames = [int(n) for n in lengths.tolist()]
        lengths = lengths.to(x.device)
        t = x.shape[1]
        pad_mask = None
        if x.shape[0] > 1:
            from dyncli.models.components import lengths_to_mask

            pad_mask = lengths_to_mask(lengths, t)
        trace: list[tuple[str, int, list[int]]] = []
        x = model.run_layers(x, pad_mask, range(self.layer))
        trace.extend(("layer", i, frames) for i in range(self.layer))
        trace.append(("exit", self.layer, frames))
        log_probs = model.exit_log_probs(self.layer, x)
        import torch

        valid = torch.arange(t, device=x.device)[None, :] < lengths[:, None]
        return DynamicOutput(log_probs, lengths, valid.long() * self.layer, trace)

    def sweep(self, model: Any, x: Any, lengths: Any, thresholds: Sequence[float]) -> list[Any]:
        return [ExitAt(ExitAtConfig(threshold=t)).encode(model, x, lengths) for t in thresholds]


@hookimpl
def register_skip_policies(register: Callable[[Any], None]) -> None:
    register(
        SkipPolicySpec(
            name="exit-at",
            config_cls=ExitAtConfig,
            build=ExitAt,
            description="every utterance stops at the exit after layer THRESHOLD (static exit)",
            default_thresholds=(3, 6, 9),
        )
    )
