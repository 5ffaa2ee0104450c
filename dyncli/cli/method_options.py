"""The options trained methods add to ``convert`` and ``distill``, from their
:class:`~dyncli.registry.specs.MethodSpec` (``--method`` choices, each method's own flags, and
which of the command's shared options a method reads).

They load lazily: :class:`~dyncli.cli.command.DyncliCommand` adds them when the command parses
its arguments or renders its help, so importing the CLI loads no plugin. Their values do not
reach the command function as arguments: the command moves them into ``ctx.meta`` and
:func:`method_values` reads them back for the chosen method.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Annotated, Any

import typer

from dyncli.cli.output import warn
from dyncli.errors import UsageError
from dyncli.registry.specs import MethodFlag, MethodSpec

METHOD_COMMANDS = ("convert", "distill")
VALUES = "dyncli.method_values"  # ctx.meta key: parameter name -> value
PARAMS = "dyncli.method_params"  # ctx.meta key: the click parameters, made once per context
PANEL = "Method options"


def param_name(flag: str) -> str:
    """``--gate-lr-scale`` -> ``gate_lr_scale``."""
    return flag.lstrip("-").replace("-", "_")


def methods_of(command: str) -> dict[str, MethodSpec]:
    from dyncli.registry.manager import methods

    return methods(command)


def method_choices(command: str) -> str:
    """'early-exit: ... layerdrop: ...' for ``--method``'s help (loads plugins)."""
    return " ".join(f"{n}: {s.description}" for n, s in methods_of(command).items()) or "none"


def _flag_type(spec: MethodSpec, flag: MethodFlag) -> tuple[Any, Any]:
    assert spec.options_cls is not None, f"method {spec.name!r} declares flags but no options"
    hints = typing.get_type_hints(spec.options_cls)
    fields = {f.name: f for f in dataclasses.fields(spec.options_cls)}
    return hints[flag.field], fields[flag.field].default


def method_params(command: str, taken: set[str]) -> list[Any]:
    """Click parameters for every flag the methods of ``command`` declare, in registration
    order; a flag declared twice is made once, and one that clashes with a parameter in
    ``taken`` (the command's own) is left out with a warning."""
    parameters: list[inspect.Parameter] = []
    seen: set[str] = set()
    for spec in methods_of(command).values():
        for flag in spec.flags:
            name = param_name(flag.flag)
            if name in seen:
                continue
            if name in taken:
                warn(
                    f"method {spec.name!r} declares {flag.flag}, which 'dyncli {command}' "
                    "already has; the method's declaration is ignored"
                )
                continue
            seen.add(name)
            kind, default = _flag_type(spec, flag)
            option = typer.Option(
                flag.flag, help=flag.help, min=flag.min, max=flag.max, rich_help_panel=PANEL
            )
            parameters.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=default,
                    annotation=Annotated[kind, option],
                )
            )
    if not parameters:
        return []

    def holder(**kwargs: Any) -> None:  # typer reads the parameters from its signature
        return None

    holder.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    params, _ = typer.main._get_params_name_from_function(holder)
    return list(params)


def method_values(ctx: typer.Context, spec: MethodSpec) -> dict[str, Any]:
    """The values of ``spec``'s own flags (options field -> value) from the command line."""
    values = ctx.meta.get(VALUES, {})
    return {
        flag.field: values[param_name(flag.flag)]
        for flag in spec.flags
        if param_name(flag.flag) in values
    }


def _given(ctx: typer.Context, name: str, value: Any) -> bool:
    source = ctx.get_parameter_source(name)
    given = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
    return given and value is not False  # an on/off flag counts only when on


def refuse_inapplicable_options(
    ctx: typer.Context, command: str, spec: MethodSpec, shared: tuple[str, ...], options: Any
) -> None:
    """Refuse each option the user gave that ``--method spec.name`` does not read: another
    method's own flag, or a shared option (one of ``shared``) the method does not use (with
    ``options``, the method's own options, deciding the conditional ones)."""
    everyone = methods_of(command)
    own = {param_name(f.flag) for f in spec.flags}
    for name, value in ctx.meta.get(VALUES, {}).items():
        if name in own or not _given(ctx, name, value):
            continue
        users = [s.name for s in everyone.values() if name in {param_name(f.flag) for f in s.flags}]
        _refuse(name, spec, users)
    for name in shared:
        if spec.uses_option(name, options) or not _given(ctx, name, ctx.params.get(name)):
            continue
        _refuse(name, spec, [s.users_of(name) for s in everyone.values() if s.uses_option(name)])


def _refuse(name: str, spec: MethodSpec, users: list[str]) -> None:
    flag = "--" + name.replace("_", "-")
    raise UsageError(
        f"{flag} does not apply to --method {spec.name} (only to --method {', '.join(users)})"
    )


def loss_weights(
    spec: MethodSpec, options: Any, shared: dict[str, tuple[float, str]]
) -> dict[str, tuple[float, str]]:
    """The loss weights of a run (flag -> (value, what its term trains)): the command's
    ``shared`` ones (already chosen for the method) and the method's own (``weighs``)."""
    weights = dict(shared)
    for flag in spec.flags:
        if flag.weighs is not None:
            weights[flag.flag] = (float(getattr(options, flag.field)), flag.weighs)
    return weights
