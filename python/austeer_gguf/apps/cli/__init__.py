"""`python -m austeer_gguf ...`: the command line. One module per group of commands, each command's flags
beside its handler: `files` (fetch, inspect, embed, strip, dequantize, export-lora, bake), `localize`
(localize, calibrate, export-cvec, explain), `run` (generate, chat, eval, serve), `build` (build); shared
argument types and helpers in `common`.

Bad input (an `InputError`: missing or malformed files, a profile that does not fit the model, a number out
of range, an output that would overwrite an input) and environment errors (`OSError`: a full disk, a
permission) print one line and exit with status 2, as do usage errors. Anything else is a bug: it keeps its
traceback and exits with status 1. Commands that only read or rewrite GGUF files never load llama_cpp.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from collections.abc import Callable, Sequence

from ..._version import __version__
from ...errors import InputError
from . import build, common, files, localize, run

GROUPS = (files, localize, run, build)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=common.prog(), formatter_class=common.Formatter,
                                     description="Fine-grained activation steering (AUSteer) for GGUF models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    return parser


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show


class Terminated(Exception):
    """SIGTERM, raised in the main thread so that partial outputs are cleaned up as on SIGINT."""


def _raise_terminated(_signum, _frame) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _one_line_warnings()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    handler: Callable[[argparse.Namespace], int] = args.run
    try:
        return handler(args)
    except (InputError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: any file it was writing was removed, the inputs are as they were", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated (SIGTERM): any file it was writing was removed, the inputs are as they were",
              file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
