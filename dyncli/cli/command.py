"""The click command class every built-in dyncli command uses.

It adds three things to Typer's command:

* **Deprecated spellings.** Flags renamed for one option vocabulary (see CHANGELOG) keep their
  old spelling for one release as hidden aliases: ``--layer 3`` is read as ``--skip-layer 3``,
  with one warning on stderr. The table is :data:`RENAMED`; it never shows in ``--help``.
* **Help and method flags from the registry, when needed.** An option whose help holds
  ``{skip_policies}`` (``{methods}``) gets the registered skip policies (the command's trained
  methods) filled in only when that command's ``--help`` is rendered; ``convert`` and
  ``distill`` gain their methods' own flags only when they parse arguments or show help
  (:mod:`dyncli.cli.method_options`). So importing the CLI (and ``dyncli --help``) loads no
  plugin.
* **Finite floats.** ``nan`` or ``inf`` for any float option is a usage error naming the flag.

Usage errors (unknown option, missing argument, bad value) print one ``error:`` line and exit
2, like every other dyncli error (:func:`one_line_usage_errors`, used by the root group).
"""

from __future__ import annotations

import math
from typing import Any

import typer
from typer._click.exceptions import NoArgsIsHelpError
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperCommand

# command -> {old flag: new flag}. Remove an entry one release after its rename.
RENAMED: dict[str, dict[str, str]] = {
    "profile": {"--layer": "--skip-layer", "--neighbours": "--skip-neighbours"},
    "convert": {
        "--skip-aware": "--skip-layer",
        "--skip-thresholds": "--skip-threshold-range",
    },
}

SKIP_POLICIES_TOKEN = "{skip_policies}"
METHODS_TOKEN = "{methods}"  # the registered methods of the command (convert, distill)


def rename_deprecated(command: str, args: list[str]) -> list[str]:
    """``args`` with the deprecated spellings of ``command``'s flags replaced by the new ones;
    warns once per flag on stderr. Stops at ``--`` (what follows is not an option)."""
    table = RENAMED.get(command, {})
    if not table:
        return args
    out: list[str] = []
    warned: set[str] = set()
    rest = False
    for arg in args:
        if not isinstance(arg, str):  # in-process callers may pass paths
            out.append(arg)
            continue
        if rest or arg == "--":
            rest = True
            out.append(arg)
            continue
        flag, eq, value = arg.partition("=")
        new = table.get(flag)
        if new is None:
            out.append(arg)
            continue
        if flag not in warned:
            from dyncli.cli.output import warn

            warn(f"{flag} is deprecated and will be removed in the next release; use {new}")
            warned.add(flag)
        out.append(f"{new}{eq}{value}" if eq else new)
    return out


def skip_policy_choices() -> str:
    """'blank-skip: ...; early-exit-entropy: ...' from the registry (loads plugins)."""
    from dyncli.registry.manager import skip_policies

    specs = skip_policies()
    return "; ".join(f"{n}: {s.description}" for n, s in sorted(specs.items())) or "none"


def registry_help(text: str, command: str) -> str:
    """``text`` with its registry tokens filled in: ``{skip_policies}`` and, for ``command``,
    ``{methods}`` (loads plugins)."""
    if SKIP_POLICIES_TOKEN in text:
        text = text.replace(SKIP_POLICIES_TOKEN, skip_policy_choices())
    if METHODS_TOKEN in text:
        from dyncli.cli.method_options import method_choices

        text = text.replace(METHODS_TOKEN, method_choices(command))
    return text


def flag_name(param: Any) -> str:
    """The long spelling of a click parameter (``--gate-lr-scale``), else its name."""
    opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return max(opts, key=len) if opts else str(param.name).upper()


def refuse_non_finite(ctx: Any, params: list[Any]) -> None:
    """A NaN or infinite value of any float option is a usage error naming the flag (click's
    ranges let NaN through: every comparison with it is false)."""
    for param in params:
        value = ctx.params.get(param.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise typer.BadParameter(f"must be a finite number, got {value}", ctx=ctx, param=param)


def usage_line(exc: ClickUsageError) -> str:
    """A click usage error as the one line every dyncli error is: message, then where help is."""
    message = " ".join(exc.format_message().split())
    if exc.ctx is not None:
        message = message.rstrip(".")
        message += f" (see '{exc.ctx.command_path} --help')"
    return f"error: {message}"


def one_line_usage_errors(call: Any) -> Any:
    """Run ``call()``; a click usage error prints :func:`usage_line` and exits 2 (no panel)."""
    try:
        return call()
    except NoArgsIsHelpError:
        raise
    except ClickUsageError as exc:
        typer.echo(usage_line(exc), err=True)
        raise typer.Exit(exc.exit_code) from None


class DyncliCommand(TyperCommand):
    """Typer's command plus deprecated flag spellings and registry-built help (see module doc).

    Non-finite float values are refused here, once for every command (:func:`refuse_non_finite`).
    """

    def get_params(self, ctx: Any) -> list[Any]:
        """The command's parameters; ``convert`` and ``distill`` also get the flags their
        registered methods declare (:mod:`dyncli.cli.method_options`), made once per context."""
        params = super().get_params(ctx)
        from dyncli.cli import method_options

        if self.name not in method_options.METHOD_COMMANDS:
            return params
        key = f"{method_options.PARAMS}:{self.name}"  # ctx.meta is shared by nested contexts
        if key not in ctx.meta:
            taken = {p.name for p in self.params}
            ctx.meta[key] = method_options.method_params(self.name, taken)
        extra: list[Any] = ctx.meta[key]
        help_option = self.get_help_option(ctx)
        if help_option is not None and params and params[-1] is help_option:
            return params[:-1] + extra + [help_option]
        return params + extra

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, rename_deprecated(self.name or "", list(args)))
        params = self.get_params(ctx)
        refuse_non_finite(ctx, params)
        own = {p.name for p in self.params}
        extra = [p.name for p in params if p.name not in own and p.name in ctx.params]
        if extra:  # method flags: read by method_values, never passed to the function
            from dyncli.cli.method_options import VALUES

            ctx.meta[VALUES] = {name: ctx.params.pop(name) for name in extra}
        return rest

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.get_params(ctx):
            help_text = getattr(param, "help", None)
            if not help_text:
                continue
            param.help = registry_help(help_text, self.name or "")
        super().format_help(ctx, formatter)
