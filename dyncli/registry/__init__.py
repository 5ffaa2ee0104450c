"""The plugin registry: hook specifications (:mod:`~dyncli.registry.hookspecs`), what a plugin
registers (:mod:`~dyncli.registry.specs`) and the manager that loads plugins and collects it
(:mod:`~dyncli.registry.manager`).

A plugin imports what it needs from here::

    from dyncli.registry import BackboneSpec, MethodFlag, MethodSpec, SkipPolicySpec, hookimpl
"""

from dyncli.registry.hookspecs import hookimpl
from dyncli.registry.specs import (
    BackboneSpec,
    CheckpointReaderSpec,
    MethodFlag,
    MethodSpec,
    SkipPolicySpec,
)

__all__ = [
    "BackboneSpec",
    "CheckpointReaderSpec",
    "MethodFlag",
    "MethodSpec",
    "SkipPolicySpec",
    "hookimpl",
]
