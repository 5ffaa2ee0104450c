"""``distill --method factorized-kd`` (arXiv 2401.02046): the teacher's final posteriors into
every intermediate head, each CTC distribution factorized into a blank / non-blank Bernoulli
and a distribution over the non-blank tokens; loss = CTC(final) + exit-weight * sum CTC(exit) +
kd-weight * sum over exits [KL_Bernoulli + P_teacher(non-blank) * KL_non-blank]. With
``factorized_head`` the exit heads are parameterized in factorized form (their blank logit is a
Bernoulli logit of its own), as the paper does to sharpen blank decisions for skipping."""

from __future__ import annotations

from typing import Any

from dyncli.recipes.common import MethodContext, MethodPlan, stored_exit_path
from dyncli.training.objectives import ExitCTC, FactorizedKD, FinalCTC


def factorized_kd(context: MethodContext) -> MethodPlan:
    shared, own = context.shared, context.options
    record: dict[str, Any] = {}
    if own.factorized_head:
        context.model.exit_head_form = "factorized"
        record["exit_head"] = "factorized"
    return MethodPlan(
        path=stored_exit_path(context.record, context.seed, context.rank),
        objectives=[
            (FinalCTC(), shared.final_weight),
            (ExitCTC(), shared.exit_weight),
            (FactorizedKD(temperature=shared.temperature), shared.kd_weight),
        ],
        record=record,
    )
