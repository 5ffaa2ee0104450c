"""Training the exit heads: ``convert --method early-exit`` (CTC at every exit, optionally with
blank-skip in the loop, ``--skip-layer``) and ``distill --method exit-kd`` (arXiv 2309.09546:
the teacher's greedy transcript is a CTC pseudo-label for every exit: (1 - alpha) *
CTC(exit, reference) + alpha * CTC(exit, teacher's transcript) per exit, plus CTC(final);
``kd_kl`` also adds kd-weight * KL(teacher || exit))."""

from __future__ import annotations

from typing import Any

from dyncli.methods.blank_skip import NAME as BLANK_SKIP
from dyncli.methods.early_exit import early_exit_method
from dyncli.recipes.common import (
    MethodContext,
    MethodPlan,
    ctc_objectives,
    exit_path,
    stored_exit_path,
)
from dyncli.training.config import ExitTraining
from dyncli.training.objectives import ExitCTC, ExitKD, FinalCTC, Objective


def early_exit(context: MethodContext) -> MethodPlan:
    exits = context.shared
    return MethodPlan(
        path=exit_path(exits, context.seed, context.rank),
        objectives=ctc_objectives(exits),
        record=early_exit_method(exits, training="fine-tune"),
        point_settings={BLANK_SKIP: blank_skip_point(exits)},
    )


def blank_skip_point(exits: ExitTraining) -> dict[str, Any]:
    """A blank-skip operating point runs at the trigger layer and with the neighbours the model
    was trained with (``convert --skip-layer`` / ``--skip-neighbours``)."""
    return {"layer": exits.skip_layer, "neighbours": exits.skip_neighbours}


def exit_kd(context: MethodContext) -> MethodPlan:
    shared, own = context.shared, context.options
    objectives: list[tuple[Objective, float]] = [
        (FinalCTC(), shared.final_weight),
        (ExitCTC(), (1 - own.alpha) * shared.exit_weight),
        (ExitKD(kl=False), own.alpha * shared.exit_weight),
    ]
    if own.kd_kl:
        objectives.append((ExitKD(kl=True, temperature=shared.temperature), shared.kd_weight))
    return MethodPlan(
        path=stored_exit_path(context.record, context.seed, context.rank),
        objectives=objectives,
        record={},
    )
