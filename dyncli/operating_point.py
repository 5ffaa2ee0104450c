"""Which path a dynamic checkpoint runs: the stored operating point, an override, or full depth.

``transcribe``, ``evaluate`` and ``profile`` resolve a run the same way:

1. ``--full-depth`` runs every layer (a static checkpoint always does);
2. ``--policy`` / ``--threshold`` / policy settings override the stored operating point (a
   threshold alone keeps the stored policy);
3. otherwise the checkpoint's stored operating point (``dyncli convert --wer-budget``) runs;
4. a dynamic checkpoint with no stored operating point runs at full depth, and says so.

Thresholds are compared after one rounding (:func:`canonical_threshold`), done once where a
threshold enters, so a value the user typed matches the row a sweep made for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dyncli.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from dyncli.checkpoint import Checkpoint
    from dyncli.dynamic import SkipPolicy

THRESHOLD_DIGITS = 6


def canonical_threshold(value: float) -> float:
    """The one rounding every threshold gets (6 decimals) before it is stored or compared."""
    return round(float(value), THRESHOLD_DIGITS)


@dataclass(frozen=True)
class RunChoice:
    """What ran: ``policy`` is 'static' at full depth. ``source`` says why it was chosen."""

    policy: str
    threshold: float | None
    config: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def full_depth(self) -> bool:
        return self.policy == "static"

    def describe(self) -> str:
        if self.full_depth:
            return f"full depth ({self.source})"
        cfg = "".join(f", {k}={v}" for k, v in self.config.items() if v is not None)
        return f"{self.policy} @ {self.threshold:g}{cfg} ({self.source})"

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "threshold": self.threshold,
            "config": dict(self.config),
            "source": self.source,
        }


def stored_point(method: dict[str, Any] | None) -> tuple[str, float, dict[str, Any]] | None:
    """The operating point a converted checkpoint recommends: (policy, threshold, settings)."""
    point = (method or {}).get("operating_point")
    if not point:
        return None
    settings: dict[str, Any] = {}
    if point.get("policy") == "blank-skip":
        settings = {"layer": point.get("layer"), "neighbours": point.get("neighbours", 1)}
    return str(point["policy"]), canonical_threshold(point["threshold"]), settings


def check_stored_point(ckpt: Checkpoint, remedy: str) -> None:
    """Refuse, naming the checkpoint, a stored operating point its model cannot run (an unknown
    policy, a threshold out of range, a trigger layer without a CTC head, ...): the record is
    inconsistent with the model. ``remedy``: the flags that run something else."""
    from dyncli.dynamic import build_policy

    stored = stored_point(ckpt.method)
    if stored is None:
        return
    name, threshold, settings = stored
    try:
        build_policy(name, threshold, **{k: v for k, v in settings.items() if v is not None}).check(
            ckpt.model
        )
    except UsageError as exc:
        raise CheckpointError(
            f"{ckpt.path}: the stored operating point ({name} @ {threshold:g}) does not fit "
            f"this model: {exc}; {remedy}"
        ) from None


def policy_settings(ckpt: Checkpoint, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Config settings for policy ``name`` on ``ckpt``: the stored operating point's (when it is
    the same policy), then the user's ``overrides`` (None = not given), then model defaults."""
    stored = stored_point(ckpt.method)
    merged: dict[str, Any] = {}
    if stored and stored[0] == name:
        merged.update({k: v for k, v in stored[2].items() if v is not None})
    merged.update({k: v for k, v in overrides.items() if v is not None})
    if name == "blank-skip" and merged.get("layer") is None:
        from dyncli.dynamic import default_trigger

        merged["layer"] = default_trigger(ckpt.model, ckpt.method)
    return merged


def default_policy(method: dict[str, Any] | None) -> str:
    """The policy a model runs when none is named and no operating point is stored: the one
    its training prepared it for (``drop`` after layer-drop training), else blank-skip."""
    name = (method or {}).get("default_policy")
    return name if isinstance(name, str) else "blank-skip"


def given_flags(
    policy: str | None, threshold: float | None, overrides: dict[str, Any]
) -> list[str]:
    """The flags a run was given (``overrides`` holds only the settings given)."""
    from dyncli.policy_config import SETTING_FLAGS

    flags = [f for f, v in (("--policy", policy), ("--threshold", threshold)) if v is not None]
    return flags + [SETTING_FLAGS.get(k, "--" + k.replace("_", "-")) for k in overrides]


