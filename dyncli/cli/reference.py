"""The CLI reference (docs/cli.md), generated from the Click command objects.

    python -m dyncli.cli.reference > docs/cli.md     (or: make docs)

The reference is built from the commands' parameters (flags, types, defaults, help), not from
the rendered ``--help``: nothing in it depends on the terminal (width, colour), on how the
installed typer/rich lay out help, or on the Python version. Only built-in plugins count:
:func:`render_reference` sets ``DYNCLI_LOAD_PLUGINS=""`` while it runs and restores it after.

A test regenerates it and compares, so the reference cannot drift from the code.
"""

from __future__ import annotations

import inspect
import os
import re
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from pathlib import PurePath
from typing import Any
from uuid import UUID

HEADER = (
    "Generated from the command definitions by `python -m dyncli.cli.reference` (`make docs`), "
    "with only the built-in plugins loaded; do not edit."
)

# Environment that changes what typer builds; pinned while the reference is generated.
PINNED_ENV: dict[str, str | None] = {
    "DYNCLI_LOAD_PLUGINS": "",  # built-in plugins only
    "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": None,  # changes the completion options
}

# dyncli.registry.manager' module state, all reset when its plugin manager is rebuilt.
_PLUGIN_STATE = ("_pm", "_failures", "_distributions", "_warned")

_TYPE_NAMES: dict[type, str] = {
    bool: "BOOLEAN",
    int: "INTEGER",
    float: "FLOAT",
    str: "TEXT",
    datetime: "DATETIME",
    UUID: "UUID",
}


def render_reference() -> str:
    """docs/cli.md: the title, then :func:`render_commands` of the app (built-in plugins)."""
    with builtin_cli() as root:
        body = render_commands(root, "dyncli")
    return f"# dyncli command reference\n\n{HEADER}\n\n{body}"


def render_commands(root: Any, name: str) -> str:
    """Markdown for click command ``root`` invoked as ``name``: one section for it, then one
    per visible subcommand (registration order, depth first). Hidden commands and hidden
    parameters are left out."""
    parts: list[str] = []
    for path, cmd, ctx in _walk(root, _context(root, name, None), name):
        parts += ["", *_section(path, cmd, ctx)] if parts else _section(path, cmd, ctx)
    return "\n".join(parts) + "\n"


@contextmanager
def builtin_cli() -> Iterator[Any]:
    """The app's root click command, built with only the built-in plugins loaded.

    Sets :data:`PINNED_ENV` and a fresh plugin manager for the duration; the environment and the
    state of ``dyncli.registry.manager`` are restored on exit, so a caller's own plugins are
    untouched.
    """
    import typer.main

    from dyncli.registry import manager as plugins

    saved_env = {name: os.environ.get(name) for name in PINNED_ENV}
    saved_state = {name: getattr(plugins, name) for name in _PLUGIN_STATE if hasattr(plugins, name)}
    try:
        for name, value in PINNED_ENV.items():
            _set_env(name, value)
        plugins._pm = None  # the next get_plugin_manager() starts afresh, under PINNED_ENV
        from dyncli.cli.app import build_app

        yield typer.main.get_command(build_app())
    finally:
        for name, value in saved_state.items():
            setattr(plugins, name, value)
        for name, value in saved_env.items():
            _set_env(name, value)


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _context(cmd: Any, name: str, parent: Any) -> Any:
    # Context settings (e.g. help_option_names=["-h", "--help"]) apply as when the CLI runs.
    return cmd.context_class(cmd, info_name=name, parent=parent, **cmd.context_settings)


def _subcommands(cmd: Any, ctx: Any) -> list[tuple[str, Any]]:
    if not hasattr(cmd, "list_commands"):
        return []
    found = [(name, cmd.get_command(ctx, name)) for name in cmd.list_commands(ctx)]
    return [(name, sub) for name, sub in found if sub is not None and not sub.hidden]


