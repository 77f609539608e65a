"""The ``stoax`` command line: ``stoax train ...`` and ``stoax audit ...``.

Each subcommand lives in its own module, imported only when it runs, so ``stoax --help`` answers
without importing JAX.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module defining ``add_arguments(parser)`` and ``run(args) -> int``, one-line help)
SUBCOMMANDS = {
    "train": ("stoax.cli.train", "train an example (digits, charlm) with and without dropout"),
    "audit": ("stoax.cli.audit", "find randomness bugs in a JAX function"),
}


def build_parser() -> argparse.ArgumentParser:
    from stoax import __version__

    parser = argparse.ArgumentParser(
        prog="stoax",
        description="stoax: neural-network modules for JAX with randomness you can trust.",
    )
    parser.add_argument("--version", action="version", version=f"stoax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stoax`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        build_parser().parse_args(argv)  # prints usage / help, or an error naming the choices
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(SUBCOMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"stoax {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback
        print(f"stoax {name}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
