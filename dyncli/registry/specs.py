"""What a plugin registers: a backbone, a skip policy, a trained method or a checkpoint reader,
each a frozen dataclass naming its config and callables that import heavy modules only when
called, so reading the registry does not import torch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    # The config fields an operating point stored with this policy carries besides its
    # threshold (blank-skip: its trigger layer and neighbours); a field the point lacks takes
    # the config's default.
    point_settings: tuple[str, ...] = ()
    # The command-line flag of a config field, where it is not --<field>.
    setting_flags: tuple[tuple[str, str], ...] = ()
    # Settings that depend on the model, filled in where neither the stored point nor the user
    # gave them: ``(model, method_record, settings) -> settings`` (blank-skip: the trigger layer).
    model_defaults: Callable[[Any, Any, dict[str, Any]], dict[str, Any]] | None = None
    # The policy a model with exit heads runs when its record names none (one policy says so).
    default_for_exits: bool = False

    def defaults_for(self, model: Any, waves: Sequence[Any] = ()) -> tuple[float, ...]:
        """The default sweep on ``model``; from ``waves`` (the audio to be profiled, (N,) each)
        where the policy derives it from the data."""
        if waves and self.thresholds_from_data is not None:
            found = self.thresholds_from_data(model, waves)
            if found:
                return found
        return self.thresholds_for(model) if self.thresholds_for else self.default_thresholds

    def flag_of(self, setting: str) -> str:
        """The command-line flag of config field ``setting``."""
        return dict(self.setting_flags).get(setting, "--" + setting.replace("_", "-"))

    def settings_of_point(self, point: dict[str, Any]) -> dict[str, Any]:
        """The settings an operating point stored for this policy carries."""
        import dataclasses

        defaults = {
            f.name: f.default
            for f in dataclasses.fields(self.config_cls)
            if f.default is not dataclasses.MISSING
        }
        return {k: point.get(k, defaults.get(k)) for k in self.point_settings}

    def resolve(
        self, model: Any, record: Mapping[str, Any] | None, overrides: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The settings to run this policy with on ``model``: the operating point stored in
        ``record`` (when it is this policy's), then the user's ``overrides`` (None: not
        given), then the settings that depend on the model (:attr:`model_defaults`)."""
        merged: dict[str, Any] = {}
        point = (record or {}).get("operating_point")
        if point and point.get("policy") == self.name:
            stored = self.settings_of_point(point)
            merged.update({k: v for k, v in stored.items() if v is not None})
        merged.update({k: v for k, v in overrides.items() if v is not None})
        if self.model_defaults is not None:
            merged = self.model_defaults(model, record, merged)
        return merged

    def make_config(
        self, threshold: float, flag_of: Callable[[str], str] | None = None, **overrides: Any
    ) -> Any:
        """The policy's config at ``threshold``, validated (bad values raise UsageError).

        A setting the config lacks is refused, named by ``flag_of(setting)`` (the registry's
        ``setting_flag``: another policy's setting has that policy's flag)."""
        import dataclasses

        fields = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            flags = ", ".join((flag_of or self.flag_of)(k) for k in unknown)
            raise UsageError(f"{flags} does not apply to the {self.name} policy")
        kwargs = {**dict(self.defaults), **overrides, "threshold": threshold}
        config = self.config_cls(**kwargs)
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate()
        return config


