"""``convert --method gates`` (I3D, arXiv 2303.07624): a gate predictor (``local`` per layer or
``global`` for the whole plan) and a binary gate on every attention and feed-forward block,
trained with straight-through Gumbel gates and a cost term that drives the expected fraction of
executed modules toward ``target``. The whole model is fine-tuned with the gates in the loop;
the result runs the ``gates`` policy, and its checkpoint records the predictor, the target and
each block's gate-open rate on the dev set."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dyncli.checkpoint import Checkpoint
from dyncli.data.dataset import Utterance
from dyncli.methods.gates import NAME
from dyncli.methods.gates.predictor import attach_gates, gates_method
from dyncli.models.base import CTCEncoder
from dyncli.models.components import lengths_to_mask
from dyncli.recipes.common import SEED_GATES, MethodContext, MethodPlan, ctc_objectives, seeded
from dyncli.training.objectives import Objective, Step, StudentPass


class GateCost:
    """I3D's cost term: ``(mean p - target)^2`` over utterances, layers and gated blocks, where
    p is a gate's open probability (weighted by the objective's weight, lambda)."""

    name = "gate_cost"
    needs_teacher = False

    def __init__(self, target: float) -> None:
        self.target = target

    def __call__(self, step: Step) -> dict[str, torch.Tensor]:
        probs = step.student.gate_probs
        if probs is None:
            return {}
        return {"gate_cost": (probs.float().mean() - self.target).square()}


class GatedPath:
    """I3D training: every layer's attention and feed-forward blocks computed with a
    straight-through Gumbel gate ``x + g * f(x)`` (hard forward, soft backward) from the
    model's gate predictor (:mod:`dyncli.methods.gates`); the open probabilities go to
    :class:`GateCost`."""

    name = "gates"

    def __init__(self, temperature: float, generator: torch.Generator) -> None:
        self.temperature = temperature
        self.generator = generator

    def run(
        self, model: CTCEncoder, x: torch.Tensor, lengths: torch.Tensor, frozen: bool
    ) -> StudentPass:
        from dyncli.methods.gates.predictor import gumbel_gates, predictor_of

        gp = predictor_of(model)
        if gp is None:
            raise ValueError("the gates path needs a model with a gate predictor")
        pad_mask = lengths_to_mask(lengths, x.shape[1])
        plan = gp.plan(x, pad_mask)
        out: dict[int, torch.Tensor] = {}
        probs = []

        def sampled(i: int, h: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = gp.layer_logits(i, h, pad_mask, plan)
            g = gumbel_gates(logits, self.temperature, self.generator)
            probs.append(torch.sigmoid(logits))
            return {name: g[:, j] for j, name in enumerate(gp.blocks)}

        x = model.run_layers(x, pad_mask, exits=out, gates=sampled, grad=not frozen)
        return StudentPass(
            out, model.log_probs(x), lengths, self.name, gate_probs=torch.stack(probs, 1)
        )


def gates(context: MethodContext) -> MethodPlan:
    cfg = context.options
    predictor = attach_gates(context.model, cfg.predictor, cfg.hidden)
    record = gates_method(cfg.predictor, cfg.target, cfg.weight, cfg.temperature, cfg.hidden)
    record[NAME]["lr_scale"] = cfg.lr_scale
    objectives: list[tuple[Objective, float]] = ctc_objectives(context.shared)
    objectives.append((GateCost(cfg.target), cfg.weight))

    def open_rates_on_dev(ckpt: Checkpoint, dev: Sequence[Utterance]) -> None:
        from dyncli.methods.gates.policy import open_rates

        assert ckpt.method is not None
        stored = ckpt.method[NAME]
        stored["open_rate"] = open_rates(ckpt.model, [u.wave for u in dev], threshold=0.5)
        stored["open_rate_on"] = "the --dev set of the training run, threshold 0.5"

    return MethodPlan(
        path=GatedPath(cfg.temperature, seeded(context.seed, SEED_GATES, context.rank)),
        objectives=objectives,
        record=record,
        lr_scales=[(predictor, cfg.lr_scale)],
        finish=open_rates_on_dev,
    )
