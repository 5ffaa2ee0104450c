"""Training for the drop policy: ``convert --method layerdrop`` (plain layer-drop training, CTC
only, exits optional: each step runs a sub-network with every layer kept with probability
1 - ``drop_rate``, dropped layers not computed; the baseline ``dld`` is compared against) and
``distill --method dld`` (arXiv 2601.16117: the sampled sub-network learns the full-depth
teacher's posteriors, CTC(final) + kd-weight * KL(final))."""

from __future__ import annotations

from dyncli.methods.blank_skip import NAME as BLANK_SKIP
from dyncli.methods.drop import NAME
from dyncli.methods.early_exit.training import blank_skip_point
from dyncli.recipes.common import SEED_LAYER_DROP, MethodContext, MethodPlan, ctc_objectives, seeded
from dyncli.training.objectives import FinalCTC, LayerDrop, PosteriorKD


def layerdrop(context: MethodContext) -> MethodPlan:
    exits, rate = context.shared, context.options.drop_rate
    return MethodPlan(
        path=LayerDrop(rate, seeded(context.seed, SEED_LAYER_DROP)),
        objectives=ctc_objectives(exits),
        record={
            "name": "layerdrop",
            "exits": list(exits.exits),
            "training": "fine-tune",
            "drop_rate": rate,
            "default_policy": NAME,
            "operating_point": None,
        },
        point_settings={BLANK_SKIP: blank_skip_point(exits)},
    )


def dld(context: MethodContext) -> MethodPlan:
    shared, rate = context.shared, context.options.drop_rate
    return MethodPlan(
        path=LayerDrop(rate, seeded(context.seed, SEED_LAYER_DROP)),
        objectives=[
            (FinalCTC(), shared.final_weight),
            (PosteriorKD(temperature=shared.temperature), shared.kd_weight),
        ],
        record={"default_policy": NAME, "drop_rate": rate},
    )
