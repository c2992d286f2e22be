"""Click's names in ``--help``: ``INTEGER``, ``FLOAT``, ``TEXT``, ``PATH`` for a value, nothing beside a flag.

Typer labels every parameter it builds with its Python type in angle
brackets (``<int>``, ``<int range>``, ``<str>``), flags and ``--help``
included (``<bool>``), though a flag takes no value. ``click_style`` relabels
a command tree the way click shows it: an option's metavar replaces its
label, and an argument, whose metavar is its name, shows click's type name
through ``ClickArgument``. Parameters that set their own metavar keep it.
"""

from __future__ import annotations

from pathlib import Path

from typer._click import Command, Context  # the click Typer vendors, which it re-exports only in part
from typer.core import TyperArgument, TyperGroup, TyperOption

CLICK_NAMES: dict[object, str] = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH"}


def click_type(param: TyperArgument | TyperOption) -> str:
    """Click's name for what ``param`` takes: ``INTEGER``, ``FLOAT RANGE``, ``[a|b]``, ..."""
    descriptor = param.type_descriptor
    if descriptor.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in descriptor.choices or ()) + "]"
    if descriptor.is_path:
        return "PATH"
    name = CLICK_NAMES.get(descriptor.annotation, param.bare_type().upper())
    return f"{name} RANGE" if descriptor.is_ranged else name


class ClickArgument(TyperArgument):
    """An argument whose help shows click's name for its type."""

    def display_type_rich(self, ctx: Context) -> str | None:  # noqa: ARG002 - the type alone decides
        return click_type(self)


def click_style(command: Command) -> None:
    """Relabel every parameter of ``command`` and its subcommands, ``--help`` included, the way click shows it."""
    # The help option is made on first use and then cached on the command, whatever the context.
    help_option = command.get_help_option(Context(command))
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = "" if param.is_flag else click_type(param)
        elif type(param) is TyperArgument:
            if param.metavar is None and param.name:
                param.metavar = param.name.upper()
            # Same fields, one method more: Typer builds its own class, so the instance is relabelled in place.
            param.__class__ = ClickArgument
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            click_style(sub)
