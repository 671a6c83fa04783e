"""Commands that find and scale units: localize, calibrate, export-cvec, explain."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ... import models, sites
from ...errors import InputError
from ...localization.weights import DEFAULT_WEIGHTS, WEIGHTS
from ...profile import MAX_ALPHA
from .common import MODEL_HELP, add_force, bounded_float, command, layer_range, positive_int, resolve_profile


def cmd_localize(args: argparse.Namespace) -> int:
    from ...formats.profiles import write_profile
    from ...ggufio.atomic import check_output
    from ...localization.localize import localize
    from ...localization.weights import localization_model

    source = models.resolve(args.model)
    output = Path(args.output or f"{Path(args.pairs).name.split('.')[0]}.profile.json")
    check_output(output, [source, args.pairs], force=args.force)
    with localization_model(args.model, args.weights) as model:
        result = localize(model, args.pairs, sites=args.site, k=args.k, alpha=args.alpha, name=args.name,
                          chat=args.chat, max_tokens=args.max_tokens, share_prefix=not args.no_share_prefix,
                          pooled=args.pooled, n_threads=args.threads, progress=not args.quiet)
    profile = result.profile
    if args.calibrate_kl is not None:
        profile = calibrated_profile(source, profile, kl=args.calibrate_kl, perplexity=None, threads=args.threads)
    write_profile(profile, output)
    if not args.quiet:
        print(result.table(args.show), file=sys.stderr)
        print(f"{result.n_pairs} pairs ({result.truncated} cut to {args.max_tokens} tokens, {result.skipped} skipped) "
              f"in {result.seconds:.1f} s, {result.pairs_per_second:.1f} pairs/s", file=sys.stderr)
    print(output)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ...formats.profiles import write_profile
    from ...ggufio.atomic import check_output

    source = models.resolve(args.model)
    profile = resolve_profile(source, args.profile)
    output = check_output(Path(args.output or f"{profile.name}.calibrated.json"), [source, args.profile],
                          force=args.force)
    write_profile(calibrated_profile(source, profile, kl=args.kl, perplexity=args.perplexity,
                                     tolerance=args.tolerance, threads=args.threads, force=args.force), output)
    print(output)
    return 0


def calibrated_profile(model: Path, profile, *, kl, perplexity, tolerance: float = 0.05, threads=None, force=False):
    """The profile calibrated on `model` to a KL or perplexity budget (see evaluation/calibrate.py)."""
    from ...engine.hooked import HookedLlama
    from ...evaluation.calibrate import calibrate, calibrated

    llm = HookedLlama.for_evaluation(model, n_threads=threads, n_threads_batch=threads, verbose=False)
    result = calibrate(llm, profile, kl=kl, perplexity_ratio=perplexity, tolerance=tolerance,
                       allow_model_mismatch=force)
    steered = calibrated(profile, result)  # refuses a budget no strength meets, before anything is printed
    print(f"calibrated {profile.name!r}: strength {result.strength:.4g} keeps the {result.measure} at "
          f"{result.side_effect:.4g} (budget {result.budget:g}; {len(result.trials)} trials); alpha "
          f"{profile.alpha:g} -> {steered.alpha:.4g}", file=sys.stderr)
    return steered


def cmd_export_cvec(args: argparse.Namespace) -> int:
    from ...formats.control_vectors import write_control_vector
    from ...ggufio.atomic import check_output
    from ...localization.localize import compute_control_vector
    from ...localization.weights import localization_model

    target = check_output(args.output, [models.resolve(args.model), args.pairs], force=args.force)
    with localization_model(args.model, args.weights) as model:
        vector = compute_control_vector(model, args.pairs, layers=args.layers, chat=args.chat,
                                        max_tokens=args.max_tokens, n_threads=args.threads, progress=not args.quiet)
    print(write_control_vector(vector, target))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ...evaluation.explain import explain, table

    source = models.resolve(args.model)
    profile = resolve_profile(source, args.profile)
    if not profile.units:
        raise InputError(f"profile {profile.name!r} has no units to explain"
                         + (" (it steers with a control vector only)" if profile.control is not None else ""))
    print(table(explain(source, profile.top(args.units), top=args.top, allow_model_mismatch=args.force)))
    return 0


def add_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, choices=WEIGHTS,
                        help="localize on the model file itself, or on a copy with these weights (a built-in "
                        "model's copy is cached; another file's is written to $TMPDIR for the run)")


def register(commands) -> None:
    localize = command(commands, "localize", "find the top-k atomic units from contrastive pairs", cmd_localize)
    localize.add_argument("model", help=MODEL_HELP)
    localize.add_argument("pairs", help="JSONL, one {prompt, positive, negative} or {positive, negative} a line")
    localize.add_argument("--site", default="attn", choices=[*sites.names(), "all"], help="where units are sought")
    localize.add_argument("--k", type=positive_int, default=10, help="units to keep (typical 2-100)")
    localize.add_argument("--alpha", type=bounded_float(-MAX_ALPHA, MAX_ALPHA), default=5.0,
                          help="steering scale stored in the profile")
    add_weights(localize)
    localize.add_argument("--name", help="profile name (default: the pairs file's name)")
    localize.add_argument("--chat", action="store_true", help="render each prompt through the model's chat template")
    localize.add_argument("--max-tokens", type=positive_int, default=512, help="longer pairs are cut from the front")
    localize.add_argument("--no-share-prefix", action="store_true", help="decode both full texts of every pair")
    localize.add_argument("--pooled", action="store_true",
                          help="position-pooled momentum: compare each reply's mean over its tokens from where the two "
                               "replies differ, not its last token (for behaviours that live in every token)")
    localize.add_argument("--threads", type=positive_int, help="CPU threads (default: all cores)")
    localize.add_argument("--show", type=int, default=10, help="top units to print")
    localize.add_argument("--quiet", action="store_true", help="no progress bar or table")
    localize.add_argument("--calibrate-kl", type=bounded_float(1e-6, 10.0), metavar="KL",
                          help="calibrate the strength to this KL on neutral text (on MODEL, the file you run)")
    localize.add_argument("-o", "--output", help="profile JSON to write (default: <pairs>.profile.json)")
    add_force(localize, "replace a read-only output file")

    calibrate = command(commands, "calibrate", "scale a profile to the strength at which its side effect meets a "
                        "budget", cmd_calibrate)
    calibrate.add_argument("model", help=MODEL_HELP + " (the file you will run: calibrate on it)")
    calibrate.add_argument("profile", help="profile JSON file or embedded profile name")
    budget = calibrate.add_mutually_exclusive_group(required=True)
    budget.add_argument("--kl", type=bounded_float(1e-6, 10.0),
                        help="KL(steered || unsteered) on neutral text, nats per token (e.g. 0.05)")
    budget.add_argument("--perplexity", type=bounded_float(1.0001, 100.0),
                        help="perplexity of neutral continuations over the unsteered ones (e.g. 1.1)")
    calibrate.add_argument("--tolerance", type=bounded_float(0.001, 0.5), default=0.05,
                           help="relative precision of the strength")
    calibrate.add_argument("--threads", type=positive_int, help="CPU threads (default: half the cores)")
    calibrate.add_argument("-o", "--output", help="calibrated profile JSON (default: <name>.calibrated.json)")
    add_force(calibrate, "calibrate a profile made for another model; replace a read-only output file")

    export_cvec = command(commands, "export-cvec", "write the CAA control-vector baseline for llama.cpp",
                          cmd_export_cvec)
    export_cvec.add_argument("model", help=MODEL_HELP)
    export_cvec.add_argument("pairs", help="contrastive pairs JSONL")
    export_cvec.add_argument("-o", "--output", required=True, help="control-vector GGUF to write")
    add_weights(export_cvec)
    export_cvec.add_argument("--layers", type=layer_range, help="A-B: keep directions of layers A..B (>= 1)")
    export_cvec.add_argument("--chat", action="store_true", help="render prompts through the chat template")
    export_cvec.add_argument("--max-tokens", type=positive_int, default=512, help="longer pairs are cut")
    export_cvec.add_argument("--threads", type=positive_int, help="CPU threads (default: all cores)")
    export_cvec.add_argument("--quiet", action="store_true", help="no progress bar")
    add_force(export_cvec, "replace a read-only output file")

    explain = command(commands, "explain", "tokens each unit of a profile promotes and suppresses", cmd_explain)
    explain.add_argument("model", help=MODEL_HELP)
    explain.add_argument("profile", help="profile JSON file or embedded profile name")
    explain.add_argument("--top", type=positive_int, default=8, help="tokens per direction")
    explain.add_argument("--units", type=positive_int, default=20, help="first units of the profile")
    add_force(explain, "explain a profile made for another model")
