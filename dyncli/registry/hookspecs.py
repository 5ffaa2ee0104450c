"""Hook specifications: the one way backbones, skip policies, trained methods and commands get
into dyncli.

A plugin is a module (or an installed package with an entry point in the ``dyncli`` group)
that implements any of these hooks with ``@dyncli.hookimpl``. Built-in components are
registered through the very same hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("dyncli")
hookimpl = pluggy.HookimplMarker("dyncli")


@hookspec
def register_backbones(register: Callable[[Any], None]) -> None:
    """Call ``register(BackboneSpec(...))`` for each backbone the plugin provides."""


@hookspec
def register_skip_policies(register: Callable[[Any], None]) -> None:
    """Call ``register(SkipPolicySpec(...))`` for each skip policy the plugin provides."""


@hookspec
def register_methods(register: Callable[[Any], None]) -> None:
    """Call ``register(MethodSpec(...))`` for each trained method the plugin provides: it becomes
    a ``--method`` choice of ``dyncli convert`` or ``dyncli distill``, with its own flags."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the CLI: ``cli.add_typer(typer.Typer(...), name=...)``."""


@hookspec
def register_checkpoint_readers(register: Callable[[Any], None]) -> None:
    """Call ``register(CheckpointReaderSpec(...))`` for each foreign checkpoint format the plugin
    reads (a Hugging Face model directory, ...): every command that takes a checkpoint then
    accepts such a path."""