@dataclass(frozen=True)
class MethodFlag:
    """One option a trained method adds to its command (``convert`` or ``distill``).

    It sets field ``field`` of the method's options dataclass; its type and default are that
    field's (a ``bool`` field becomes an on/off flag). ``min`` / ``max`` bound a number,
    ``choices`` a string. The same flag may be declared by several methods of one command
    only with the same help (one flag, one meaning). ``weighs``, for a loss weight, says what
    its term trains (all weights 0 is refused, each 0 warned about)."""

    field: str
    flag: str
    help: str
    weighs: str | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodSpec:
    """A trained method: what ``convert --method NAME`` (or ``distill --method NAME``) trains.

    ``train(context)`` is called by the recipe with a ``dyncli.recipes.common.MethodContext``
    (the model, the method's options, the command's shared settings, the seed and rank) and
    returns a ``dyncli.recipes.common.MethodPlan``: the path the student runs, the weighted
    objectives, the record stored in the checkpoint, and an optional step after training
    (statistics recorded on dev). ``train`` attaches what the method adds to the model (gates,
    ...) itself; the recipe also calls it on a copy of the model, before any work, to check
    that a ``--wer-budget`` policy will fit the trained model.

    ``options_cls`` is the method's own settings (a dataclass; its ``validate()`` refuses bad
    values with a UsageError), set from ``flags`` on the command line. ``uses`` names the
    command's shared options the method reads (e.g. ``exits``, ``exit_weight``), or pairs
    ``(option, flag_field)`` for one it reads only when its on/off flag ``flag_field`` is on; a
    shared option the user gives that the chosen method does not use is refused.
    ``needs_exits``: the input model must already have exit heads (distillation into them).
    ``check(model, options, shared)``, when given, refuses (UsageError) what the method cannot
    train, before any work starts.
    """

    name: str
    command: str
    description: str
    train: Callable[[Any], Any]
    options_cls: type | None = None
    flags: tuple[MethodFlag, ...] = ()
    uses: tuple[str | tuple[str, str], ...] = ()
    needs_exits: bool = False
    check: Callable[[Any, Any, Any], None] | None = None
    # Lines the command prints after training, from the stored record (gates: open rates).
    summary: Callable[[Mapping[str, Any]], list[str]] | None = None
    # On load, before the weights: re-attach the modules the method added, from its record
    # (gates: the predictor); raises (ValueError, KeyError, TypeError, DyncliError) on a bad
    # record, which the loader reports as a corrupt checkpoint.
    restore: Callable[[Any, Mapping[str, Any]], None] | None = None
    # ``dyncli inspect`` rows (label, text) for the method's own part of the record; default:
    # one row with the record's ``record[name]`` mapping, if any.
    describe: Callable[[Mapping[str, Any]], list[tuple[str, str]]] | None = None
    # The policy a model carrying what this method adds is scored with on dev while it trains
    # (the best epoch is the best model as it will run), given the model; None for a model
    # without it. Default: every head at full depth.
    dev_policy: Callable[[Any], Any] | None = None

    def rows(self, record: Mapping[str, Any]) -> list[tuple[str, str]]:
        """``dyncli inspect``'s rows for this method's part of ``record``."""
        if self.describe is not None:
            return self.describe(record)
        own = record.get(self.name)
        if not isinstance(own, dict) or not own:
            return []
        return [(self.name, ", ".join(f"{k}={v}" for k, v in own.items()))]

    def uses_option(self, option: str, options: Any = None) -> bool:
        """Whether the method reads the command's shared option ``option`` (with ``options``,
        its own options, deciding the conditional ones)."""
        for entry in self.uses:
            if entry == option:
                return True
            if isinstance(entry, tuple) and entry[0] == option:
                return options is None or bool(getattr(options, entry[1], False))
        return False

    def users_of(self, option: str) -> str:
        """How the method reads ``option``, for an error message: ``exit-kd --kd-kl``."""
        for entry in self.uses:
            if isinstance(entry, tuple) and entry[0] == option:
                flag = next((f.flag for f in self.flags if f.field == entry[1]), entry[1])
                return f"{self.name} {flag}"
        return self.name

    def make_options(self, values: dict[str, Any]) -> Any:
        """The method's options from ``values`` (field -> value; absent fields keep their
        defaults), validated."""
        if self.options_cls is None:
            return None
        options = self.options_cls(**values)
        validate = getattr(options, "validate", None)
        if validate is not None:
            validate()
        return options


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
