"""What a plugin registers: a backbone, a skip policy or a checkpoint reader, each a frozen
dataclass naming its config and a ``build`` callable (which imports heavy modules only when
called, so reading the registry does not import torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dyncli.errors import UsageError


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone: ``build(config, vocab_size)`` returns a ``CTCEncoder``."""

    name: str
    config_cls: type
    build: Callable[[Any, int], Any]
    presets: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class SkipPolicySpec:
    """A skip policy: decides per utterance or frame which layers run.

    ``build(config)`` returns the policy object (see ``dyncli.dynamic.trace.SkipPolicy``); the
    config is ``config_cls(threshold=..., **defaults)``. ``default_thresholds`` is the sweep
    ``dyncli profile`` runs when none is given; ``conservative_thresholds`` are thresholds
    nearer full depth that ``dyncli convert --wer-budget`` tries as well, so that a model whose
    default sweep all costs too much accuracy still gets a (smaller) saving.
    """

    name: str
    config_cls: type
    build: Callable[[Any], Any]
    description: str = ""
    defaults: tuple[tuple[str, Any], ...] = ()
    default_thresholds: tuple[float, ...] = ()
    conservative_thresholds: tuple[float, ...] = ()
    needs_exits: bool = True  # False: runs on a model without intermediate heads (drop)
    # The default sweep for one model, where it depends on the model (drop: layer counts up to
    # its depth); None: ``default_thresholds``.
    thresholds_for: Callable[[Any], tuple[float, ...]] | None = None
    # The default sweep derived from the audio to be profiled, where fixed thresholds would
    # suit one model only (early exit: quantiles of the exit criterion). Label-free: it sees
    # the model's outputs on the audio, never the transcripts. Called as (model, waves).
    thresholds_from_data: Callable[[Any, Sequence[Any]], tuple[float, ...]] | None = None

    def defaults_for(self, model: Any, waves: Sequence[Any] = ()) -> tuple[float, ...]:
        """The default sweep on ``model``; from ``waves`` (the audio to be profiled, (N,) each)
        where the policy derives it from the data."""
        if waves and self.thresholds_from_data is not None:
            found = self.thresholds_from_data(model, waves)
            if found:
                return found
        return self.thresholds_for(model) if self.thresholds_for else self.default_thresholds

    def make_config(self, threshold: float, **overrides: Any) -> Any:
        """The policy's config at ``threshold``, validated (bad values raise UsageError)."""
        import dataclasses

        fields = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            from dyncli.policy_config import SETTING_FLAGS

            flags = ", ".join(SETTING_FLAGS.get(k, "--" + k.replace("_", "-")) for k in unknown)
            raise UsageError(f"{flags} does not apply to the {self.name} policy")
        kwargs = {**dict(self.defaults), **overrides, "threshold": threshold}
        config = self.config_cls(**kwargs)
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate()
        return config


@dataclass(frozen=True)
class CheckpointReaderSpec:
    """A foreign checkpoint format: ``accepts(path)`` says whether a path is one (cheaply, from
    its files' names), ``read(path)`` returns a ``dyncli.checkpoint.Checkpoint`` or raises a
    ``DyncliError`` with one line. ``explain(path)``, when given, says in a few words why
    ``accepts`` refused a directory (e.g. "no config.json in it"), for the error message."""

    name: str
    accepts: Callable[[Any], bool]
    read: Callable[[Any], Any]
    description: str = ""
    explain: Callable[[Any], str] | None = None


@dataclass(frozen=True)
class PluginFailure:
    """A third-party plugin that failed to load, or whose hook raised, and was skipped.

    ``reason`` is one line, ``ExcType: message``.
    """

    name: str
    distribution: str | None
    reason: str
