"""The plugin manager: loads the built-in and installed plugins and collects what they
register (backbones, skip policies, checkpoint readers, commands; the specs are in
:mod:`dyncli.registry.specs`).

Importing this module does not import torch: specs hold a config dataclass and a ``build``
callable that imports heavy modules only when called.

``DYNCLI_LOAD_PLUGINS`` limits which installed plugins load: a comma-separated list of
distribution or entry-point names (an empty value loads none). Built-in plugins always load.

A third-party plugin that fails to import, or whose hook raises, is skipped with one warning
on stderr that names its distribution, and listed by :func:`plugin_failures`; the others go
on. When two plugins register the same name, the first (a built-in, if either is) is kept and
the other skipped with a warning. Hooks are called one implementation at a time (see
:func:`call_each`) so that one broken plugin cannot take the others down.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
from collections.abc import Callable
from typing import Any

import pluggy
import typer

from dyncli.errors import InputError, UsageError
from dyncli.registry import hookspecs
from dyncli.registry.specs import (
    BackboneSpec,
    CheckpointReaderSpec,
    MethodSpec,
    PluginFailure,
    SkipPolicySpec,
)

ENTRY_POINT_GROUP = "dyncli"
# The built-in plugins: the backbones, and each method's home (its skip policies and trained
# methods), registered through the same hooks as third-party plugins.
DEFAULT_PLUGINS = (
    "dyncli.default_plugins.conformer",
    "dyncli.methods.blank_skip",
    "dyncli.methods.early_exit",
    "dyncli.methods.drop",
    "dyncli.methods.gates",
)


_pm: pluggy.PluginManager | None = None
_failures: list[PluginFailure] = []
_distributions: dict[str, str | None] = {}  # plugin name -> distribution, for entry points
_warned: set[str] = set()


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm, _failures, _distributions, _warned
    if _pm is None:
        _failures, _distributions, _warned = [], {}, set()
        pm = pluggy.PluginManager("dyncli")
        pm.add_hookspecs(hookspecs)
        for name in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(name), name=name)
        _load_entry_points(pm)
        _pm = pm
    return _pm


def plugin_failures() -> list[PluginFailure]:
    """The third-party plugins skipped so far because they failed (loads the plugins)."""
    get_plugin_manager()
    return list(_failures)


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = os.environ.get("DYNCLI_LOAD_PLUGINS")
    wanted = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else ""
        if wanted is not None and ep.name not in wanted and dist not in wanted:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        _distributions[ep.name] = dist or None
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:
            _fail(ep.name, "failed to load", exc)


def _warn(message: str) -> None:
    """One line on stderr, once per message per plugin manager."""
    if message not in _warned:
        _warned.add(message)
        typer.echo(f"warning: {message}", err=True)


def _describe(plugin: str) -> str:
    dist = _distributions.get(plugin)
    return f"plugin {plugin!r}" + (f" (distribution {dist!r})" if dist else "")


def _fail(plugin: str, what: str, exc: Exception) -> None:
    reason = " ".join(f"{type(exc).__name__}: {exc}".split()).removesuffix(":")
    _failures.append(PluginFailure(plugin, _distributions.get(plugin), reason))
    _warn(f"{_describe(plugin)} {what} and was skipped: {reason}")


def call_each(hook_name: str, call: Callable[[str, Callable[..., Any]], None]) -> None:
    """Run ``call(plugin_name, hook)`` for each implementation of hook ``hook_name``.

    ``hook(**kwargs)`` calls that plugin's implementation alone. Built-in plugins come first,
    then the others in the order they were registered, so a built-in wins a name clash. When
    ``call`` raises for a third-party plugin, the plugin is unregistered, recorded in
    :func:`plugin_failures` and warned about once; the other plugins go on. A built-in that
    raises is a dyncli bug and propagates.
    """
    pm = get_plugin_manager()
    impls = [
        impl
        for impl in getattr(pm.hook, hook_name).get_hookimpls()
        if not (impl.wrapper or impl.hookwrapper)
    ]
    impls.sort(key=lambda impl: impl.plugin_name not in DEFAULT_PLUGINS)
    for impl in impls:
        hook = functools.partial(_call_impl, impl)
        if impl.plugin_name in DEFAULT_PLUGINS:
            call(impl.plugin_name, hook)
            continue
        if not pm.is_registered(impl.plugin):  # skipped by an earlier failure
            continue
        try:
            call(impl.plugin_name, hook)
        except Exception as exc:
            pm.unregister(impl.plugin)
            _fail(impl.plugin_name, f"failed in {hook_name}", exc)


def _call_impl(impl: Any, **kwargs: Any) -> Any:
    """One plugin's implementation of a hook (pluggy passes only the arguments it names)."""
    return impl.function(*(kwargs[arg] for arg in impl.argnames))


def warn_name_clash(kind: str, name: str, kept: str | None, skipped: str) -> None:
    """Warn (once) that plugins ``kept`` and ``skipped`` both register a ``kind`` ``name``;
    ``kept`` None is dyncli itself (a built-in command)."""
    first = _describe(kept) if kept else "dyncli itself"
    _warn(
        f"{kind} {name!r} is registered by both {first} and {_describe(skipped)}; "
        "the first is kept, the second skipped"
    )


def _collect(hook_name: str, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    owners: dict[str, str] = {}

    def call(plugin: str, hook: Callable[..., Any]) -> None:
        specs: list[Any] = []
        hook(register=specs.append)
        named = [(spec.name, spec) for spec in specs]  # a spec without a name fails the plugin
        for name, spec in named:
            if name in found:
                warn_name_clash(kind, name, kept=owners[name], skipped=plugin)
                continue
            found[name], owners[name] = spec, plugin

    call_each(hook_name, call)
    return found


def backbones() -> dict[str, BackboneSpec]:
    return _collect("register_backbones", "backbone")


def skip_policies() -> dict[str, SkipPolicySpec]:
    return _collect("register_skip_policies", "skip policy")


def methods(command: str | None = None) -> dict[str, MethodSpec]:
    """The trained methods, all or those of ``command`` (``convert`` or ``distill``)."""
    found: dict[str, MethodSpec] = _collect("register_methods", "method")
    return {n: s for n, s in found.items() if command is None or s.command == command}


def get_method(name: str, command: str) -> MethodSpec:
    found = methods(command)
    if name not in found:
        raise UsageError(f"unknown --method {name!r}; choose one of: {', '.join(found) or 'none'}")
    return found[name]


def setting_flag(setting: str) -> str:
    """The command-line flag of skip-policy setting ``setting`` (``layer`` -> ``--skip-layer``)."""
    for spec in skip_policies().values():
        flags = dict(spec.setting_flags)
        if setting in flags:
            return flags[setting]
    return "--" + setting.replace("_", "-")


def default_exit_policy() -> str:
    """The policy a model with exit heads runs when its record names none (the one registered
    with ``default_for_exits``)."""
    for name, spec in skip_policies().items():
        if spec.default_for_exits:
            return name
    raise UsageError("no skip policy is registered as the default for models with exits")


def checkpoint_readers() -> dict[str, CheckpointReaderSpec]:
    return _collect("register_checkpoint_readers", "checkpoint reader")


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
