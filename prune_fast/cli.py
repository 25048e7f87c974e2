"""``python -m prune_fast``: a small dispatcher over subcommands.

Each subcommand is one module of :mod:`prune_fast.commands` listed in :data:`COMMANDS`: its
``add_parser(subparsers)`` declares the arguments and sets ``run`` to the module's thin handler,
which calls the library.  This module only parses, sets up logging and maps errors to exit codes.

Example::

    python -m prune_fast restrain --base gpt2-xl --edited gpt2-xl-memit --out gpt2-xl-prune --fn log
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from .commands import demo, edit, example, mend_train, restrain, stats
from .errors import PruneFastError

__all__ = ["main", "build_parser", "COMMANDS"]

# one module per subcommand, in the order of --help; each has add_parser(sub) and run(args)
COMMANDS: list[ModuleType] = [restrain, example, demo, edit, mend_train, stats]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prune_fast", description="PRUNE restraint of knowledge edits")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit status (2 for refused input)."""
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except PruneFastError as e:
        print(f"python -m prune_fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read or written (permissions, a full disk): one line, named
        print(f"python -m prune_fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"python -m prune_fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
