"""The ``saliency`` command line: one module per command, registered in :data:`COMMANDS`.

Each command module ``saliency.cli.<name>_command`` has ``add_parser(commands)``, which adds its
sub-parser and sets ``run`` (``Namespace -> exit code``) as its default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import saliency
from saliency.methods.registry import list_methods

COMMANDS: tuple[str, ...] = ("demo", "methods", "explain", "gallery")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command; method names come from the registry."""
    parser = argparse.ArgumentParser(
        prog="saliency",
        description="Gradient-based saliency maps for PyTorch image models.",
        epilog="Registered methods: " + ", ".join(list_methods()),
    )
    parser.add_argument("--version", action="version", version=f"saliency {saliency.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"saliency.cli.{name}_command").add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 0
    code: int = arguments.run(arguments)
    return code


if __name__ == "__main__":
    sys.exit(main())
