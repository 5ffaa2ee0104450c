"""Early exit (arXiv 2309.09546), the method's home.

Intermediate CTC heads after chosen layers; an utterance stops at the first exit whose
confidence (entropy or posterior) passes the threshold
(:mod:`~dyncli.methods.early_exit.policy`). ``convert --method early-exit`` attaches the heads
and trains them (they serve blank-skip too); ``distill --method exit-kd`` trains them on the
teacher's transcripts (:mod:`~dyncli.methods.early_exit.training`). Importing this module does
not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dyncli.errors import UsageError
from dyncli.registry import MethodFlag, MethodSpec, SkipPolicySpec, hookimpl

if TYPE_CHECKING:
    from dyncli.training.config import ExitTraining

NAME = "early-exit"
# The convert options of exit training that a method training exit heads reads (``uses``).
EXIT_TRAINING = (
    "exits",
    "exit_weight",
    "freeze_backbone",
    "skip_layer",
    "skip_threshold_range",
    "skip_neighbours",
)


@dataclass
class EarlyExitConfig:
    """Utterance-level early exit (arXiv 2309.09546): stop at the first confident exit.

    ``entropy``: mean frame entropy of the exit's posteriors divided by log V (0 = certain,
    1 = uniform); exit when <= ``threshold``.
    ``posterior``: mean maximum posterior over the frames where the greedy path emits a token
    (blank frames are near-certain and would drown the score; if no token is emitted, all
    frames count); exit when >= ``threshold``.
    """

    threshold: float = 0.1
    criterion: str = "entropy"

    def validate(self) -> None:
        if self.criterion not in ("entropy", "posterior"):
            raise UsageError(
                f"early-exit criterion must be 'entropy' or 'posterior', got {self.criterion!r}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            kind = "normalised entropy" if self.criterion == "entropy" else "posterior"
            raise UsageError(
                f"early-exit-{self.criterion} threshold {self.threshold} is out of range: "
                f"it is a {kind}, 0 <= threshold <= 1"
            )


def early_exit_method(exits: ExitTraining, training: str) -> dict[str, Any]:
    """The checkpoint record of a model whose exit heads were trained with CTC (``convert
    --method early-exit``, ``train --exits``): ``training`` is ``fine-tune`` or
    ``from-scratch``."""
    skip_aware = None
    if exits.skip_layer is not None:
        skip_aware = {
            "layer": exits.skip_layer,
            "thresholds": list(exits.skip_thresholds),
            "neighbours": exits.skip_neighbours,
            "share_of_steps": exits.skip_prob,
        }
    return {
        "skip_aware_training": skip_aware,
        "name": NAME,
        "exits": list(exits.exits),
        "training": training,
        "exit_weight": exits.exit_weight,
        "final_weight": exits.final_weight,
        "freeze_backbone": exits.freeze_backbone,
        "operating_point": None,
    }


@dataclass
class ExitKDOptions:
    """``distill --method exit-kd`` settings of its own."""

    alpha: float = 0.3  # weight of the teacher's pseudo-label CTC against the reference CTC
    kd_kl: bool = False  # also the posterior KL into each exit

    def validate(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise UsageError(f"--alpha must lie in [0, 1], got {self.alpha}")


def _build(config: EarlyExitConfig) -> Any:
    from dyncli.methods.early_exit.policy import EarlyExit

    return EarlyExit(config)


def _exit_sweep(criterion: str) -> Callable[[Any, Sequence[Any]], tuple[float, ...]]:
    """The data-derived early-exit sweep for ``criterion`` (see
    ``dyncli.methods.early_exit.policy.early_exit_thresholds_from_data``)."""

    def derive(model: Any, waves: Sequence[Any]) -> tuple[float, ...]:
        from dyncli.methods.early_exit.policy import early_exit_thresholds_from_data

        return early_exit_thresholds_from_data(model, waves, criterion)

    return derive


def _train_early_exit(context: Any) -> Any:
    from dyncli.methods.early_exit.training import early_exit

    return early_exit(context)


def _check_early_exit(model: Any, options: Any, exits: Any) -> None:
    if not exits.exits:
        raise UsageError("--exits is required: the layers (1-based) that get a CTC head, e.g. 4,8")


def _train_exit_kd(context: Any) -> Any:
    from dyncli.methods.early_exit.training import exit_kd

    return exit_kd(context)


@hookimpl
def register_skip_policies(register: Callable[[Any], None]) -> None:
    register(
        SkipPolicySpec(
            name="early-exit-entropy",
            config_cls=EarlyExitConfig,
            build=_build,
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
            build=_build,
            description="stop at the first exit whose mean token posterior >= threshold",
            defaults=(("criterion", "posterior"),),
            default_thresholds=(0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7),
            conservative_thresholds=(0.995, 0.999),
            thresholds_from_data=_exit_sweep("posterior"),
        )
    )


@hookimpl
def register_methods(register: Callable[[Any], None]) -> None:
    register(
        MethodSpec(
            name=NAME,
            command="convert",
            description="attach CTC heads after --exits and train them (they serve blank-skip "
            "and early exit).",
            train=_train_early_exit,
            uses=EXIT_TRAINING,
            check=_check_early_exit,
        )
    )
    register(
        MethodSpec(
            name="exit-kd",
            command="distill",
            description="the teacher's greedy transcript as a CTC pseudo-label for every exit "
            "(arXiv 2309.09546).",
            train=_train_exit_kd,
            options_cls=ExitKDOptions,
            flags=(
                MethodFlag(
                    "alpha",
                    "--alpha",
                    min=0.0,
                    max=1.0,
                    help="exit-kd: weight of the pseudo-label CTC against the reference CTC at "
                    "each exit.",
                ),
                MethodFlag(
                    "kd_kl", "--kd-kl", help="exit-kd: also add the posterior KL into each exit."
                ),
            ),
            # exit-kd's KL term (--kd-kl) is the one place --temperature and --kd-weight enter
            uses=(
                "exit_weight",
                "freeze_backbone",
                ("temperature", "kd_kl"),
                ("kd_weight", "kd_kl"),
            ),
            needs_exits=True,
        )
    )
