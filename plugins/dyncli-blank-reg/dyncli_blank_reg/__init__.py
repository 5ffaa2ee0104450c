"""dyncli plugin: blank-regularized CTC (Yang et al. 2023, arXiv 2305.11558) as a trained method.

``dyncli convert --method blank-reg`` attaches exit heads as ``--method early-exit`` does and
trains them with CTC whose topology charges ``--blank-penalty`` (a log-weight) on every
self-loop of a non-blank token (the paper's *soft restriction*): an exit then emits each token on
as few frames as it can and blank on the rest. More frames pass the blank-skip trigger, so more
frames skip the layers after it. The final head keeps plain CTC. The checkpoint records the
method as ``blank-reg`` with its penalty, and runs blank-skip by default like any model with
exits: ``profile``, ``evaluate``, ``transcribe`` and ``inspect`` need nothing more.

This module is the whole registration (importing it does not import torch); the objective is in
:mod:`dyncli_blank_reg.training`, the loss in :mod:`dyncli_blank_reg.loss`. It is the template
for a trained method: see ``plugins/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dyncli.errors import UsageError
from dyncli.methods.early_exit import EXIT_TRAINING
from dyncli.registry import MethodFlag, MethodSpec, hookimpl

NAME = "blank-reg"


@dataclass
class BlankRegOptions:
    """``convert --method blank-reg`` settings."""

    penalty: float = 1.0  # the log-weight charged on each non-blank self-loop

    def validate(self) -> None:
        if not (math.isfinite(self.penalty) and self.penalty >= 0):
            raise UsageError(f"--blank-penalty must be >= 0 and finite, got {self.penalty}")


def _train(context: Any) -> Any:
    from dyncli_blank_reg.training import blank_reg

    return blank_reg(context)


def _check(model: Any, options: Any, exits: Any) -> None:
    if not exits.exits:
        raise UsageError("--method blank-reg regularizes the exit heads: give --exits, e.g. 3,6,9")


@hookimpl
def register_methods(register: Callable[[Any], None]) -> None:
    register(
        MethodSpec(
            name=NAME,
            command="convert",
            description="blank-regularized CTC (arXiv 2305.11558): exit heads as early-exit "
            "trains them, with each non-blank self-loop charged --blank-penalty, so more "
            "frames are blank at the exits and skip the layers after them (plugin "
            "dyncli-blank-reg).",
            train=_train,
            options_cls=BlankRegOptions,
            flags=(
                MethodFlag(
                    "penalty",
                    "--blank-penalty",
                    min=0.0,
                    help="blank-reg: the log-weight charged on every frame an exit repeats a "
                    "non-blank token (0: plain CTC).",
                ),
            ),
            uses=EXIT_TRAINING,  # the options of exit training, as early-exit
            check=_check,
        )
    )
