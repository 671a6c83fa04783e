"""What the commands share: argument types, the help formatter, and the few helpers more than one command
calls (a profile named on the command line, a rewritten file's output path, the runtime options and the
model they open)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ... import models
from ...errors import InputError
from ...profile import MAX_STRENGTH

MODEL_HELP = f"a GGUF file, or a built-in model: {', '.join(models.MODELS)}"


def prog() -> str:
    """How the command was invoked: `python -m austeer_gguf` or the installed `austeer-gguf` script."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "python -m austeer_gguf" if invoked in ("__main__.py", "-m", "-c", "") else invoked


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, but not "(default: None)" or "(default: False)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def command(commands, name: str, help_text: str,
            handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text, formatter_class=Formatter)
    parser.set_defaults(run=handler)
    return parser


# ---- argument types ------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is a number in 1..65535, got {text}")
    return value


def bounded_float(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a finite number in {low:g}..{high:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def layer_range(text: str) -> tuple[int, int]:
    try:
        first, last = (int(part) for part in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A-B, got {text!r}") from None
    if not 1 <= first <= last:
        raise argparse.ArgumentTypeError(f"expected 1 <= A <= B, got {text!r}")
    return first, last


STRENGTH = bounded_float(-MAX_STRENGTH, MAX_STRENGTH)
TEMPERATURE = bounded_float(0.0, 100.0)


def add_force(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--force", action="store_true", help=what)


def add_output(parser: argparse.ArgumentParser, default_help: str) -> None:
    output = parser.add_mutually_exclusive_group()
    output.add_argument("-o", "--output", help=f"file to write ({default_help})")
    output.add_argument("--in-place", action="store_true", help="replace the model file itself (atomically)")


def add_runtime_options(parser: argparse.ArgumentParser, *, max_tokens: int, n_ctx: int) -> None:
    from ...setting import MAX_MULTIPLIER

    parser.add_argument("--profile", help="embedded profile name or profile JSON file")
    parser.add_argument("--strength", type=STRENGTH, default=1.0, help="multiplier of the profile's effect")
    parser.add_argument("--max-tokens", type=positive_int, default=max_tokens, help="tokens to generate at most")
    parser.add_argument("--temperature", type=TEMPERATURE, default=0.0, help="0 = greedy; > 0 samples with --seed")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--n-ctx", type=positive_int, default=n_ctx, help="context size in tokens")
    parser.add_argument("--threads", type=positive_int, help="CPU threads (default: half the cores)")
    parser.add_argument("--force", action="store_true", help="apply a profile made for another model")
    parser.add_argument("--cvec", help="also add a control-vector GGUF (the CAA baseline)")
    parser.add_argument("--multiplier", type=bounded_float(-MAX_MULTIPLIER, MAX_MULTIPLIER), default=1.0,
                        help="control-vector multiplier")


# ---- helpers -------------------------------------------------------------------------------------------


def resolve_profile(model: Path, spec: str):
    """A profile named on the command line: a file, inline JSON, or a profile embedded in `model`."""
    from ...formats.embedded import read_profiles
    from ...formats.profiles import resolve

    return resolve(spec, read_profiles(model))


def output_path(source: Path, args: argparse.Namespace, suffix: str, extra_inputs: Sequence[str] = ()) -> Path:
    """The file a rewriting command (embed, strip) writes: -o, the source itself with --in-place, or a new
    file beside the source."""
    from ...ggufio.atomic import check_output

    if args.in_place:
        target = source
    elif args.output:
        target = Path(args.output)
    else:
        stem = source.name[: -len(".gguf")] if source.name.endswith(".gguf") else source.name
        target = source.with_name(stem + suffix)
    return check_output(target, [source, *extra_inputs], in_place=args.in_place, force=args.force)


def open_steered(args: argparse.Namespace, *, sequences: bool = False, warn_unsteered: bool = True):
    """The model of a runtime command, its controls set from the runtime options. `sequences`: a context that
    decodes several sequences together (evaluation)."""
    from ...engine import limits
    from ...engine.hooked import SEQUENCES
    from ...runtime.steered_llama import SteeredLlama

    path = models.resolve(args.model)
    llm = SteeredLlama(path, n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads, seed=args.seed,
                       verbose=False, sequences=SEQUENCES if sequences else 1)
    limits.check_max_tokens(args.max_tokens, llm.n_ctx())
    if args.profile:
        llm.steering.set_profile(llm.resolve_profile(args.profile), allow_model_mismatch=args.force)
    elif len(llm.steering.available) == 1:
        llm.steering.use(llm.steering.available[0])
    elif llm.steering.available:
        raise InputError(f"the model embeds several profiles ({', '.join(llm.steering.available)}): "
                         "choose one with --profile")
    if args.cvec:
        from ...formats.control_vectors import read_control_vector

        llm.steering.set_control_vector(read_control_vector(args.cvec), args.multiplier)
    if warn_unsteered and llm.steering.profile is None and not args.cvec:
        print("warning: no profile: the model runs unsteered (pass --profile NAME|FILE)", file=sys.stderr)
    llm.steering.strength = args.strength
    return llm
