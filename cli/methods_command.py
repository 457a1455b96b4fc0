"""``saliency methods``: the registered methods with a one-line description and their options."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from saliency.methods.registry import get_method, list_methods


def add_parser(commands: Any) -> None:
    """Add the ``methods`` command to the CLI's sub-parsers."""
    parser = commands.add_parser(
        "methods",
        help="list the registered methods with their options",
        description="List the registered methods with a one-line description and their options.",
    )
    parser.set_defaults(run=run)


def run(_arguments: argparse.Namespace) -> int:
    print(describe_methods())
    return 0


def describe_methods() -> str:
    """One block per registered method: name, summary, paper and options with defaults."""
    blocks = []
    for name in list_methods():
        method = get_method(name)
        options = ", ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(method) if f.init)
        lines = [f"{name}  ({method.output} space)", f"    {method.summary()}"]
        if method.paper:
            lines.append(f"    paper: {method.paper}")
        lines.append(f"    options: {options or 'none'}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _default(option: dataclasses.Field[Any]) -> str:
    if option.default is not dataclasses.MISSING:
        return repr(option.default)
    if option.default_factory is not dataclasses.MISSING:
        return repr(option.default_factory())
    return "required"
