"""The built-in skip policies: blank-skip, early exit (entropy / posterior criteria), drop and
gates."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dyncli.policy_config import BlankSkipConfig, DropConfig, EarlyExitConfig, GatesConfig
from dyncli.registry import SkipPolicySpec, hookimpl


def _blank_skip(config: BlankSkipConfig) -> Any:
    from dyncli.methods.blank_skip import BlankSkip

    return BlankSkip(config)


def _early_exit(config: EarlyExitConfig) -> Any:
    from dyncli.methods.early_exit import EarlyExit

    return EarlyExit(config)


def _exit_sweep(criterion: str) -> Callable[[Any, Sequence[Any]], tuple[float, ...]]:
    """The data-derived early-exit sweep for ``criterion`` (see
    ``dyncli.methods.early_exit.early_exit_thresholds_from_data``)."""

    def derive(model: Any, waves: Sequence[Any]) -> tuple[float, ...]:
        from dyncli.methods.early_exit import early_exit_thresholds_from_data

        return early_exit_thresholds_from_data(model, waves, criterion)

    return derive


def _drop(config: DropConfig) -> Any:
    from dyncli.methods.drop import DropLayers

    return DropLayers(config)


def _drop_counts(model: Any) -> tuple[float, ...]:
    """Full depth, 3/4 and 1/2 of it (12, 9, 6 for the demo model): runs on any depth."""
    depth = int(model.num_layers)
    return tuple(sorted({depth, max(1, round(0.75 * depth)), max(1, round(0.5 * depth))}))


def _gates(config: GatesConfig) -> Any:
    from dyncli.methods.gates.policy import GatePolicy

    return GatePolicy(config)


@hookimpl
def register_skip_policies(register: Callable[[Any], None]) -> None:
    register(
        SkipPolicySpec(
            name="blank-skip",
            config_cls=BlankSkipConfig,
            build=_blank_skip,
            description="frames with P(blank) >= threshold at an exit skip the layers after it",
            default_thresholds=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99),
            conservative_thresholds=(0.995, 0.999),
        )
    )
    register(
        SkipPolicySpec(
            name="early-exit-entropy",
            config_cls=EarlyExitConfig,
            build=_early_exit,
            description="stop at the first exit whose normalised mean entropy <= threshold",
            defaults=(("criterion", "entropy"),),
            default_thresholds=(0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3),
            conservative_thresholds=(0.001, 0.005),
            thresholds_from_data=_exit_sweep("entropy"),
        )
    )
    register(
        SkipPolicySpec(
            name="early-exit-posterior",
            config_cls=EarlyExitConfig,
            build=_early_exit,
            description="stop at the first exit whose mean token posterior >= threshold",
            defaults=(("criterion", "posterior"),),
            default_thresholds=(0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7),
            conservative_thresholds=(0.995, 0.999),
            thresholds_from_data=_exit_sweep("posterior"),
        )
    )
    register(
        SkipPolicySpec(
            name="drop",
            config_cls=DropConfig,
            build=_drop,
            description="run THRESHOLD evenly spaced layers (first and last kept) on every frame",
            default_thresholds=(12, 9, 6),
            conservative_thresholds=(11, 10),
            needs_exits=False,
            thresholds_for=_drop_counts,
        )
    )
    register(
        SkipPolicySpec(
            name="gates",
            config_cls=GatesConfig,
            build=_gates,
            description="I3D: run an attention / feed-forward block when its gate-open "
            "probability >= threshold",
            default_thresholds=(0.1, 0.3, 0.5, 0.7, 0.9),
            conservative_thresholds=(0.05, 0.02),
            needs_exits=False,
        )
    )
