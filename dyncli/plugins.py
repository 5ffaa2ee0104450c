"""Plugin manager and registries of backbones and skip policies.

Importing this module does not import torch: specs hold a config dataclass and a ``build``
callable that imports heavy modules only when called.

``DYNCLI_LOAD_PLUGINS`` limits which installed plugins load: a comma-separated list of
distribution or entry-point names (an empty value loads none). Built-in plugins always load.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from dyncli import hookspecs
from dyncli.errors import InputError, UsageError

ENTRY_POINT_GROUP = "dyncli"
DEFAULT_PLUGINS = ("dyncli.default_plugins.conformer", "dyncli.default_plugins.policies")


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

    ``build(config)`` returns the policy object (see ``dyncli.dynamic.SkipPolicy``); the
    config is ``config_cls(threshold=..., **defaults)``. ``default_thresholds`` is the sweep
    ``dyncli profile`` runs when none is given.
    """

    name: str
    config_cls: type
    build: Callable[[Any], Any]
    description: str = ""
    defaults: tuple[tuple[str, Any], ...] = ()
    default_thresholds: tuple[float, ...] = ()

    def make_config(self, threshold: float, **overrides: Any) -> Any:
        """The policy's config at ``threshold``, validated (bad values raise UsageError)."""
        import dataclasses

        fields = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
            raise UsageError(f"{flags} does not apply to the {self.name} policy")
        kwargs = {**dict(self.defaults), **overrides, "threshold": threshold}
        config = self.config_cls(**kwargs)
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate()
        return config


_pm: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("dyncli")
        pm.add_hookspecs(hookspecs)
        for name in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(name), name=name)
        _load_entry_points(pm)
        _pm = pm
    return _pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = os.environ.get("DYNCLI_LOAD_PLUGINS")
    wanted = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else ""
        if wanted is not None and ep.name not in wanted and dist not in wanted:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        pm.register(ep.load(), name=ep.name)


def _collect(hook: Any, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def register(spec: Any) -> None:
        if spec.name in found:
            raise UsageError(f"two plugins register a {kind} named {spec.name!r}")
        found[spec.name] = spec

    hook(register=register)
    return found


def backbones() -> dict[str, BackboneSpec]:
    return _collect(get_plugin_manager().hook.register_backbones, "backbone")


def skip_policies() -> dict[str, SkipPolicySpec]:
    return _collect(get_plugin_manager().hook.register_skip_policies, "skip policy")


def get_backbone(name: str) -> BackboneSpec:
    found = backbones()
    if name not in found:
        raise InputError(
            f"unknown backbone {name!r}; registered: {', '.join(sorted(found)) or 'none'} "
            "(install the plugin that provides it, or check DYNCLI_LOAD_PLUGINS)"
        )
    return found[name]


def get_skip_policy(name: str) -> SkipPolicySpec:
    found = skip_policies()
    if name not in found:
        raise UsageError(
            f"unknown skip policy {name!r}; choose one of: {', '.join(sorted(found)) or 'none'}"
        )
    return found[name]
