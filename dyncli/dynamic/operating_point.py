"""Which path a dynamic checkpoint runs: the stored operating point, an override, or full depth.

``transcribe``, ``evaluate`` and ``profile`` resolve a run the same way:

1. ``--full-depth`` runs every layer (a static checkpoint always does);
2. ``--policy`` / ``--threshold`` / policy settings override the stored operating point (a
   threshold alone keeps the stored policy);
3. otherwise the checkpoint's stored operating point (``dyncli convert --wer-budget``) runs;
4. a dynamic checkpoint with no stored operating point runs at full depth, and says so.

With ``--wer-budget`` (``convert``, ``distill``), :func:`choose_operating_point` picks the point to
store: the cheapest threshold whose dev WER increase over full depth is within the budget at
the upper end of its 95% paired bootstrap interval, not just on average.

Thresholds are compared after one rounding (:func:`canonical_threshold`), done once where a
threshold enters, so a value the user typed matches the row a sweep made for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dyncli.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from dyncli.checkpoint import Checkpoint
    from dyncli.data.dataset import Utterance
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


def stored_point(method: Mapping[str, Any] | None) -> tuple[str, float, dict[str, Any]] | None:
    """The operating point a converted checkpoint recommends: (policy, threshold, settings)."""
    point = (method or {}).get("operating_point")
    if not point:
        return None
    from dyncli.registry.manager import skip_policies

    name = str(point["policy"])
    spec = skip_policies().get(name)  # unknown: refused where the point is run
    settings = spec.settings_of_point(point) if spec is not None else {}
    return name, canonical_threshold(point["threshold"]), settings


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
    from dyncli.registry.manager import skip_policies

    spec = skip_policies().get(name)
    if spec is None:  # refused where it is built
        return {k: v for k, v in overrides.items() if v is not None}
    return spec.resolve(ckpt.model, ckpt.method, overrides)


def default_policy(method: Mapping[str, Any] | None) -> str:
    """The policy a model runs when none is named and no operating point is stored: the one
    its training prepared it for (``drop`` after layer-drop training), else the policy
    registered as the default for models with exits (blank-skip)."""
    name = (method or {}).get("default_policy")
    if isinstance(name, str):
        return name
    from dyncli.registry.manager import default_exit_policy

    return default_exit_policy()


def given_flags(
    policy: str | None, threshold: float | None, overrides: dict[str, Any]
) -> list[str]:
    """The flags a run was given (``overrides`` holds only the settings given)."""
    from dyncli.registry.manager import setting_flag

    flags = [f for f, v in (("--policy", policy), ("--threshold", threshold)) if v is not None]
    return flags + [setting_flag(k) for k in overrides]


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
        from dyncli.registry.manager import get_skip_policy

        get_skip_policy(policy)


def check_policy_fits(
    model: Any, name: str, given: bool, settings: dict[str, Any] | None = None
) -> None:
    """Refuse, before training, a ``--wer-budget`` policy that ``model`` (as it will be trained:
    its heads and gates attached) could not run. ``given``: the user named it (``--policy``)."""
    from dyncli.dynamic import build_policy
    from dyncli.registry.manager import get_skip_policy

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
    from dyncli.dynamic import build_policy
    from dyncli.methods.static import StaticPolicy

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
        from dyncli.registry.manager import get_skip_policy

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


# --- Choosing the operating point on a dev set (``--wer-budget``) ---------------------------


@dataclass
class PointChoice:
    """The outcome of :func:`choose_operating_point`.

    ``point`` is what the checkpoint stores (None when no threshold qualified); ``rule`` says
    what decided; ``resolvable`` is the smallest budget the dev set resolves
    (:func:`resolvable_budget`) and ``warning`` the one line saying so when ``budget`` is below
    it (None otherwise); ``closest`` is, when nothing qualified, the row whose dev ΔWER upper
    bound came nearest the budget, with ``excess`` (that upper bound minus the budget, as a
    fraction).
    """

    point: dict[str, Any] | None
    rows: list[dict[str, Any]]
    static: dict[str, Any]
    budget: float
    rule: str
    resolvable: float
    utterances: int
    warning: str | None = None
    closest: dict[str, Any] | None = None
    excess: float | None = None


def bootstrap_method() -> str:
    """How the ``dwer`` intervals of a sweep were made (``profiling.sweep_rows`` calls
    :func:`dyncli.measure.stats.paired_wer_delta` with its defaults)."""
    from dyncli.measure.stats import RESAMPLES, SEED

    return (
        f"paired bootstrap over utterances (BCa, {RESAMPLES} resamples, seed {SEED}; the "
        "percentile interval where BCa is degenerate)"
    )


def resolvable_budget(static: dict[str, Any], rows: Sequence[dict[str, Any]]) -> float:
    """The smallest ``--wer-budget`` the dev set resolves: the narrowest ``dwer_resolution``
    (the interval's half-width, never less than one word) among the swept thresholds that
    change a dev utterance's errors, or one word error (1 / words) when none does.

    Below it, no threshold that makes a dev transcript worse can have its upper bound within
    the budget: only thresholds identical to full depth on dev (interval [0, 0]) or shown to be
    better qualify."""
    words = int(static["words"])
    one_word = 1.0 / words if words > 0 else 0.0
    differing = [float(r["dwer_resolution"]) for r in rows if r.get("dwer_differing")]
    return max(one_word, min(differing)) if differing else one_word


def budget_flag(value: float) -> str:
    """``value`` as a ``--wer-budget`` argument, rounded up to 4 decimals (0.01 points)."""
    return f"{math.ceil(value * 1e4 - 1e-6) / 1e4:g}"


def unresolved_budget(budget: float, resolvable: float, words: int) -> str | None:
    """One line when the dev set cannot resolve ``budget`` (it is below ``resolvable``)."""
    if budget >= resolvable - 1e-12:
        return None
    larger = "" if budget == 0 else " or a larger --dev set"
    return (
        f"the dev set ({words} words) cannot resolve a {100 * budget:.2f}-point budget; the "
        f"smallest it resolves is {100 * resolvable:.2f} points: give --wer-budget "
        f"{budget_flag(resolvable)}{larger}"
    )


def choose_operating_point(
    ckpt: Checkpoint,
    utts: Sequence[Utterance],
    *,
    policy: str,
    wer_budget: float,
    thresholds: Sequence[float] | None = None,
    settings: dict[str, Any] | None = None,
) -> PointChoice:
    """Sweep ``policy`` on ``utts`` (the dev set) and choose the threshold to store.

    The rule: the threshold with the fewest executed FLOPs whose dev ΔWER *upper bound* (the
    95% paired bootstrap interval over utterances of its WER minus full depth's,
    ``dwer_high`` of :func:`dyncli.measure.sweep.sweep_rows`) is at most ``wer_budget``; ties go
    to the lower WER. A threshold whose dev errors equal full depth's on every utterance has the
    interval [0, 0] and always qualifies. The grid is the policy's default sweep plus its
    conservative thresholds, unless ``thresholds``.

    When the dev set cannot resolve the budget (it is below :func:`resolvable_budget`), the rule
    stays the same (so in practice only thresholds identical to full depth on dev, or shown to
    be better, qualify) and ``warning`` says so, naming the budget it can resolve; the stored
    point records the warning. When nothing qualifies, ``point`` is None and ``closest`` is
    the threshold with the lowest upper bound.
    """
    import dataclasses

    from dyncli.dynamic.run import policy_runs
    from dyncli.measure.stats import CONFIDENCE
    from dyncli.measure.sweep import sweep_rows
    from dyncli.registry.manager import get_skip_policy, setting_flag

    spec = get_skip_policy(policy)
    merged = policy_settings(ckpt, policy, settings or {})
    grid = thresholds or (
        *spec.defaults_for(ckpt.model),
        *(v for v in spec.conservative_thresholds if policy_runs(ckpt.model, policy, v, merged)),
    )
    values = sorted({canonical_threshold(v) for v in grid})
    static, rows = sweep_rows(ckpt, utts, [u.wave for u in utts], policy, values, merged)
    words = int(static["words"])
    resolvable = resolvable_budget(static, rows)
    warning = unresolved_budget(wer_budget, resolvable, words)
    rule = (
        f"upper bound of the {100 * CONFIDENCE:g}% interval of dev dWER <= --wer-budget "
        f"({100 * wer_budget:.2f} points)"
    )
    choice = PointChoice(None, rows, static, wer_budget, rule, resolvable, len(utts), warning)
    ok = [r for r in rows if r["dwer_high"] <= wer_budget + 1e-9]
    if not ok:
        if rows:
            choice.closest = min(rows, key=lambda r: (r["dwer_high"], r["flops_ratio"]))
            choice.excess = choice.closest["dwer_high"] - wer_budget
        return choice
    best = min(ok, key=lambda r: (r["flops_ratio"], r["wer"]))
    config = dataclasses.asdict(spec.make_config(best["threshold"], setting_flag, **merged))
    choice.point = {
        "policy": policy,
        "threshold": best["threshold"],
        **{k: v for k, v in config.items() if k != "threshold"},
        "dev_wer": best["wer"],
        "static_dev_wer": static["wer"],
        "dev_words": words,
        "dev_utterances": len(utts),
        "dev_dwer": best["dwer"],
        "dev_dwer_low": best["dwer_low"],
        "dev_dwer_high": best["dwer_high"],
        "dev_dwer_confidence": CONFIDENCE,
        "dev_dwer_differing": best["dwer_differing"],
        "dev_dwer_method": bootstrap_method(),
        "dev_resolution": resolvable,
        "flops_ratio": best["flops_ratio"],
        "wer_budget": wer_budget,
        "rule": rule,
        **({"warning": warning} if warning else {}),
        "chosen_on": "the --dev set of the training run",
    }
    return choice


def interval_text(delta: float, low: float, high: float) -> str:
    """``+0.4 [-0.6, +1.4]``: a WER difference and its interval in points."""
    return f"{100 * delta:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
