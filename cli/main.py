"""The ``saliency`` command: ``saliency methods`` lists the registered methods and options."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from saliency.methods.registry import get_method, list_methods

import saliency


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command; method names come from the registry."""
    parser = argparse.ArgumentParser(
        prog="saliency",
        description="Gradient-based saliency maps for PyTorch image models.",
        epilog="Registered methods: " + ", ".join(list_methods()),
    )
    parser.add_argument("--version", action="version", version=f"saliency {saliency.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "methods",
        help="list the registered methods with their options",
        description="List the registered methods with a one-line description and their options.",
    )
    return parser


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


def _default(option: dataclasses.Field[object]) -> str:
    if option.default is not dataclasses.MISSING:
        return repr(option.default)
    if option.default_factory is not dataclasses.MISSING:
        return repr(option.default_factory())
    return "required"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command == "methods":
        print(describe_methods())
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
