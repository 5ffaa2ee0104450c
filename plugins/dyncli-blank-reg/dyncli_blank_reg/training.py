"""The training side of ``convert --method blank-reg``: the exit heads' CTC replaced by the
blank-regularized CTC of :mod:`dyncli_blank_reg.loss`; the path (full depth, or blank-skip in
the loop with ``--skip-layer``) and the final head's CTC are dyncli's own."""

from __future__ import annotations

import torch

from dyncli.methods.blank_skip import NAME as BLANK_SKIP
from dyncli.methods.early_exit import early_exit_method
from dyncli.methods.early_exit.training import blank_skip_point
from dyncli.recipes.common import MethodContext, MethodPlan, exit_path
from dyncli.training.objectives import FinalCTC, Objective, Step
from dyncli_blank_reg import NAME
from dyncli_blank_reg.loss import penalized_ctc_loss


class BlankRegExitCTC:
    """Sum over the exits that ran of the blank-regularized CTC on the reference."""

    name = "exit_blank_reg"
    needs_teacher = False

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def __call__(self, step: Step) -> dict[str, torch.Tensor]:
        s = step.student
        if not s.exits:
            return {}
        targets = step.batch.targets
        terms = [
            penalized_ctc_loss(lp, targets, s.lengths, step.blank, self.penalty)
            for lp in s.exits.values()
        ]
        return {self.name: torch.stack(terms).sum()}


def blank_reg(context: MethodContext) -> MethodPlan:
    exits, penalty = context.shared, context.options.penalty
    record = early_exit_method(exits, training="fine-tune")
    record["name"] = NAME
    record[NAME] = {"penalty": penalty, "applies_to": "the exit heads (the final head: plain CTC)"}
    objectives: list[tuple[Objective, float]] = [
        (FinalCTC(), exits.final_weight),
        (BlankRegExitCTC(penalty), exits.exit_weight),
    ]
    return MethodPlan(
        path=exit_path(exits, context.seed, context.rank),
        objectives=objectives,
        record=record,
        point_settings={BLANK_SKIP: blank_skip_point(exits)},
    )
