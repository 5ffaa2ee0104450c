"""I3D gates (arXiv 2303.07624): input-dependent depth with a binary gate on every attention and
every feed-forward block.

A gate predictor reads the utterance and gives each gateable block of each layer an open
probability ``p = sigmoid(z)``; the block computes ``x + g * f(x)``.

* ``local``: one small MLP per layer, reading that layer's input averaged over the utterance's
  true frames; the decision for layer i is made when layer i is reached.
* ``global``: one MLP reading the encoder input (after subsampling), averaged the same way,
  that sets every gate at once, so the whole execution plan is known before the first layer
  runs.

Training (``dyncli convert --method gates``): the gate is a straight-through Gumbel sample,
``hard = 1[sigmoid((z + logistic noise) / tau) > 0.5]`` in the forward pass with the gradient of
the soft sample (binary Gumbel-softmax); every block runs so that the gradient exists. A cost
term ``lambda * (mean p - target)^2`` drives the expected fraction of executed gateable
modules (over utterances, layers and blocks) toward ``--target-modules``. Decisions are per
utterance.

Inference (policy ``gates``): a block is open when ``p >= threshold``; a closed block is not
computed, and in a batch only the utterances whose gate is open run it. The predictor's own
cost (two small matrix products per layer, or one for the whole plan) is counted in the FLOPs.

The predictors start with their output bias at ``OPEN_BIAS`` (p = 0.95) and small weights, so
the converted model starts out as the static model it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dyncli.errors import UsageError
from dyncli.methods.gates import NAME, PREDICTORS
from dyncli.models.base import CTCEncoder

OPEN_BIAS = 3.0  # sigmoid(3) = 0.95: every gate starts (almost always) open
DEFAULT_HIDDEN = 32


class GatePredictor(torch.nn.Module):
    """The gate predictor(s) of one model; ``logits`` gives (B, blocks) for one layer."""

    def __init__(
        self,
        kind: str,
        num_layers: int,
        width: int,
        blocks: Sequence[str],
        hidden: int = DEFAULT_HIDDEN,
    ) -> None:
        super().__init__()
        if kind not in PREDICTORS:
            raise UsageError(
                f"unknown --predictor {kind!r}; choose one of: {', '.join(PREDICTORS)}"
            )
        if not blocks:
            raise UsageError("this backbone names no gateable blocks: gates do not apply to it")
        self.kind = kind
        self.num_layers = num_layers
        self.blocks = tuple(blocks)
        self.hidden = hidden
        outputs = len(self.blocks) * (1 if kind == "local" else num_layers)
        count = num_layers if kind == "local" else 1
        self.nets = torch.nn.ModuleList(_mlp(width, hidden, outputs) for _ in range(count))

    def plan(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Every layer's logits (B, L, blocks) from the encoder input, for ``global``; None for
        ``local`` (its logits come layer by layer, from :meth:`layer_logits`)."""
        if self.kind == "local":
            return None
        logits = _run_mlp(self.nets[0], pooled(x, pad_mask))
        return logits.view(x.shape[0], self.num_layers, len(self.blocks))

    def layer_logits(
        self,
        index: int,
        x: torch.Tensor,
        pad_mask: torch.Tensor | None,
        plan: torch.Tensor | None,
    ) -> torch.Tensor:
        """Layer ``index``'s logits (B, blocks): from the plan (global) or its input (local)."""
        if plan is not None:
            return plan[:, index]
        return _run_mlp(self.nets[index], pooled(x, pad_mask))


def _run_mlp(net: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``net(h)`` for a :func:`_mlp`, as three functional ops (no module-call overhead: it runs
    once per layer and utterance at inference)."""
    first, last = net[0], net[2]  # type: ignore[index]
    f = torch.nn.functional
    return f.linear(f.relu(f.linear(h, first.weight, first.bias)), last.weight, last.bias)


def _mlp(width: int, hidden: int, outputs: int) -> torch.nn.Sequential:
    net = torch.nn.Sequential(
        torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, outputs)
    )
    last = net[2]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.weight.mul_(0.1)
        last.bias.fill_(OPEN_BIAS)
    return net


def pooled(x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, D) -> (B, D): the mean over each utterance's true frames."""
    if pad_mask is None:
        return x.mean(dim=1)
    keep = (~pad_mask).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


def attach_gates(model: CTCEncoder, predictor: str, hidden: int = DEFAULT_HIDDEN) -> GatePredictor:
    """Give ``model`` a gate predictor (``model.gate_predictor``) for its gateable blocks."""
    gp = GatePredictor(
        predictor, model.num_layers, model.head.in_features, model.gateable_blocks, hidden
    )
    model.add_module("gate_predictor", gp.to(model.head.weight.device))
    return gp


def predictor_of(model: CTCEncoder) -> GatePredictor | None:
    gp = getattr(model, "gate_predictor", None)
    return gp if isinstance(gp, GatePredictor) else None


def gumbel_gates(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Straight-through binary Gumbel-softmax: hard {0, 1} samples forward, the soft sample's
    gradient backward. The noise is drawn on the CPU from ``generator`` (reproducible and
    resumable) and moved to the logits' device."""
    u = torch.rand(logits.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
    noise = (u.log() - (-u).log1p()).to(logits.device, logits.dtype)  # logistic(0, 1)
    soft = torch.sigmoid((logits + noise) / temperature)
    hard = (soft > 0.5).to(soft.dtype)
    return hard - soft.detach() + soft


def gates_method(
    predictor: str, target: float, weight: float, temperature: float, hidden: int
) -> dict[str, Any]:
    """The checkpoint ``method`` record of a gated model (``convert --method gates``)."""
    return {
        "name": NAME,
        "exits": [],
        "training": "fine-tune",
        "default_policy": NAME,
        "operating_point": None,
        "gates": {
            "predictor": predictor,
            "target_modules": target,
            "cost_weight": weight,
            "temperature": temperature,
            "hidden": hidden,
        },
    }


@dataclass
class GateDecision:
    """What one gated pass decided: open (B, L, blocks) booleans and the probabilities."""

    blocks: tuple[str, ...]
    open: torch.Tensor
    probs: torch.Tensor
