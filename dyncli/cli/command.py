"""The click command class every built-in dyncli command uses.

It adds two things to Typer's command:

* **Deprecated spellings.** Flags renamed for one option vocabulary (see CHANGELOG) keep their
  old spelling for one release as hidden aliases: ``--layer 3`` is read as ``--skip-layer 3``,
  with one warning on stderr. The table is :data:`RENAMED`; it never shows in ``--help``.
* **Help built from the registry, when help is shown.** An option whose help holds
  ``{skip_policies}`` gets the registered skip policies filled in only when that command's
  ``--help`` is rendered, so importing the CLI (and ``dyncli --help``) loads no plugin.
"""

from __future__ import annotations

from typing import Any

import typer
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
            typer.echo(
                f"warning: {flag} is deprecated and will be removed in the next release; use {new}",
                err=True,
            )
            warned.add(flag)
        out.append(f"{new}{eq}{value}" if eq else new)
    return out


def skip_policy_choices() -> str:
    """'blank-skip: ...; early-exit-entropy: ...' from the registry (loads plugins)."""
    from dyncli.plugins import skip_policies

    specs = skip_policies()
    return "; ".join(f"{n}: {s.description}" for n, s in sorted(specs.items())) or "none"


class DyncliCommand(TyperCommand):
    """Typer's command plus deprecated flag spellings and registry-built help (see module doc)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, rename_deprecated(self.name or "", list(args)))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            help_text = getattr(param, "help", None)
            if help_text and SKIP_POLICIES_TOKEN in help_text:
                param.help = help_text.replace(SKIP_POLICIES_TOKEN, skip_policy_choices())  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)
