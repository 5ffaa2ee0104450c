"""Building a registered policy by name and running it on waveforms."""

from __future__ import annotations

from typing import Any

import torch

from dyncli.dynamic.trace import DynamicOutput, SkipPolicy
from dyncli.errors import UsageError
from dyncli.models.base import CTCEncoder
from dyncli.registry.manager import get_skip_policy, setting_flag


def build_policy(name: str, threshold: float, **overrides: Any) -> SkipPolicy:
    """A registered policy at ``threshold`` (``overrides`` set other config fields)."""
    spec = get_skip_policy(name)
    policy: SkipPolicy = spec.build(spec.make_config(threshold, setting_flag, **overrides))
    return policy


def run_policy(
    model: CTCEncoder, policy: SkipPolicy, wave: torch.Tensor, lengths: torch.Tensor
) -> DynamicOutput:
    """Waveforms (B, N) -> dynamic-depth output (front end and subsampling always run)."""
    feats, frames = model.features(wave, lengths)
    x, out_lengths = model.embed(feats, frames)
    return policy.encode(model, x, out_lengths)


def policy_runs(model: CTCEncoder, name: str, threshold: float, settings: dict[str, Any]) -> bool:
    """Whether policy ``name`` at ``threshold`` (with ``settings``) can run on ``model`` (its
    ``check`` passes), e.g. a layer count no deeper than the model."""
    try:
        build_policy(name, threshold, **settings).check(model)
    except UsageError:
        return False
    return True
