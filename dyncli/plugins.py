"""Deprecated alias: the plugin API lives in :mod:`dyncli.registry` since issue 19
(``from dyncli.registry import BackboneSpec, SkipPolicySpec, CheckpointReaderSpec, hookimpl``).
Kept for one release so that plugins written against ``dyncli.plugins`` still load."""

from dyncli.registry import BackboneSpec, CheckpointReaderSpec, SkipPolicySpec, hookimpl

__all__ = ["BackboneSpec", "CheckpointReaderSpec", "SkipPolicySpec", "hookimpl"]