def _walk(cmd: Any, ctx: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    yield path, cmd, ctx
    for name, sub in _subcommands(cmd, ctx):
        yield from _walk(sub, _context(sub, name, ctx), f"{path} {name}")


def _section(path: str, cmd: Any, ctx: Any) -> list[str]:
    params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option"]
    lines = [f"## {path}", "", "```text", _usage(path, cmd, arguments, options), "```"]
    if cmd.deprecated:
        lines += ["", "Deprecated."]
    for paragraph in _paragraphs(cmd.help):
        lines += ["", _escape(paragraph)]
    if arguments:
        lines += ["", "Arguments:", ""]
        lines += _table(
            ["argument", "value", "default", "required", "help"],
            [[_code(_argument_name(p)), *_details(p, ctx)] for p in arguments],
        )
    if options:
        lines += ["", "Options:", ""]
        lines += _table(
            ["flags", "value", "default", "required", "help"],
            [[_flags(p), *_details(p, ctx)] for p in options],
        )
    commands = _subcommands(cmd, ctx)
    if commands:
        lines += ["", "Commands:", ""]
        lines += _table(
            ["command", "summary"],
            [[_code(name), _escape(_summary(sub))] for name, sub in commands],
        )
    return lines


def _usage(path: str, cmd: Any, arguments: list[Any], options: list[Any]) -> str:
    pieces = [path]
    if options and cmd.options_metavar:
        pieces.append(cmd.options_metavar)
    for param in arguments:
        name = _argument_name(param)
        if param.nargs != 1:
            name += "..."
        pieces.append(name if param.required else f"[{name}]")
    if hasattr(cmd, "list_commands"):
        pieces.append(getattr(cmd, "subcommand_metavar", None) or "COMMAND [ARGS]...")
    return " ".join(pieces)


def _argument_name(param: Any) -> str:
    return str(param.metavar or param.name.upper())


def _flags(param: Any) -> str:
    def order(opt: str) -> tuple[int, str]:  # short before long, then by name
        return len(opt) - len(opt.lstrip("-/+")), opt

    text = ", ".join(_code(o) for o in sorted(param.opts, key=order))
    if param.secondary_opts:
        text += " / " + ", ".join(_code(o) for o in sorted(param.secondary_opts, key=order))
    return text


def _details(param: Any, ctx: Any) -> list[str]:
    """The value, default, required and help cells of ``param``'s row."""
    default = _default(param, ctx)
    return [
        _code(_value(param)),
        _code(default) if default else "",
        "yes" if param.required else "",
        _escape(" ".join(_paragraphs(getattr(param, "help", None), ctx.command.name or ""))),
    ]


def _value(param: Any) -> str:
    """A metavar derived from the param's type: INTEGER, PATH, FLOAT RANGE 0.0<=x<=1.0, ..."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.metavar:
        return str(param.metavar)
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:  # typer >= 0.26: the annotation, with min/max on the param
        value = _annotation_value(descriptor.annotation, descriptor.choices)
        lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    else:  # a click ParamType (other typer versions, plain click options)
        value, lo, hi = _click_type_value(param.type)
    if lo is not None or hi is not None:
        value += " RANGE " + _range(lo, hi)
    if param.multiple or param.nargs == -1:
        value += "..."
    return value


def _annotation_value(annotation: Any, choices: tuple[Any, ...] | None) -> str:
    if choices is not None:
        return "{" + ",".join(_plain(c) for c in choices) + "}"
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return " ".join(_annotation_value(a, None) for a in args)
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return "{" + ",".join(_plain(m) for m in annotation) + "}"
        if issubclass(annotation, PurePath):
            return "PATH"
        for kind, name in _TYPE_NAMES.items():
            if issubclass(annotation, kind):
                return name
        return annotation.__name__.upper()
    return "TEXT"


def _click_type_value(ptype: Any) -> tuple[str, Any, Any]:
    choices = getattr(ptype, "choices", None)
    if choices is not None:
        return "{" + ",".join(_plain(c) for c in choices) + "}", None, None
    name = str(getattr(ptype, "name", "text")).upper().removesuffix(" RANGE")
    return name, getattr(ptype, "min", None), getattr(ptype, "max", None)


def _range(lo: Any, hi: Any) -> str:
    if lo is None:
        return f"x<={hi}"
    if hi is None:
        return f"x>={lo}"
    return f"{lo}<=x<={hi}"


def _default(param: Any, ctx: Any) -> str:
    show = getattr(param, "show_default", None)
    if show is None:
        show = bool(ctx.show_default)
    if isinstance(show, str):
        return show
    if not show:
        return ""
    default = param.default
    if default is None:
        return ""
    if callable(default):
        return "(dynamic)"
    if getattr(param, "is_bool_flag", False):
        if param.secondary_opts:
            return "on" if default else "off"
        return "on" if default else ""  # a plain switch is off unless given
    return _plain(default)


def _plain(value: Any) -> str:
    """``value`` as the user would type it (no repr, no enum class names)."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _with_registry(text: str | None, command: str = "") -> str:
    """``text`` with its registry tokens filled in (see ``dyncli.cli.command.registry_help``)."""
    from dyncli.cli.command import registry_help

    return registry_help(text or "", command)


def _paragraphs(text: str | None, command: str = "") -> list[str]:
    """Help text as paragraphs, each on one line (Click's ``\\b`` markers dropped, and
    nothing after its ``\\f``; rich markup rendered, ``\\[plot]`` as ``[plot]``: as ``--help``
    shows it)."""
    from rich.text import Text

    text = inspect.cleandoc(_with_registry(text, command).split("\f")[0])
    paragraphs = (" ".join(p.strip().removeprefix("\b").split()) for p in text.split("\n\n"))
    return [Text.from_markup(p).plain for p in paragraphs if p]


def _summary(cmd: Any) -> str:
    if cmd.short_help:
        return " ".join(cmd.short_help.split())
    paragraphs = _paragraphs(cmd.help)
    return paragraphs[0] if paragraphs else ""


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cell for cell in row) + " |" for row in rows]


def _escape(text: str) -> str:
    """Plain text for a Markdown paragraph or table cell."""
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return re.sub(r"<(?=[A-Za-z/!?])", r"\\<", text)  # '<TAB>' would read as an HTML tag


def _code(text: str) -> str:
    """An inline code span that is also safe inside a table cell."""
    escaped = text.replace("|", "\\|")
    return f"`{escaped}`" if text else ""


if __name__ == "__main__":
    print(render_reference(), end="")