def check_budget(wer_budget: float | None, policy: str | None) -> None:
    """Refuse, before any work, a ``--wer-budget`` that is not a finite number >= 0, an unknown
    ``--policy``, or a ``--policy`` without ``--wer-budget`` (it would be ignored)."""
    if wer_budget is None:
        if policy is not None:
            raise UsageError(
                "--policy names the policy the --wer-budget operating point is chosen for: "
                "give --wer-budget too"
            )
        return
    if not (math.isfinite(wer_budget) and wer_budget >= 0):
        raise UsageError(
            f"--wer-budget must be >= 0 (absolute WER, 0.01 = 1 point), got {wer_budget}"
        )
    if wer_budget > 1:  # a budget in points or percent: every threshold would pass
        raise UsageError(
            f"--wer-budget {wer_budget:g} would allow {wer_budget * 100:g} points of WER: it is "
            f"absolute (0.01 = 1 point); for {wer_budget:g} points give {wer_budget / 100:g}"
        )
    if policy is not None:
        from dyncli.plugins import get_skip_policy

        get_skip_policy(policy)


def check_policy_fits(
    model: Any, name: str, given: bool, settings: dict[str, Any] | None = None
) -> None:
    """Refuse, before training, a ``--wer-budget`` policy that ``model`` (as it will be trained:
    its heads and gates attached) could not run. ``given``: the user named it (``--policy``)."""
    from dyncli.dynamic import build_policy
    from dyncli.plugins import get_skip_policy

    subject = f"--policy {name}" if given else f"--wer-budget (its default policy, {name})"
    spec = get_skip_policy(name)
    if spec.needs_exits and not model.exits:
        raise UsageError(
            f"{subject}: the policy needs intermediate CTC heads and this model will have none"
        )
    sweep = spec.defaults_for(model) or spec.conservative_thresholds
    if not sweep:
        return
    try:
        build_policy(name, sweep[0], **(settings or {})).check(model)
    except UsageError as exc:
        raise UsageError(f"{subject}: {exc}") from None


def resolve_run(
    ckpt: Checkpoint,
    *,
    policy: str | None = None,
    threshold: float | None = None,
    overrides: dict[str, Any] | None = None,
    full_depth: bool = False,
    where: str = "checkpoint",
) -> tuple[SkipPolicy, RunChoice]:
    """The policy to run and a record of the choice (see the module docstring)."""
    from dyncli.dynamic import StaticPolicy, build_policy

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    asked = policy is not None or threshold is not None or bool(overrides)
    flags = " and ".join(given_flags(policy, threshold, overrides))
    if full_depth:
        if asked:
            raise UsageError(f"--full-depth runs every layer: drop {flags}")
        return StaticPolicy(), RunChoice("static", None, {}, "--full-depth")
    stored = stored_point(ckpt.method)
    if not ckpt.model.exits and stored is None:
        if not asked:
            return StaticPolicy(), RunChoice("static", None, {}, "static model")
        from dyncli.plugins import get_skip_policy

        name = policy or default_policy(ckpt.method)
        if get_skip_policy(name).needs_exits:
            subject = f"--policy {name}" if policy else f"{flags} (for the default policy, {name})"
            raise UsageError(f"{where}: a static model has no intermediate CTC head for {subject}")
    if asked:
        name = policy or (stored[0] if stored else default_policy(ckpt.method))
        if threshold is None:
            if stored is None or stored[0] != name:
                if policy is None:
                    raise UsageError(
                        f"{flags} given, but no operating point is stored to apply them to: "
                        f"give --threshold too (and --policy for another policy than {name})"
                    )
                raise UsageError(
                    f"--policy {name} needs --threshold (no stored operating point for it)"
                )
            threshold = stored[1]
        source = "stored operating point, overridden" if stored else "given on the command line"
        if stored and stored[0] != name:
            source = "given on the command line"
    elif stored is not None:
        check_stored_point(ckpt, "run with --full-depth, or give --policy and --threshold")
        name, threshold, source = stored[0], stored[1], "stored operating point"
    else:
        return StaticPolicy(), RunChoice(
            "static", None, {}, "no stored operating point; give --policy and --threshold"
        )
    threshold = canonical_threshold(threshold)
    settings = policy_settings(ckpt, name, overrides)
    runner = build_policy(name, threshold, **settings)
    runner.check(ckpt.model)
    return runner, RunChoice(name, threshold, settings, source)
